"""What a server runs to be watched: the security log's own target (a file or syslog), the metrics
endpoint with its loop-lag meter, and the lookup that lets the security log name an INVITE for one of the
office's numbers from an address no trunk may use (``[server] security_log``, ``metrics_listen``).

:class:`Monitor` is made with the server and started before its SIP listeners (a metrics address that
cannot be bound stops the start with a clear error); it is stopped last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from logging.handlers import SysLogHandler, WatchedFileHandler
from typing import TYPE_CHECKING, Any, Final

from durchwahl.sipcore.message import Request

from .authenticator import OfficeNumber
from .dialstring import DialStringError, from_request_uri
from .loadmeter import LoopLag, measure_loop_lag
from .metrics import MetricsEndpoint, ServerMetrics
from .monitoring_config import SecurityLogTarget
from .security_log import SECURITY_LOGGER

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Monitor", "SecurityLogError", "open_security_log"]

log = logging.getLogger(__name__)

#: A line in the security log file: ISO 8601 time with its offset, the program and process, the event.
FILE_FORMAT: Final = "%(asctime)s durchwahl[%(process)d]: %(message)s"
FILE_DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%z"
#: To syslog: the tag (journald's SYSLOG_IDENTIFIER) and the event; syslog adds time and host.
SYSLOG_FORMAT: Final = "durchwahl[%(process)d]: %(message)s"
SYSLOG_SOCKET: Final = "/dev/log"


class SecurityLogError(OSError):
    """The security log's target cannot be opened: the message names it, why, and the key to change."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_security_log(target: SecurityLogTarget, *, syslog_socket: str = SYSLOG_SOCKET) -> logging.Handler:
    """A handler writing the security log to ``target``: a file (made 0600 when new, its folder created;
    reopened when logrotate moves it) or syslog. Raises :class:`SecurityLogError`."""
    try:
        if target.path is not None:
            path = target.path
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            handler: logging.Handler = WatchedFileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FILE_FORMAT, FILE_DATE_FORMAT))
        else:
            _probe_syslog(syslog_socket)  # the handler itself would only complain at every line
            facility = SysLogHandler.facility_names[target.facility or "auth"]
            handler = SysLogHandler(address=syslog_socket, facility=facility)
            handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = target.path if target.path is not None else f"syslog ({syslog_socket})"
        raise SecurityLogError(
            exc.errno, f"cannot write the security log to {where}: {reason} (see [server] security_log)"
        ) from exc
    handler.setLevel(logging.INFO)
    return handler


def _probe_syslog(path: str) -> None:
    """Raise the ``OSError`` of connecting to the syslog socket at ``path`` (datagram, then stream)."""
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
            except OSError as exc:
                error = exc
            else:
                return
    assert error is not None
    raise error


class Monitor:
    """The monitoring of ``server`` (see the module docstring)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.monitoring = server.directory.server.monitoring
        self.metrics: ServerMetrics | None = None
        self.endpoint: MetricsEndpoint | None = None
        self.lag: LoopLag | None = None
        self._handler: logging.Handler | None = None
        self._level = logging.NOTSET
        self._lag_task: asyncio.Task[Any] | None = None
        server.registrar.authenticator.office_number = self.office_number
        if self.monitoring.metrics_listen is not None:
            self.lag = LoopLag()
            self.metrics = ServerMetrics(server, self.lag)
            self.metrics.attach()

    def office_number(self, request: Request) -> OfficeNumber | None:
        """The office number ``request``'s Request-URI dials as some trunk would send it, or None."""
        try:
            dialled = from_request_uri(request.uri)
        except DialStringError:
            return None
        server = self.server
        for trunk in server.directory.trunks:
            number = server.resolver.inbound_number(dialled, trunk.name)
            if number is not None:
                return OfficeNumber(number.number, number.trunk)
        return None

    async def start(self) -> None:
        """Open the security log's target and the metrics endpoint (raises ``OSError`` subclasses naming
        the key to change when one cannot be used)."""
        target = self.monitoring.security_log
        if target is not None:
            self._handler = open_security_log(target)
            logger = logging.getLogger(SECURITY_LOGGER)
            logger.addHandler(self._handler)
            self._level = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)  # every event reaches the file, whatever the main log shows
        if self.metrics is not None and self.monitoring.metrics_listen is not None:
            self.endpoint = MetricsEndpoint(self.metrics, self.monitoring.metrics_listen)
            try:
                await self.endpoint.start()
            except OSError:
                self.endpoint = None
                self._close_handler()
                raise
            if self.lag is not None:
                self._lag_task = asyncio.ensure_future(measure_loop_lag(self.lag))

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None
        self._close_handler()

    def _close_handler(self) -> None:
        if self._handler is not None:
            logger = logging.getLogger(SECURITY_LOGGER)
            logger.removeHandler(self._handler)
            logger.setLevel(self._level)
            self._handler.close()
            self._handler = None
