"""Admission control through the assembled server, over loopback: a trunk calls a number whose default is
an external number, sent out through the same trunk (the product's path). With a tiny cap a burst of
INVITEs gets 503 with Retry-After beyond it, while the calls admitted complete and their in-dialog requests
(ACK, re-INVITE, BYE) pass; emergency calls pass every cap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durchwahl.routing.admission import Kind, Reason
from durchwahl.routing.demo import Phone, Provider, sdp
from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint, Flow, Response
from durchwahl.sipcore.session import ReinviteAnswered, ReinviteReceived, TerminationReason
from durchwahl.sipcore.ua import CallFailed, IncomingCall, OutgoingCall

NUMBER = "+49301234567"

OFFICE = """
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:0"]
state_dir = "var"
rtp_ports = "31000-31999"
auth_algorithms = ["MD5"]
{caps}

[[employee]]
extension = "101"
name = "Anna"
password = "anna-101-secret"

[[trunk]]
name = "provider"
host = "127.0.0.1"
port = {provider_port}
inbound_from = ["127.0.0.1/32"]

[[number]]
number = "{number}"
trunk = "provider"
default = "+49 40 999888"
"""


@contextlib.asynccontextmanager
async def office(tmp_path: Path, caps: str) -> AsyncIterator[tuple[Server, Provider, list[bytes]]]:
    """The server with ``caps`` in [server], the provider (trunk) pointed at it, and the raw messages the
    server received, as its tracer saw them."""
    provider = await Provider().start()
    path = tmp_path / "office.toml"
    path.write_text(OFFICE.format(caps=caps, provider_port=provider.port, number=NUMBER), encoding="utf-8")
    received: list[bytes] = []
    server = Server(path, control=False)

    def trace(direction: str, data: bytes, _flow: Flow) -> None:
        if direction == "in":
            received.append(data)

    server.endpoint.add_tracer(trace)
    try:
        async with server:
            provider.server_port = server.addresses[0][2]
            yield server, provider, received
    finally:
        await provider.close()


async def outcome(call: OutgoingCall) -> int | CallFailed:
    try:
        async with asyncio.timeout(5):
            return (await call.wait_answered()).status
    except CallFailed as failed:
        return failed


async def next_event(call: IncomingCall | OutgoingCall, kind: type) -> object:
    async with asyncio.timeout(3):
        while True:
            _, event = await call.events.get()
            if isinstance(event, kind):
                return event


def refused_with_retry_after(result: int | CallFailed) -> bool:
    if not isinstance(result, CallFailed) or result.response is None:
        return False
    return result.status == 503 and result.response.get("retry-after") == "5"


async def test_a_burst_over_max_calls_gets_503_while_admitted_calls_and_their_dialogs_go_on(
    tmp_path: Path,
) -> None:
    async with office(tmp_path, "max_calls = 2") as (server, provider, received):
        offer = sdp("caller", provider.rtp.port)
        burst = [provider.dial(NUMBER, offer, caller=f"+4940555{i:03d}") for i in range(6)]
        results = await asyncio.gather(*(outcome(call) for call in burst))
        admitted = [call for call, result in zip(burst, results, strict=True) if result == 200]
        assert len(admitted) == 2, results
        assert all(refused_with_retry_after(r) for r in results if r != 200), results
        legs = [await asyncio.wait_for(provider.calls.get(), 3) for _ in admitted]  # the calls out, answered

        # While the two calls are up, a second burst is refused, and the calls' own requests pass.
        second = [provider.dial(NUMBER, offer, caller=f"+4940666{i:03d}") for i in range(4)]
        admitted[0].reinvite(body=sdp("caller", provider.rtp.port) + b"a=sendonly\r\n")  # hold
        waits = {asyncio.ensure_future(next_event(leg, ReinviteReceived)): leg for leg in legs}
        done, pending = await asyncio.wait(waits, timeout=3, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        assert len(done) == 1, "the re-INVITE reached no call out"
        if waits[done.pop()] is not legs[0]:
            legs.reverse()  # the call out of the first call admitted
        legs[0].answer_reinvite(body=sdp("provider", provider.rtp.port) + b"a=recvonly\r\n")
        assert isinstance(await next_event(admitted[0], ReinviteAnswered), ReinviteAnswered)
        results = await asyncio.gather(*(outcome(call) for call in second))
        assert all(refused_with_retry_after(r) for r in results), results

        admitted[0].bye()
        legs[1].bye()
        async with asyncio.timeout(3):
            assert (await legs[0].wait_ended()).reason is TerminationReason.REMOTE_BYE
            assert (await admitted[1].wait_ended()).reason is TerminationReason.REMOTE_BYE
            while server.b2bua.active or server.overload.calls:
                await asyncio.sleep(0.02)

        # The ACKs of the admitted calls' 2xx (and of the re-INVITE's) came in while the server shed.
        acks = [
            sum(1 for m in received if m.startswith(b"ACK ") and str(call.call_id).encode() in m)
            for call in admitted
        ]
        assert acks == [2, 1]
        refused = server.overload.stats.refused
        assert refused[Kind.CALL, Reason.MAX_CALLS] == 8 and server.overload.stats.admitted[Kind.CALL] == 2

        # Below the cap again: a new call is admitted.
        again = provider.dial(NUMBER, offer)
        assert await outcome(again) == 200
        again.bye()
        await asyncio.wait_for(again.wait_ended(), 3)


async def test_an_emergency_call_passes_max_calls(tmp_path: Path) -> None:
    async with office(tmp_path, 'max_calls = 1\nemergency_trunk = "provider"') as (server, provider, _):
        held = provider.dial(NUMBER, sdp("caller", provider.rtp.port))
        assert await outcome(held) == 200
        anna = await Phone("101", "anna-101-secret", server.addresses[0][2]).start()
        try:
            ordinary = anna.dial("+4940777666")
            assert refused_with_retry_after(await outcome(ordinary))
            emergency = anna.dial("112")
            assert await outcome(emergency) == 200  # through the trunk, answered by the provider
            # Anna shares the trunk's address here, so her INVITE without credentials was not challenged
            # in the screen but by the call flow: both of her INVITEs passed the cap.
            assert server.overload.stats.admitted_anyway == 2
            emergency.bye()
            held.bye()
            await asyncio.wait_for(emergency.wait_ended(), 3)
        finally:
            await anna.close()


async def test_other_requests_have_their_own_budget(tmp_path: Path) -> None:
    caps = "max_requests_per_second = 1\nmax_cps = 100"
    async with office(tmp_path, caps) as (server, _, _), Endpoint() as client:
        await client.listen("udp:127.0.0.1:0")
        flow = client.flow_to("127.0.0.1", server.addresses[0][2])
        statuses = []
        for _ in range(3):
            options = client.make_request(
                "OPTIONS", "sip:office.example", flow, from_="<sip:probe@x>", to="<sip:office.example>"
            )
            statuses.append((await asyncio.wait_for(client.request(options, flow), 3)).status)
        assert statuses == [200, 503, 503]
        assert server.overload.stats.refused[Kind.OTHER, Reason.RATE] == 2
        assert server.overload.stats.refused_total(Kind.CALL) == 0


@pytest.mark.parametrize("caps", ["overload_queue_ms = 0"])
async def test_the_snapshot_reports_counters(tmp_path: Path, caps: str) -> None:
    async with office(tmp_path, caps) as (server, _, _):
        snapshot = server.overload.snapshot()
        assert snapshot["admitted"] == {"INVITE": 0, "REGISTER": 0, "other": 0}
        assert snapshot["datagrams_dropped"] == 0  # Linux reports the count: none dropped yet
        assert snapshot["refusing"] == []


async def probe(edge: Endpoint, flow: Flow) -> Response:
    """An edge proxy's OPTIONS probe to the server, answered."""
    options = edge.make_request(
        "OPTIONS", "sip:office.example", flow, from_="<sip:dispatcher@edge>", to="<sip:office.example>"
    )
    return await asyncio.wait_for(edge.request(options, flow), 3)


