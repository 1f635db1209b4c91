"""REGISTER processing (RFC 3261 §10.3) without I/O: the bindings in, the new bindings and a response out.

The location store lives outside: the caller reads the current bindings of the address-of-record (AOR), calls
:func:`process_register` with them and the current wall-clock time, writes ``outcome.bindings`` back when
``outcome.changed``, and sends ``outcome.response``. The steps of §10.3 that need the outside world (step 1,
the Request-URI's domain; step 2, Require, done by ``sipcore.core``; steps 3 and 4, authentication and
authorisation) belong to the caller; this module does steps 5 to 8:

* **AOR** (step 5): the To URI must be sip or sips, else 400 (RFC 4475 unksm2). :func:`address_of_record`
  gives its canonical form, ``sip:user@host[:port]`` with every parameter removed and escapes decoded; the
  caller may map it to another key (its own domain) and passes that as ``aor``.
* **Wildcard** (step 6): ``Contact: *`` must stand alone and come with ``Expires: 0``, else 400. It removes
  every binding whose Call-ID differs or whose CSeq is lower than the request's; a binding with the same
  Call-ID and an equal or higher CSeq makes the whole request fail with 500 (step 7's "the request fails",
  answered with step 8's 500).
* **Expiry** (step 7): the Contact's ``expires`` parameter wins over the Expires header, which wins over
  ``default_expires``. 0 removes. Above zero but below ``min_expires`` (and below an hour) gives 423 with
  Min-Expires for the whole request; above ``max_expires`` is shortened to it.
* **Matching** (step 7): a contact matches an existing binding by URI comparison (§19.1.4); with RFC 5626
  outbound (``Supported: outbound`` and a Contact carrying ``+sip.instance`` and ``reg-id``) by instance and
  reg-id instead, and the 200 then says ``Require: outbound``. A match with the same Call-ID must carry a
  higher CSeq, else 500; with another Call-ID the binding is simply replaced.
* **Path** (RFC 3327): the caller passes the Path values it trusts (an edge proxy's: a phone must not choose
  the route the registrar uses to reach it); every binding the request adds or refreshes keeps them, as the
  route set to reach its contact. The 200 lists them when the phone said ``Supported: path`` (§5.3). Like
  Kamailio's registrar with ``path_mode`` 1, a Path is stored whether or not the phone supports it: phones
  rarely say so, and the edge needs its Path to reach them.
* **Limits**: at most ``max_contacts`` bindings per AOR. A request that itself lists more gets 400; beyond
  the limit the bindings refreshed longest ago (not touched by this request) are dropped. ``q`` must be
  0 to 1 with at most three decimals (RFC 3261 §25.1 qvalue), else 400.
* **Contacts** must be sip or sips URIs (400 otherwise): a tel: or http: binding could turn the PBX into a
  forwarding service to arbitrary numbers.
* **All-or-nothing** (step 8): any failure leaves the bindings as they were; success answers 200 listing
  every current binding with its remaining ``expires`` and a Date header.

Times are wall-clock seconds (``time.time()``), because bindings outlive a restart. Bindings whose
``expires_at`` has passed are dropped from the result and reported in ``outcome.expired``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

import attrs

from .errors import SipError, SipParseError
from .headers import parse_delta_seconds
from .message import Request, Response, make_response
from .uri import NameAddr, SipUri, parse_name_addr, unquote_string

__all__ = [
    "Binding",
    "BindingFlow",
    "FlowLike",
    "RegisterOutcome",
    "RegisterRejected",
    "RegistrarConfig",
    "address_of_record",
    "by_preference",
    "http_date",
    "process_register",
]

_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_REG_ID: Final = re.compile(r"[0-9]{1,10}")
#: RFC 3261 §10.3 step 7: 423 only for intervals shorter than an hour.
_ONE_HOUR: Final = 3600
_MAX_REG_ID: Final = 2**31 - 1


@attrs.frozen
class RegistrarConfig:
    """The registrar's expiry policy and limits (seconds)."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.min_expires <= _ONE_HOUR:
            raise ValueError(f"min_expires must be 1-{_ONE_HOUR} seconds, got {self.min_expires}")
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError(
                "expiry settings must satisfy min_expires <= default_expires <= max_expires, got "
                f"{self.min_expires} / {self.default_expires} / {self.max_expires}"
            )
        if self.max_contacts < 1:
            raise ValueError(f"max_contacts must be at least 1, got {self.max_contacts}")


