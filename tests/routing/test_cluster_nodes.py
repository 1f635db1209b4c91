"""Two durchwahl nodes sharing one Redis, behind an edge played by the test (a plain SIP endpoint on
loopback): a phone registered through one node is rung by the other, through the Path the edge gave; what
the edge adds is believed from the edge's address only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster_env import redis_server, redis_url

from durchwahl.routing.cli import main
from durchwahl.routing.cluster_run import Part
from durchwahl.routing.directory import Group, Strategy
from durchwahl.routing.redis_shared import RedisRingState, read_cluster_records
from durchwahl.routing.redis_store import connect
from durchwahl.routing.server import Server
from durchwahl.sipcore import Endpoint, IncomingRequest, Response
from durchwahl.sipcore.auth import answer_challenge

__all__ = ["redis_server"]  # a fixture

OFFICE = """
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:0"]
state_dir = "var"
rtp_ports = "{rtp}"
auth_algorithms = ["MD5"]

[cluster]
store = "{store}"
edges = ["127.0.0.1:{edge}"]

[[employee]]
extension = "101"
name = "Anna Schmidt"
password = "anna-101-secret"

[[employee]]
extension = "102"
name = "Bernd Meier"
sip_user = "bernd"
password = "bernd-102-secret"

[[trunk]]
name = "provider"
host = "127.0.0.1"
port = 5070
inbound_from = ["127.0.0.2/32"]

[[number]]
number = "+49 30 7654321"
trunk = "provider"
default = "101"
"""


class Edge:
    """The edge proxy as the nodes see it: one UDP address; requests the nodes send it are kept."""

    def __init__(self) -> None:
        self.endpoint = Endpoint(self._handle)
        self.received: asyncio.Queue[IncomingRequest] = asyncio.Queue()
        self.port = 0

    async def start(self) -> Edge:
        _, self.port = await self.endpoint.listen("udp:127.0.0.1:0")
        return self

    def _handle(self, incoming: IncomingRequest) -> None:
        self.received.put_nowait(incoming)

    async def register(
        self,
        node_port: int,
        user: str,
        password: str,
        headers: list[tuple[str, str]],
        *,
        answer_to: int | None = None,
    ) -> Response:
        """REGISTER ``user`` at a node as the edge relays it (``headers``: Path, X-Edge-Source); the answer
        to the challenge goes to ``answer_to`` (another node's port) when given."""
        client = self.endpoint
        flow = client.flow_to("127.0.0.1", node_port)
        aor = f"sip:{user}@office.example"

        def request(cseq: int, extra: list[tuple[str, str]], call_id: str | None = None) -> object:
            return client.make_request(
                "REGISTER",
                "sip:office.example",
                flow,
                from_=f"<{aor}>",
                to=f"<{aor}>",
                call_id=call_id,
                cseq=cseq,
                headers=[*headers, *extra, ("Expires", "600")],
            )

        first = request(1, [])
        challenged = await client.request(first, flow)  # type: ignore[arg-type]
        assert challenged.status == 401
        creds = answer_challenge(
            challenged.www_authenticate[0], "REGISTER", "sip:office.example", user, password, cnonce="c0ffee"
        )
        retry = request(2, [("Authorization", str(creds))], call_id=first.call_id)  # type: ignore[attr-defined]
        if answer_to is not None:
            flow = client.flow_to("127.0.0.1", answer_to)
        return await client.request(retry, flow)  # type: ignore[arg-type]


def office(tmp_path: Path, store: str, edge: int, rtp: str) -> Path:
    path = tmp_path / "office.toml"
    path.write_text(OFFICE.format(store=store, edge=edge, rtp=rtp), encoding="utf-8")
    return path


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: Part) -> AsyncIterator[tuple[Edge, Server, Server]]:
    url = redis_url(redis_server)
    client = connect(url)
    await client.flushdb()
    await client.aclose()
    edge = await Edge().start()
    one = Server(office(tmp_path, url, edge.port, "21000-21099"), node="one", control=False)
    two = Server(office(tmp_path, url, edge.port, "21100-21199"), node="two", control=False)
    async with one, two:
        try:
            yield edge, one, two
        finally:
            await edge.endpoint.close()


PATH = "<sip:edge@127.0.0.1:{port};lr;received=sip:192.0.2.7:5062>"


