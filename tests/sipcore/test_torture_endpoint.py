"""RFC 4475 / RFC 5118 torture corpus on the wire: each message goes to a running endpoint over loopback UDP.

The index's ``expect`` column says what a UAS such as a B2BUA should answer: a status code, ``accept`` (any
reply other than 400/505), ``err`` (a final response >= 400) or ``drop`` (no reply). The messages name foreign
hosts in Via, Contact and Route: the test records every datagram the endpoint sends and checks that each went
to the test's own loopback socket, never to an address taken from a message.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from torture import TortureCase, load_cases

from durchwahl.sipcore import Endpoint, IncomingRequest, Response, SipParseError, parse_message
from durchwahl.sipcore.headers import Header
from durchwahl.sipcore.transport import Flow

CASES = load_cases()

#: Messages whose answer on the wire does not (yet) match the index, with the reason. Kept visible.
EXPECTED_FAILURES: dict[str, str] = {}

#: How long to wait for an answer before concluding that the endpoint dropped the message.
DROP_WAIT = 0.4


async def _handler(incoming: IncomingRequest) -> None:
    """A UAS that processes what passes the core checks: calls are declined, everything else is accepted."""
    if incoming.request.method == "INVITE":
        incoming.respond(480)
    else:
        incoming.respond(200)


def _read_reply(data: bytes) -> Response:
    """The endpoint's reply. An answer to a malformed request copies its malformed headers (RFC 3261
    §8.2.6.2), so when the reply does not parse as a whole, read its status line and header lines alone."""
    try:
        reply = parse_message(data)
    except SipParseError:
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
        version, status, reason = head[0].split(" ", 2)
        assert version == "SIP/2.0", f"not a response: {data[:80]!r}"
        headers = tuple(Header(*(part.strip() for part in line.split(":", 1))) for line in head[1:])
        return Response(int(status), reason, headers)
    assert isinstance(reply, Response), f"endpoint sent a request: {data[:80]!r}"
    return reply


def _judge(case: TortureCase, replies: list[Response]) -> str | None:
    """None when the replies meet one of the case's expectations, else what went wrong."""
    finals = [r for r in replies if r.status >= 200]
    for expect in case.expect:
        if expect == "drop":
            if not replies:
                return None
        elif expect == "accept":
            if finals and all(r.status not in (400, 505) for r in finals):
                return None
        elif expect == "err":
            if finals and finals[0].status >= 400:
                return None
        elif finals and finals[0].status == int(expect):
            return None
    got = ", ".join(f"{r.status} {r.reason}" for r in replies) or "no reply"
    return f"expected {'|'.join(case.expect)}, got {got}"


def _params() -> list[object]:
    out: list[object] = []
    for case in CASES:
        marks = []
        if case.name in EXPECTED_FAILURES:
            marks.append(pytest.mark.xfail(reason=EXPECTED_FAILURES[case.name], strict=True))
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
async def test_endpoint_answers_torture_message(case: TortureCase) -> None:
    loop = asyncio.get_running_loop()
    async with Endpoint(_handler) as endpoint:
        _, port = await endpoint.listen("udp:127.0.0.1:0")
        sent_to: list[tuple[str, int]] = []
        transports = endpoint._transports
        original = transports.udp_send

        def recording_send(data: bytes, flow: Flow) -> None:
            sent_to.append(flow.remote)
            original(data, flow)

        transports.udp_send = recording_send  # type: ignore[method-assign]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        try:
            await loop.sock_sendto(client, case.data, ("127.0.0.1", port))
            replies: list[Response] = []
            deadline = loop.time() + (DROP_WAIT if "drop" in case.expect else 2.0)
            while loop.time() < deadline:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(client, 65535), deadline - loop.time())
                except TimeoutError:
                    break
                reply = _read_reply(data)
                replies.append(reply)
                if reply.status >= 200:
                    break
            own = client.getsockname()
        finally:
            client.close()
    assert all(dest == own for dest in sent_to), f"sent to {set(sent_to)}, the test socket is {own}"
    problem = _judge(case, replies)
    assert problem is None, f"{case.name} ({case.title}): {problem}"
    for reply in replies:
        if reply.status in (400, 420, 505):
            assert reply.reason, "error responses carry a reason phrase"
        if reply.status == 420:
            assert reply.get("Unsupported"), "420 lists the unsupported options"
        if reply.status in (405, 501):
            assert reply.get("Allow"), "405/501 carry Allow"