class FlowLike(Protocol):
    """What :class:`BindingFlow` is made from; ``sipcore.transport.Flow`` fits (not importable here)."""

    @property
    def transport(self) -> str: ...
    @property
    def local(self) -> tuple[str, int]: ...
    @property
    def remote(self) -> tuple[str, int]: ...
    @property
    def connection_id(self) -> int | None: ...


@attrs.frozen
class BindingFlow:
    """The flow a REGISTER arrived on: the way back to a phone behind NAT (RFC 5626 §3, RFC 3581).

    ``remote`` is the source address and port as seen here (the NAT's public side), ``local`` the listener
    it reached, ``connection_id`` the TCP connection (None for UDP, and after a restart).
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    connection_id: int | None = None

    @classmethod
    def of(cls, flow: FlowLike) -> BindingFlow:
        return cls(flow.transport, tuple(flow.local), tuple(flow.remote), flow.connection_id)  # type: ignore[arg-type]


@attrs.frozen
class Binding:
    """One contact registered for an AOR.

    ``contact`` is the Contact value as registered (a name-addr, its ``expires`` parameter removed; ``q``,
    ``+sip.instance`` and the rest kept). ``registered_at`` is when a REGISTER last added or refreshed it.
    ``instance_id`` is the unquoted ``+sip.instance``; ``reg_id`` is set only for RFC 5626 outbound bindings.
    ``path`` holds the REGISTER's Path values in order (RFC 3327): the route set to reach the contact.
    """

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    registered_at: float
    q: float | None = None
    flow: BindingFlow | None = None
    instance_id: str | None = None
    reg_id: int | None = None
    user_agent: str | None = None
    path: tuple[str, ...] = ()

    @property
    def name_addr(self) -> NameAddr:
        return parse_name_addr(self.contact)

    @property
    def uri(self) -> SipUri:
        """The contact URI (always sip/sips: other schemes are refused at registration)."""
        uri = self.name_addr.uri
        assert isinstance(uri, SipUri)
        return uri

    def remaining(self, now: float) -> int:
        """Whole seconds left (0 when expired)."""
        return max(0, round(self.expires_at - now))

    def is_active(self, now: float) -> bool:
        return self.expires_at > now


def by_preference(bindings: Iterable[Binding]) -> list[Binding]:
    """Bindings in the order to try them: highest q first (no q counts as 1.0), then the freshest."""
    return sorted(bindings, key=lambda b: (-(1.0 if b.q is None else b.q), -b.registered_at))


class RegisterRejected(SipError):
    """A REGISTER that must be refused: ``status``, a reason phrase saying why, and extra headers."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)


@attrs.frozen
class RegisterOutcome:
    """The result of one REGISTER: the response and the AOR's complete new binding list.

    On failure ``bindings`` is the input without expired bindings, and ``added``/``refreshed``/``removed`` are
    empty. ``removed`` holds bindings removed by the request (expires 0, wildcard, replaced by an outbound
    registration) and those evicted by the ``max_contacts`` limit; ``expired`` those whose time had passed.
    """

    response: Response
    bindings: tuple[Binding, ...]
    added: tuple[Binding, ...] = ()
    refreshed: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()
    expired: tuple[Binding, ...] = ()

    @property
    def accepted(self) -> bool:
        return 200 <= self.response.status < 300

    @property
    def changed(self) -> bool:
        """Whether the store must be written (something was added, refreshed, removed or expired)."""
        return bool(self.added or self.refreshed or self.removed or self.expired)


def address_of_record(request: Request) -> str:
    """The canonical AOR of a REGISTER's To URI (RFC 3261 §10.3 step 5): ``sip:user@host[:port]``.

    Raises :class:`RegisterRejected` (400) when the To URI is not sip or sips.
    """
    try:
        uri = request.to.uri
    except SipParseError as exc:
        raise RegisterRejected(400, f"Bad Request ({exc})") from None
    if not isinstance(uri, SipUri):
        raise RegisterRejected(400, f"Bad Request (To must be a sip or sips URI, not {uri.scheme}:)")
    return str(SipUri(uri.scheme, uri.user, None, uri.host, uri.port))


@attrs.frozen
class _Requested:
    """One Contact of the request, checked: what to do with it."""

    name_addr: NameAddr
    uri: SipUri
    expires: int
    q: float | None
    instance_id: str | None
    reg_id: int | None