async def test_a_phone_registered_through_one_node_is_rung_by_the_other_through_its_path(
    cluster: tuple[Edge, Server, Server], capsys: pytest.CaptureFixture[str]
) -> None:
    edge, one, two = cluster
    path = PATH.format(port=edge.port)
    added = [("Path", path), ("X-Edge-Source", "sip:192.0.2.7:5062")]
    ok = await edge.register(one.addresses[0][2], "101", "anna-101-secret", added)
    assert ok.status == 200 and ok.values("path") == ()  # the phone did not say Supported: path
    (binding,) = await two.registrar.contacts("101")  # one store: the other node knows the binding
    assert binding.path == (path,)
    assert one.directory.server.state_dir != two.directory.server.state_dir  # each node its own folder

    # A provider's call for the number enters the other node; the phone is rung through the edge.
    async with Endpoint() as provider:
        await provider.listen("udp:127.0.0.2:0")
        flow = provider.flow_to("127.0.0.1", two.addresses[0][2])
        invite = provider.make_request(
            "INVITE",
            "sip:+49307654321@office.example",
            flow,
            from_="<sip:+4989555123@provider.example>",
            to="<sip:+49307654321@office.example>",
            headers=[("Content-Type", "application/sdp")],
            body=SDP,
        )
        outgoing = provider.send_request(invite, flow)
        async with asyncio.timeout(5):
            rung = await edge.received.get()
        assert rung.request.method == "INVITE"
        assert rung.request.get_all("route") == (path,)  # the Path as the route set (RFC 3327)
        assert str(rung.request.uri) == binding.uri.__str__()
        assert rung.flow.remote[1] == two.addresses[0][2]  # sent by the other node
        rung.respond(486)
        async with asyncio.timeout(5):
            final = await outgoing.final
        assert final.status == 486

    # The call's record is the cluster's, whichever node asks.
    async with asyncio.timeout(5):
        while not (found := await read_cluster_records(one.shared)):
            await asyncio.sleep(0.05)
    ((node, record),) = found
    assert node == "two" and record.destination_id == "101" and record.status == 486
    assert await asyncio.to_thread(main, ["cdr", "--config", str(one.directory.source)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["node", "started", "caller"]
    assert table[1].startswith("two ") and "busy (486)" in table[1]


async def test_each_binding_is_pinged_by_the_node_it_registered_with_through_its_path(
    cluster: tuple[Edge, Server, Server],
) -> None:
    edge, one, two = cluster
    path = PATH.format(port=edge.port)
    ok = await edge.register(one.addresses[0][2], "101", "anna-101-secret", [("Path", path)])
    assert ok.status == 200
    own_two = two._own_addresses
    assert await two.registrar.ping(two.endpoint, timeout=0.5, own=own_two) == 0
    assert edge.received.empty()  # not node two's binding: node two leaves it to node one
    pinging = asyncio.ensure_future(one.registrar.ping(one.endpoint, timeout=2.0, own=one._own_addresses))
    async with asyncio.timeout(3):
        probe = await edge.received.get()
    assert probe.request.method == "OPTIONS" and probe.request.get_all("route") == (path,)
    probe.respond(200)
    assert await pinging == 0


async def test_a_path_from_anywhere_but_the_edge_is_ignored(cluster: tuple[Edge, Server, Server]) -> None:
    _, one, _ = cluster
    async with Endpoint() as phone:
        await phone.listen("udp:127.0.0.1:0")
        stranger = Edge()
        stranger.endpoint = phone
        forged = "<sip:victim@127.0.0.1:9;lr>"
        ok = await stranger.register(one.addresses[0][2], "bernd", "bernd-102-secret", [("Path", forged)])
        assert ok.status == 200
    (binding,) = await one.registrar.contacts("bernd")
    assert binding.path == ()  # reached on the flow its REGISTER came on, not where a phone said


async def test_the_nodes_share_one_nonce_key(cluster: tuple[Edge, Server, Server]) -> None:
    """An answer to one node's challenge is accepted by the other (a node failing over mid-way)."""
    edge, one, two = cluster
    source = [("X-Edge-Source", "sip:192.0.2.8:5062")]
    ok = await edge.register(
        one.addresses[0][2], "bernd", "bernd-102-secret", source, answer_to=two.addresses[0][2]
    )
    assert ok.status == 200
    assert two.registrar.guard.status("192.0.2.8", 0.0).failures == 0


async def test_guesses_spread_over_the_nodes_are_counted_as_against_one(
    cluster: tuple[Edge, Server, Server],
) -> None:
    edge, one, two = cluster
    source = [("X-Edge-Source", "sip:198.51.100.9:5062")]
    policy = one.registrar.guard.policy
    for attempt in range(policy.throttle_after):
        port = (one, two)[attempt % 2].addresses[0][2]
        refused = await edge.register(port, "101", "guessed-wrong", source)
        assert refused.status == 401
    now = time.time()
    async with asyncio.timeout(3):
        while not all(
            node.registrar.guard.status("198.51.100.9", now, "101").throttled for node in (one, two)
        ):
            await asyncio.sleep(0.02)
    for node in (one, two):
        status = node.registrar.guard.status("198.51.100.9", now, "101")
        assert status.failures == policy.throttle_after  # each node counted every guess, its own and others'
        assert node.registrar.guard.status("127.0.0.1", now).failures == 0  # not the edge's address


async def test_evenly_takes_turns_across_the_nodes(redis_server: Part) -> None:
    url = redis_url(redis_server)
    clients = [connect(url), connect(url)]
    await clients[0].flushdb()
    group = Group("200", "Vertrieb", Strategy.EVENLY, ("101", "102", "103"), 15)
    nodes = [RedisRingState(client, url) for client in clients]
    try:
        plans = await asyncio.gather(*(nodes[i % 2].plan(group, {"101", "102", "103"}) for i in range(30)))
    finally:
        for client in clients:
            await client.aclose()
    firsts = [plan.steps[0].extensions[0] for plan in plans]
    assert sorted(firsts.count(member) for member in ("101", "102", "103")) == [10, 10, 10]


SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)
