"""Embedding durchwahl in an asyncio application: run the server inside it, react to its events, and route
known CRM callers straight to the employee who looks after them (a resolver hook).

Run it: ``python examples/embed.py --config examples/office.toml --seconds 30`` (``--listen udp:127.0.0.1:0``
to listen elsewhere than the file says). It imports only the ``durchwahl`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from durchwahl import Caller, DialString, FromTrunk, Registered, Route, Server, ToEmployee, Unregistered

#: What the embedding application knows: customer numbers and the employee responsible for each.
ACCOUNT_MANAGERS = {"+4989555123": "101", "+4940555777": "102"}


def crm_hook(server_of: Callable[[], Server]) -> Callable[[DialString, Caller], Awaitable[Route | None]]:
    """A resolver hook: a known customer calling in from the trunk goes to their account manager."""

    async def hook(dialled: DialString, caller: Caller) -> Route | None:
        if not isinstance(caller, FromTrunk) or caller.calling is None:
            return None  # everything else: the built-in policy decides
        extension = ACCOUNT_MANAGERS.get(caller.calling)
        employee = server_of().directory.employee(extension) if extension else None
        return ToEmployee(employee) if employee is not None else None

    return hook


def log_events(server: Server, lines: list[str]) -> None:
    """A webhook-style logger: every event becomes one line (here printed; post it wherever you like)."""

    def registered(event: Registered) -> None:
        lines.append(f"registered {event.aor} at {event.contact}")
        print(lines[-1], flush=True)

    def unregistered(event: Unregistered) -> None:
        lines.append(f"unregistered {event.aor} ({event.reason})")
        print(lines[-1], flush=True)

    server.events.on("registered", registered)
    server.events.on("unregistered", unregistered)
    server.events.on("started", lambda addresses: print(f"started on {addresses}", flush=True))


async def run(config: str, seconds: float, listen: tuple[str, ...] | None = None) -> list[str]:
    holder: list[Server] = []
    server = Server(config, listen=listen, resolver_hook=crm_hook(lambda: holder[0]))
    holder.append(server)
    lines: list[str] = []
    log_events(server, lines)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="examples/office.toml")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--listen", action="append", metavar="SPEC", help="listen here instead")
    args = parser.parse_args()
    asyncio.run(run(args.config, args.seconds, tuple(args.listen) if args.listen else None))


if __name__ == "__main__":
    main()
