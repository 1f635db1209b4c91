"""Digest authentication: the RFC worked examples, client→server round trips, every verification failure, and
a property test that no peer-supplied Authorization value makes ``verify`` raise."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durchwahl.sipcore.auth import (
    Authenticated,
    DigestError,
    DigestSecret,
    DigestServer,
    Failed,
    Missing,
    Stale,
    answer_challenge,
    choose_challenge,
    compute_ha1,
    digest_response,
    format_challenge,
)
from durchwahl.sipcore.headers import Challenge, Header, parse_auth
from durchwahl.sipcore.message import Request
from durchwahl.sipcore.uri import parse_uri

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "office.example"
T0 = 1_700_000_000.0
USERS = {
    "101": DigestSecret(password="anna-secret"),
    "102": DigestSecret(
        ha1_md5=compute_ha1("MD5", "102", REALM, "bernd-secret"),
        ha1_sha256=compute_ha1("SHA-256", "102", REALM, "bernd-secret"),
    ),
    "103": DigestSecret(ha1_md5=compute_ha1("MD5", "103", REALM, "carla-secret")),
}


def lookup(username: str) -> DigestSecret | None:
    return USERS.get(username)


def make_server(**kwargs: object) -> DigestServer:
    return DigestServer(REALM, secret=SECRET, **kwargs)  # type: ignore[arg-type]


def register(*auth: str, uri: str = "sip:office.example", header: str = "Authorization") -> Request:
    headers = [
        Header("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1"),
        Header("From", "<sip:101@office.example>;tag=a"),
        Header("To", "<sip:101@office.example>"),
        Header("Call-ID", "c1"),
        Header("CSeq", "1 REGISTER"),
    ]
    headers += [Header(header, value) for value in auth]
    return Request("REGISTER", parse_uri(uri), tuple(headers))


def answer(
    server: DigestServer,
    *,
    now: float = T0,
    algorithm: str = "SHA-256",
    user: str = "101",
    password: str = "anna-secret",
    uri: str = "sip:office.example",
    nc: int = 1,
) -> tuple[str, Challenge]:
    challenges = server.challenge(now)
    chosen = next(c for c in challenges if c.param("algorithm") == algorithm)
    creds = answer_challenge(chosen, "REGISTER", uri, user, password, cnonce="c0ffee", nc=nc)
    return str(creds), chosen


# ------------------------------------------------------------------------------------ RFC examples


RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1(algorithm: str, expected: str) -> None:
    challenge = parse_auth(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    creds = answer_challenge(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE, nc=1
    )
    assert creds.param("response") == expected
    assert creds.param("qop") == "auth"
    assert creds.param("nc") == "00000001"
    assert creds.param("algorithm") == algorithm
    assert creds.param("opaque") == RFC7616_OPAQUE
    text = str(creds)
    assert "qop=auth," in text and "nc=00000001" in text and f"algorithm={algorithm}" in text
    assert 'uri="/dir/index.html"' in text


def test_rfc2617_section_3_5() -> None:
    challenge = parse_auth(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    creds = answer_challenge(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b", nc=1
    )
    assert creds.param("response") == "6629fae49393a05397450978507c4ef1"
    assert creds.param("algorithm") is None  # not in the challenge, so not echoed


def test_rfc2069_form_without_qop() -> None:
    challenge = parse_auth(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    creds = answer_challenge(challenge, "GET", "/dir/index.html", "Mufasa", "CircleOfLife", cnonce="x")
    ha1 = hashlib.md5(b"Mufasa:testrealm@host.com:CircleOfLife").hexdigest()
    ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    expected = hashlib.md5(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}".encode()).hexdigest()
    assert creds.param("response") == expected == "1949323746fe6a43ef61f9606e7febea"
    assert creds.param("qop") is None and creds.param("nc") is None and creds.param("cnonce") is None


def test_sess_algorithms_fold_nonce_and_cnonce_into_ha1() -> None:
    ha1 = compute_ha1("SHA-256-sess", "u", "r", "p")
    assert ha1 == hashlib.sha256(b"u:r:p").hexdigest()
    session = hashlib.sha256(f"{ha1}:N:C".encode()).hexdigest()
    ha2 = hashlib.sha256(b"INVITE:sip:x").hexdigest()
    expected = hashlib.sha256(f"{session}:N:00000001:C:auth:{ha2}".encode()).hexdigest()
    got = digest_response(
        "sha-256-SESS", ha1, nonce="N", method="INVITE", uri="sip:x", qop="auth", nc="00000001", cnonce="C"
    )
    assert got == expected
    with pytest.raises(DigestError):
        digest_response("MD5-sess", ha1, nonce="N", method="INVITE", uri="sip:x", qop=None)


# ------------------------------------------------------------------------------------- challenges


def test_challenge_one_per_algorithm_in_configured_order() -> None:
    server = make_server()
    challenges = server.challenge(T0)
    assert [c.param("algorithm") for c in challenges] == ["SHA-256", "MD5"]
    assert len({c.param("nonce") for c in challenges}) == 1
    for c in challenges:
        assert c.scheme == "Digest"
        assert c.param("realm") == REALM
        assert c.param("qop") == "auth"
        assert c.param("opaque")
        assert c.param("stale") is None
    md5_first = make_server(algorithms=("md5", "SHA-256"))
    assert [c.param("algorithm") for c in md5_first.challenge(T0)] == ["MD5", "SHA-256"]
    assert [c.param("algorithm") for c in make_server(algorithms=["MD5"]).challenge(T0)] == ["MD5"]


def test_challenge_headers_quote_qop_and_parse_back() -> None:
    server = make_server(random_bytes=lambda n: b"\x07" * n)
    headers = server.challenge_headers(T0, stale=True)
    assert [h.name for h in headers] == ["WWW-Authenticate", "WWW-Authenticate"]
    value = headers[0].value
    assert value.startswith('Digest realm="office.example", nonce="')
    assert 'qop="auth"' in value and "algorithm=SHA-256" in value and "stale=TRUE" in value
    assert parse_auth(value).param("stale") == "TRUE"
    assert [h.name for h in server.challenge_headers(T0, proxy=True)] == ["Proxy-Authenticate"] * 2
    assert format_challenge(parse_auth(value)) == value


def test_challenge_response_is_401_or_407() -> None:
    server = make_server()
    request = register()
    r401 = server.challenge_response(request, T0, to_tag="t")
    assert r401.status == 401 and len(r401.www_authenticate) == 2
    r407 = server.challenge_response(request, T0, proxy=True)
    assert r407.status == 407 and len(r407.proxy_authenticate) == 2


def test_nonces_are_unique() -> None:
    server = make_server()
    nonces = {server.challenge(T0)[0].param("nonce") for _ in range(50)}
    assert len(nonces) == 50
    randomised = make_server(random_bytes=lambda n: bytes(range(n)))
    assert randomised.challenge(T0)[0].param("nonce") != server.challenge(T0)[0].param("nonce")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ("SHA-512-256",)},
        {"algorithms": ()},
        {"secret": b"short"},
        {"nonce_lifetime": 0},
        {"nc_table_size": 0},
        {"uri_check": "loose"},
    ],
)
def test_bad_server_configuration(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"secret": SECRET, **kwargs}
    with pytest.raises(ValueError):
        DigestServer(REALM, **args)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
@pytest.mark.parametrize("user", ["101", "102"])
def test_round_trip(algorithm: str, user: str) -> None:
    server = make_server(algorithms=("SHA-256", "MD5", "SHA-256-sess", "MD5-sess"))
    password = {"101": "anna-secret", "102": "bernd-secret"}[user]
    auth, _ = answer(server, algorithm=algorithm, user=user, password=password)
    assert server.verify(register(auth), lookup, T0 + 1) == Authenticated(user, algorithm)


def test_round_trip_proxy_authorization() -> None:
    server = make_server()
    auth, _ = answer(server)
    request = register(auth, header="Proxy-Authorization")
    assert server.verify(request, lookup, T0, proxy=True) == Authenticated("101", "SHA-256")
    assert server.verify(request, lookup, T0 + 1) == Missing()  # no Authorization header


def test_rfc2069_answer_accepted_by_default_and_refusable() -> None:
    server = make_server(algorithms=("MD5",))
    nonce = server.challenge(T0)[0].param("nonce")
    assert nonce is not None
    bare = Challenge("Digest", (("realm", REALM), ("nonce", nonce)))
    creds = str(answer_challenge(bare, "REGISTER", "sip:office.example", "101", "anna-secret", cnonce="c"))
    assert server.verify(register(creds), lookup, T0) == Authenticated("101", "MD5")
    strict = make_server(algorithms=("MD5",), allow_rfc2069=False)
    assert isinstance(strict.verify(register(creds), lookup, T0), Failed)


def test_nonce_count_increases() -> None:
    server = make_server()
    challenge = server.challenge(T0)[0]
    for nc in (1, 2, 5):
        creds = answer_challenge(
            challenge, "REGISTER", "sip:office.example", "101", "anna-secret", cnonce="c", nc=nc
        )
        assert server.verify(register(str(creds)), lookup, T0 + nc) == Authenticated("101", "SHA-256")


def test_choose_challenge_prefers_strongest_supported() -> None:
    md5 = parse_auth('Digest realm="r", nonce="n", algorithm=MD5, qop="auth"')
    sha = parse_auth('Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"')
    sha512 = parse_auth('Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"')
    authint = parse_auth('Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth-int"')
    basic = parse_auth('Basic realm="r"')
    assert choose_challenge([md5, sha]) is sha
    assert choose_challenge([sha512, md5]) is md5
    assert choose_challenge([basic, authint, md5]) is md5
    assert choose_challenge([basic, sha512]) is None
    assert choose_challenge([]) is None
    with pytest.raises(DigestError):
        answer_challenge(sha512, "REGISTER", "sip:r", "u", "p", cnonce="c")
    with pytest.raises(DigestError):
        answer_challenge(md5, "REGISTER", "sip:r", "u", "p", cnonce="c", nc=0)


# ------------------------------------------------------------------------------------------ failures


def test_missing_credentials() -> None:
    server = make_server()
    assert server.verify(register(), lookup, T0) == Missing()
    assert server.verify(register("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="), lookup, T0) == Missing()


def test_stale_nonce() -> None:
    server = make_server(nonce_lifetime=30)
    auth, _ = answer(server)
    assert server.verify(register(auth), lookup, T0 + 31) == Stale("101")
    wrong, _ = answer(server, password="nope")
    assert isinstance(server.verify(register(wrong), lookup, T0 + 31), Failed)  # stale only if correct


def test_nonce_survives_a_restart_with_the_same_secret() -> None:
    auth, _ = answer(make_server())
    assert make_server().verify(register(auth), lookup, T0 + 10) == Authenticated("101", "SHA-256")
    other = DigestServer(REALM, secret=b"another secret, 32 bytes long!!!")
    assert other.verify(register(auth), lookup, T0 + 10) == Failed("opaque does not match")


def test_wrong_password() -> None:
    server = make_server()
    auth, _ = answer(server, password="wrong")
    assert server.verify(register(auth), lookup, T0) == Failed("wrong response (password)")


def test_unknown_user_and_missing_ha1() -> None:
    server = make_server()
    auth, _ = answer(server, user="999")
    assert server.verify(register(auth), lookup, T0) == Failed("unknown user '999'")
    only_md5, _ = answer(server, user="103", password="carla-secret")
    assert server.verify(register(only_md5), lookup, T0) == Failed("no SHA-256 secret for user '103'")
    md5, _ = answer(server, user="103", password="carla-secret", algorithm="MD5")
    assert server.verify(register(md5), lookup, T0) == Authenticated("103", "MD5")


def test_replayed_nonce_count() -> None:
    server = make_server()
    auth, _ = answer(server)
    request = register(auth)
    assert isinstance(server.verify(request, lookup, T0), Authenticated)
    result = server.verify(request, lookup, T0 + 1)
    assert isinstance(result, Failed) and "replayed" in result.reason


def test_replay_table_is_bounded_and_evicted_nonces_become_stale() -> None:
    server = make_server(nc_table_size=2)
    first, _ = answer(server, now=T0)
    assert isinstance(server.verify(register(first), lookup, T0), Authenticated)
    for i in (1, 2):
        later, _ = answer(server, now=T0 + i)
        assert isinstance(server.verify(register(later), lookup, T0 + i), Authenticated)
    assert server.nonce_counts_tracked == 2
    # The first nonce's count was evicted: a replay of it cannot be told from a first use, so re-challenge.
    assert server.verify(register(first), lookup, T0 + 3) == Stale("101")
    fresh, _ = answer(server, now=T0 + 4)
    assert isinstance(server.verify(register(fresh), lookup, T0 + 4), Authenticated)


def test_wrong_realm() -> None:
    server = make_server()
    auth, _ = answer(server)
    other = auth.replace(f'realm="{REALM}"', 'realm="elsewhere.example"')
    assert server.verify(register(other), lookup, T0) == Failed(
        "no Digest credentials for realm 'office.example'"
    )
    # Credentials for several realms: ours is found among them.
    assert isinstance(server.verify(register(other, auth), lookup, T0), Authenticated)


def test_algorithm_not_offered_or_unknown() -> None:
    server = make_server(algorithms=("SHA-256",))
    md5_server = make_server(algorithms=("MD5",))
    auth, _ = answer(md5_server, algorithm="MD5")
    assert server.verify(register(auth), lookup, T0) == Failed("algorithm MD5 was not offered")
    unknown = auth.replace("algorithm=MD5", "algorithm=SHA-512-256")
    assert server.verify(register(unknown), lookup, T0) == Failed("unsupported algorithm 'SHA-512-256'")


def test_tampered_nonce() -> None:
    server = make_server()
    auth, challenge = answer(server)
    nonce = challenge.param("nonce")
    assert nonce is not None
    flipped = nonce[:-1] + ("0" if nonce[-1] != "0" else "1")
    assert server.verify(register(auth.replace(nonce, flipped)), lookup, T0) == Failed(
        "nonce not issued by this server"
    )
    # A later timestamp under the old MAC (trying to extend the lifetime) is caught too.
    older = nonce[:2] + ("0" if nonce[2] != "0" else "1") + nonce[3:]
    assert server.verify(register(auth.replace(nonce, older)), lookup, T0) == Failed(
        "nonce not issued by this server"
    )
    assert server.verify(register(auth.replace(nonce, nonce.upper())), lookup, T0) == Failed(
        "nonce not issued by this server"
    )


def test_nonce_from_the_future() -> None:
    server = make_server()
    auth, _ = answer(server, now=T0 + 100)
    assert server.verify(register(auth), lookup, T0) == Failed("nonce issued in the future")


def test_wrong_opaque() -> None:
    server = make_server()
    auth, challenge = answer(server)
    opaque = challenge.param("opaque")
    assert opaque is not None
    assert server.verify(register(auth.replace(opaque, "x" + opaque[1:])), lookup, T0) == Failed(
        "opaque does not match"
    )
    without = auth.replace(f', opaque="{opaque}"', "")
    assert isinstance(server.verify(register(without), lookup, T0), Authenticated)


def test_uri_checks() -> None:
    server = make_server()
    aor = "sip:101@office.example"
    # SIPp's default: the server's address instead of the Request-URI — accepted (lenient).
    sipp, _ = answer(server, uri="sip:127.0.0.1:5060")
    assert isinstance(server.verify(register(sipp, uri=aor), lookup, T0), Authenticated)
    # Same user, other host: accepted; another user: refused.
    alias, _ = answer(server, uri="sip:101@10.0.0.1")
    assert isinstance(server.verify(register(alias, uri=aor), lookup, T0), Authenticated)
    other_user, _ = answer(server, uri="sip:102@office.example")
    result = server.verify(register(other_user, uri=aor), lookup, T0)
    assert isinstance(result, Failed) and "another user" in result.reason
    garbage, _ = answer(server, uri="not a uri")
    result = server.verify(register(garbage), lookup, T0)
    assert isinstance(result, Failed) and "not a URI" in result.reason
    tel, _ = answer(server, uri="tel:+4930123")
    assert isinstance(server.verify(register(tel), lookup, T0), Failed)
    # Strict: only the Request-URI (RFC 3261 §19.1.4 equivalence) will do.
    strict = make_server(uri_check="strict")
    exact, _ = answer(strict, uri="sip:OFFICE.example")
    assert isinstance(strict.verify(register(exact), lookup, T0), Authenticated)
    sipp_strict, _ = answer(strict, uri="sip:127.0.0.1:5060")
    result = strict.verify(register(sipp_strict), lookup, T0)
    assert isinstance(result, Failed) and "not the Request-URI" in result.reason


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda a: a.replace("qop=auth", "qop=auth-int"), "unsupported qop 'auth-int'"),
        (lambda a: a.replace("nc=00000001", "nc=1"), "bad or missing nonce count '1'"),
        (lambda a: a.replace(', cnonce="c0ffee"', ""), "qop=auth without cnonce"),
        (lambda a: a.replace('username="101", ', ""), "credentials without username"),
        (lambda a: a.replace('uri="sip:office.example", ', ""), "credentials without uri"),
    ],
)
def test_malformed_credentials(edit: object, reason: str) -> None:
    server = make_server()
    auth, _ = answer(server)
    assert callable(edit)
    assert server.verify(register(edit(auth)), lookup, T0) == Failed(reason)


def test_sess_without_qop_is_refused() -> None:
    server = make_server(algorithms=("MD5-sess",))
    auth, _ = answer(server, algorithm="MD5-sess")
    stripped = auth.replace(', cnonce="c0ffee", qop=auth, nc=00000001', "")
    assert server.verify(register(stripped), lookup, T0) == Failed("MD5-sess needs qop")


def test_malformed_header_alone_fails_but_does_not_hide_good_credentials() -> None:
    server = make_server()
    auth, _ = answer(server)
    assert server.verify(register('Digest username="unterminated'), lookup, T0) == Failed(
        "malformed authorization header"
    )
    assert isinstance(server.verify(register("Digest ===", auth), lookup, T0), Authenticated)


# -------------------------------------------------------------------------------------- properties

_PARAM_NAMES = st.sampled_from(
    ["username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc", "cnonce", "opaque", "x"]
)
_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from([REALM, "MD5", "SHA-256", "auth", "00000001", "sip:office.example", "101", "f" * 64]),
)


@st.composite
def _structured(draw: st.DrawFn) -> str:
    params = draw(st.lists(st.tuples(_PARAM_NAMES, _VALUES), max_size=10))
    scheme = draw(st.sampled_from(["Digest", "digest", "Basic", "X"]))
    quote = draw(st.booleans())
    body = ", ".join(f'{k}="{v}"' if quote else f"{k}={v}" for k, v in params)
    return f"{scheme} {body}"


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.one_of(st.text(max_size=80), _structured()), min_size=1, max_size=3))
def test_garbage_never_raises(values: list[str]) -> None:
    server = make_server()
    result = server.verify(register(*values), lookup, T0)
    assert isinstance(result, (Failed, Missing))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.text(min_size=1, max_size=3))
def test_mutated_valid_answer_never_raises(position: int, replacement: str) -> None:
    server = make_server()
    auth, _ = answer(server)
    i = position % len(auth)
    mutated = auth[:i] + replacement + auth[i + 1 :]
    result = server.verify(register(mutated), lookup, T0)
    assert isinstance(result, (Authenticated, Failed, Missing))
