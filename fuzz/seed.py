"""Build ``fuzz/corpus/`` (gitignored): the RFC 4475/5118 torture messages plus a few everyday messages.

    .venv/bin/python fuzz/seed.py [--torture DIR] [--out DIR]

Existing files in the corpus (what earlier fuzzing runs found) are kept; seeds are named after their source.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TORTURE = Path(__file__).resolve().parents[2] / "shared" / "sip-torture"  # beside the checkout

_INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@client.atlanta.example.com;transport=tcp>\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Supported: timer, 100rel\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Expires: 120\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 31\r\n"
    b"\r\n"
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
)

_REGISTER = (
    b"REGISTER sip:registrar.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds7\r\n"
    b"f: <sip:bob@example.com>;tag=a73kszlfl\r\n"
    b"t: <sip:bob@example.com>\r\n"
    b"i: 1j9FpLxk3uxtm8tn@192.0.2.4\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"m: <sip:bob@192.0.2.4>;expires=3600;q=0.7, *\r\n"
    b'Authorization: Digest username="bob", realm="example.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359",'
    b' uri="sip:registrar.example.com", response="dfe56131d1958046689d83306477ecc", qop=auth, nc=00000001,'
    b' cnonce="0a4f113b", algorithm=MD5\r\n'
    b"l: 0\r\n"
    b"\r\n"
)

_RESPONSE = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds7;received=192.0.2.4;rport=5060\r\n"
    b"From: <sip:bob@example.com>;tag=a73kszlfl\r\n"
    b"To: <sip:bob@example.com>;tag=1410948204\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.4\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="example.com", qop="auth,auth-int", nonce="ea9c8e88df84f1c",'
    b" algorithm=SHA-256, stale=FALSE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

EVERYDAY = {
    "everyday-invite.dat": _INVITE,
    "everyday-register.dat": _REGISTER,
    "everyday-401.dat": _RESPONSE,
    # Several messages and keep-alives in one stream (for the framing target).
    "everyday-stream.dat": b"\r\n\r\n" + _RESPONSE + b"\r\n" + _INVITE,
}


def build(out: Path = HERE / "corpus", torture: Path = DEFAULT_TORTURE) -> int:
    """Copy the seeds into ``out``; return how many were written."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(torture.rglob("*.dat")):
        prefix = "" if path.parent == torture else f"{path.parent.name}-"
        shutil.copyfile(path, out / f"{prefix}{path.name}")
        count += 1
    for name, data in EVERYDAY.items():
        (out / name).write_bytes(data)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--torture", type=Path, default=DEFAULT_TORTURE)
    parser.add_argument("--out", type=Path, default=HERE / "corpus")
    args = parser.parse_args()
    print(f"{build(args.out, args.torture)} seeds in {args.out}")


if __name__ == "__main__":
    main()