def process_register(
    request: Request,
    *,
    bindings: Sequence[Binding],
    now: float,
    aor: str | None = None,
    config: RegistrarConfig = RegistrarConfig(),
    flow: FlowLike | None = None,
    to_tag: str | None = None,
    path: Sequence[str] = (),
) -> RegisterOutcome:
    """Apply ``request`` to the AOR's ``bindings`` (RFC 3261 §10.3 steps 5-8); see the module docstring.

    ``aor`` is the store key the bindings belong to (default: :func:`address_of_record`); ``flow`` is where
    the request came from; ``to_tag`` goes into the response's To; ``path`` the request's Path values the
    caller trusts (RFC 3327), kept with the bindings the request adds or refreshes.
    """
    live = tuple(b for b in bindings if b.is_active(now))
    expired = tuple(b for b in bindings if not b.is_active(now))
    try:
        key = aor if aor is not None else address_of_record(request)
        if aor is not None:
            address_of_record(request)  # the To URI must still be sip/sips
        result = _apply(request, key, live, now, config, flow, tuple(path))
    except RegisterRejected as exc:
        response = make_response(request, exc.status, exc.reason, to_tag=to_tag, headers=exc.headers)
        return RegisterOutcome(response, live, expired=expired)
    new, added, refreshed, removed, outbound = result
    headers = [("Contact", _listed(b, now)) for b in new]
    if outbound:
        headers.append(("Require", "outbound"))
    if path and "path" in (tag.lower() for tag in request.supported):
        headers.extend(("Path", value) for value in path)
    headers.append(("Date", http_date(now)))
    response = make_response(request, 200, to_tag=to_tag, headers=headers)
    return RegisterOutcome(response, new, added, refreshed, removed, expired)


def http_date(now: float) -> str:
    """An RFC 1123 date in GMT (RFC 3261 §20.17), e.g. ``Sat, 13 Nov 2010 23:29:00 GMT``."""
    moment = datetime.datetime.fromtimestamp(int(now), datetime.UTC)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (
        f"{days[moment.weekday()]}, {moment.day:02d} {months[moment.month - 1]} {moment.year} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} GMT"
    )


def _listed(binding: Binding, now: float) -> str:
    return str(binding.name_addr.with_param("expires", str(max(1, binding.remaining(now)))))


_Result = tuple[tuple[Binding, ...], tuple[Binding, ...], tuple[Binding, ...], tuple[Binding, ...], bool]


def _apply(
    request: Request,
    aor: str,
    live: tuple[Binding, ...],
    now: float,
    config: RegistrarConfig,
    flow: FlowLike | None,
    path: tuple[str, ...] = (),
) -> _Result:
    raw = request.values("contact")
    if not raw:
        return live, (), (), (), False  # a query (step 6: skip to the last step)
    call_id = request.call_id
    cseq = request.cseq.seq
    if "*" in raw:
        return _wildcard(request, raw, live, call_id, cseq)

    header_expires = _header_expires(request)
    outbound_supported = "outbound" in (tag.lower() for tag in request.supported)
    requested = [_check_contact(text, header_expires, config, outbound_supported) for text in raw]
    if sum(1 for r in requested if r.reg_id is not None) > 1:
        raise RegisterRejected(400, "Bad Request (more than one Contact with reg-id)")
    # 423 for the whole request before anything changes (step 7).
    brief = [r.expires for r in requested if 0 < r.expires < config.min_expires and r.expires < _ONE_HOUR]
    if brief:
        raise RegisterRejected(
            423,
            f"Interval Too Brief (at least {config.min_expires} s, asked {min(brief)} s)",
            [("Min-Expires", str(config.min_expires))],
        )
    if sum(1 for r in requested if r.expires > 0) > config.max_contacts:
        raise RegisterRejected(400, f"Bad Request (more than {config.max_contacts} contacts in one REGISTER)")

    binding_flow = BindingFlow.of(flow) if flow is not None else None
    user_agent = request.get("user-agent")
    current: list[Binding | None] = list(live)
    touched: set[int] = set()
    for r in requested:
        index = _find(current, r)
        if index is not None and index not in touched:
            existing = current[index]
            assert existing is not None
            if existing.call_id == call_id and cseq <= existing.cseq:
                raise RegisterRejected(
                    500,
                    f"Server Internal Error (out-of-order REGISTER: CSeq {cseq} is not above {existing.cseq} "
                    f"for {existing.contact})",
                )
        if r.expires == 0:
            if index is not None:
                current[index] = None
                touched.add(index)
            continue
        binding = Binding(
            aor=aor,
            contact=str(_without(r.name_addr, "expires")),
            expires_at=now + min(r.expires, config.max_expires),
            call_id=call_id,
            cseq=cseq,
            registered_at=now,
            q=r.q,
            flow=binding_flow,
            instance_id=r.instance_id,
            reg_id=r.reg_id,
            user_agent=user_agent,
            path=path,
        )
        if index is None:
            current.append(binding)
            index = len(current) - 1
        current[index] = binding
        touched.add(index)
    # Beyond max_contacts, the bindings refreshed longest ago (and not by this request) give way.
    kept = [(i, b) for i, b in enumerate(current) if b is not None]
    excess = len(kept) - config.max_contacts
    if excess > 0:
        candidates = sorted((b.registered_at, i) for i, b in kept if i not in touched)
        for _, i in candidates[:excess]:
            current[i] = None
    removed = tuple(b for i, b in enumerate(live) if current[i] is None)
    refreshed = tuple(c for i, c in enumerate(current[: len(live)]) if c is not None and c is not live[i])
    added = tuple(c for c in current[len(live) :] if c is not None)
    new = tuple(b for b in current if b is not None)
    outbound = any(r.reg_id is not None for r in requested)
    return new, added, refreshed, removed, outbound


