"""What every call flow uses, in one object: :class:`CallServices`.

The user agent, the directory and resolver (both replaced on reload), the registrar's device lookup, the
clock, RTP ports, events, the CDR store, ring times and ring-group plans, and the registries of calls under
way (:attr:`CallServices.active`, :attr:`~CallServices.bridged`, :attr:`~CallServices.busy`). Flows take it as
their first argument; tests and benchmarks replace parts of it.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from durchwahl.media.greeting import GreetingCache
from durchwahl.media.relay import Side
from durchwahl.media.session import MediaClock, PortAllocator
from durchwahl.sipcore.dialog import DialogId
from durchwahl.sipcore.session import SessionEvent
from durchwahl.sipcore.session_timer import TimerPolicy
from durchwahl.sipcore.transport import Flow
from durchwahl.sipcore.ua import Call, UserAgent

from ..cdr import CallRecord, CdrStore
from ..directory import DEFAULT_RING_SECONDS, Directory, Employee, Group
from ..events import CallFact
from ..registrar_service import Device, RegistrarService
from ..resolver import Resolver
from ..ringgroup import RingGroupState, SharedRingState, plan_ring_group
from .watch import WatchPolicy

if TYPE_CHECKING:
    from .leg import CallState, Ringing

__all__ = ["RING_STATE_FILE", "BridgeHook", "CallServices"]

log = logging.getLogger(__name__)

#: The ``evenly`` ring-group state is kept in this file under the directory's ``state_dir``.
RING_STATE_FILE: Final = "ring_state.json"


class BridgeHook(Protocol):
    """What a bridged call hands every event first (call transfer plugs in here): ``event`` says whether it
    took the event; ``take_replacement`` names a leg that took another's place; ``released``: the bridge is
    over (another call took its party)."""

    legs: list[Call]

    def event(self, leg: Call, event: SessionEvent) -> bool: ...

    def take_replacement(self) -> tuple[Side, Call] | None: ...

    @property
    def released(self) -> bool: ...


class CallServices:
    """The services of the call flows (see the module docstring). ``clock`` is wall-clock time."""

    def __init__(
        self,
        ua: UserAgent,
        registrar: RegistrarService,
        directory: Directory,
        resolver: Resolver,
        *,
        ring_seconds: float = DEFAULT_RING_SECONDS,
        resolve_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        ports: PortAllocator | None = None,
        media_clock: MediaClock | None = None,
        greetings: GreetingCache | None = None,
        ring_state: RingGroupState | None = None,
        dial_out_seconds: float = 120.0,
        cdr: CdrStore | None = None,
        anchor_media: bool = False,
        watch: WatchPolicy | None = None,
    ) -> None:
        self.ua = ua
        self.registrar = registrar
        self.directory = directory
        self.resolver = resolver
        self.ring_seconds = ring_seconds
        self.resolve_timeout = resolve_timeout
        self.dial_out_seconds = dial_out_seconds
        self.anchor_media = anchor_media
        #: When a bridged call is ended though nobody hangs up (off unless given).
        self.watch = watch or WatchPolicy()
        #: Session timers (RFC 4028) offered to callers that support them (None: never).
        self.timers: TimerPolicy | None = TimerPolicy()
        self.clock = clock
        self._ports = ports
        self.media_clock = media_clock if media_clock is not None else MediaClock()
        self.greetings = greetings if greetings is not None else GreetingCache()
        self.ring_state = ring_state if ring_state is not None else self._load_ring_state()
        self.cdr = cdr
        #: Called with every call event (routing.events); the server turns them into pyee events.
        self.on_event: Callable[[CallFact], None] | None = None
        #: Calls being set up or bridged, by the caller's leg (click-to-call: the first leg to the employee).
        self.active: dict[Call, CallState | Ringing] = {}
        #: The legs of bridged calls by dialog (Call-ID, our tag, the peer's tag) -> their bridge's hook:
        #: where an attended transfer's Replaces finds the call it names.
        self.bridged: dict[DialogId, BridgeHook] = {}
        #: Extensions of employees in a bridged call (ring groups skip them).
        self.busy: collections.Counter[str] = collections.Counter()
        #: A cluster's ``evenly`` state, shared by every node (None: ``ring_state``, kept in a file).
        self.shared_ring: SharedRingState | None = None

    # --------------------------------------------------------------------------------------- events

    def emit(self, event: CallFact) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("call event handler failed on %s", event)

    def write_cdr(self, record: CallRecord) -> None:
        if self.cdr is None:
            return
        try:
            self.cdr.write(record)
        except Exception:
            log.exception("call %s: CDR not written", record.call_id)

    # ------------------------------------------------------------------------------------ employees

    def employee(self, extension: str) -> Employee | None:
        return self.directory.employee(extension)

    def registrar_aor(self, employee: Employee) -> str:
        return f"sip:{employee.sip_user}@{self.directory.server.domain}"

    async def devices(self, employee: Employee) -> list[Device]:
        """Where the employee's registered devices are reached: contact, flow and route set (a Path)."""
        targets = []
        for binding in await self.registrar.contacts(employee.sip_user):
            device = self.registrar.reach(binding, self.ua.endpoint)
            if device is not None:
                targets.append(device)
        return targets

    def ring_time(self, employee: Employee) -> float:
        """How long an employee's devices ring: their own ``ring_seconds``, else the server's."""
        return float(employee.ring_seconds) if employee.ring_seconds is not None else self.ring_seconds

    def count_busy(self, call: CallState, extension: str) -> None:
        call.busy.append(extension)
        self.busy[extension] += 1

    def uncount_busy(self, call: CallState, extension: str | None = None) -> None:
        """``extension`` (default: every employee ``call`` counts) is no longer busy with ``call``."""
        for counted in [e for e in call.busy if extension is None or e == extension]:
            call.busy.remove(counted)
            self.busy[counted] -= 1
            if not self.busy[counted]:
                del self.busy[counted]

    # ---------------------------------------------------------------------------------- ring groups

    async def group_steps(self, group: Group) -> list[tuple[list[Employee], float]]:
        """``group``'s ring plan over its members that have a device and are not in a call: the employees
        of each step and how long they ring (the ``evenly`` state is advanced and saved)."""
        reachable = []
        for extension in group.members:
            employee = self.employee(extension)
            if employee is not None and not self.busy[extension] and await self.devices(employee):
                reachable.append(extension)
        if self.shared_ring is not None:
            plan = await self.shared_ring.plan(group, reachable)
        else:
            plan, state = plan_ring_group(group, reachable, self.ring_state)
            if state != self.ring_state:
                self.ring_state = state
                self._save_ring_state()
        return [
            ([e for e in map(self.employee, step.extensions) if e is not None], float(step.seconds))
            for step in plan.steps
        ]

    @property
    def ring_state_path(self) -> Path:
        """Where the ``evenly`` state is kept: ``ring_state.json`` in the directory's ``state_dir``."""
        return self.directory.server.state_dir / RING_STATE_FILE

    def _load_ring_state(self) -> RingGroupState:
        path = self.ring_state_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return RingGroupState()
        except (OSError, ValueError) as exc:
            log.warning("ring-group state %s not read (starting afresh): %s", path, exc)
            return RingGroupState()
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            log.warning("ring-group state %s is not a {group: member} object (starting afresh)", path)
            return RingGroupState()
        return RingGroupState.from_mapping(data)

    def _save_ring_state(self) -> None:
        """Write :attr:`ring_state` atomically (a temporary file renamed over the old one)."""
        path = self.ring_state_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(json.dumps(self.ring_state.to_mapping(), sort_keys=True), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            log.error("ring-group state not saved to %s: %s", path, exc)

    # ---------------------------------------------------------------------------------------- media

    def media_ports(self, flow: Flow) -> tuple[PortAllocator, str]:
        """The RTP ports and the address our SDP gives for a call whose leg goes along ``flow``."""
        if self._ports is None:
            first, last = self.directory.server.rtp_ports
            listen = self.directory.server.listen
            host = listen[0].host if listen else flow.local[0]
            self._ports = PortAllocator(first, last, host=host)
        host = self._ports.host
        try:
            if ipaddress.ip_address(host).is_unspecified:
                host = flow.local[0]
        except ValueError:
            host = flow.local[0]
        return self._ports, host
