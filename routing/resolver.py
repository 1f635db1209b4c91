"""The extension resolver: a dialled string and who is calling → where the call goes.

Policy lives here, in one pure function (:meth:`Resolver.resolve_builtin`):

* An **emergency number** (``[server] emergency_numbers``, see :mod:`routing.emergency`) dialled by an
  employee always goes to the emergency trunk (``[server] emergency_trunk``, else the outbound trunk),
  whatever the employee's outbound scope, before any extension and before the embedding application's hook:
  nothing can shadow it. The trunk gets the number itself (``sip:112@…``); the route is marked
  ``emergency`` (and so is the call's CDR row).
* An **unauthenticated** source (:class:`Anonymous`) reaches nothing: it is challenged (401, or 407 if so
  configured) or, when a challenge cannot help, refused with 403 — never a free outbound call. The
  embedding application's hook is not consulted for it either.
* An **employee** may call every extension (employee or ring group; unknown → 404) and external numbers as
  far as its outbound scope allows: ``none``, ``crm`` (numbers stored in the CRM) or ``any``. Dialling one of
  the office's own numbers reaches that number's flow directly, whatever the scope. External numbers are
  turned into E.164 by the numbering plan of the outbound trunk (the directory's ``country_code``,
  ``trunk_prefix``, ``international_prefix``: the trunk's own, else the server's) and leave through that
  trunk with the dialled post-dial digits.
* A **trunk** reaches only its own numbers' flows: extension processing (greeting and digit collection) or
  the number's default destination. Anything else is refused (404 for numbers the office does not have, 403
  for extensions and for numbers of another trunk). National forms of them are read by that trunk's
  numbering plan.

An embedding application may supply its own resolver, an async callable ``(dialled, caller) → Route | None``
consulted first (after the anonymous check); ``None`` falls through to the built-in policy. Routes it returns
are trusted: the application owns their policy. If it raises, the error is logged and the built-in policy
decides. Time-limiting the hook is the calling shell's job (this module is pure and imports no asyncio).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final

import attrs

from .dialstring import (
    DialKind,
    DialString,
    DialStringError,
    PostDialStep,
    parse_dialstring,
    parse_post_dial,
    to_e164,
)
from .directory import (
    CrmContact,
    Destination,
    Directory,
    Employee,
    ExtensionRef,
    ExternalNumber,
    Group,
    Hangup,
    Number,
)
from .emergency import emergency_number
from .errors import RoutingError

__all__ = [
    "Anonymous",
    "Caller",
    "FromEmployee",
    "FromTrunk",
    "OutboundScope",
    "Refused",
    "Resolver",
    "ResolverConfig",
    "ResolverHook",
    "Route",
    "ToEmployee",
    "ToExtensionProcessing",
    "ToExternal",
    "ToGroup",
]

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- callers


@attrs.frozen
class FromEmployee:
    """A call from an employee's authenticated device."""

    extension: str


@attrs.frozen
class FromTrunk:
    """A call from a trunk, identified by its source address or its credentials; ``calling`` is the
    caller's number as the trunk gave it (the From user part), for hooks that route known callers."""

    name: str
    calling: str | None = None


@attrs.frozen
class Anonymous:
    """A call from a source that has not authenticated (``source``: transport address, for the log).

    ``challenge`` says whether a digest challenge could still help; when false (credentials already failed,
    or the source cannot be an employee) the call is refused with 403.
    """

    source: str
    challenge: bool = True


Caller = FromEmployee | FromTrunk | Anonymous

# -------------------------------------------------------------------------------------------- routes


@attrs.frozen
class ToEmployee:
    """Ring every registered device of an employee."""

    employee: Employee


@attrs.frozen
class ToGroup:
    """Ring a group by its strategy (see :mod:`routing.ringgroup`)."""

    group: Group


