"""The ``durchwahl`` command line (the server's commands arrive with the routing issue)."""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="durchwahl", description="An asyncio SIP B2BUA that gives phones extensions."
    )
    parser.add_argument("--version", action="version", version=f"durchwahl {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    parse = commands.add_parser("parse", help="parse SIP messages from files and report errors")
    parse.add_argument("files", nargs="+")
    check = commands.add_parser("check-config", help="validate a directory (office) TOML file")
    check.add_argument("file")
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
    if args.command == "check-config":
        from routing.directory import check_config_main

        return check_config_main(args.file)
    return 2


if __name__ == "__main__":
    sys.exit(main())
