"""The trunk side (UAC role): outbound registration to a provider and answering its 401/407 challenges.

Pure parts, tested with a fake clock:

* :func:`retry_with_credentials` — given a request and the 401/407 that challenged it, the request to send
  again: CSeq + 1, a new Via branch (a new transaction, RFC 3261 §8.1.3.5 and §22.2), and one
  Authorization (401) or Proxy-Authorization (407) per challenged realm, answering the strongest usable
  challenge of each realm (``sipcore.auth.choose_challenge``). Same Call-ID, From tag and To, so for an
  INVITE the retried request is still the same call attempt (§22.2).
* :class:`RegistrationSchedule` — when to (re-)REGISTER: at once, then a refresh before the granted expiry
  (at ``refresh_fraction`` of it, but at least ``refresh_margin`` seconds before it ends, and never sooner
  than half way), after a failure again with exponential back-off (``retry_base`` doubling up to
  ``retry_max``, or the provider's Retry-After if longer). Its :class:`TrunkStatus` is the visible status:
  registered / failing / unregistered, the last error, when the registration expires.

The shell, :class:`TrunkRegistration`, is a loop around one ``sipcore.Endpoint``: wait until the schedule says
so, REGISTER (with the same Call-ID and a rising CSeq, §10.2.4), answer one challenge, report the outcome.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from durchwahl.sipcore.auth import DigestError, answer_challenge, choose_challenge
from durchwahl.sipcore.endpoint import Endpoint, RequestTimeout
from durchwahl.sipcore.errors import SipError, SipParseError
from durchwahl.sipcore.headers import Challenge, Header, parse_auth
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.transport import Flow, TransportError
from durchwahl.sipcore.uri import NameAddr, SipUri, parse_name_addr

from .directory import Trunk

__all__ = [
    "RegistrationSchedule",
    "RegistrationState",
    "TrunkRegistration",
    "TrunkStatus",
    "retry_with_credentials",
]

log = logging.getLogger(__name__)

#: A first challenge, and one more only when the provider says our answer was stale.
_MAX_CHALLENGE_ROUNDS: Final = 3

# --------------------------------------------------------------------------------- challenge answers


def _with_branch(value: str, request: Request, branch: str) -> str:
    """The first Via header field's value with its first Via's branch replaced."""
    top = str(request.via[0].with_param("branch", branch))
    _, comma, rest = value.partition(",")
    return top + (f",{rest}" if comma else "")


def retry_with_credentials(
    request: Request,
    response: Response,
    username: str,
    password: str,
    *,
    branch: str,
    cnonce: str,
    nc: int = 1,
) -> Request:
    """The request to send after ``response`` (401 or 407) challenged ``request``; see the module docstring.

    Credentials already in the request for a realm that challenged again are replaced (they were refused);
    credentials for other realms stay. Raises ``DigestError`` when no challenge can be answered.
    """
    if response.status not in (401, 407):
        raise DigestError(f"{response.status} is not a challenge (401 or 407)")
    proxy = response.status == 407
    offered = response.proxy_authenticate if proxy else response.www_authenticate
    by_realm: dict[str, list[Challenge]] = {}
    for challenge in offered:
        by_realm.setdefault(challenge.param("realm") or "", []).append(challenge)
    answers: list[tuple[str, Challenge]] = []
    for realm, challenges in by_realm.items():
        chosen = choose_challenge(challenges)
        if chosen is not None:
            creds = answer_challenge(
                chosen, request.method, str(request.uri), username, password, cnonce=cnonce, nc=nc
            )
            answers.append((realm, creds))
    if not answers:
        raise DigestError(f"no usable Digest challenge in the {response.status}")

    name = "Proxy-Authorization" if proxy else "Authorization"
    key = name.lower()
    realms = {realm for realm, _ in answers}
    cseq = request.cseq
    headers: list[Header] = []
    via_done = False
    for header in request.headers:
        if header.key == key and _realm_of(header.value) in realms:
            continue
        if header.key == "via" and not via_done:
            header = Header(header.name, _with_branch(header.value, request, branch))
            via_done = True
        elif header.key == "cseq":
            header = Header(header.name, f"{cseq.seq + 1} {cseq.method}")
        headers.append(header)
    headers.extend(Header(name, str(creds)) for _, creds in answers)
    return attrs.evolve(request, headers=tuple(headers))


def _realm_of(value: str) -> str | None:
    try:
        return parse_auth(value).param("realm") or ""
    except SipParseError:
        return None


# ------------------------------------------------------------------------------------------- schedule


class RegistrationState(enum.Enum):
    UNREGISTERED = "unregistered"
    REGISTERED = "registered"
    FAILING = "failing"


class _Input(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


_S = RegistrationState
#: The one transition table: (state, input) -> next state. Every pair is listed; an attempt can end either
#: way from any state, and stopping is always allowed.
_TRANSITIONS: Final[dict[tuple[RegistrationState, _Input], RegistrationState]] = {
    (_S.UNREGISTERED, _Input.SUCCEEDED): _S.REGISTERED,
    (_S.UNREGISTERED, _Input.FAILED): _S.FAILING,
    (_S.UNREGISTERED, _Input.STOPPED): _S.UNREGISTERED,
    (_S.REGISTERED, _Input.SUCCEEDED): _S.REGISTERED,
    (_S.REGISTERED, _Input.FAILED): _S.FAILING,
    (_S.REGISTERED, _Input.STOPPED): _S.UNREGISTERED,
    (_S.FAILING, _Input.SUCCEEDED): _S.REGISTERED,
    (_S.FAILING, _Input.FAILED): _S.FAILING,
    (_S.FAILING, _Input.STOPPED): _S.UNREGISTERED,
}


@attrs.frozen
class TrunkStatus:
    """What an operator sees about one trunk's registration. Times are the schedule's clock (wall time)."""

    trunk: str
    state: RegistrationState
    last_error: str | None = None
    expires_at: float | None = None
    next_attempt_at: float | None = None
    failures: int = 0
    in_flight: bool = False


class RegistrationSchedule:
    """The pure timing of one outbound registration (module docstring). Every method takes ``now``."""

    def __init__(
        self,
        trunk: str,
        now: float,
        *,
        expires: int = 3600,
        refresh_fraction: float = 0.8,
        refresh_margin: float = 30.0,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
    ) -> None:
        if expires < 1:
            raise ValueError("expires must be at least 1 second")
        if not 0 < refresh_fraction < 1:
            raise ValueError("refresh_fraction must lie between 0 and 1")
        if retry_base <= 0 or retry_max < retry_base:
            raise ValueError("need 0 < retry_base <= retry_max")
        self.trunk = trunk
        self.expires = expires
        self.refresh_fraction = refresh_fraction
        self.refresh_margin = refresh_margin
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._state = RegistrationState.UNREGISTERED
        self._next: float | None = now
        self._expires_at: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._in_flight = False

    def _apply(self, event: _Input) -> None:
        self._state = _TRANSITIONS[(self._state, event)]

    @property
    def status(self) -> TrunkStatus:
        return TrunkStatus(
            self.trunk,
            self._state,
            self._last_error,
            self._expires_at,
            self._next,
            self._failures,
            self._in_flight,
        )

    @property
    def next_attempt_at(self) -> float | None:
        """When the next REGISTER is due (None while one is in flight or after stopping)."""
        return None if self._in_flight else self._next

    def due(self, now: float) -> bool:
        at = self.next_attempt_at
        return at is not None and now >= at

    def refresh_delay(self, granted: float) -> float:
        """Seconds after a success with ``granted`` seconds to send the refresh."""
        return max(min(granted * self.refresh_fraction, granted - self.refresh_margin), granted / 2)

    def retry_delay(self, failures: int) -> float:
        """Back-off after ``failures`` failures in a row: retry_base, doubled each time, up to retry_max."""
        return float(min(self.retry_base * 2 ** min(failures - 1, 62), self.retry_max))

    def attempt_started(self, now: float) -> None:
        if self._in_flight:
            raise SipError(f"trunk {self.trunk}: a REGISTER is already in flight")
        if self._next is None:
            raise SipError(f"trunk {self.trunk}: registration stopped")
        self._in_flight = True

    def succeeded(self, now: float, granted: int) -> None:
        """The provider accepted the binding for ``granted`` seconds."""
        if granted <= 0:
            self.failed(now, f"registrar granted {granted} s")
            return
        self._in_flight = False
        self._apply(_Input.SUCCEEDED)
        self._failures = 0
        self._expires_at = now + granted
        self._next = now + self.refresh_delay(granted)

    def failed(self, now: float, error: str, *, retry_after: float | None = None) -> None:
        """The attempt failed (timeout, transport error, rejected, wrong credentials)."""
        self._in_flight = False
        self._apply(_Input.FAILED)
        self._failures += 1
        self._last_error = error
        if self._expires_at is not None and now >= self._expires_at:
            self._expires_at = None
        delay = self.retry_delay(self._failures)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self._next = now + delay

    def interval_too_brief(self, now: float, min_expires: int) -> None:
        """A 423: ask again at once for the provider's Min-Expires (not counted as a failure)."""
        self._in_flight = False
        self._last_error = f"423 Interval Too Brief (Min-Expires {min_expires})"
        if min_expires <= self.expires:
            self.failed(now, f"423 with Min-Expires {min_expires} not above our {self.expires}")
            return
        self.expires = min_expires
        self._next = now

    def stopped(self, now: float) -> None:
        self._in_flight = False
        self._apply(_Input.STOPPED)
        self._next = None
        self._expires_at = None