@attrs.frozen
class ToExternal:
    """Call an external number through a trunk; send ``post_dial`` after the callee answers.

    ``emergency``: a call to the emergency services; ``e164`` then holds the emergency number as the trunk
    gets it (``112``: a national short code, not E.164)."""

    e164: str
    post_dial: tuple[PostDialStep, ...]
    trunk: str
    emergency: bool = False

    @property
    def kind(self) -> str:
        """What the call's CDR row names its destination: ``emergency`` or ``external``."""
        return "emergency" if self.emergency else "external"


@attrs.frozen
class ToExtensionProcessing:
    """Answer, play the number's greeting and collect an extension (see :mod:`routing.collector`); without
    a valid extension the call goes to ``number.default``."""

    number: Number


@attrs.frozen
class Refused:
    """Do not route the call: answer ``status`` (a SIP final response code) with ``reason``.

    On a call that was already answered (extension processing), the call flow hangs up instead.
    """

    status: int
    reason: str


Route = ToEmployee | ToGroup | ToExternal | ToExtensionProcessing | Refused
_ROUTE_TYPES: Final = (ToEmployee, ToGroup, ToExternal, ToExtensionProcessing, Refused)

ResolverHook = Callable[[DialString, Caller], Awaitable[Route | None]]
"""An embedding application's resolver, consulted before the built-in policy."""

# -------------------------------------------------------------------------------------------- config


class OutboundScope(enum.Enum):
    """Which external numbers an employee may call."""

    NONE = "none"  #: none at all (extensions only)
    CRM = "crm"  #: numbers stored in the CRM
    ANY = "any"  #: every number


def _freeze_scopes(
    value: Mapping[str, OutboundScope | str] | Iterable[tuple[str, OutboundScope | str]],
) -> tuple[tuple[str, OutboundScope], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(ext), OutboundScope(scope)) for ext, scope in items))


def _check_challenge(instance: object, attribute: object, value: int) -> None:
    if value not in (401, 407):
        raise ValueError(f"challenge_status must be 401 or 407, not {value}")


@attrs.frozen
class ResolverConfig:
    """Resolver settings.

    ``scopes`` maps an employee's extension to its :class:`OutboundScope` (a mapping or pairs; values may
    be the names ``"none"``, ``"crm"``, ``"any"``); employees not listed get ``default_scope``.
    ``outbound_trunk`` names the trunk for calls out (default: the directory's first trunk). How national
    numbers become E.164 is the directory's (:meth:`routing.directory.Directory.numbering`).
    ``challenge_status`` is what an unauthenticated caller is answered (401 as a UAS; 407 for deployments
    whose phones expect a proxy challenge).
    """

    default_scope: OutboundScope = attrs.field(default=OutboundScope.ANY, converter=OutboundScope)
    scopes: tuple[tuple[str, OutboundScope], ...] = attrs.field(default=(), converter=_freeze_scopes)
    outbound_trunk: str | None = None
    challenge_status: int = attrs.field(default=401, validator=_check_challenge)

    def scope_of(self, extension: str) -> OutboundScope:
        return next((scope for ext, scope in self.scopes if ext == extension), self.default_scope)


# ------------------------------------------------------------------------------------------ resolver


