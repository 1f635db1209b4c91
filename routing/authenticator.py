"""Digest authentication of every request a phone sends (REGISTER, INVITE, …), behind one brute-force guard.

The registrar and the B2BUA both ask :meth:`Authenticator.verify`; so the same nonces, the same
:class:`~routing.security.FailureGuard` and the same security log serve every method, and a password guessed
through INVITE is throttled and blocked exactly like one guessed through REGISTER.

* **Nonces are bound to the address they were sent to** (a MAC of the source, :func:`~routing.security.
  source_key`, in the nonce's unique part): credentials answering a nonce sent elsewhere are not checked but
  challenged again, so a spoofed source can neither guess uncounted nor make failures count against
  somebody else's address.
* **Requests without credentials are challenged statelessly** (RFC 3261 §8.2.7) through :meth:`screen`, which
  the endpoint calls before it makes a transaction: no transaction, no retransmitted 401s towards a possibly
  spoofed source, a To tag derived from the request so a retransmission gets the same one, and at most
  ``challenge_rate`` such answers per second per source (beyond it, silence).
* **Behind an edge proxy** (``[cluster] edges``) the transport source of every request is the edge; the
  source counted, bound into nonces and logged is the phone's address as the edge reports it
  (:func:`~routing.cluster.client_address`, believed only from an edge's address). So the guard keys on
  phones, not on the edge (which would otherwise be blocked for everybody by one scanner).
* **Failures are logged as failures** in the security log (:mod:`routing.security_log`: one stable line per
  event), apart from the challenge every call starts with, which is not logged at all above DEBUG; so are
  throttling and blocks, sources dropped for their challenge rate, and INVITEs for the office's numbers from
  an address no trunk is allowed at (:attr:`Authenticator.office_number` says which numbers those are).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import attrs

from durchwahl.sipcore.auth import Authenticated, DigestServer, Failed, Missing, Stale
from durchwahl.sipcore.errors import SipParseError
from durchwahl.sipcore.headers import parse_auth
from durchwahl.sipcore.message import Request, Response
from durchwahl.sipcore.transport import Flow
from durchwahl.sipcore.uri import SipUri

from .challenge_watch import ChallengeWatch, Unanswered
from .cluster import client_address, edge_reported
from .directory import Directory
from .security import Admission, FailureGuard, source_key, trunk_for_source
from .security_log import Relayed, SecurityLog

__all__ = ["Authenticator", "OfficeNumber", "Unverified", "Verified"]

log = logging.getLogger(__name__)

#: sipcore.auth's nonce is hex(8-byte timestamp ‖ 8-byte unique part ‖ 16-byte MAC); the first
#: _BINDING_BYTES of the unique part carry the source binding (see Authenticator._nonce_unique).
_UNIQUE_HEX = slice(16, 32)
_BINDING_BYTES = 4
_NONCE_HEX_LENGTH = 64
#: Methods whose requests must carry credentials (unless a trunk sends them).
AUTHENTICATED_METHODS = frozenset({"REGISTER", "INVITE"})


@attrs.frozen
class Verified:
    """The credentials are right: the request comes from ``username``'s device."""

    username: str


@attrs.frozen
class OfficeNumber:
    """One of the office's numbers as a request dials it (E.164) and the trunk that delivers it."""

    number: str
    trunk: str


@attrs.frozen
class Unverified:
    """No usable credentials (``reason`` says why, for logs): answer with a fresh challenge, or with
    ``stale=true`` when ``stale``."""

    reason: str
    stale: bool = False