def _wildcard(
    request: Request, raw: tuple[str, ...], live: tuple[Binding, ...], call_id: str, cseq: int
) -> _Result:
    if len(raw) != 1:
        raise RegisterRejected(400, "Bad Request (Contact: * must be the only Contact)")
    if _header_expires(request) != 0:
        raise RegisterRejected(400, "Bad Request (Contact: * needs Expires: 0)")
    for binding in live:
        if binding.call_id == call_id and cseq <= binding.cseq:
            raise RegisterRejected(
                500,
                f"Server Internal Error (out-of-order REGISTER: CSeq {cseq} is not above {binding.cseq})",
            )
    return (), (), (), live, False


def _header_expires(request: Request) -> int | None:
    try:
        return request.expires
    except SipParseError as exc:
        raise RegisterRejected(400, f"Bad Request ({exc})") from None


def _check_contact(
    text: str, header_expires: int | None, config: RegistrarConfig, outbound_supported: bool
) -> _Requested:
    try:
        name_addr = parse_name_addr(text)
    except SipParseError as exc:
        raise RegisterRejected(400, f"Bad Request (Contact: {exc})") from None
    uri = name_addr.uri
    if not isinstance(uri, SipUri):
        raise RegisterRejected(400, f"Bad Request (Contact must be a sip or sips URI, not {uri.scheme}:)")
    param = name_addr.param("expires")
    if param is not None:
        try:
            expires = parse_delta_seconds(param, "Contact expires parameter")
        except SipParseError as exc:
            raise RegisterRejected(400, f"Bad Request ({exc})") from None
    elif header_expires is not None:
        expires = header_expires
    else:
        expires = config.default_expires
    q_text = name_addr.param("q")
    q: float | None = None
    if q_text is not None:
        if _QVALUE.fullmatch(q_text) is None:
            raise RegisterRejected(
                400, f"Bad Request (q={q_text[:20]!r} must be 0 to 1 with at most 3 decimals)"
            )
        q = float(q_text)
    instance = name_addr.param("+sip.instance")
    instance_id = unquote_string(instance) if instance else None
    reg_id: int | None = None
    reg_text = name_addr.param("reg-id")
    if reg_text is not None and instance_id is not None and outbound_supported:
        if _REG_ID.fullmatch(reg_text) is None or not 1 <= int(reg_text) <= _MAX_REG_ID:
            raise RegisterRejected(400, f"Bad Request (reg-id={reg_text[:20]!r} must be 1 to 2^31-1)")
        reg_id = int(reg_text)
    return _Requested(name_addr, uri, expires, q, instance_id, reg_id)


def _find(current: list[Binding | None], r: _Requested) -> int | None:
    """The index of the binding ``r`` refers to: by instance and reg-id (RFC 5626), else by URI."""
    for i, binding in enumerate(current):
        if binding is None:
            continue
        if r.reg_id is not None:
            if binding.reg_id == r.reg_id and binding.instance_id == r.instance_id:
                return i
        elif binding.reg_id is None and binding.uri.equivalent(r.uri):
            return i
    return None


def _without(name_addr: NameAddr, param: str) -> NameAddr:
    return attrs.evolve(name_addr, params=tuple(p for p in name_addr.params if p[0] != param))
