"""What an administrator reads in the server's log: plain sentences, no Python reprs, and no refusal line for
the digest challenge every phone's first INVITE gets."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from harness import answered, ended
from phones import Phone, Script
from test_server import copy_office

from durchwahl.routing.server import Server

#: What an attrs or tuple repr looks like in a log line: ``Name(field=`` or ``('127.0.0.1', 5060)``.
REPR = re.compile(r"\b[A-Z][A-Za-z]+\([a-z_]+=|\('[^']*', \d+\)")


async def test_a_normal_call_logs_readable_lines_and_no_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Server(copy_office(tmp_path), listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        anna = await Phone("101", "anna-101-secret", port, script=Script("answer")).start()
        bernd = await Phone("bernd", "bernd-102-secret", port).start()
        try:
            call = bernd.dial("101")  # challenged once (401), then sent with credentials
            await answered(call)
            leg = await anna.next_call()
            call.bye()
            await ended(leg)
            async with asyncio.timeout(3):
                while server.b2bua.active:
                    await asyncio.sleep(0.02)
        finally:
            await anna.close()
            await bernd.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join(lines)
    assert not [line for line in lines if REPR.search(line)], text
    # A status, not digits of a random Call-ID ("…143401" happened).
    assert "Refused" not in text and not re.search(r"\b401\b", text), text
    (routed,) = [line for line in lines if " from 102 to 101: " in line]
    assert routed.endswith("from 102 to 101: ringing employee 101 (Anna Schmidt)"), text
    registered = r"registered sip:101@office\.example at <.*> via UDP 127\.0\.0\.1:\d+ \(phone-101\)"
    assert re.search(registered, text), text
    assert re.search(r"answered by 101 \(Anna Schmidt\) at sip:", text), text
    assert "the caller hung up" in text, text
    assert re.search(r"listening on UDP 127\.0\.0\.1:\d+$", text, re.MULTILINE), text
