"""The ``durchwahl`` command line (the server's commands arrive with the routing issue)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durchwahl.routing.cdr import CallRecord
    from durchwahl.routing.directory import Directory


#: The directory file the commands read when no --config is given: the example office (``make run``).
DEFAULT_CONFIG = "examples/office.toml"
RUNNING_CONFIG_HELP = "the running server's directory file (default: %(default)s)"
NODE_HELP = "the node of a cluster (durchwahl serve --node NAME)"


def _version() -> str:
    try:
        return version("durchwahl")
    except PackageNotFoundError:
        return "unknown"


def _parse(paths: list[str]) -> int:
    """Parse SIP messages from files and print what the parser sees, or exactly what is wrong."""
    from durchwahl.sipcore import Request, SipParseError, parse_message

    status = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            message = parse_message(data)
        except SipParseError as exc:
            print(f"{path}: invalid ({exc.status}): {exc}")
            status = 1
            continue
        first = f"{message.method} {message.uri}" if isinstance(message, Request) else f"{message.status}"
        print(f"{path}: {first}, {len(message.headers)} headers, {len(message.body)} body bytes")
    return status


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for log shippers (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: bool, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _serve(
    config: str,
    listen: list[str] | None,
    verbose: bool,
    log_format: str = "text",
    loop: str = "asyncio",
    node: str | None = None,
) -> int:
    """Run the server until SIGINT/SIGTERM; SIGHUP reloads the directory."""
    import asyncio
    import signal
    from pathlib import Path

    from durchwahl.routing.errors import ConfigError
    from durchwahl.routing.memtrim import run_idle_trim
    from durchwahl.routing.server import Server, event_loop_factory, tune_gc

    try:
        loop_factory = event_loop_factory(loop)
    except ValueError as exc:
        print(f"durchwahl: {exc}", file=sys.stderr)
        return 2

    setup_logging(verbose, log_format)

    async def run() -> None:
        async with Server(config, listen=tuple(listen) if listen else None, node=node) as server:
            tune_gc()
            # After a storm of calls, the freed heap goes back to the OS once the server has gone quiet.
            trim = asyncio.ensure_future(run_idle_trim(lambda: server.overload.calls))
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):  # before anything is printed: Ctrl-C stops cleanly
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(signal.SIGHUP, server.reload)
            loop.add_signal_handler(signal.SIGUSR1, server.drain)
            drained = asyncio.ensure_future(server.drained.wait())
            drained.add_done_callback(lambda _: stop.set())
            directory = server.directory
            for transport, host, port in server.addresses:
                shown = f"[{host}]" if ":" in host else host
                print(f"durchwahl: listening on {transport} {shown}:{port}")
            example = Path(config).resolve() == (
                Path(__file__).resolve().parent.parent / "examples/office.toml"
            )
            print(
                f"durchwahl: register a phone with domain/realm {directory.server.domain}, server as above:"
            )
            for employee in directory.employees:
                secret = employee.password if example and employee.password else "(see the config)"
                who = f"extension {employee.extension} {employee.name}"
                print(f"  {who}: user {employee.sip_user}, password {secret}")
            sys.stdout.flush()
            await stop.wait()
            drained.cancel()
            trim.cancel()
            print(
                "durchwahl: drained, stopping" if server.drained.is_set() else "durchwahl: stopping",
                flush=True,
            )

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is not None and exc.strerror:  # the state directory, most likely
            print(
                f"durchwahl: cannot use {exc.filename}: {exc.strerror} (see [server] state_dir)",
                file=sys.stderr,
            )
        else:
            print(f"durchwahl: {exc}", file=sys.stderr)
        return 1
    return 0


def _control(
    config: str, message: dict[str, object], timeout: float = 5.0, node: str | None = None
) -> dict[str, object] | None:
    """Send one request to the server running for ``config`` (a cluster's ``node``); None (and a message)
    when none runs."""
    import asyncio
    from pathlib import Path

    from durchwahl.routing.control import request, socket_path
    from durchwahl.routing.directory_file import load_directory
    from durchwahl.routing.errors import ConfigError

    try:
        directory = load_directory(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    path = socket_path(Path(directory.server.state_dir) / (node or ""))
    try:
        return asyncio.run(request(path, message, timeout))
    except (OSError, TimeoutError) as exc:
        print(
            f"durchwahl: no server answers on {path} ({exc}); is `durchwahl serve` running?", file=sys.stderr
        )
        return None


def _status(config: str, node: str | None = None) -> int:
    answer = _control(config, {"cmd": "status"}, node=node)
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"durchwahl: {answer.get('error')}", file=sys.stderr)
        return 1
    reply: dict[str, Any] = answer
    print("listening:", ", ".join(str(a) for a in reply.get("listening", [])))
    print("health:", reply.get("health", "ok"))
    registrations = reply.get("registrations", [])
    print(f"registrations: {len(registrations)}")
    for r in registrations:
        state = "" if r["reachable"] else "  (not answering pings)"
        print(f"  {r['aor']}  {r['contact']}  via {r['via']}  expires in {r['expires_in']} s{state}")
    calls = reply.get("calls", [])
    print(f"active calls: {len(calls)}")
    if calls:
        rows = [["caller", "dialled", "destination", "state", "for", "answered by", "call-id"]]
        for c in calls:
            caller = _party(c["caller"])
            if c.get("caller_name"):
                caller = f"{c['caller_name']} ({caller})"
            if c.get("source_trunk"):
                caller += f" via {c['source_trunk']}"
            state, seconds = c["state"], _duration(c["seconds"])
            answered_by, where = c["answered_by"] or "-", c["destination"] or "-"
            rows.append([caller, c["dialled"], where, state, seconds, answered_by, c["call_id"]])
        for line in _table(rows):
            print(f"  {line}")
    blocked = reply.get("blocked", [])
    print(f"blocked sources: {len(blocked) or 'none'}")
    for b in blocked:
        who = "every user" if b.get("user") is None else f"user {b['user']}"
        print(f"  {b['source']}  {who}  for {_duration(b['seconds_left'])} more  ({b.get('reason', '')})")
    for t in reply.get("trunks", []):
        error = f"  ({t['last_error']})" if t.get("last_error") else ""
        print(f"trunk {t['name']}: {t['state']}{error}")
    overload = reply.get("overload")
    if overload:
        _print_overload(overload)
    return 0


def _print_overload(o: dict[str, Any]) -> None:
    """The admission counters of ``durchwahl status`` (see OPERATIONS.md, *Overload*)."""
    names = {"INVITE": "calls", "REGISTER": "registrations", "other": "other requests"}
    admitted = ", ".join(f"{o['admitted'].get(k, 0)} {v}" for k, v in names.items())
    refused = [
        f"{sum(by.values())} {names[k]} ({', '.join(f'{n} {why}' for why, n in by.items())})"
        for k, by in o["refused"].items()
        if by
    ]
    print(f"admitted: {admitted}; refused with 503: {'; '.join(refused) or 'none'}")
    refusing = ", ".join(names[k] for k in o["refusing"]) or "nothing"
    if o.get("call_limit_cps") is not None:
        refusing += f" (new calls limited to {o['call_limit_cps']:.0f} a second)"
    dropped = "not reported" if o["datagrams_dropped"] is None else o["datagrams_dropped"]
    print(
        f"overload: limiting {refusing} now; datagrams dropped: {dropped}; largest queue delay "
        f"{o['max_queue_delay_ms']:.0f} ms, event-loop lag {o['max_event_loop_lag_ms']:.0f} ms"
    )


def _originate(
    config: str, extension: str, number: str | None, contact: str | None, node: str | None = None
) -> int:
    if (number is None) == (contact is None):
        print("durchwahl: originate: give a NUMBER or --contact NAME (one of them)", file=sys.stderr)
        return 2
    message: dict[str, object] = {"cmd": "originate", "extension": extension}
    message.update({"number": number} if contact is None else {"contact": contact})
    number = number if contact is None else f"{contact} (CRM)"
    answer = _control(config, message, timeout=30.0, node=node)  # answered once the phones ring
    if answer is None:
        return 1
    if not answer.get("ok"):
        status = f" ({answer['status']})" if "status" in answer else ""
        print(
            f"durchwahl: cannot call {number} for {extension}: {answer.get('error')}{status}", file=sys.stderr
        )
        return 1
    print(f"calling: the phones of {extension} ring; once one answers, {number} is called")
    return 0


def _unblock(config: str, source: str, user: str | None, node: str | None = None) -> int:
    answer = _control(config, {"cmd": "unblock", "source": source, "user": user}, node=node)
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"durchwahl: cannot unblock {source}: {answer.get('error')}", file=sys.stderr)
        return 1
    who = source if user is None else f"user {user} from {source}"
    print(f"unblocked {who}" if answer.get("lifted") else f"nothing was blocked or counted for {who}")
    return 0


def _drain(config: str, node: str | None) -> int:
    answer = _control(config, {"cmd": "drain"}, node=node)
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"durchwahl: cannot drain: {answer.get('error')}", file=sys.stderr)
        return 1
    calls = answer.get("calls", 0)
    who = f"node {node}" if node else "the server"
    print(f"{who} is draining: new calls go elsewhere; it exits once its {calls} call(s) have ended")
    return 0


def _party(text: str) -> str:
    """A caller's From URI as an admin reads it: the number when its user part is one, else the URI."""
    from durchwahl.sipcore import SipParseError
    from durchwahl.sipcore.uri import SipUri, TelUri, parse_uri

    try:
        uri = parse_uri(text)
    except (SipParseError, ValueError):
        return text
    if isinstance(uri, TelUri):
        return uri.number
    if isinstance(uri, SipUri) and uri.user and uri.user.lstrip("+").isdigit():
        return uri.user
    return text


def _table(rows: list[list[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows of cells as aligned text columns, each as wide as its widest cell (nothing is cut); the last
    column is left ragged. ``right``: columns aligned right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def _cdr_rows(records: list[CallRecord], directory: Directory) -> list[list[str]]:
    """The ``durchwahl cdr`` table: employees by extension, outside parties by number (or URI)."""
    import datetime

    def answerer(record: CallRecord) -> str:
        if record.answered_by is None:
            return "-"
        if record.destination_kind == "external" or record.answered_by.startswith("+"):
            return record.answered_by
        employee = directory.employee_by_sip_user(record.answered_by)
        return employee.extension if employee is not None else record.answered_by

    rows = [["started", "caller", "trunk", "dialled", "destination", "answered by", "talk", "result"]]
    for r in records:
        started = datetime.datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
        caller = _party(r.caller)  # an extension stays as it is
        if r.caller_name:
            caller = f"{r.caller_name} ({caller})"
        where = f"{r.destination_kind} {r.destination_id}" if r.destination_kind else "-"
        talk = _duration(r.ended_at - r.answered_at) if r.answered_at is not None else "-"
        result = r.disposition.value
        if r.status is not None and r.answered_at is None:
            result += f" ({r.status})"
        if r.digits:
            result += f", digits {r.digits}"
        if r.transferred_by:
            result += f", transferred by {r.transferred_by}"
        rows.append([started, caller, r.source_trunk or "-", r.dialled, where, answerer(r), talk, result])
    return rows


def _duration(seconds: float) -> str:
    """``42 s``, ``2 min 3 s``, ``1 h 5 min``: a time span as people say it."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _cluster_cdr(
    directory: Directory, start: float | None, limit: int, as_json: bool, since: str | None
) -> int:
    """``durchwahl cdr`` of a cluster: the newest records of every node, from the shared store."""
    import asyncio

    import attrs

    from durchwahl.routing.redis_shared import read_cluster_records
    from durchwahl.routing.redis_store import connect, redacted

    assert directory.cluster is not None
    url = directory.cluster.store

    async def read() -> list[tuple[str, CallRecord]]:
        client = connect(url)
        try:
            return await read_cluster_records(client, since=start, limit=limit)
        finally:
            await client.aclose()

    try:
        found = asyncio.run(read())
    except Exception as exc:  # the store unreachable, a wrong URL, the redis package missing
        print(f"durchwahl: the cluster's records in {redacted(url)} cannot be read: {exc}", file=sys.stderr)
        return 1
    if as_json:
        for node, r in found:
            row = attrs.asdict(r)
            row["disposition"] = r.disposition.value
            print(json.dumps({"node": node, **row}, ensure_ascii=False))
        return 0
    if not found:
        print("no calls recorded in the cluster" + (f" since {since}" if since is not None else " yet"))
        return 0
    rows = _cdr_rows([r for _, r in found], directory)
    rows = [
        ["node", *rows[0]],
        *([node or "-", *row] for (node, _), row in zip(found, rows[1:], strict=True)),
    ]
    for line in _table(rows, right=frozenset({7})):
        print(line)
    return 0


def _cdr(config: str, limit: int, since: str | None, as_json: bool, node: str | None = None) -> int:
    """Print the newest call records of the office's CDR file (read-only, beside a running server); of a
    cluster (``[cluster]``), every node's from the shared store, or one ``node``'s own file."""
    import datetime

    import attrs

    from durchwahl.routing.cdr import CdrStoreError, read_records
    from durchwahl.routing.directory_file import load_directory
    from durchwahl.routing.errors import ConfigError

    try:
        directory = load_directory(config)
    except ConfigError as exc:
        print(f"durchwahl: {exc}", file=sys.stderr)
        return 1
    start: float | None = None
    if since is not None:
        try:
            start = datetime.datetime.fromisoformat(since).timestamp()
        except ValueError:
            print(
                f"durchwahl: --since {since!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)",
                file=sys.stderr,
            )
            return 2
    if directory.cluster is not None and node is None:
        return _cluster_cdr(directory, start, limit, as_json, since)
    state_dir = directory.server.state_dir / (node or "")
    path = state_dir / "cdr.sqlite3"
    if not path.is_file():
        if (state_dir / "secret").is_file():  # written by every server start: the state_dir is in use
            print(f"no calls recorded yet ({path} is written when the first call ends)")
            return 0
        print(
            f"durchwahl: no CDR file at {path}: no server has run with state_dir {state_dir} "
            f"(durchwahl serve --config {config})",
            file=sys.stderr,
        )
        return 1
    try:
        records = read_records(path, since=start, limit=limit)
    except CdrStoreError as exc:
        print(f"durchwahl: {exc}", file=sys.stderr)
        return 1
    if as_json:
        for r in records:
            row = attrs.asdict(r)
            row["disposition"] = r.disposition.value
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not records:
        print("no calls recorded" + (f" since {since}" if since is not None else " yet"))
        return 0
    for line in _table(_cdr_rows(records, directory), right=frozenset({6})):
        print(line)
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_config(path: str, *, out: Callable[[str], None] | None = None) -> int:
    """``durchwahl check-config FILE``: print every problem and warning in file order, then a summary; exit
    status 1 when there are problems, else 0 (warnings alone do not fail)."""
    write = out if out is not None else (lambda line: print(line, file=sys.stdout))
    from durchwahl.routing.directory_file import read_directory
    from durchwahl.routing.errors import ConfigProblem

    directory, problems, warnings = read_directory(path)
    if not problems and directory is None:
        problems = [ConfigProblem(path, 1, "file", "incomplete configuration")]
    found = [(p, "") for p in problems] + [(w, "warning: ") for w in warnings]
    for problem, label in sorted(found, key=lambda item: item[0].line):
        write(f"{problem.file}:{problem.line}: {problem.field}: {label}{problem.message}")
    noted = f" and {_plural(len(warnings), 'warning')}" if warnings else ""
    if problems or directory is None:
        write(f"{_plural(len(problems), 'problem')}{noted} in {path}")
        return 1
    write(f"OK: {directory.summary()}" + (f" ({_plural(len(warnings), 'warning')})" if warnings else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="durchwahl", description="An asyncio SIP B2BUA that gives phones extensions."
    )
    parser.add_argument("--version", action="version", version=f"durchwahl {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    parse = commands.add_parser("parse", help="parse SIP messages from files and report errors")
    parse.add_argument("files", nargs="+")
    serve = commands.add_parser("serve", help="run the server for an office directory file")
    serve.add_argument(
        "--config", default=DEFAULT_CONFIG, help="the directory TOML file (default: %(default)s)"
    )
    serve.add_argument("--listen", action="append", metavar="SPEC", help="override: udp:HOST:PORT, tcp:...")
    serve.add_argument("-v", "--verbose", action="store_true", help="log SIP messages (DEBUG)")
    serve.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="json: one object a line"
    )
    serve.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop: uvloop (pip install 'durchwahl[speed]') costs less CPU per call",
    )
    serve.add_argument("--node", metavar="NAME", help=NODE_HELP + "; its state goes to state_dir/NAME")
    status = commands.add_parser("status", help="registrations, active calls and trunks of a running server")
    status.add_argument("--config", default=DEFAULT_CONFIG, help=RUNNING_CONFIG_HELP)
    status.add_argument("--node", metavar="NAME", help=NODE_HELP)
    originate = commands.add_parser(
        "originate", help="click-to-call: ring EXTENSION, then call NUMBER (or a CRM contact)"
    )
    originate.add_argument("extension")
    originate.add_argument(
        "number", nargs="?", help="sent as dialled: post-dial digits only if you write them (;105)"
    )
    originate.add_argument(
        "--contact", metavar="NAME", help="a CRM contact by name: its number and stored post-dial digits"
    )
    originate.add_argument("--config", default=DEFAULT_CONFIG, help=RUNNING_CONFIG_HELP)
    originate.add_argument("--node", metavar="NAME", help=NODE_HELP)
    unblock = commands.add_parser(
        "unblock", help="lift the block of a source after failed logins (status lists the blocks)"
    )
    unblock.add_argument("source", help="the blocked address (an IPv6 source: any address of its /64)")
    unblock.add_argument("--user", help="lift only this user's block from that source")
    unblock.add_argument("--config", default=DEFAULT_CONFIG, help=RUNNING_CONFIG_HELP)
    unblock.add_argument("--node", metavar="NAME", help=NODE_HELP)
    drain = commands.add_parser(
        "drain", help="refuse new calls, let the calls in progress finish, then exit (a cluster's node)"
    )
    drain.add_argument("--config", default=DEFAULT_CONFIG, help=RUNNING_CONFIG_HELP)
    drain.add_argument("--node", metavar="NAME", help=NODE_HELP)
    cdr = commands.add_parser("cdr", help="the newest call records (CDRs) of the office, from state_dir")
    cdr.add_argument(
        "--config", default=DEFAULT_CONFIG, help="the office's directory file (default: %(default)s)"
    )
    cdr.add_argument("-n", "--limit", type=int, default=20, help="how many of the newest calls (default 20)")
    cdr.add_argument(
        "--since", metavar="DATE", help="only calls started at or after DATE (YYYY-MM-DD[THH:MM])"
    )
    cdr.add_argument("--json", action="store_true", help="one JSON object a line, every field")
    cdr.add_argument("--node", metavar="NAME", help="a cluster's node: its own CDR file, not the cluster's")
    check = commands.add_parser("check-config", help="validate a directory (office) TOML file")
    check.add_argument("file")
    demo = commands.add_parser(
        "demo",
        help="play a scripted office day on loopback with simulated phones (no phone needed)",
        description="Start the example office on loopback and play a scripted office day with simulated "
        "phones and a simulated provider; print what happened; exit 0 only if every step happened.",
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="also log what the server does")
    init = commands.add_parser(
        "init",
        help="write a starter office (office.toml with fresh passwords, greeting.wav) into DIR to edit",
        description="Write the example office, with fresh passwords for its employees, and its greeting into "
        "DIR (created if missing) as a starting point; never overwrites a file.",
    )
    init.add_argument("dir", nargs="?", default=".", help="the folder to write into (default: this one)")
    commands.add_parser(
        "dtmf",
        help="print the in-band DTMF digits of a recording (digit and start sample at 8 kHz)",
        add_help=False,
    )
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["dtmf"]:
        from durchwahl.media.dtmf_cli import main as dtmf_main

        return dtmf_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "parse":
        return _parse(args.files)
    if args.command == "serve":
        return _serve(args.config, args.listen, args.verbose, args.log_format, args.loop, args.node)
    if args.command == "status":
        return _status(args.config, args.node)
    if args.command == "originate":
        return _originate(args.config, args.extension, args.number, args.contact, args.node)
    if args.command == "unblock":
        return _unblock(args.config, args.source, args.user, args.node)
    if args.command == "drain":
        return _drain(args.config, args.node)
    if args.command == "cdr":
        return _cdr(args.config, args.limit, args.since, args.json, args.node)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "demo":
        from durchwahl.routing.demo import main as demo_main

        if args.verbose:
            import logging

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return demo_main()
    if args.command == "init":
        from durchwahl.routing.starter import init_main

        return init_main(args.dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
