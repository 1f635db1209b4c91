"""Digest authentication for SIP, both sides, without I/O (RFC 3261 §22.4, RFC 7616, RFC 8760).

Server side: :class:`DigestServer` issues challenges and checks credentials. Its nonces are self-validating —
``hex(timestamp ‖ unique part ‖ HMAC-SHA-256(secret, realm ‖ timestamp ‖ unique part)[:16])`` — so no state
is needed to know that a nonce is genuine and how old it is; a nonce issued before a restart stays valid as
long as the secret is the same and ``now`` is wall-clock time (pass ``time.time()``, not a monotonic clock).
The only state is a bounded LRU table of the highest nonce count seen per nonce, for replay protection.

Decisions, each with the reason:

* **Algorithms.** MD5, MD5-sess, SHA-256 and SHA-256-sess; the server offers the configured list in the
  configured order, one challenge per algorithm (RFC 8760 §2.3: most preferred first, so the default is
  SHA-256 then MD5). SIPp 3.6 answers only the *first* challenge and only MD5, so deployments with SIPp or
  similar old clients configure ``("MD5", "SHA-256")`` or ``("MD5",)``. An answer must use an offered
  algorithm (Kamailio behaves the same way).
* **qop.** Challenges always carry ``qop="auth"`` (RFC 3261 §22.4 item 8: servers MUST send qop). auth-int
  is not offered and answers using it fail. Answers *without* qop (RFC 2069 style) are accepted by default,
  because RFC 3261 §22.4 requires servers to stay backwards compatible with RFC 2069; pass
  ``allow_rfc2069=False`` to refuse them. Without qop there is no nonce count, so such an answer can be
  replayed for the lifetime of its nonce — keep ``nonce_lifetime`` short if that matters.
* **uri.** RFC 3261 §22.4 says the digest ``uri`` is the Request-URI. Real clients differ: SIPp sends the
  server's ``sip:IP:port`` unless started with ``-auth_uri``. With ``uri_check="lenient"`` (the default) the
  ``uri`` must be a sip/sips URI that is either equivalent to the Request-URI (RFC 3261 §19.1.4) or has no
  user part or the Request-URI's user part; the response is always computed over the ``uri`` as sent. So an
  answer cannot be moved to a request for *another user*, but host aliases are tolerated.
  ``uri_check="strict"`` demands equivalence with the Request-URI.
* **opaque.** Every challenge carries the same server-derived opaque value; an answer that returns a
  different one fails, an answer that omits it is tolerated (some clients drop it).
* **Replay.** With qop the nonce count must strictly increase per nonce. When the table is full the least
  recently used nonce is evicted and its timestamp remembered: a nonce at least that old that is not in the
  table can no longer be proven fresh, so its (otherwise correct) answer gets :class:`Stale` and the client
  simply retries with a new nonce. Memory stays bounded and no replay slips through an eviction.
* **Stale.** An expired (or unprovable, above) nonce with a *correct* response gives :class:`Stale`, so the
  caller re-challenges with ``stale=True`` and the client retries without asking its user (RFC 7616 §3.3).
  An expired nonce with a wrong response is :class:`Failed`.
* **Comparisons** of MACs and responses use :func:`hmac.compare_digest`.

``Failed.reason`` is for logs only; do not send it to the client (it tells an attacker which check failed).

Client side: :func:`choose_challenge` picks the strongest usable challenge from a 401/407, and
:func:`answer_challenge` builds the Authorization/Proxy-Authorization value. Randomness (the cnonce) and the
nonce count are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, Literal

import attrs

from .errors import SipError, SipParseError
from .headers import Challenge, Header, parse_auth, quote_string
from .message import Request, Response, make_response
from .uri import SipUri, parse_uri

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "Authenticated",
    "CredentialsLookup",
    "DigestError",
    "DigestSecret",
    "DigestServer",
    "Failed",
    "Missing",
    "Stale",
    "answer_challenge",
    "choose_challenge",
    "compute_ha1",
    "digest_response",
    "format_challenge",
]

#: Every algorithm this module computes, strongest first (the order :func:`choose_challenge` prefers).
ALGORITHMS: Final = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")

_CANONICAL_ALGORITHM: Final = {name.lower(): name for name in ALGORITHMS}
_HEX_LENGTH: Final = {"MD5": 32, "SHA-256": 64}
_NC_RE: Final = re.compile(r"[0-9A-Fa-f]{8}")
_NONCE_RE: Final = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP: Final = struct.Struct(">d")
_UNIQUE_BYTES: Final = 8
_TAG_BYTES: Final = 16
#: How far in the future a nonce's timestamp may lie (clock steps between issuing and checking).
_CLOCK_SKEW: Final = 5.0


class DigestError(SipError, ValueError):
    """A challenge the client side cannot answer (unknown scheme or algorithm, no usable qop, no nonce)."""


# ------------------------------------------------------------------------------------------ hashing


def _canonical_algorithm(name: str | None) -> str | None:
    """``"sha-256"`` -> ``"SHA-256"``; an absent algorithm means MD5 (RFC 7616 §3.3); None if unknown."""
    if name is None:
        return "MD5"
    return _CANONICAL_ALGORITHM.get(name.lower())


def _hash_name(algorithm: str) -> str:
    return algorithm.removesuffix("-sess")


def _h(hash_name: str, text: str) -> str:
    data = text.encode("utf-8", "surrogateescape")
    if hash_name == "MD5":
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    return hashlib.sha256(data).hexdigest()


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password) for ``algorithm``'s hash — the value to store instead of a password.

    For the -sess variants this is the stored part; the per-session value adds nonce and cnonce.
    """
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return _h(_hash_name(canonical), f"{username}:{realm}:{password}")