class Authenticator:
    """Challenges and verifies digest credentials for the directory's employees (see the module docstring).

    ``secret`` keys the nonces (32 random bytes; the same across restarts and nodes keeps issued nonces
    valid). ``clock`` is wall-clock time (nonces outlive a restart). ``algorithms`` overrides the directory's
    ``auth_algorithms`` (the order offered). ``random_bytes`` makes nonces unpredictable beyond their MAC.
    """

    def __init__(
        self,
        directory: Directory,
        *,
        secret: bytes,
        guard: FailureGuard | None = None,
        clock: Callable[[], float] = time.time,
        algorithms: Sequence[str] | None = None,
        nonce_lifetime: float = 300.0,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self.guard = guard or FailureGuard()
        self._clock = clock
        self._secret = secret
        self._algorithms = tuple(algorithms) if algorithms is not None else None
        self._nonce_lifetime = nonce_lifetime
        self._random_bytes = random_bytes
        self._nonce_counter = itertools.count(1)
        self._nonce_binding = bytes(_BINDING_BYTES)
        #: REGISTER challenges not answered yet: a phone that gives up after one is logged by the registrar.
        self.watch = ChallengeWatch()
        #: Called after each REGISTER challenge (the registrar's watch wakes up).
        self.on_challenge: Callable[[], None] | None = None
        self.directory = directory
        self._edges = directory.cluster.edges if directory.cluster else ()
        self.digest = self._digest_server(directory)
        #: The security log (failures, throttling, blocks, drops, unknown trunk sources); it counts its lines.
        self.security = SecurityLog()
        #: The office number an INVITE's Request-URI dials, as a trunk would send it (set by the server,
        #: which has the resolver); None: unknown-trunk-source lines are not written.
        self.office_number: Callable[[Request], OfficeNumber | None] | None = None

    def _digest_server(self, directory: Directory) -> DigestServer:
        return DigestServer(
            directory.server.realm,
            secret=self._secret,
            algorithms=self._algorithms or directory.server.auth_algorithms,
            nonce_lifetime=self._nonce_lifetime,
            random_bytes=self._nonce_unique,
        )

    def use_secret(self, secret: bytes) -> None:
        """Key nonces with ``secret`` from now on (a cluster's shared key: any node then verifies the answer
        to a challenge another node sent). Nonces issued under the old key are challenged again."""
        self._secret = secret
        self.digest = self._digest_server(self.directory)

    def source(self, request: Request, flow: Flow) -> str:
        """The address ``request`` is counted under: the phone's, as an edge proxy reports it, else the
        transport source (see the module docstring)."""
        return client_address(request, flow.remote, self._edges)

    def seen(self, request: Request, flow: Flow) -> Flow | Relayed:
        """``flow`` as the security log reports ``request``'s: when an edge proxy relayed it, the phone's
        address and port as the edge reported them, and the edge's."""
        reported = edge_reported(request, flow.remote, self._edges)
        if reported is None:
            return flow
        return Relayed(flow.transport, reported, flow.remote)

    def update_directory(self, directory: Directory) -> None:
        """Use a reloaded directory. A new realm or algorithm list re-creates the digest server (outstanding
        nonces of the old realm then fail, and phones are simply challenged again)."""
        old = self.directory.server
        self.directory = directory
        self._edges = directory.cluster.edges if directory.cluster else ()
        new = directory.server
        if (old.realm, old.auth_algorithms) != (new.realm, new.auth_algorithms):
            self.digest = self._digest_server(directory)

    # --------------------------------------------------------------------------- nonces bound to sources

    def _binding(self, source: str) -> bytes:
        key = source_key(source, self.guard.policy.ipv6_prefix).encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, b"nonce-source\x00" + key, hashlib.sha256).digest()[:_BINDING_BYTES]

    def _nonce_unique(self, n: int) -> bytes:
        """The unique part of the next nonce: the binding of the source being challenged, then randomness
        (or a counter; under the nonce's MAC either is unpredictable enough)."""
        rest = n - _BINDING_BYTES
        if self._random_bytes is not None:
            tail = self._random_bytes(rest)
        else:
            tail = (next(self._nonce_counter) % (1 << (8 * rest))).to_bytes(rest, "big")
        return self._nonce_binding + tail

    def _bound_here(self, nonce: str, source: str) -> bool:
        if len(nonce) != _NONCE_HEX_LENGTH:
            return False
        try:
            unique = bytes.fromhex(nonce[_UNIQUE_HEX])
        except ValueError:
            return False
        return hmac.compare_digest(unique[:_BINDING_BYTES], self._binding(source))

    # --------------------------------------------------------------------------------------- challenges

    def challenge(
        self, request: Request, flow: Flow, *, to_tag: str | None, stale: bool = False, proxy: bool = False
    ) -> Response:
        """A 401 (407 with ``proxy``) with fresh challenges whose nonce is bound to ``flow``'s source. A
        REGISTER's challenge is watched: a phone that never answers it is logged as having given up."""
        now = self._clock()
        source = self.source(request, flow)
        self._nonce_binding = self._binding(source)  # read by _nonce_unique, right now
        response = self.digest.challenge_response(request, now, stale=stale, proxy=proxy, to_tag=to_tag)
        if request.method == "REGISTER" and not _removes_only(request):
            agent = request.get("user-agent")
            self.watch.challenged(
                Unanswered(source, _to_user(request), str(flow), agent, self.digest.algorithms, now)
            )
            if self.on_challenge is not None:
                self.on_challenge()
        return response

    def stateless_tag(self, request: Request) -> str:
        """A To tag derived from the request (Call-ID, From tag, branch), as §8.2.7 asks of a stateless UAS:
        a retransmission gets the same tag."""
        material = f"{request.call_id}\x00{request.from_.tag}\x00{request.branch}".encode(
            "utf-8", "surrogateescape"
        )
        return hmac.new(self._secret, b"stateless-tag\x00" + material, hashlib.sha256).hexdigest()[:16]

    def screen(self, request: Request, flow: Flow) -> Response | bool:
        """For the endpoint, before any transaction: a request that must authenticate but carries no
        credentials is answered here, statelessly (a :class:`Response` to send), or dropped when its source
        is over its challenge rate (``False``); anything else goes on (``True``).

        Requests from a trunk's networks go on: a trunk is identified by its address for its own numbers.
        """
        if request.method not in AUTHENTICATED_METHODS or request.to.tag is not None:
            return True
        if request.get("authorization") is not None or request.get("proxy-authorization") is not None:
            return True
        source = self.source(request, flow)
        if request.method == "INVITE" and trunk_for_source(self.directory, source) is not None:
            return True
        now = self._clock()
        if not self.guard.may_challenge(source, now):
            self.security.rate_limited(
                self.seen(request, flow), request.method, now, self.guard.policy.challenge_rate
            )
            return False
        if request.method == "INVITE" and self.office_number is not None:
            self._check_trunk_source(request, self.seen(request, flow))
        return self.challenge(request, flow, to_tag=self.stateless_tag(request))

    def _check_trunk_source(self, request: Request, flow: Flow | Relayed) -> None:
        """An INVITE without credentials for one of the office's numbers, from an address no trunk is allowed
        at and not from the office's own domain (a phone calling the office's number is challenged like any
        call of its own): the provider's address changed, or somebody poses as the provider."""
        assert self.office_number is not None
        from_uri = request.from_.uri
        if isinstance(from_uri, SipUri) and from_uri.host.lower() == self.directory.server.domain.lower():
            return
        number = self.office_number(request)
        if number is not None:
            self.security.unknown_trunk_source(flow, request.method, number.number, number.trunk)

    # ------------------------------------------------------------------------------------- verification

    def _answered(self, request: Request) -> tuple[str, str] | None:
        """(nonce, username) of the Digest credentials for our realm, or None."""
        realm = self.digest.realm
        for name in ("authorization", "proxy-authorization"):
            for value in request.get_all(name):
                try:
                    parsed = parse_auth(value)
                except SipParseError:
                    continue
                if parsed.scheme.lower() == "digest" and parsed.param("realm") == realm:
                    return parsed.param("nonce") or "", parsed.param("username") or ""
        return None

    def verify(self, request: Request, flow: Flow) -> Verified | Unverified:
        """Check ``request``'s credentials under the guard (see the module docstring); never raises for what
        a peer sends. The caller answers an :class:`Unverified` with :meth:`challenge`."""
        answered = self._answered(request)
        if answered is None:
            return Unverified("no credentials")
        nonce, username = answered
        source = self.source(request, flow)
        if request.method == "REGISTER":
            self.watch.answered(source, _to_user(request))
        if not self._bound_here(nonce, source):
            log.info("%s from %s: credentials answer a nonce not sent to this address", request.method, flow)
            return Unverified("nonce sent elsewhere")
        now = self._clock()
        open_before = self.guard.admits(source, now)
        admission = self.guard.admit(source, now, username)
        if admission is not Admission.CHECK:
            self.security.auth_unchecked(self.seen(request, flow), request.method, username, admission.value)
            if open_before and not self.guard.admits(source, now):  # this attempt blocked the whole source
                state = self.guard.status(source, now)
                seconds = (state.blocked_until or now) - now
                self.security.blocked(state.source, None, seconds, "too many attempts refused unchecked")
            return Unverified(f"credentials not checked ({admission.value})")
        proxy = request.get("authorization") is None
        result = self.digest.verify(request, self.directory.credentials, now, proxy=proxy)
        if isinstance(result, Authenticated):
            self.guard.succeeded(source, now, result.username)
            return Verified(result.username)
        if isinstance(result, Stale):
            return Unverified("stale nonce", stale=True)
        if isinstance(result, Missing):
            return Unverified("no credentials")
        assert isinstance(result, Failed)
        status = self.guard.failed(source, now, username)
        self.security.auth_failed(self.seen(request, flow), request.method, username, result.reason)
        block = status.new_block
        policy = self.guard.policy
        if block is not None:
            self.security.blocked(block.source, block.user, block.until - now, block.reason)
        elif status.throttled and status.failures == policy.throttle_after:
            self.security.throttled(status.source, username, status.failures, policy.throttle_interval)
        return Unverified("wrong credentials")


def _to_user(request: Request) -> str:
    """The user a REGISTER is for (its To URI's user part), as the watch of challenges keys it."""
    uri = request.to.uri
    return uri.user or "" if isinstance(uri, SipUri) else ""


def _removes_only(request: Request) -> bool:
    """A REGISTER that only removes bindings (``Contact: *``, or every contact expiring at 0): a phone
    shutting down may not wait for a challenge to it, and that is no failure to report."""
    try:
        if request.contact_is_wildcard:
            return True
        contacts = request.contact
        default = request.expires
    except SipParseError:
        return False
    return bool(contacts) and all(
        (c.param("expires") or (str(default) if default is not None else "")).strip() == "0" for c in contacts
    )
