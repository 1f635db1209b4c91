"""Interop with a real softphone: baresip (Debian ``baresip``) registers with the server and unregisters.

baresip stays on loopback (``net_interface 127.0.0.1``), loads no audio device, and quits by itself after a
bounded time. Fails (does not skip) in CI when baresip is missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sipp import free_port
from test_server import EXAMPLES, copy_office

from durchwahl.routing.server import Server
from durchwahl.sipcore.message import Request

BARESIP = shutil.which("baresip")


def require_baresip() -> str:
    if BARESIP is None:
        if os.environ.get("CI"):
            pytest.fail("baresip is not installed (Debian package baresip); CI must install it")
        pytest.skip("baresip is not installed (apt-get install baresip)")
    return BARESIP


def tone_wav(path: Path) -> Path:
    """10 s of a 440 Hz tone, 8 kHz mono: what baresip 1.0's aufile source needs with G.711 (it refuses other
    rates: "input file must have sample-rate 8000 Hz")."""
    import wave

    import numpy as np

    samples = (2000 * np.sin(2 * np.pi * 440 * np.arange(80000) / 8000)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.tobytes())
    return path


def baresip_config(folder: Path, *, sip_port: int, cons_port: int, account: str) -> Path:
    """baresip's config and accounts in ``folder``; with ``mediaenc=`` in the account the srtp module is
    loaded too (``srtp``: RTP/AVP with a key, ``srtp-mand``: RTP/SAVP)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = tone_wav(folder / "tone.wav")
    (folder / "config").write_text(
        "\n".join(
            [
                "poll_method epoll",
                f"sip_listen 127.0.0.1:{sip_port}",
                "net_interface 127.0.0.1",
                "module_path /usr/lib/baresip/modules",
                "module g711.so",
                *(["module srtp.so"] if "mediaenc=srtp" in account else []),
                *(["module sndfile.so", f"snd_path {folder}"] if "mediaenc=srtp" in account else []),
                "module_tmp uuid.so",
                "module_tmp account.so",
                "module_app menu.so",
                "module cons.so",
                f"cons_listen 127.0.0.1:{cons_port}",
                "module aufile.so",
                f"audio_player aufile,{folder / 'heard.wav'}",
                f"audio_source aufile,{source}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    (folder / "accounts").write_text(account + "\n", encoding="utf-8")
    return folder


def office_for_baresip(tmp_path: Path, *, anchored: bool = True, tls: bool = False) -> Path:
    """The example office as shipped (it offers MD5 alone: baresip 1.0, libre, gives up with ENOSYS when
    any challenge in a 401 is SHA-256), media not anchored if asked, with a certificate for TLS (made here,
    by a CA of the test's own) if asked. Skips (or fails in CI) first when baresip is missing."""
    require_baresip()
    config = copy_office(tmp_path)
    text = config.read_text(encoding="utf-8")
    if not anchored:
        text = text.replace("anchor_media = true", "anchor_media = false")
    if tls:
        from certs import authority

        issued = authority(tmp_path / "ca").issue(tmp_path / "certs", "office.example", "127.0.0.1")
        keys = f'tls_certificate = "{issued.certificate}"\ntls_private_key = "{issued.key}"\n'
        text = text.replace("[server]\n", "[server]\n" + keys, 1)
        text = text.replace('"tcp:127.0.0.1:5060"]', '"tcp:127.0.0.1:5060", "tls:127.0.0.1:0"]', 1)
    config.write_text(text, encoding="utf-8")
    return config


class Baresips:
    """Running baresip phones by name, each with its console on a UDP port of its own."""

    def __init__(self, processes: dict[str, asyncio.subprocess.Process], cons: dict[str, int]) -> None:
        self.processes = processes
        self.cons = cons
        self.console = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, name: str, command: bytes) -> None:
        """Types ``command`` into phone ``name``'s console."""
        self.console.sendto(command, ("127.0.0.1", self.cons[name]))

    async def registered(self, server: Server, *users: str) -> None:
        """Waits up to 5 s until each of ``users`` has a binding."""

        async def all_registered() -> bool:
            return all([await server.registrar.contacts(user) for user in users])

        for _ in range(100):
            if await all_registered():
                break
            await asyncio.sleep(0.05)
        assert await all_registered(), "the baresip phones did not register"

    async def stop(self) -> list[str]:
        """SIGTERM to every phone (baresip unregisters on the way out); their output, in order."""
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        return [
            (await asyncio.wait_for(p.communicate(), 10.0))[0].decode(errors="replace")
            for p in self.processes.values()
        ]


@asynccontextmanager
async def baresips(tmp_path: Path, accounts: dict[str, str], seconds: int = 30) -> AsyncIterator[Baresips]:
    """A baresip per ``accounts`` entry (name: account line), configured in ``tmp_path / name``, quitting by
    itself after ``seconds``; killed on the way out if still running."""
    binary = require_baresip()
    cons = {name: free_port() for name in accounts}
    processes = {
        name: await asyncio.create_subprocess_exec(
            binary,
            "-f",
            str(baresip_config(tmp_path / name, sip_port=free_port(), cons_port=cons[name], account=account)),
            "-t",
            str(seconds),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for name, account in accounts.items()
    }
    phones = Baresips(processes, cons)
    try:
        yield phones
    finally:
        phones.console.close()
        for process in processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _wait_for(predicate: object, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.interop
async def test_baresip_registers_with_the_example_office_as_shipped(tmp_path: Path) -> None:
    """``make run`` and baresip, as the README's tour sets it up: examples/office.toml unedited (only copied,
    so its state stays out of the checkout, and listening on a free port instead of 5060), the account
    lines from the README (outbound proxy included)."""
    require_baresip()
    config = copy_office(tmp_path)
    assert config.read_bytes() == (EXAMPLES / "office.toml").read_bytes()
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    lines = re.findall(
        r"^#   (<sip:\S+@office\.example>;auth_pass=\S+;outbound=\"sip:127\.0\.0\.1:5060\")$", readme, re.M
    )
    assert len(lines) == 2, "the README's tour shows no baresip account lines"
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        accounts = {f"phone{n}": line.replace(":5060", f":{port}") for n, line in enumerate(lines)}
        async with baresips(tmp_path, accounts, seconds=20) as phones:
            await phones.registered(server, "101", "bernd")
            outputs = await phones.stop()
    for out in outputs:
        assert "Function not implemented" not in out, out[-2000:]


@pytest.mark.interop
async def test_a_baresip_giving_up_on_a_sha256_challenge_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Offered SHA-256 (and MD5), baresip 1.0 says "Function not implemented" and sends nothing more: the
    server says so in its log, naming the phone, and what to change."""
    import logging

    require_baresip()
    caplog.set_level(logging.INFO, logger="durchwahl.routing.registrar_service")
    config = copy_office(tmp_path, ("SHA-256", "MD5"))
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        server.registrar.watch.answer_within = 1.0
        outbound = f'outbound="sip:127.0.0.1:{server.addresses[0][2]}"'
        account = f"<sip:101@office.example>;auth_pass=anna-101-secret;{outbound}"

        def gave_up() -> list[str]:
            return [r.getMessage() for r in caplog.records if "the phone gave up" in r.getMessage()]

        async with baresips(tmp_path, {"anna": account}, seconds=20) as phones:
            assert await _wait_for(gave_up, 8.0), caplog.text
            assert await server.registrar.contacts("101") == []
            (out,) = await phones.stop()
    assert "Register: Function not implemented" in out, out[-2000:]  # what the phone shows (INTEROP.md)
    (line,) = gave_up()
    assert line.startswith("REGISTER for 101 from UDP 127.0.0.1:"), line
    assert "(baresip v1.0.0" in line and "challenged with SHA-256, MD5" in line, line
    assert '[server] auth_algorithms = ["MD5"]' in line, line


@pytest.mark.interop
async def test_baresip_registers_and_unregisters(tmp_path: Path) -> None:
    config = office_for_baresip(tmp_path)
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        account = f'<sip:101@office.example>;auth_pass=anna-101-secret;outbound="sip:127.0.0.1:{port}"'
        async with baresips(tmp_path, {"baresip": account}, seconds=20) as phones:
            bindings = []
            for _ in range(100):
                bindings = await server.registrar.contacts("101")
                if bindings:
                    break
                await asyncio.sleep(0.05)
            assert len(bindings) == 1, "baresip did not register within 5 s"
            assert bindings[0].flow is not None and bindings[0].flow.remote[0] == "127.0.0.1"
            (out,) = await phones.stop()  # baresip unregisters on the way out
        for _ in range(40):
            if not await server.registrar.contacts("101"):
                break
            await asyncio.sleep(0.05)
        assert await server.registrar.contacts("101") == [], out[-2000:]


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls", "tls+srtp"])
async def test_two_baresip_phones_call_each_other_by_extension(tmp_path: Path, transport: str) -> None:
    """bernd (102) dials 101 from baresip's console; 101, another baresip, answers; bernd sends the DTMF
    digits 4 and 2 (each key press ends with the key-release byte 0x04) and hangs up. Over TLS both
    register over TLS, and 101 is rung over the connection its REGISTER opened. With SRTP required by both
    phones (``mediaenc=srtp-mand``) each leg has its own keys: the digits cross the relay decrypted and
    protected again."""
    from siptrace import SipTrace

    transport, _, media = transport.partition("+")
    config = office_for_baresip(tmp_path, tls=transport == "tls")
    if media:  # baresip with srtp-mand refuses RTP/AVP offers, even with a key: offer them RTP/SAVP
        text = config.read_text(encoding="utf-8")
        for password in ("anna-101-secret", "bernd-102-secret"):
            text = text.replace(f'password = "{password}"', f'password = "{password}"\nsrtp = "required"', 1)
        config.write_text(text, encoding="utf-8")
    server = Server(config, listen=(f"{transport}:127.0.0.1:0",))
    trace = SipTrace(server.endpoint)
    async with server:
        port = server.addresses[0][2]
        outbound = f'outbound="sip:127.0.0.1:{port};transport={transport}"' + (
            ";mediaenc=srtp-mand" if media else ""
        )
        accounts = {
            "anna": f"<sip:101@office.example>;auth_pass=anna-101-secret;{outbound};answermode=auto",
            "bernd": f"<sip:bernd@office.example>;auth_pass=bernd-102-secret;{outbound}",
        }
        async with baresips(tmp_path, accounts) as phones:
            await phones.registered(server, "101", "bernd")
            phones.send("bernd", b"/dial 101\n")
            assert await _wait_for(lambda: server.b2bua.active, 5.0), "no call reached the B2BUA"
            await asyncio.sleep(1.0)  # answered automatically by 101's baresip
            for key in b"42":
                phones.send("bernd", bytes([key]))
                await asyncio.sleep(0.2)
                phones.send("bernd", b"\x04")  # key released: the digit ends
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            phones.send("bernd", b"/hangup\n")
            assert await _wait_for(lambda: not server.b2bua.active, 5.0), "the call did not end"
            outputs = await phones.stop()
    anna, bernd = outputs
    assert "Call established: sip:bernd@office.example" in anna, anna[-2000:]
    assert "Call established: sip:101@office.example" in bernd, bernd[-2000:]
    assert f"{{0/{transport.upper()}/v4}} 200 OK" in anna, anna[-2000:]  # registered over that transport
    invites = [
        t
        for t in trace.messages
        if t.way == "out" and isinstance(t.message, Request) and t.message.method == "INVITE"
    ]
    assert len({t.message.call_id for t in invites}) == 1, trace.dump()  # our INVITE to 101
    if media:  # SRTP on both legs, each with its own key
        assert b"RTP/SAVP" in invites[0].message.body and b"a=crypto:" in invites[0].message.body
        keys = {
            line
            for t in trace.messages
            for line in t.message.body.decode().splitlines()
            if line.startswith("a=crypto:")
        }
        assert len(keys) >= 4, keys  # bernd's, ours to bernd, ours to 101, 101's
    assert {t.flow.transport for t in trace.messages} == {transport.upper()}, trace.dump()
    if transport != "udp":  # 101 is reached over the connection of its REGISTER
        registered = {
            t.flow.connection_id
            for t in trace.messages
            if isinstance(t.message, Request)
            and t.message.method == "REGISTER"
            and t.message.to.uri.user == "101"
        }
        assert len(registered) == 1 and {t.flow.connection_id for t in invites} == registered, trace.dump()
    # The digits travel as RFC 4733 events in the media the B2BUA negotiated between the phones.
    assert "received event: '4' (end=1)" in anna and "received event: '2' (end=1)" in anna, anna[-2000:]


@pytest.mark.interop
@pytest.mark.parametrize("anchored", [True, False], ids=["anchored", "not-anchored"])
async def test_baresip_blind_transfer_connects_the_transferee_with_the_target(
    tmp_path: Path, anchored: bool
) -> None:
    """bernd (102) calls 101; both baresips; bernd's ``/transfer 103`` sends REFER. 103 (a third baresip)
    gets our offerless INVITE from 101, 101 a re-INVITE with 103's offer, bernd the NOTIFYs — and hangs up
    by itself on the final ``SIP/2.0 200 OK`` (before our own BYE would come). With media anchored (the
    default) 101 gets no re-INVITE at all: the relay moves to 103's leg."""
    from durchwahl.routing.events import CallTransferred
    from durchwahl.sipcore.session import SessionState, TerminationReason

    config = office_for_baresip(tmp_path, anchored=anchored)
    transfers: list[CallTransferred] = []
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        server.events.on("transferred", transfers.append)
        outbound = f'outbound="sip:127.0.0.1:{server.addresses[0][2]}"'
        accounts = {
            "anna": f"<sip:101@office.example>;auth_pass=anna-101-secret;{outbound};answermode=auto",
            "bernd": f"<sip:bernd@office.example>;auth_pass=bernd-102-secret;{outbound}",
            "carla": f"<sip:103@office.example>;auth_pass=carla-103-secret;{outbound};answermode=auto",
        }
        async with baresips(tmp_path, accounts) as phones:
            await phones.registered(server, "101", "bernd", "103")
            phones.send("bernd", b"/dial 101\n")
            assert await _wait_for(lambda: server.b2bua.active, 5.0), "no call reached the B2BUA"
            (caller,) = server.b2bua.active
            assert await _wait_for(lambda: caller.state is SessionState.CONFIRMED, 5.0), "101 did not answer"
            phones.send("bernd", b"/transfer 103\n")
            assert await _wait_for(lambda: transfers, 5.0), "the transfer did not end"
            assert await _wait_for(lambda: caller.terminated, 2.0), "bernd did not hang up after NOTIFY 200"
            assert caller.ended.result().reason is TerminationReason.REMOTE_BYE
            await asyncio.sleep(1.0)  # 101 and 103 talk
            assert server.b2bua.active, "the transferred call ended"
            phones.send("carla", b"/hangup\n")
            assert await _wait_for(lambda: not server.b2bua.active, 5.0), "the call did not end"
            outputs = await phones.stop()
    anna, bernd, carla = outputs
    (transferred,) = transfers
    assert (transferred.transferor, transferred.target, transferred.status) == ("102", "103", 200)
    assert "transferring call to sip:103@office.example" in bernd, bernd[-2000:]
    reinvited = "call: got re-INVITE (SDP Offer)" in anna  # 103's offer, from us
    assert reinvited is not anchored, anna[-2000:]
    assert "Call established: sip:101@office.example" in carla, carla[-2000:]  # 101 calls, as 103 sees it
    assert "incoming rtp for 'audio' established" in carla.split("Call established")[-1], carla[-2000:]


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_hold_and_resume_relayed_on_an_internal_call(tmp_path: Path, transport: str) -> None:
    """Flow 6 with real phones: anna (101) calls bernd (102), whose baresip answers by itself. anna's
    ``/hold`` sends a re-INVITE with ``a=sendonly``; the call is not anchored, so the B2BUA relays it (SDP
    unchanged) to bernd, whose ``a=recvonly`` answer goes back to anna. ``/resume`` (``a=sendrecv``) goes
    the same way. Then bernd holds and resumes: the same towards anna. After that DTMF still goes both ways
    (RFC 4733 in their direct media); anna hangs up."""
    from siptrace import SipTrace, Traced

    from durchwahl.sipcore.session import SessionState

    config = office_for_baresip(tmp_path, anchored=False)  # this test is about relaying as is
    server = Server(config, listen=(f"{transport}:127.0.0.1:0",))
    trace = SipTrace(server.endpoint)
    async with server:
        outbound = f'outbound="sip:127.0.0.1:{server.addresses[0][2]};transport={transport}"'
        accounts = {
            "anna": f"<sip:101@office.example>;auth_pass=anna-101-secret;{outbound}",
            "bernd": f"<sip:bernd@office.example>;auth_pass=bernd-102-secret;{outbound};answermode=auto",
        }

        def answered(call_id: str, count: int) -> bool:
            """The ``count``-th re-INVITE from a phone on dialog ``call_id`` has its 2xx (relayed back)."""
            sent = trace.reinvites("in", call_id)
            return len(sent) >= count and trace.answer(sent[count - 1]) is not None

        async with baresips(tmp_path, accounts) as phones:
            key = phones.send
            await phones.registered(server, "101", "bernd")
            key("anna", b"/dial 102\n")
            assert await _wait_for(lambda: server.b2bua.active, 5.0), "no call reached the B2BUA"
            (caller,) = server.b2bua.active
            assert await _wait_for(lambda: caller.state is SessionState.CONFIRMED, 5.0), "102 did not answer"
            await asyncio.sleep(0.3)  # the callee leg's ACK
            dialogs = {"anna": caller.call_id}
            key("anna", b"/hold\n")
            assert await _wait_for(lambda: answered(caller.call_id, 1), 5.0), "no hold\n" + trace.dump()
            await asyncio.sleep(0.5)  # on hold a while
            key("anna", b"/resume\n")
            assert await _wait_for(lambda: answered(caller.call_id, 2), 5.0), "no resume\n" + trace.dump()
            (bernd_leg,) = {t.message.call_id for t in trace.reinvites("out")}
            dialogs["bernd"] = bernd_leg
            key("bernd", b"/hold\n")
            assert await _wait_for(lambda: answered(bernd_leg, 1), 5.0), "no hold\n" + trace.dump()
            await asyncio.sleep(0.5)
            key("bernd", b"/resume\n")
            assert await _wait_for(lambda: answered(bernd_leg, 2), 5.0), "no resume\n" + trace.dump()
            await asyncio.sleep(0.3)
            for phone, digit in (("anna", b"5"), ("bernd", b"7")):
                key(phone, digit)
                await asyncio.sleep(0.2)
                key(phone, b"\x04")  # key released: the digit ends
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)
            key("anna", b"/hangup\n")
            assert await _wait_for(lambda: not server.b2bua.active, 5.0), "the call did not end"
            outputs = await phones.stop()
    anna, bernd = outputs
    dump = trace.dump()
    assert {t.flow.transport for t in trace.messages} == {transport.upper()}, dump
    for holder, held in (("anna", "bernd"), ("bernd", "anna")):
        # The holder's two re-INVITEs (in) and ours to the other phone (out), nothing else on either dialog.
        sent = trace.reinvites("in", dialogs[holder])
        told = trace.reinvites("out", dialogs[held])
        assert [t.direction for t in sent] == ["sendonly", "sendrecv"], dump
        # Not anchored: offers and answers pass unchanged (the phones' own SDP, their own RTP ports).
        assert [t.message.body for t in told] == [t.message.body for t in sent], dump
        answers = [trace.answer(t) for t in told]
        relayed = [trace.answer(t) for t in sent]
        assert all(isinstance(t, Traced) for t in answers + relayed), dump
        assert [t.direction for t in answers if t] == ["recvonly", "sendrecv"], dump
        assert [t.message.body for t in relayed if t] == [t.message.body for t in answers if t], dump
    assert "call: hold sip:102@office.example" in anna and "call: resume sip:102@office.example" in anna
    assert "call: hold sip:101@office.example" in bernd and "call: resume sip:101@office.example" in bernd
    assert anna.count("call: got re-INVITE (SDP Offer)") == 2, anna[-2000:]
    assert bernd.count("call: got re-INVITE (SDP Offer)") == 2, bernd[-2000:]
    # The digits after the last resume reach the other phone in the media the phones set up.
    assert "received event: '5' (end=1)" in bernd.rsplit("call: resume", 1)[1], bernd[-2000:]
    assert "received event: '7' (end=1)" in anna.rsplit("call: got re-INVITE", 1)[1], anna[-2000:]


@pytest.mark.interop
async def test_the_readme_tls_tour(tmp_path: Path) -> None:
    """The README's TLS steps as written: its openssl line makes the certificate (into this test's folder
    instead of examples/var), the example office's commented TLS keys uncommented and a tls: address added
    to its listen list pass check-config without a warning, and baresip with the README's TLS account line
    registers over TLS."""
    import subprocess

    from durchwahl.routing.directory_file import read_directory

    require_baresip()
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"^mkdir -p examples/var && (openssl req .*)$", readme, re.M)
    (var := tmp_path / "var").mkdir()
    subprocess.run(
        command.replace("examples/var/", f"{var}/").split(), check=True, capture_output=True, timeout=30
    )
    config = copy_office(tmp_path)
    text, uncommented = re.subn(r"(?m)^# (tls_(?:certificate|private_key) = .*)$", r"\1", config.read_text())
    assert uncommented == 2, "examples/office.toml has no commented tls_certificate / tls_private_key"
    text = text.replace('"tcp:127.0.0.1:5060"]', '"tcp:127.0.0.1:5060", "tls:127.0.0.1:5061"]', 1)
    config.write_text(text, encoding="utf-8")
    directory, problems, warnings = read_directory(config)
    assert directory is not None and not problems and not warnings, (problems, warnings)
    (line,) = re.findall(
        r"^#   (<sip:101@office\.example>;auth_pass=\S+;outbound=\"sip:127\.0\.0\.1:5061;transport=tls\")$",
        readme,
        re.M,
    )
    async with Server(config, listen=("tls:127.0.0.1:0",)) as server:
        account = line.replace(":5061", f":{server.addresses[0][2]}")
        async with baresips(tmp_path, {"anna": account}, seconds=20) as phones:
            await phones.registered(server, "101")
            (binding,) = await server.registrar.contacts("101")
            assert binding.flow is not None and binding.flow.transport == "TLS"
            (out,) = await phones.stop()
    assert "{0/TLS/v4} 200 OK" in out, out[-2000:]


def dominant_hz(samples: object, rate: int = 8000) -> float:
    """The strongest frequency of a stretch of audio (int16 samples)."""
    import numpy as np

    data = np.asarray(samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(data * np.hanning(data.size)))
    return float(np.fft.rfftfreq(data.size, 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


@pytest.mark.interop
async def test_an_srtp_baresip_talks_with_a_plain_rtp_provider(tmp_path: Path) -> None:
    """101 on baresip over TLS with mandatory SRTP (``mediaenc=srtp-mand``: RTP/SAVP and a=crypto) dials a
    number out; the provider (simulated, plain RTP over UDP) answers and sends a 1 kHz tone. The media is
    checked decrypted on both sides: the provider hears baresip's 440 Hz tone (the relay decrypted it),
    and what baresip decoded (its sndfile module's dump) is the 1 kHz tone (baresip decrypted what the relay
    protected)."""
    import wave

    import numpy as np
    from siptrace import SipTrace

    from durchwahl.media.g711 import ulaw_decode, ulaw_encode
    from durchwahl.media.rtp import RtpPacket
    from durchwahl.media.sdp import parse_sdp
    from durchwahl.routing.calls.media_anchor import media_address
    from durchwahl.routing.demo import Provider

    config = office_for_baresip(tmp_path, tls=True)
    provider = await Provider().start()
    config.write_text(config.read_text().replace("port = 5070", f"port = {provider.port}"))
    server = Server(config, listen=("tls:127.0.0.1:0", "udp:127.0.0.1:0"))
    trace = SipTrace(server.endpoint)
    try:
        async with server:
            tls = next(port for kind, _, port in server.addresses if kind == "TLS")
            outbound = f'outbound="sip:127.0.0.1:{tls};transport=tls"'
            account = f"<sip:101@office.example>;auth_pass=anna-101-secret;{outbound};mediaenc=srtp-mand"
            async with baresips(tmp_path, {"anna": account}) as phones:
                await phones.registered(server, "101")
                phones.send("anna", b"/dial 089123456\n")
                leg = await asyncio.wait_for(provider.calls.get(), 5.0)
                to_us = media_address(parse_sdp(leg.request.body))
                assert to_us is not None
                tone = (4000 * np.sin(2 * np.pi * 1000 * np.arange(160 * 100) / 8000)).astype(np.int16)
                for n in range(100):  # 2 s of 1 kHz, plain RTP
                    payload = ulaw_encode(tone[n * 160 : (n + 1) * 160])
                    provider.rtp.send(RtpPacket(0, n + 1, n * 160, 0x1000, payload, n == 0), to_us)
                    await asyncio.sleep(0.02)
                phones.send("anna", b"/hangup\n")
                assert await _wait_for(lambda: not server.b2bua.active, 5.0), "the call did not end"
                (out,) = await phones.stop()
    finally:
        await provider.close()
    offers = [
        t
        for t in trace.messages
        if t.way == "in" and isinstance(t.message, Request) and t.message.method == "INVITE"
    ]
    assert offers and b"RTP/SAVP" in offers[-1].message.body and b"a=crypto" in offers[-1].message.body
    assert b"a=crypto" not in leg.request.body  # the provider's leg: plain RTP
    heard_by_provider = np.concatenate(
        [ulaw_decode(p.payload) for p in provider.rtp.packets if p.payload_type == 0]
    )
    assert heard_by_provider.size > 8000, f"{len(provider.rtp.packets)} packets at the provider"
    assert abs(dominant_hz(heard_by_provider[-8000:]) - 440) < 20
    # baresip 1.0's aufile plays nothing back; its sndfile module writes what it decoded.
    (decoded,) = (tmp_path / "anna").glob("dump-*-dec.wav")
    with wave.open(str(decoded), "rb") as recording:
        rate = recording.getframerate()
        heard = np.frombuffer(recording.readframes(recording.getnframes()), dtype="<i2")
    assert heard.size > rate, out[-2000:]
    loudest = max(
        range(0, heard.size - rate, rate // 2), key=lambda i: float(np.abs(heard[i : i + rate]).mean())
    )
    assert abs(dominant_hz(heard[loudest : loudest + rate], rate) - 1000) < 20, out[-2000:]