def digest_response(
    algorithm: str,
    ha1: str,
    *,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest (RFC 7616 §3.4.1) from the stored HA1 (:func:`compute_ha1`).

    ``qop`` is ``"auth"`` or None (RFC 2069 style, then ``nc`` and ``cnonce`` are unused); the -sess
    algorithms need a cnonce.
    """
    canonical = _canonical_algorithm(algorithm)
    if canonical is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    hash_name = _hash_name(canonical)
    if canonical.endswith("-sess"):
        if cnonce is None:
            raise DigestError(f"{canonical} needs a cnonce (and so qop)")
        ha1 = _h(hash_name, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(hash_name, f"{method}:{uri}")
    if qop is None:
        return _h(hash_name, f"{ha1}:{nonce}:{ha2}")
    return _h(hash_name, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# ----------------------------------------------------------------------------------------- results


@attrs.frozen
class Authenticated:
    """The credentials are valid for ``username`` (using ``algorithm``)."""

    username: str
    algorithm: str


@attrs.frozen
class Stale:
    """A correct answer to an expired nonce (or one no longer provably fresh): re-challenge, stale=true."""

    username: str


@attrs.frozen
class Failed:
    """Credentials were present but wrong or malformed. ``reason`` is for logs, never for the peer."""

    reason: str


@attrs.frozen
class Missing:
    """The request carries no Digest credentials: challenge it."""


AuthResult = Authenticated | Stale | Failed | Missing


@attrs.frozen
class DigestSecret:
    """What the server knows about one user: the clear password, or HA1 values per hash.

    HA1 values are realm-bound (``H(username:realm:password)``): they stop working if the realm changes.
    """

    password: str | None = None
    ha1_md5: str | None = None
    ha1_sha256: str | None = None

    def ha1(self, algorithm: str, username: str, realm: str) -> str | None:
        """The stored-form HA1 for ``algorithm`` (a canonical name), or None when this user has none."""
        if self.password is not None:
            return compute_ha1(algorithm, username, realm, self.password)
        stored = self.ha1_md5 if _hash_name(algorithm) == "MD5" else self.ha1_sha256
        return stored.lower() if stored is not None else None


#: username -> the user's secret, or None for an unknown user.
CredentialsLookup = Callable[[str], DigestSecret | None]


def format_challenge(challenge: Challenge) -> str:
    """Serialise a WWW-/Proxy-Authenticate value the way RFC 7616 §3.3 asks: ``qop`` quoted.

    (``str(Challenge)`` writes ``qop`` bare, which is right for credentials but not for challenges.)
    """
    bare = {"algorithm", "stale"}
    parts = [f"{k}={v}" if k in bare else f"{k}={quote_string(v)}" for k, v in challenge.params]
    return f"{challenge.scheme} " + ", ".join(parts)


# -------------------------------------------------------------------------------------------- server


@attrs.frozen
class _Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None
    opaque: str | None


class DigestServer:
    """The server side of Digest: challenges and verification for one realm. See the module docstring.

    ``secret`` keys the nonce MAC (use 32 random bytes, the same on every node that must accept the others'
    nonces). ``random_bytes(n)`` gives the unique part of each nonce; without it a counter is used, which is
    unique per process and, being under the MAC, just as unpredictable to a client.
    """

    def __init__(
        self,
        realm: str,
        *,
        secret: bytes,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = 300.0,
        random_bytes: Callable[[int], bytes] | None = None,
        nc_table_size: int = 10_000,
        allow_rfc2069: bool = True,
        uri_check: Literal["lenient", "strict"] = "lenient",
    ) -> None:
        offered: list[str] = []
        for name in algorithms:
            canonical = _canonical_algorithm(name)
            if canonical is None:
                raise ValueError(
                    f"unsupported digest algorithm {name!r}; choose from {', '.join(ALGORITHMS)}"
                )
            if canonical not in offered:
                offered.append(canonical)
        if not offered:
            raise ValueError("at least one digest algorithm must be offered")
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        #: The password hashed for unknown users, so they cost as much as known ones (no timing oracle).
        self._decoy = hmac.new(secret, b"decoy password", "sha256").hexdigest()
        if nonce_lifetime <= 0:
            raise ValueError("nonce_lifetime must be positive")
        if nc_table_size < 1:
            raise ValueError("nc_table_size must be at least 1")
        if uri_check not in ("lenient", "strict"):
            raise ValueError("uri_check must be 'lenient' or 'strict'")
        self.realm: Final = realm
        self.algorithms: Final = tuple(offered)
        self.nonce_lifetime: Final = nonce_lifetime
        self.allow_rfc2069: Final = allow_rfc2069
        self.uri_check: Final = uri_check
        self._secret = secret
        self._random_bytes = random_bytes
        self._counter = 0
        self._nc_table_size = nc_table_size
        self._nc_seen: OrderedDict[bytes, int] = OrderedDict()
        #: Timestamp of the newest nonce ever evicted from ``_nc_seen``.
        self._evicted_up_to = float("-inf")
        self._opaque = hmac.new(secret, b"opaque\x00" + realm.encode(), hashlib.sha256).hexdigest()[:32]

    # ----------------------------------------------------------------------------------- challenges

    def _new_nonce(self, now: float) -> str:
        if self._random_bytes is not None:
            unique = self._random_bytes(_UNIQUE_BYTES)
            if len(unique) != _UNIQUE_BYTES:
                raise ValueError(f"random_bytes({_UNIQUE_BYTES}) returned {len(unique)} bytes")
        else:
            self._counter += 1
            unique = self._counter.to_bytes(_UNIQUE_BYTES, "big")
        body = _TIMESTAMP.pack(now) + unique
        return (body + self._tag(body)).hex()

    def _tag(self, body: bytes) -> bytes:
        message = b"nonce\x00" + self.realm.encode("utf-8", "surrogateescape") + b"\x00" + body
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_TAG_BYTES]

    def challenge(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One Digest challenge per offered algorithm, in the configured order, sharing one fresh nonce."""
        nonce = self._new_nonce(now)
        out = []
        for algorithm in self.algorithms:
            params = [
                ("realm", self.realm),
                ("nonce", nonce),
                ("opaque", self._opaque),
                ("algorithm", algorithm),
                ("qop", "auth"),
            ]
            if stale:
                params.append(("stale", "TRUE"))
            out.append(Challenge("Digest", tuple(params)))
        return out

    def challenge_headers(self, now: float, *, stale: bool = False, proxy: bool = False) -> list[Header]:
        """The challenge as header fields: WWW-Authenticate (for 401) or Proxy-Authenticate (for 407)."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        return [Header(name, format_challenge(c)) for c in self.challenge(now, stale=stale)]

    def challenge_response(
        self,
        request: Request,
        now: float,
        *,
        stale: bool = False,
        proxy: bool = False,
        to_tag: str | None = None,
    ) -> Response:
        """A 401 (or 407 with ``proxy``) answering ``request`` with fresh challenges."""
        headers = [(h.name, h.value) for h in self.challenge_headers(now, stale=stale, proxy=proxy)]
        return make_response(request, 407 if proxy else 401, to_tag=to_tag, headers=headers)

    # ---------------------------------------------------------------------------------- verification

    def verify(
        self,
        request: Request,
        credentials_lookup: CredentialsLookup,
        now: float,
        *,
        proxy: bool = False,
    ) -> AuthResult:
        """Check the request's Authorization (or Proxy-Authorization with ``proxy``) credentials.

        Never raises for anything a peer sends: malformed credentials give :class:`Failed`, none at all
        :class:`Missing`. Only exceptions from ``credentials_lookup`` itself propagate.
        """
        name = "proxy-authorization" if proxy else "authorization"
        found_digest = False
        malformed = False
        chosen: Challenge | None = None
        for value in request.get_all(name):
            try:
                parsed = parse_auth(value)
            except SipParseError:
                malformed = True
                continue
            if parsed.scheme.lower() != "digest":
                continue
            found_digest = True
            if parsed.param("realm") == self.realm:
                chosen = parsed
                break
        if chosen is None:
            if found_digest:
                return Failed(f"no Digest credentials for realm {self.realm!r}")
            if malformed:
                return Failed(f"malformed {name} header")
            return Missing()
        creds = self._read(chosen)
        if isinstance(creds, Failed):
            return creds
        return self._check(creds, request, credentials_lookup, now)

    def _read(self, c: Challenge) -> _Credentials | Failed:
        values: dict[str, str] = {}
        for key in ("username", "realm", "nonce", "uri", "response"):
            value = c.param(key)
            if value is None:
                return Failed(f"credentials without {key}")
            values[key] = value
        algorithm = _canonical_algorithm(c.param("algorithm"))
        if algorithm is None:
            return Failed(f"unsupported algorithm {c.param('algorithm')!r}")
        if algorithm not in self.algorithms:
            return Failed(f"algorithm {algorithm} was not offered")
        qop = c.param("qop")
        nc = c.param("nc")
        cnonce = c.param("cnonce")
        if qop is not None:
            if qop.lower() != "auth":
                return Failed(f"unsupported qop {qop!r}")
            qop = "auth"
            if nc is None or _NC_RE.fullmatch(nc) is None:
                return Failed(f"bad or missing nonce count {nc!r}")
            if not cnonce:
                return Failed("qop=auth without cnonce")
        else:
            if not self.allow_rfc2069:
                return Failed("credentials without qop (RFC 2069 style) are not accepted")
            if algorithm.endswith("-sess"):
                return Failed(f"{algorithm} needs qop")
            nc = cnonce = None
        return _Credentials(
            username=values["username"],
            realm=values["realm"],
            nonce=values["nonce"],
            uri=values["uri"],
            response=values["response"],
            algorithm=algorithm,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            opaque=c.param("opaque"),
        )

    def _check(
        self, creds: _Credentials, request: Request, lookup: CredentialsLookup, now: float
    ) -> AuthResult:
        if creds.opaque is not None and not hmac.compare_digest(
            creds.opaque.encode("utf-8", "surrogateescape"), self._opaque.encode()
        ):
            return Failed("opaque does not match")
        uri_problem = self._uri_problem(creds.uri, request)
        if uri_problem is not None:
            return Failed(uri_problem)
        if _NONCE_RE.fullmatch(creds.nonce) is None:
            return Failed("nonce not issued by this server")
        raw = bytes.fromhex(creds.nonce)
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(body)):
            return Failed("nonce not issued by this server")
        (issued,) = _TIMESTAMP.unpack(body[: _TIMESTAMP.size])
        if issued > now + _CLOCK_SKEW:
            return Failed("nonce issued in the future")

        secret = lookup(creds.username)
        # An unknown user costs the same hashing as a wrong password, so response times do not tell a
        # scanner which extensions exist.
        ha1 = secret.ha1(creds.algorithm, creds.username, self.realm) if secret is not None else None
        has_ha1 = ha1 is not None
        if ha1 is None:
            ha1 = compute_ha1(creds.algorithm, creds.username, self.realm, self._decoy)
        expected = digest_response(
            creds.algorithm,
            ha1,
            nonce=creds.nonce,
            method=request.method,
            uri=creds.uri,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        given = creds.response.lower().encode("utf-8", "surrogateescape")
        matches = len(given) == _HEX_LENGTH[_hash_name(creds.algorithm)] and hmac.compare_digest(
            given, expected.encode()
        )
        if secret is None:
            return Failed(f"unknown user {creds.username!r}")
        if not has_ha1:
            return Failed(f"no {_hash_name(creds.algorithm)} secret for user {creds.username!r}")
        if not matches:
            return Failed("wrong response (password)")

        if now > issued + self.nonce_lifetime:
            return Stale(creds.username)
        if creds.nc is not None:
            count = int(creds.nc, 16)
            last = self._nc_seen.get(raw)
            if last is None:
                if issued <= self._evicted_up_to:
                    return Stale(creds.username)  # its count may have been evicted: cannot prove freshness
            elif count <= last:
                return Failed(f"replayed nonce count {creds.nc} (last {last:08x})")
            self._remember(raw, issued, count)
        return Authenticated(creds.username, creds.algorithm)

    def _remember(self, nonce: bytes, issued: float, count: int) -> None:
        self._nc_seen[nonce] = count
        self._nc_seen.move_to_end(nonce)
        while len(self._nc_seen) > self._nc_table_size:
            old, _ = self._nc_seen.popitem(last=False)
            (old_issued,) = _TIMESTAMP.unpack(old[: _TIMESTAMP.size])
            self._evicted_up_to = max(self._evicted_up_to, old_issued)

    def _uri_problem(self, text: str, request: Request) -> str | None:
        try:
            uri = parse_uri(text)
        except SipParseError:
            return f"digest uri {text!r} is not a URI"
        if uri.equivalent(request.uri) or str(uri) == str(request.uri):
            return None
        if self.uri_check == "strict":
            return f"digest uri {text!r} is not the Request-URI"
        if not isinstance(uri, SipUri):
            return f"digest uri {text!r} is not a sip/sips URI"
        request_user = request.uri.user if isinstance(request.uri, SipUri) else None
        if uri.user is not None and uri.user != request_user:
            return f"digest uri {text!r} names another user than the Request-URI"
        return None

    @property
    def nonce_counts_tracked(self) -> int:
        """How many nonces the replay table holds (bounded by ``nc_table_size``)."""
        return len(self._nc_seen)


# -------------------------------------------------------------------------------------------- client


def _qop_options(challenge: Challenge) -> tuple[str, ...] | None:
    value = challenge.param("qop")
    if value is None:
        return None
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())


def _usable(challenge: Challenge) -> str | None:
    """The canonical algorithm of a challenge this module can answer, or None."""
    if challenge.scheme.lower() != "digest":
        return None
    if challenge.param("realm") is None or not challenge.param("nonce"):
        return None
    algorithm = _canonical_algorithm(challenge.param("algorithm"))
    if algorithm is None:
        return None
    qops = _qop_options(challenge)
    if qops is not None and "auth" not in qops:
        return None
    if qops is None and algorithm.endswith("-sess"):
        return None
    return algorithm


def choose_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The strongest challenge this client can answer (SHA-256 before MD5; ties go to the earlier one)."""
    best: Challenge | None = None
    best_rank = len(ALGORITHMS)
    for challenge in challenges:
        algorithm = _usable(challenge)
        if algorithm is not None and ALGORITHMS.index(algorithm) < best_rank:
            best, best_rank = challenge, ALGORITHMS.index(algorithm)
    return best


def answer_challenge(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str,
    nc: int = 1,
) -> Challenge:
    """Credentials answering ``challenge`` (send as Authorization, or Proxy-Authorization after a 407).

    Uses qop=auth when the challenge offers it, else the RFC 2069 form (no qop, cnonce or nc). ``nc`` is the
    number of requests sent with this nonce, starting at 1. Raises :class:`DigestError` for a challenge that
    cannot be answered (see :func:`choose_challenge`).
    """
    algorithm = _usable(challenge)
    if algorithm is None:
        raise DigestError(f"cannot answer challenge {challenge}")
    if not 1 <= nc <= 0xFFFFFFFF:
        raise DigestError(f"nonce count {nc} out of range")
    realm = challenge.param("realm") or ""
    nonce = challenge.param("nonce") or ""
    qop = "auth" if _qop_options(challenge) is not None else None
    nc_text = f"{nc:08x}" if qop else None
    ha1 = compute_ha1(algorithm, username, realm, password)
    response = digest_response(
        algorithm,
        ha1,
        nonce=nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if qop else None,
    )
    params: list[tuple[str, str]] = [
        ("username", username),
        ("realm", realm),
        ("nonce", nonce),
        ("uri", uri),
        ("response", response),
    ]
    written_algorithm = challenge.param("algorithm")
    if written_algorithm is not None:
        params.append(("algorithm", algorithm))
    if qop is not None and nc_text is not None:
        params += [("cnonce", cnonce), ("qop", qop), ("nc", nc_text)]
    opaque = challenge.param("opaque")
    if opaque is not None:
        params.append(("opaque", opaque))
    return Challenge("Digest", tuple(params))
