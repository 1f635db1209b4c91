"""What the UDP transport learns from the kernel (Linux): how long a datagram waited in the socket's receive
queue, and how many datagrams the kernel dropped for a full receive buffer."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest

from durchwahl.sipcore.transport import Flow, UdpTransport

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="SO_TIMESTAMP and SO_RXQ_OVFL are Linux's")


async def test_the_time_a_datagram_waited_unread_is_measured() -> None:
    seen: list[tuple[bytes, float | None]] = []
    transport: UdpTransport | None = None

    def on_message(data: bytes, flow: Flow) -> None:
        assert transport is not None
        seen.append((data, transport.queue_delay))

    transport = await UdpTransport.listen("127.0.0.1", 0, on_message)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"first", transport.local)
            await asyncio.sleep(0.05)  # read at once
            sender.sendto(b"second", transport.local)
            time.sleep(0.2)  # the event loop is busy: the datagram waits in the queue
            await asyncio.sleep(0.05)
        assert [data for data, _ in seen] == [b"first", b"second"]
        first, second = (delay for _, delay in seen)
        assert first is not None and first < 0.05
        assert second is not None and 0.2 <= second < 1.0
        assert transport.dropped == 0
    finally:
        transport.close()


async def test_datagrams_dropped_for_a_full_receive_buffer_are_counted() -> None:
    count = 0

    def on_message(data: bytes, flow: Flow) -> None:
        nonlocal count
        count += 1

    transport = await UdpTransport.listen("127.0.0.1", 0, on_message)
    try:
        sock = transport._sock
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel doubles it; a few datagrams
        sent = 200
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(sent):  # the loop cannot read meanwhile: the buffer overflows
                sender.sendto(b"x" * 1000, transport.local)
            for _ in range(50):
                await asyncio.sleep(0.01)
            kept = count
            assert 0 < kept < sent
            # The kernel tells the count with the next datagram queued after the drops.
            sender.sendto(b"after", transport.local)
            await asyncio.sleep(0.05)
        assert count == kept + 1
        assert transport.dropped == sent - kept
    finally:
        transport.close()
