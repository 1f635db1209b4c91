"""The mid-call flow against real SIPp: employee 101 (a SIPp UAC with digest credentials, -au/-ap)
calls 102, a SIPp UAS that registered as bernd; each call is put on hold (re-INVITE with a=sendonly) and
resumed (a=sendrecv), then held with an offerless re-INVITE (102 offers in the 200, the caller's
a=sendonly comes in the ACK) and resumed again. The call is internal, so the B2BUA relays the re-INVITEs
to 102, 102's answers back and the ACK's SDP on; each SIPp checks the SDP it gets (``sipp_hold.xml``,
``sipp_hold_uas.xml``: an ``ereg`` with ``check_it`` fails the call). Everything on 127.0.0.1, each SIPp
bounded by -timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sipp import free_port, require_sipp, run_sipp
from sipp_office import BOUNDS, HERE, register_bernd, start_uas
from siptrace import SipTrace
from test_server import copy_office

from durchwahl.routing.server import Server
from durchwahl.sipcore.message import Request

CALLS = 20


@pytest.mark.interop
async def test_sipp_hold_and_resume_are_relayed_through_the_b2bua(tmp_path: Path) -> None:
    require_sipp()
    config = copy_office(tmp_path, ("MD5",))  # SIPp answers MD5 only, and only the first challenge
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("anchor_media = true", "anchor_media = false"))  # re-INVITEs relayed as is
    server = Server(config, listen=("udp:127.0.0.1:0",))
    trace = SipTrace(server.endpoint)
    async with server:
        port = server.addresses[0][2]
        uas_port = await register_bernd(server, tmp_path)
        uas = await start_uas(
            ["-sf", str(HERE / "sipp_hold_uas.xml"), "-p", str(uas_port), "-m", str(CALLS)], tmp_path
        )
        caller = await run_sipp(
            [
                "-sf",
                str(HERE / "sipp_hold.xml"),
                f"127.0.0.1:{port}",
                "-p",
                str(free_port()),
                "-au",
                "101",
                "-ap",
                "anna-101-secret",
                "-m",
                str(CALLS),
                "-r",
                "10",
                *BOUNDS,
            ],
            tmp_path,
            timeout=30,
        )
        callee = await uas
        for _ in range(100):  # the last BYE's answer
            if not server.b2bua.active:
                break
            await asyncio.sleep(0.05)
        assert not server.b2bua.active
    assert caller.returncode == 0 and caller.failed == 0, caller.stdout[-3000:] + caller.stderr[-1500:]
    assert caller.successful == CALLS, caller.stdout[-3000:]
    assert callee.returncode == 0 and callee.failed == 0, callee.stdout[-3000:] + callee.stderr[-1500:]
    assert callee.successful == CALLS, callee.stdout[-3000:]
    # What the server saw: each call's four re-INVITEs came in and went out (retransmissions counted
    # once), the relayed ones on the other dialog; the offerless one's answer came in the ACK and went on.
    ins, outs = (
        {(t.message.call_id, t.message.cseq.seq): t.direction for t in trace.reinvites(way)}
        for way in ("in", "out")
    )
    expected = [""] * CALLS + ["sendonly"] * CALLS + ["sendrecv"] * 2 * CALLS  # "": no SDP
    assert sorted(d or "" for d in ins.values()) == expected
    assert sorted(d or "" for d in outs.values()) == expected
    assert {call_id for call_id, _ in ins}.isdisjoint(call_id for call_id, _ in outs)
    for way in ("in", "out"):
        acks = {
            (t.message.call_id, t.message.cseq.seq)
            for t in trace.messages
            if t.way == way and isinstance(t.message, Request) and t.message.method == "ACK"
            if t.direction == "sendonly"
        }
        assert len(acks) == CALLS, way