# ---------------------------------------------------------------------------------------------- shell


def _granted(response: Response, contact: SipUri, requested: int) -> int:
    """The expiry the registrar granted our contact: its Contact's expires, else Expires, else ours."""
    for value in response.contact:
        uri = value.uri
        if isinstance(uri, SipUri) and uri.equivalent(contact):
            text = value.param("expires")
            if text is not None and text.isdigit():
                return int(text)
    expires = response.expires
    return expires if expires is not None else requested


class TrunkRegistration:
    """Keeps one trunk registered through ``endpoint`` until :meth:`stop` (see the module docstring).

    ``clock`` is wall time (the status shows when the registration expires); ``cnonce`` gives client
    nonces (random by default). ``timeout`` bounds one attempt, challenge round included.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        trunk: Trunk,
        *,
        expires: int = 3600,
        clock: Callable[[], float] = time.time,
        cnonce: Callable[[], str] | None = None,
        timeout: float = 40.0,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
        refresh_margin: float = 30.0,
    ) -> None:
        if trunk.username is None or trunk.password is None:
            raise ValueError(f"trunk {trunk.name} has no username and password to register with")
        self.endpoint = endpoint
        self.trunk = trunk
        self._clock = clock
        self._cnonce = cnonce or (lambda: secrets.token_hex(8))
        self._timeout = timeout
        self.schedule = RegistrationSchedule(
            trunk.name,
            clock(),
            expires=expires,
            retry_base=retry_base,
            retry_max=retry_max,
            refresh_margin=refresh_margin,
        )
        self._call_id = endpoint.new_call_id()
        self._cseq = 0
        self._flow: Flow | None = None
        self._wake = asyncio.Event()
        host = trunk.host if ":" not in trunk.host else f"[{trunk.host}]"
        port = "" if trunk.port == 5060 else f":{trunk.port}"
        self.registrar_uri = f"sip:{host}{port}"
        self.aor: NameAddr = parse_name_addr(f"<sip:{trunk.username}@{host}>")

    @property
    def status(self) -> TrunkStatus:
        return self.schedule.status

    async def _resolve(self) -> Flow:
        if self._flow is None:
            host = self.trunk.host
            try:
                address = str(ipaddress.ip_address(host))
            except ValueError:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, self.trunk.port, type=socket.SOCK_DGRAM
                )
                address = str(infos[0][4][0])
            self._flow = self.endpoint.flow_to(
                address, self.trunk.port, self.trunk.transport, server_name=self.trunk.host.strip("[]")
            )
        return self._flow

    async def run(self) -> None:
        """Register, refresh and retry until cancelled or stopped (a task of the server's)."""
        while True:
            at = self.schedule.next_attempt_at
            if at is None:
                return
            delay = at - self._clock()
            if delay > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            await self.register_once()

    async def register_once(self) -> TrunkStatus:
        """One REGISTER (with one challenge round) now; returns the status after it."""
        assert self.trunk.username is not None and self.trunk.password is not None
        schedule = self.schedule
        schedule.attempt_started(self._clock())
        expires = schedule.expires
        try:
            flow = await self._resolve()
            contact = self.endpoint.contact_uri(flow, self.aor)
            response = await self._exchange(flow, expires)
        except (TimeoutError, RequestTimeout, TransportError, OSError) as exc:
            schedule.failed(
                self._clock(), f"no answer from {self.registrar_uri}: {exc or type(exc).__name__}"
            )
        except DigestError as exc:
            schedule.failed(self._clock(), f"cannot answer the challenge: {exc}")
        else:
            now = self._clock()
            if 200 <= response.status < 300:
                granted = _granted(response, contact, expires)
                schedule.succeeded(now, granted)
                log.info("trunk %s registered for %d s", self.trunk.name, granted)
            elif response.status == 423 and (response.get("min-expires") or "").strip().isdigit():
                schedule.interval_too_brief(now, int((response.get("min-expires") or "0").strip()))
            else:
                retry_after = (response.get("retry-after") or "").split(";")[0].strip()
                schedule.failed(
                    now,
                    f"{response.status} {response.reason}",
                    retry_after=float(retry_after) if retry_after.isdigit() else None,
                )
        status = schedule.status
        if status.state is RegistrationState.FAILING:
            log.warning("trunk %s registration failing: %s", self.trunk.name, status.last_error)
        return status

    async def _exchange(self, flow: Flow, expires: int) -> Response:
        assert self.trunk.username is not None and self.trunk.password is not None
        self._cseq += 1
        request = self.endpoint.make_request(
            "REGISTER",
            self.registrar_uri,
            flow,
            from_=self.aor,
            to=self.aor,
            call_id=self._call_id,
            cseq=self._cseq,
            headers=[("Expires", str(expires))],
        )
        async with asyncio.timeout(self._timeout):
            response = await self.endpoint.request(request, flow)
            for round_ in range(_MAX_CHALLENGE_ROUNDS):
                if response.status not in (401, 407):
                    break
                stale = any((c.param("stale") or "").lower() == "true" for c in _challenges(response))
                if round_ > 0 and not stale:
                    break  # our credentials were refused
                request = retry_with_credentials(
                    request,
                    response,
                    self.trunk.username,
                    self.trunk.password,
                    branch=self.endpoint.new_branch(),
                    cnonce=self._cnonce(),
                )
                self._cseq = request.cseq.seq
                response = await self.endpoint.request(request, flow)
        return response

    async def stop(self, *, unregister: bool = True) -> None:
        """Stop refreshing; with ``unregister`` remove the provider's binding (Expires: 0, best effort)."""
        was_registered = self.schedule.status.state is RegistrationState.REGISTERED
        self.schedule.stopped(self._clock())
        self._wake.set()
        if unregister and was_registered and self._flow is not None:
            try:
                await self._exchange(self._flow, 0)
            except (TimeoutError, RequestTimeout, TransportError, DigestError) as exc:
                log.info("trunk %s: unregistering failed: %s", self.trunk.name, exc)


def _challenges(response: Response) -> Iterable[Challenge]:
    return response.proxy_authenticate if response.status == 407 else response.www_authenticate