def raw_invite(call_id: str, port: int, *, to_tag: str = "", method: str = "INVITE") -> bytes:
    to = f"<sip:{NUMBER}@office.example>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:{NUMBER}@office.example SIP/2.0\r\n"
        f"v: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call_id}\r\n"
        f"f: <sip:+4940555000@provider.example>;tag=a{call_id}\r\nt: {to}\r\n"
        f"i: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n"
    ).encode()


async def test_while_refusing_a_new_invite_is_refused_from_its_raw_headers_and_its_ack_dropped(
    tmp_path: Path,
) -> None:
    from durchwahl.sipcore.message import parse_message

    async with office(tmp_path, "max_cps = 1") as (server, provider, _):
        overload = server.overload
        flow = Flow("UDP", ("127.0.0.1", server.addresses[0][2]), ("127.0.0.1", provider.port))
        assert overload.prescreen(raw_invite("first", provider.port), flow) is True  # nothing refused yet
        held = provider.dial(NUMBER, sdp("caller", provider.rtp.port))
        assert await outcome(held) == 200  # the one call of this second
        refused = provider.dial(NUMBER, sdp("caller", provider.rtp.port))
        assert refused_with_retry_after(await outcome(refused))  # refused after parsing: the first refusal
        # From now on, for a second, new INVITEs are refused before they are parsed ...
        answer = overload.prescreen(raw_invite("raw-1", provider.port), flow)
        assert isinstance(answer, bytes)
        response = parse_message(answer)
        assert isinstance(response, Response) and response.status == 503
        assert response.get("retry-after") == "5" and response.call_id == "raw-1"
        assert response.to.tag is not None and response.to.tag.startswith("dw-ov-")
        assert response.via[0].branch == "z9hG4bK-raw-1" and response.cseq.method == "INVITE"
        # ... the same tag for a retransmission, and its ACK dropped unparsed,
        assert overload.prescreen(raw_invite("raw-1", provider.port), flow) == answer
        ack = raw_invite("raw-1", provider.port, to_tag=response.to.tag, method="ACK")
        assert overload.prescreen(ack, flow) is False
        # ... while what belongs to a call goes on: requests in a dialog, other ACKs, responses.
        in_dialog = raw_invite("held", provider.port, to_tag="x1")
        assert overload.prescreen(in_dialog, flow) is True
        assert overload.prescreen(raw_invite("other", provider.port, to_tag="x2", method="ACK"), flow) is True
        assert overload.prescreen(b"SIP/2.0 200 OK\r\n\r\n", flow) is True
        held.bye()
        await asyncio.wait_for(held.wait_ended(), 3)


