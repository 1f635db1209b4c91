"""The call-flow harness itself (harness.py): a ring group's 20 s run out in a fraction of a second of real
time, the same messages at the same virtual moments on every run, lost datagrams retransmitted on the
virtual clock, and UDP's semantics on the memory network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import Office, VirtualTimeLoop, answered, ended, event_of, network, virtual_loop
from phones import Script

from durchwahl.routing.directory_file import load_directory
from durchwahl.sipcore.session import Confirmed, TerminationReason
from durchwahl.sipcore.transport import Flow

pytestmark = pytest.mark.virtual_time

OFFICE = """
[server]
domain = "office.example"
listen = ["udp:127.0.0.1:5060"]
state_dir = "var"

[[employee]]
extension = "101"
name = "Anna"
password = "anna-secret"

[[employee]]
extension = "102"
name = "Bernd"
password = "bernd-secret"

[[employee]]
extension = "103"
name = "Carla"
password = "carla-secret"

[[group]]
extension = "200"
name = "Vertrieb"
strategy = "simultaneous"
members = ["101"]
ring_seconds = 20
fallback = "103"
"""


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[Office]:
    (tmp_path / "office.toml").write_text(OFFICE, encoding="utf-8")
    async with Office.open(load_directory(tmp_path / "office.toml")) as result:
        yield result


async def group_times_out_to_the_fallback(office: Office) -> float:
    """102 calls group 200, whose only member never answers; after the group's 20 s the fallback, 103,
    answers. Returns how long the caller waited for the answer on the loop's clock."""
    await office.phone("101", Script("ignore"))
    carla = await office.phone("103")
    bernd = await office.phone("102")
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = bernd.dial("200")
    assert await answered(call, timeout=30) == carla.sdp
    waited = loop.time() - started
    leg = await carla.next_call()
    await event_of(leg, Confirmed)
    call.bye()
    assert (await ended(leg)).reason is TerminationReason.REMOTE_BYE
    await office.idle()
    return waited


async def test_a_ring_group_timing_out_after_20_s_takes_a_fraction_of_a_second(office: Office) -> None:
    started = time.monotonic()
    waited = await group_times_out_to_the_fallback(office)
    assert 20.0 <= waited < 21.0  # the group's ring time, on the loop's clock …
    assert time.monotonic() - started < 5.0  # … not on the wall's


def test_every_run_sends_the_same_messages_at_the_same_moments(tmp_path: Path) -> None:
    def run(folder: Path) -> list[tuple[float, str, str]]:
        async def flow() -> list[tuple[float, str, str]]:
            folder.mkdir()
            (folder / "office.toml").write_text(OFFICE, encoding="utf-8")
            trace: list[tuple[float, str, str]] = []
            loop = virtual_loop()

            def tracer(direction: str, data: bytes, flow: Flow) -> None:
                trace.append((loop.time(), direction, data.split(b"\r\n", 1)[0].decode()))

            async with Office.open(load_directory(folder / "office.toml")) as office:
                office.endpoint.add_tracer(tracer)
                await group_times_out_to_the_fallback(office)
            return trace

        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            return runner.run(flow())

    first, second = run(tmp_path / "one"), run(tmp_path / "two")
    assert len(first) > 20 and first == second


async def test_a_lost_invite_is_sent_again_after_t1_and_the_call_goes_through(office: Office) -> None:
    anna = await office.phone("101")
    bernd = await office.phone("102")
    lost: list[bytes] = []

    def lose_the_first_invite_to_anna(data: bytes, source: tuple[str, int], to: tuple[str, int]) -> bool:
        if not lost and data.startswith(b"INVITE ") and to == anna.endpoint.local_address():
            lost.append(data)
            return True
        return False

    network().drop = lose_the_first_invite_to_anna
    received: list[str] = []
    anna.endpoint.add_tracer(lambda direction, data, flow: received.append(data.split(b" ", 1)[0].decode()))
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = bernd.dial("101")
    assert await answered(call) == anna.sdp
    assert loop.time() - started >= office.endpoint.timers.t1  # Timer A fired: the INVITE went again
    assert len(lost) == 1 and network().dropped == 1 and received.count("INVITE") == 1
    call.bye()
    await ended(await anna.next_call())
    await office.idle()


async def test_the_memory_network_is_udp_nobody_listening_means_lost_and_a_bound_port_is_taken() -> None:
    received: list[tuple[bytes, tuple[str, int]]] = []

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.append((data, addr))

    loop = asyncio.get_running_loop()
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    receiver, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    here, there = sender.get_extra_info("sockname"), receiver.get_extra_info("sockname")
    with pytest.raises(OSError):
        await loop.create_datagram_endpoint(Receiver, local_addr=there)
    sender.sendto(b"one", there)
    sender.sendto(b"two", there)
    sender.sendto(b"to nobody", ("127.0.0.1", 9))
    assert not received  # delivered by the loop, not inside sendto
    await asyncio.sleep(0)
    assert received == [(b"one", here), (b"two", here)]  # in order, from where they were sent
    receiver.close()
    sender.sendto(b"three", there)
    await asyncio.sleep(0)
    assert len(received) == 2
    sender.close()
