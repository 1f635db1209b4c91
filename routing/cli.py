"""The ``durchwahl`` command line (the server's commands arrive with the routing issue)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("durchwahl")
    except PackageNotFoundError:
        return "unknown"


def _parse(paths: list[str]) -> int:
    """Parse SIP messages from files and print what the parser sees, or exactly what is wrong."""
    from sipcore import Request, SipParseError, parse_message

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
    config: str, listen: list[str] | None, verbose: bool, log_format: str = "text", loop: str = "asyncio"
) -> int:
    """Run the server until SIGINT/SIGTERM; SIGHUP reloads the directory."""
    import asyncio
    import signal
    from pathlib import Path

    from routing.errors import ConfigError
    from routing.server import Server, event_loop_factory, tune_gc

    try:
        loop_factory = event_loop_factory(loop)
    except ValueError as exc:
        print(f"durchwahl: {exc}", file=sys.stderr)
        return 2

    setup_logging(verbose, log_format)

    async def run() -> None:
        async with Server(config, listen=tuple(listen) if listen else None) as server:
            tune_gc()
            directory = server.directory
            for transport, host, port in server.addresses:
                shown = f"[{host}]" if ":" in host else host
                print(f"durchwahl: listening on {transport} {shown}:{port}", flush=True)
            example = Path(config).resolve() == (
                Path(__file__).resolve().parent.parent / "examples/office.toml"
            )
            print(
                f"durchwahl: register a phone with domain/realm {directory.server.domain!r}, server as above:"
            )
            for employee in directory.employees:
                secret = employee.password if example and employee.password else "(see the config)"
                print(
                    f"  extension {employee.extension} {employee.name}: user {employee.sip_user!r}, "
                    f"password {secret}"
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(signal.SIGHUP, server.reload)
            await stop.wait()
            print("durchwahl: stopping", flush=True)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"durchwahl: {exc}", file=sys.stderr)
        return 1
    return 0


def _control(config: str, message: dict[str, object]) -> dict[str, object] | None:
    """Send one request to the server running for ``config``; None (and a message) when none runs."""
    import asyncio
    from pathlib import Path

    from routing.control import request, socket_path
    from routing.directory import load_directory
    from routing.errors import ConfigError

    try:
        directory = load_directory(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    path = socket_path(Path(directory.server.state_dir))
    try:
        return asyncio.run(request(path, message))
    except (OSError, TimeoutError) as exc:
        print(
            f"durchwahl: no server answers on {path} ({exc}); is `durchwahl serve` running?", file=sys.stderr
        )
        return None


def _status(config: str) -> int:
    answer = _control(config, {"cmd": "status"})
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"durchwahl: {answer.get('error')}", file=sys.stderr)
        return 1
    print("listening:", ", ".join(str(a) for a in answer.get("listening", [])))  # type: ignore[attr-defined]
    registrations = answer.get("registrations", [])
    print(f"registrations: {len(registrations)}")  # type: ignore[arg-type]
    for r in registrations:  # type: ignore[attr-defined]
        state = "" if r["reachable"] else "  (not answering pings)"
        print(f"  {r['aor']}  {r['contact']}  via {r['via']}  expires in {r['expires_in']} s{state}")
    print(f"active calls: {answer.get('active_calls')}")
    for t in answer.get("trunks", []):  # type: ignore[attr-defined]
        error = f"  ({t['last_error']})" if t.get("last_error") else ""
        print(f"trunk {t['name']}: {t['state']}{error}")
    return 0


def _originate(config: str, extension: str, number: str) -> int:
    answer = _control(config, {"cmd": "originate", "extension": extension, "number": number})
    if answer is None:
        return 1
    if not answer.get("ok"):
        print(f"durchwahl: {answer.get('error')}", file=sys.stderr)
        return 1
    print(f"calling: {extension}'s phones ring first, then {number}")
    return 0


def _cdr(config: str, limit: int, since: str | None, as_json: bool) -> int:
    """Print the newest call records of the office's CDR file (read-only, beside a running server)."""
    import datetime

    import attrs

    from routing.cdr import CdrStoreError, read_records
    from routing.directory import load_directory
    from routing.errors import ConfigError

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
    try:
        records = read_records(directory.server.state_dir / "cdr.sqlite3", since=start, limit=limit)
    except CdrStoreError as exc:
        print(f"durchwahl: {exc}", file=sys.stderr)
        return 1
    if as_json:
        for r in records:
            row = attrs.asdict(r)
            row["disposition"] = r.disposition.value
            print(json.dumps(row, ensure_ascii=False))
        return 0
    print(
        f"{'started':19}  {'caller':16}  {'dialled':16}  {'to':18}  {'answered by':14}  {'talk':>6}  result"
    )
    for r in records:
        started = datetime.datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
        where = f"{r.destination_kind} {r.destination_id}" if r.destination_kind else "-"
        talk = f"{r.ended_at - r.answered_at:.0f}s" if r.answered_at is not None else "-"
        result = r.disposition.value + (
            f" ({r.status})" if r.status is not None and r.answered_at is None else ""
        )
        digits = f"  digits {r.digits}" if r.digits else ""
        print(
            f"{started:19}  {r.caller[:16]:16}  {r.dialled[:16]:16}  {where[:18]:18}  "
            f"{(r.answered_by or '-')[:14]:14}  {talk:>6}  {result}{digits}"
        )
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
    serve.add_argument("--config", default="examples/office.toml", help="the directory TOML file")
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
    status = commands.add_parser("status", help="registrations, active calls and trunks of a running server")
    status.add_argument(
        "--config", default="examples/office.toml", help="the running server's directory file"
    )
    originate = commands.add_parser("originate", help="click-to-call: ring EXTENSION, then call NUMBER")
    originate.add_argument("extension")
    originate.add_argument("number")
    originate.add_argument(
        "--config", default="examples/office.toml", help="the running server's directory file"
    )
    cdr = commands.add_parser("cdr", help="the newest call records (CDRs) of the office, from state_dir")
    cdr.add_argument("--config", default="examples/office.toml", help="the office's directory file")
    cdr.add_argument("-n", "--limit", type=int, default=20, help="how many of the newest calls (default 20)")
    cdr.add_argument(
        "--since", metavar="DATE", help="only calls started at or after DATE (YYYY-MM-DD[THH:MM])"
    )
    cdr.add_argument("--json", action="store_true", help="one JSON object a line, every field")
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
        from media.dtmf_cli import main as dtmf_main

        return dtmf_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "parse":
        return _parse(args.files)
    if args.command == "serve":
        return _serve(args.config, args.listen, args.verbose, args.log_format, args.loop)
    if args.command == "status":
        return _status(args.config)
    if args.command == "originate":
        return _originate(args.config, args.extension, args.number)
    if args.command == "cdr":
        return _cdr(args.config, args.limit, args.since, args.json)
    if args.command == "check-config":
        from routing.directory import check_config_main

        return check_config_main(args.file)
    if args.command == "demo":
        from routing.demo import main as demo_main

        if args.verbose:
            import logging

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return demo_main()
    if args.command == "init":
        from routing.starter import init_main

        return init_main(args.dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