async def test_at_max_calls_the_node_answers_an_edge_s_options_with_503_until_a_call_ends(
    tmp_path: Path,
) -> None:
    async with office(tmp_path, "max_calls = 1") as (server, provider, _), Endpoint() as edge:
        await edge.listen("udp:127.0.0.1:0")
        flow = edge.flow_to("127.0.0.1", server.addresses[0][2])

        assert (await probe(edge, flow)).status == 200
        held = provider.dial(NUMBER, sdp("caller", provider.rtp.port))
        assert await outcome(held) == 200
        busy = await probe(edge, flow)
        assert (busy.status, busy.reason) == (503, "Service Unavailable (at max_calls)")
        assert busy.get("retry-after") is not None
        held.bye()
        await asyncio.wait_for(held.wait_ended(), 3)
        async with asyncio.timeout(3):
            while server.overload.calls:
                await asyncio.sleep(0.02)
        assert (await probe(edge, flow)).status == 200


async def test_a_node_that_refused_a_call_for_load_says_overloaded_to_an_edge_and_a_mere_stall_does_not(
    tmp_path: Path,
) -> None:
    async with office(tmp_path, "overload_queue_ms = 5") as (server, provider, _), Endpoint() as edge:
        await edge.listen("udp:127.0.0.1:0")
        flow = edge.flow_to("127.0.0.1", server.addresses[0][2])

        time.sleep(0.3)  # the whole loop stalls (a GC pass, a busy machine): nothing is refused for it
        assert (await probe(edge, flow)).status == 200
        late = provider.dial(NUMBER, sdp("caller", provider.rtp.port))
        time.sleep(0.05)  # the INVITE waits 50 ms unread: over three times overload_queue_ms
        assert refused_with_retry_after(await outcome(late))
        busy = await probe(edge, flow)
        assert (busy.status, busy.reason) == (503, "Service Unavailable (overloaded)")
        await asyncio.sleep(2.1)
        assert (await probe(edge, flow)).status == 200
