"""The local control channel: ``durchwahl status`` (and later commands) talk to a running server through a
Unix socket in its state directory (``state_dir/control.sock``, mode 0600: only the server's user).

Protocol: one JSON object per line each way. Requests ``{"cmd": "status"}``; answers ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. Local only by construction: nothing listens on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ControlChannel", "Refused", "request", "socket_path"]

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024

Command = Callable[["Server", dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(state_dir: Path) -> Path:
    return state_dir / "control.sock"


async def _status(server: Server, _: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    bindings = await server.registrar.store.all(now=now)
    registrations = [
        {
            "aor": b.aor,
            "contact": b.contact,
            "via": None if b.flow is None else f"{b.flow.transport} {b.flow.remote[0]}:{b.flow.remote[1]}",
            "expires_in": round(b.expires_at - now),
            "reachable": (b.aor, b.contact) not in server.registrar.unreachable,
            "user_agent": b.user_agent,
        }
        for b in bindings
    ]
    trunks = []
    for name, registration in server.trunks.items():
        status = registration.status
        trunks.append(
            {
                "name": name,
                "state": status.state.value,
                "last_error": status.last_error,
                "expires_in": None if status.expires_at is None else round(status.expires_at - now),
            }
        )
    calls = [
        {
            "call_id": c.call_id,
            "caller": c.caller,
            "caller_name": c.caller_name,
            "source_trunk": c.source_trunk,
            "dialled": c.dialled,
            "destination": None if c.destination_kind is None else f"{c.destination_kind} {c.destination_id}",
            "state": c.phase.value,
            "started_at": c.started_at,
            "answered_at": c.answered_at,
            "answered_by": _extension_of(server, c.answered_by),
            "seconds": round(now - (c.started_at if c.answered_at is None else c.answered_at)),
        }
        for c in server.b2bua.calls()
    ]
    blocked = [
        {"source": b.source, "user": b.user, "reason": b.reason, "seconds_left": round(b.until - now)}
        for b in server.registrar.guard.blocks(now)
    ]
    return {
        "listening": [f"{t.lower()}:{h}:{p}" for t, h, p in server.addresses],
        "health": server.health() or "ok",
        "registrations": registrations,
        "active_calls": len(calls),
        "calls": calls,
        "blocked": blocked,
        "trunks": trunks,
        "overload": server.overload.snapshot(),
    }


def _extension_of(server: Server, answered_by: str | None) -> str | None:
    """Who answered as the admin knows them: an employee's extension (records keep the SIP user), else as
    recorded (the number called out)."""
    if answered_by is None:
        return None
    employee = server.directory.employee_by_sip_user(answered_by)
    return employee.extension if employee is not None else answered_by


async def _unblock(server: Server, message: dict[str, Any]) -> dict[str, Any]:
    """Lift the brute-force guard's blocks of a source (all, or one user's) and forget its failures."""
    source, user = message.get("source"), message.get("user")
    if not isinstance(source, str) or not (user is None or isinstance(user, str)):
        raise Refused(400, 'unblock needs "source" (an address) and optionally "user" (strings)')
    lifted = server.registrar.guard.unblock(source, user)
    if lifted:
        log.warning("unblocked by an administrator: source=%s user=%s", source, user or "*")
    return {"lifted": lifted, "source": source, "user": user}


class Refused(Exception):
    """A command that cannot be done as asked: answered ``{"ok": false, "error": ..., "status": ...}``."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status


#: How long ``originate`` waits, beyond the B2BUA's routing timeout, for the employee's phones to ring.
ORIGINATE_START_SECONDS = 5.0


async def _originate(server: Server, message: dict[str, Any]) -> dict[str, Any]:
    """Click-to-call: ring the employee's phones, then call the number. Answers once the phones ring, or
    with the reason the call cannot start (no such employee, not a number, nobody registered …)."""
    extension, number, contact = message.get("extension"), message.get("number"), message.get("contact")
    if not isinstance(extension, str) or not (isinstance(number, str) ^ isinstance(contact, str)):
        raise Refused(400, 'originate needs "extension" and either "number" or "contact" (strings)')
    if server.draining:
        raise Refused(503, "this node is draining: it places no new calls")
    start: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    def report(status: int, reason: str) -> None:
        if not start.done():
            start.set_result((status, reason))

    def ended(task: asyncio.Task[Any]) -> None:  # before anything rang: the server is stopping, or a bug
        if task.cancelled():
            report(503, "the server is stopping")
        elif task.exception() is not None:
            report(500, f"the click-to-call failed: {task.exception()}")
        else:
            report(500, "the click-to-call ended before anything rang")

    b2bua = server.b2bua
    if isinstance(contact, str):
        started = b2bua.originate_contact(extension, contact, on_status=report)
        task = server.spawn_call(started, f"originate {extension} -> contact {contact}")
    else:
        assert isinstance(number, str)
        task = server.spawn_call(
            b2bua.originate(extension, number, on_status=report), f"originate {extension} -> {number}"
        )
    task.add_done_callback(ended)
    try:
        async with asyncio.timeout(b2bua.resolve_timeout + ORIGINATE_START_SECONDS):
            status, reason = await start
    except TimeoutError:
        raise Refused(504, f"the phones of {extension} did not start ringing in time") from None
    if status >= 300:
        raise Refused(status, reason)
    return {"started": True, "extension": extension, "number": number, "contact": contact}


async def _drain(server: Server, _: dict[str, Any]) -> dict[str, Any]:
    """Refuse new calls, let the calls in progress finish; ``durchwahl serve`` exits once none is left."""
    calls = server.drain()
    return {"draining": True, "calls": calls}


COMMANDS: dict[str, Command] = {
    "status": _status,
    "originate": _originate,
    "unblock": _unblock,
    "drain": _drain,
}


class ControlChannel:
    """Serves the control socket for one server; started and stopped with it."""

    def __init__(self, server: Server, path: Path) -> None:
        self._server = server
        self.path = path
        self._listener: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a server that did not stop cleanly
        self._listener = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            log.debug("control client gone: %s", exc)
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not JSON: send one JSON object per line"}
        if not isinstance(message, dict):
            return {"ok": False, "error": "expected a JSON object"}
        command = COMMANDS.get(str(message.get("cmd")))
        if command is None:
            known = ", ".join(sorted(COMMANDS))
            return {"ok": False, "error": f"unknown command {message.get('cmd')!r}; known: {known}"}
        try:
            return {"ok": True, **await command(self._server, message)}
        except Refused as exc:
            return {"ok": False, "error": str(exc), "status": exc.status}
        except Exception as exc:  # a failing command must not take the channel down
            log.exception("control command %s failed", message.get("cmd"))
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


async def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a running server's control socket and return its answer."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            answer: dict[str, Any] = json.loads(await reader.readline())
            return answer
        finally:
            writer.close()