class Resolver:
    """Routes calls for one directory; build a new one when the directory is reloaded.

    Raises :class:`RoutingError` when the directory and configuration do not fit together: an extension used
    by an employee and a group, or an ``outbound_trunk`` or ``emergency_trunk`` the directory does not have.
    """

    def __init__(
        self, directory: Directory, config: ResolverConfig | None = None, hook: ResolverHook | None = None
    ) -> None:
        self.directory = directory
        self.config = config if config is not None else ResolverConfig()
        self.hook = hook
        self._employees: dict[str, Employee] = {}
        self._groups: dict[str, Group] = {}
        clashes: list[str] = []
        for employee in directory.employees:
            if employee.extension in self._employees:
                clashes.append(employee.extension)
            self._employees.setdefault(employee.extension, employee)
        for group in directory.groups:
            if group.extension in self._employees or group.extension in self._groups:
                clashes.append(group.extension)
            self._groups.setdefault(group.extension, group)
        if clashes:
            raise RoutingError(f"extensions used more than once: {', '.join(sorted(set(clashes)))}")
        self._numbers: dict[str, Number] = {}
        for number in directory.numbers:
            self._numbers.setdefault(number.number, number)
        self._crm: frozenset[str] = frozenset(contact.number.e164 for contact in directory.crm)
        trunk = self.config.outbound_trunk
        if trunk is not None and directory.trunk(trunk) is None:
            raise RoutingError(f"outbound trunk {trunk!r} is not in the directory")
        if trunk is None and directory.trunks:
            trunk = directory.trunks[0].name
        self.outbound_trunk: str | None = trunk
        emergency = directory.server.emergency_trunk
        if emergency is not None and directory.trunk(emergency) is None:
            raise RoutingError(f"emergency trunk {emergency!r} is not in the directory")
        #: Where emergency calls leave (None: nowhere; they are refused with 503 and an error is logged).
        self.emergency_trunk: str | None = emergency if emergency is not None else trunk

    # ------------------------------------------------------------------------------------ entry points

    async def resolve(self, dialled: DialString, caller: Caller) -> Route:
        """The hook's route if it gives one, else :meth:`resolve_builtin`'s; anonymous callers never reach
        the hook."""
        if isinstance(caller, Anonymous):
            return self.refuse_anonymous(caller)
        emergency = self._emergency(dialled, caller)
        if emergency is not None:
            return emergency  # not the hook's to decide
        if self.hook is not None:
            try:
                route = await self.hook(dialled, caller)
            except Exception:
                logger.exception(
                    "resolver hook failed for %s from %s; using the built-in policy", dialled, caller
                )
                route = None
            if route is not None:
                if isinstance(route, _ROUTE_TYPES):
                    return route
                logger.error("resolver hook returned %r, not a route; using the built-in policy", route)
        return self.resolve_builtin(dialled, caller)

    def resolve_builtin(self, dialled: DialString, caller: Caller) -> Route:
        """The built-in policy (see the module docstring). Pure and synchronous."""
        if isinstance(caller, Anonymous):
            return self.refuse_anonymous(caller)
        if isinstance(caller, FromTrunk):
            return self._from_trunk(dialled, caller)
        return self._from_employee(dialled, caller)

    def resolve_destination(self, destination: Destination, *, trunk: str | None = None) -> Route:
        """A configured destination (a number's default, a group's fallback, a collected extension) as a
        route, without caller policy: the configuration chose it. External numbers leave through ``trunk``
        (default: the outbound trunk); "hangup" becomes 480."""
        if isinstance(destination, ExtensionRef):
            return self._extension(destination.extension)
        if isinstance(destination, ExternalNumber):
            via = trunk if trunk is not None else self.outbound_trunk
            if via is None:
                return Refused(503, "no trunk for calls out")
            return ToExternal(destination.e164, parse_post_dial(destination.post_dial), via)
        if isinstance(destination, Hangup):
            return Refused(480, "Temporarily Unavailable")
        raise TypeError(f"not a destination: {destination!r}")

    def number_flow(self, number: Number) -> Route:
        """What a call to one of the office's numbers does: extension processing or the default."""
        if number.extension_processing:
            return ToExtensionProcessing(number)
        return self.resolve_destination(number.default, trunk=number.trunk)

    # -------------------------------------------------------------------------------------- policies

    def refuse_anonymous(self, caller: Anonymous) -> Refused:
        """What an unauthenticated caller gets, whatever it dialled: a challenge, or 403."""
        if caller.challenge:
            status = self.config.challenge_status
            reason = "Unauthorized" if status == 401 else "Proxy Authentication Required"
            return Refused(status, reason)
        return Refused(403, "Forbidden: not authenticated")

    def _extension(self, extension: str) -> Route:
        employee = self._employees.get(extension)
        if employee is not None:
            return ToEmployee(employee)
        group = self._groups.get(extension)
        if group is not None:
            return ToGroup(group)
        return Refused(404, f"Not Found: no extension {extension}")

    def e164(self, dialled: DialString, trunk: str | None = None) -> str:
        """The E.164 form of an external number by the numbering plan of ``trunk`` (None: the outbound
        trunk's); raises :class:`~routing.dialstring.DialStringError` when it has none."""
        return to_e164(dialled, self.directory.numbering(trunk or self.outbound_trunk))

    def _emergency(self, dialled: DialString, caller: Caller) -> Route | None:
        """The route of an emergency call (an employee dialled an emergency number), else None."""
        if not isinstance(caller, FromEmployee) or caller.extension not in self._employees:
            return None
        server = self.directory.server
        number = emergency_number(dialled, server.emergency, server.numbering)
        if number is None:
            return None
        if self.emergency_trunk is None:
            logger.error(
                "emergency call to %s from %s CANNOT be connected: there is no trunk",
                number,
                caller.extension,
            )
            return Refused(503, f"Service Unavailable: no trunk for the emergency call to {number}")
        logger.warning(
            "emergency call to %s from %s through trunk %s", number, caller.extension, self.emergency_trunk
        )
        return ToExternal(number, (), self.emergency_trunk, emergency=True)

    def _from_employee(self, dialled: DialString, caller: FromEmployee) -> Route:
        if caller.extension not in self._employees:
            return Refused(403, f"Forbidden: {caller.extension} is not an employee")
        emergency = self._emergency(dialled, caller)
        if emergency is not None:
            return emergency
        if dialled.kind is DialKind.EXTENSION:
            return self._extension(dialled.digits)
        try:
            e164 = self.e164(dialled)
        except DialStringError as exc:
            return Refused(484, f"Address Incomplete: {exc}")
        own = self._numbers.get(e164)
        if own is not None:
            return self.number_flow(own)
        scope = self.config.scope_of(caller.extension)
        if scope is OutboundScope.NONE:
            return Refused(403, f"Forbidden: {caller.extension} may not call external numbers")
        if scope is OutboundScope.CRM and e164 not in self._crm:
            return Refused(403, f"Forbidden: {caller.extension} may only call CRM numbers")
        if self.outbound_trunk is None:
            return Refused(503, "Service Unavailable: no trunk for calls out")
        return ToExternal(e164, dialled.post_dial, self.outbound_trunk)

    def _from_trunk(self, dialled: DialString, caller: FromTrunk) -> Route:
        if dialled.kind is DialKind.EXTENSION:
            return Refused(403, f"Forbidden: trunk {caller.name} may only call the office's numbers")
        number = self.inbound_number(dialled, caller.name)
        if number is None:
            return Refused(404, f"Not Found: {dialled} is not a number of this office")
        if number.trunk != caller.name:
            return Refused(403, f"Forbidden: {number.number} is not a number of trunk {caller.name}")
        return self.number_flow(number)

    def calling_contact(self, calling: str, trunk: str) -> CrmContact | None:
        """The CRM contact whose number calls through ``trunk`` (the trunk's From user part in any common
        form: ``+E.164``, ``00…``, national, E.164 without ``+``), or None."""
        try:
            dialled = parse_dialstring(calling)
        except DialStringError:
            return None
        if dialled.kind is DialKind.EXTENSION:
            return None
        candidates: list[str] = []
        with contextlib.suppress(DialStringError):
            candidates.append(self.e164(dialled, trunk))
        if dialled.kind is DialKind.NATIONAL:
            candidates.append("+" + dialled.digits)
        for e164 in candidates:
            contacts = self.directory.crm_contacts_for(e164)
            if contacts:
                return contacts[0]
        return None

    def inbound_number(self, dialled: DialString, trunk: str) -> Number | None:
        """The office number ``trunk`` means: E.164, national (by the trunk's numbering plan), or E.164
        without its "+" (many trunks send ``4930…``)."""
        candidates: list[str] = []
        with contextlib.suppress(DialStringError):
            candidates.append(self.e164(dialled, trunk))
        if dialled.kind is DialKind.NATIONAL:
            candidates.append("+" + dialled.digits)
        return next((self._numbers[c] for c in candidates if c in self._numbers), None)
