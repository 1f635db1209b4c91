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

__all__ = ["ControlChannel", "request", "socket_path"]

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
        {"source": source, "seconds_left": round(until - now)}
        for source, until in server.registrar.guard.blocked(now)
    ]
    return {
        "listening": [f"{t.lower()}:{h}:{p}" for t, h, p in server.addresses],
        "registrations": registrations,
        "active_calls": len(calls),
        "calls": calls,
        "blocked": blocked,
        "trunks": trunks,
    }


def _extension_of(server: Server, answered_by: str | None) -> str | None:
    """Who answered as the admin knows them: an employee's extension (records keep the SIP user), else as
    recorded (the number called out)."""
    if answered_by is None:
        return None
    employee = server.directory.employee_by_sip_user(answered_by)
    return employee.extension if employee is not None else answered_by


async def _originate(server: Server, message: dict[str, Any]) -> dict[str, Any]:
    """Click-to-call: ring the employee's phones, then call the number; answers once it is under way."""
    extension, number = message.get("extension"), message.get("number")
    if not isinstance(extension, str) or not isinstance(number, str):
        raise ValueError('originate needs "extension" and "number" (strings)')
    if server.directory.employee(extension) is None:
        raise ValueError(f"no employee with extension {extension}")
    server.spawn_call(server.b2bua.originate(extension, number), f"originate {extension} -> {number}")
    return {"started": True, "extension": extension, "number": number}


COMMANDS: dict[str, Command] = {"status": _status, "originate": _originate}


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
        except Exception as exc:  # a failing command must not take the channel down
            log.exception("control command %s failed", message.get("cmd"))
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


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
