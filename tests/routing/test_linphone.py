"""Interop with a real softphone: Linphone 5.1 (Debian ``linphone-cli``), driven through ``linphone-daemon``.

Each Linphone is one ``linphone-daemon`` process. Its commands (``call``, ``answer``, ``dtmf``, ``terminate``,
``quit``) go to its stdin; its answers (``Status: Ok``) and events (``Event-type: call-state-changed``,
``receiving-tone`` …) come on its stdout. All it keeps is in the test's temporary folder: ``HOME`` points
there, its ``linphonerc`` is written there, and it opens no database (``[storage] uri=null``). SIP and RTP
are bound to 127.0.0.1 on random ports. No sound card is needed: without one it sends no voice, but DTMF
(RFC 4733 events, SIP INFO or in-band tones) still goes out. The account uses the server as outbound proxy
(``reg_route``): office.example does not resolve, and without a route Linphone looks it up in DNS.

The other party is a simulated phone (``routing.demo.Phone``) with a real RTP socket, so what Linphone sends
is checked packet by packet, or (the README's tour) a second Linphone. Linphone needs no network besides
loopback (with ``ipv6=0`` it never considers the network down). Fails (does not skip) in CI when
linphone-daemon is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_server import copy_office

from durchwahl.routing.cdr import CallRecord, Disposition
from durchwahl.routing.demo import Phone, RtpSocket, sdp
from durchwahl.routing.events import DigitPressed
from durchwahl.routing.registrar_service import Registered, Unregistered
from durchwahl.routing.server import Server
from durchwahl.sipcore.registrar import Binding

LINPHONE = shutil.which("linphone-daemon")
PROMPT = "daemon-linphone>"
OFFICE_NUMBER = "+49301234567"  # examples/office.toml: extension processing, greeting, trunk "provider"


def require_linphone() -> str:
    if LINPHONE is None:
        if os.environ.get("CI"):
            pytest.fail("linphone-daemon is not installed (Debian package linphone-cli); CI must install it")
        pytest.skip("linphone-daemon is not installed (apt-get install linphone-cli)")
    return LINPHONE


def office(tmp_path: Path, algorithms: tuple[str, ...] | None = None, *, tls: bool = False) -> Path:
    """The example office; ``algorithms`` replaces its ``auth_algorithms`` (offered in that order); with
    ``tls`` a certificate for office.example and localhost, from a CA the test makes (``tmp_path/ca``):
    Linphone 5.1 (belle-sip on mbed TLS) matches the name it connects to against a certificate's DNS names
    and common name only, so it reaches the server by a name, not by 127.0.0.1."""
    config = copy_office(tmp_path, algorithms)
    if tls:
        from certs import authority

        issued = authority(tmp_path / "ca").issue(tmp_path / "certs", "office.example", "localhost")
        text = config.read_text(encoding="utf-8")
        keys = f'tls_certificate = "{issued.certificate}"\ntls_private_key = "{issued.key}"\n'
        config.write_text(text.replace("[server]\n", "[server]\n" + keys, 1), encoding="utf-8")
    return config


def ca_file(tmp_path: Path) -> Path:
    """The CA :func:`office` made for its TLS certificate."""
    return next((tmp_path / "ca").glob("*.ca.pem"))


def linphonerc(
    *,
    user: str,
    password: str,
    server: tuple[str, int],
    transport: str,
    register: bool = True,
    dtmf: str = "rfc4733",
    root_ca: Path | None = None,
    srtp: bool = False,
) -> str:
    """A linphonerc for one account on ``server``: SIP over ``transport`` only, DTMF as ``dtmf``
    ("rfc4733", "info" or "inband": neither of the first two). Over TLS Linphone checks the server's
    certificate (chain to ``root_ca``, name); with ``srtp`` it insists on SRTP (SDES, RTP/SAVP)."""
    proxy = f"<sip:{server[0]}:{server[1]};transport={transport}>"
    tls = {"root_ca": str(root_ca), "verify_server_certs": "1", "verify_server_cn": "1"} if root_ca else {}
    sections: dict[str, dict[str, str]] = {
        "sip": {
            # -1: a random port; 0: that transport is off.
            "sip_port": "-1" if transport == "udp" else "0",
            "sip_tcp_port": "-1" if transport == "tcp" else "0",
            "sip_tls_port": "-1" if transport == "tls" else "0",
            **tls,
            **({"media_encryption": "srtp", "media_encryption_mandatory": "1"} if srtp else {}),
            "bind_address": "127.0.0.1",
            "ipv6": "0",
            "default_proxy": "0",
            "use_rfc2833": "1" if dtmf == "rfc4733" else "0",
            "use_info": "1" if dtmf == "info" else "0",
        },
        "rtp": {"bind_address": "127.0.0.1", "audio_rtp_port": "-1", "video_rtp_port": "-1"},
        "video": {"capture": "0", "display": "0", "automatically_initiate": "0", "automatically_accept": "0"},
        # No linphone.db, call history or ZRTP cache (5.1 does not start when it cannot open linphone.db).
        "storage": {"uri": "null", "call_logs_db_uri": "null", "zrtp_secrets_db_uri": "null"},
        "proxy_0": {
            "reg_identity": f"sip:{user}@office.example",
            "reg_proxy": proxy,
            "reg_route": proxy,
            "reg_expires": "600",
            "reg_sendregister": "1" if register else "0",
            "publish": "0",
        },
        "auth_info_0": {"username": user, "passwd": password, "domain": "office.example"},
    }
    return "".join(
        f"[{name}]\n" + "".join(f"{key}={value}\n" for key, value in entries.items()) + "\n"
        for name, entries in sections.items()
    )


@dataclass
class Block:
    """One answer (``kind`` "Status", ``value`` "Ok"/"Error") or event (``kind`` "Event-type", ``value``
    e.g. "call-state-changed") from linphone-daemon's stdout, with its ``Key: value`` lines."""

    kind: str
    value: str
    fields: dict[str, str] = field(default_factory=dict)


class Linphone:
    """One linphone-daemon process (see the module docstring); use :func:`linphone`."""

    def __init__(self, binary: str, folder: Path, config: str) -> None:
        self.binary = binary
        self.folder = folder
        self.config = config
        self.lines: list[str] = []
        self.blocks: list[Block] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "linphonerc").write_text(self.config, encoding="utf-8")
        # HOME: its readline history; the XDG folders: the PulseAudio client it tries (and fails) to start,
        # which otherwise leaves a /tmp/pulse-* folder behind on every run.
        runtime = self.folder / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env = dict(
            os.environ,
            HOME=str(self.folder),
            XDG_CONFIG_HOME=str(self.folder / ".config"),
            XDG_RUNTIME_DIR=str(runtime),
        )
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "--config",
            str(self.folder / "linphonerc"),
            "--log",
            str(self.folder / "linphone.log"),
            cwd=self.folder,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            text = line.decode(errors="replace")
            self.lines.append(text)
            # The prompt is written outside the daemon's lock, so it may stick to the front of any line.
            text = text.replace(PROMPT, "").strip()
            key, colon, value = text.partition(": ")
            if not colon:
                continue  # blank lines and the echo of our commands
            if key in ("Status", "Event-type"):
                self.blocks.append(Block(key, value))
            elif self.blocks:
                self.blocks[-1].fields.setdefault(key, value)

    async def command(self, text: str, timeout: float = 5.0) -> Block:
        """Send one command; its answer (the next "Status" block) must be Ok."""
        assert self.process is not None and self.process.stdin is not None
        answered = len(self._answers())
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()
        await until(lambda: len(self._answers()) > answered, timeout, f"no answer to {text!r}", self)
        answer = self._answers()[answered]
        await asyncio.sleep(0.05)  # its Reason/body lines follow at once
        assert answer.value == "Ok", f"{text!r}: {answer} {self.tail()}"
        return answer

    def _answers(self) -> list[Block]:
        return [block for block in self.blocks if block.kind == "Status"]

    def events(self, kind: str, key: str) -> list[str]:
        """The ``key`` field of every ``kind`` event so far, in order (call states, tones)."""
        return [b.fields.get(key, "") for b in self.blocks if b.kind == "Event-type" and b.value == kind]

    def call_states(self) -> list[str]:
        return self.events("call-state-changed", "Event")

    def tones(self) -> str:
        return "".join(self.events("receiving-tone", "Tone"))

    async def wait_call_state(self, state: str, *, since: int = 0, timeout: float = 5.0) -> None:
        """Wait for call state ``state`` among the call states after the first ``since`` ones."""
        await until(lambda: state in self.call_states()[since:], timeout, f"Linphone never {state}", self)

    def log(self) -> str:
        """Linphone's own log (SIP messages included); complete once it has quit."""
        path = self.folder / "linphone.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def tail(self) -> str:
        return "\nlinphone-daemon said:\n" + "".join(self.lines)[-3000:]

    async def close(self) -> None:
        """``quit`` (it hangs up and unregisters), killed if it has not exited within 10 s. Closing its stdin
        instead would crash it (5.1 aborts on end of input), and SIGINT does not stop it."""
        process = self.process
        if process is None:
            return
        try:
            if process.returncode is None and process.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(b"quit\n")
                    await process.stdin.drain()
                await asyncio.wait_for(process.wait(), 10.0)
        except TimeoutError:
            pass
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if self._reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(self._reader, 5.0)
            if process.stdin is not None:
                process.stdin.close()


@contextlib.asynccontextmanager
async def linphone(folder: Path, config: str) -> AsyncIterator[Linphone]:
    phone = Linphone(require_linphone(), folder, config)
    try:
        await phone.start()
        yield phone
    finally:
        await phone.close()


async def until(
    predicate: Callable[[], object], seconds: float, what: str, phone: Linphone | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(what + (phone.tail() if phone is not None else ""))
        await asyncio.sleep(0.02)


async def wait_registered(server: Server, user: str, phone: Linphone) -> list[Binding]:
    for _ in range(250):
        if bindings := await server.registrar.contacts(user):
            return bindings
        await asyncio.sleep(0.02)
    raise AssertionError(f"{user} did not register within 5 s" + phone.tail())


def media_address(body: bytes) -> tuple[str, int]:
    text = body.decode()
    host = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    port = re.search(r"^m=audio (\d+)", text, re.M)
    assert host and port, text
    return host.group(1), int(port.group(1))


def listen_specs(transport: str) -> tuple[str, ...]:
    """Linphone's transport first; the simulated phones always use UDP."""
    return (f"{transport}:127.0.0.1:0",) + (("udp:127.0.0.1:0",) if transport != "udp" else ())


def udp_port(server: Server) -> int:
    return next(port for kind, _, port in server.addresses if kind == "UDP")


@pytest.mark.interop
@pytest.mark.parametrize(
    ("algorithms", "answered"),
    [(("SHA-256", "MD5"), "SHA-256"), (("MD5", "SHA-256"), "MD5"), (("MD5",), "MD5")],
    ids=["sha256-first", "md5-first", "md5-only"],
)
async def test_linphone_registers_and_unregisters(
    tmp_path: Path, algorithms: tuple[str, ...], answered: str
) -> None:
    """Linphone answers the first challenge it can (SHA-256 or MD5): the server's order decides."""
    require_linphone()
    async with Server(office(tmp_path, algorithms), listen=("udp:127.0.0.1:0",)) as server:
        events: list[Registered | Unregistered] = []
        server.events.on("registered", events.append)
        server.events.on("unregistered", events.append)
        config = linphonerc(
            user="101",
            password="anna-101-secret",
            server=("127.0.0.1", server.addresses[0][2]),
            transport="udp",
        )
        async with linphone(tmp_path / "linphone", config) as phone:
            await until(lambda: events, 5.0, "Linphone did not register within 5 s", phone)
            registered = events[0]
            assert isinstance(registered, Registered), events
            assert registered.aor == "sip:101@office.example"
            assert registered.flow is not None and registered.flow.transport == "UDP"
            assert registered.flow.remote[0] == "127.0.0.1"
            # an instance id but no reg-id: RFC 5626 outbound is not used
            assert "+sip.instance=" in registered.contact and "reg-id" not in registered.contact
            bindings = await server.registrar.contacts("101")
            assert [b.contact for b in bindings] == [registered.contact]
        # quit unregisters (Expires: 0) before the process exits
        assert isinstance(events[-1], Unregistered) and events[-1].reason == "removed", events
        assert await server.registrar.contacts("101") == []
        algorithms_used = re.findall(r"^Authorization: +Digest .*?algorithm=([\w-]+)", phone.log(), re.M)
        assert algorithms_used and set(algorithms_used) == {answered}, algorithms_used


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_linphone_calls_and_is_called_by_extension(tmp_path: Path, transport: str) -> None:
    """Anna (101) on Linphone dials 102: bernd's phone answers, Linphone keys 4 and 2 (RFC 4733 events
    reach bernd's RTP socket end to end) and hangs up. Then bernd dials 101: Linphone rings, answers, hears
    bernd's 7 and #, and bernd hangs up. Over TLS Linphone verifies the server's certificate (made by the
    test's CA for office.example and localhost)."""
    require_linphone()
    config_file = office(tmp_path, tls=transport == "tls")
    async with Server(config_file, listen=listen_specs(transport)) as server:
        ended: list[CallRecord] = []
        server.events.on("call_ended", ended.append)
        rtp = await RtpSocket.open()
        bernd = Phone("bernd", "bernd-102-secret", udp_port(server))
        bernd.sdp = sdp("bernd", rtp.port)
        config = linphonerc(
            user="101",
            password="anna-101-secret",
            server=("localhost" if transport == "tls" else "127.0.0.1", server.addresses[0][2]),
            transport=transport,
            root_ca=ca_file(tmp_path) if transport == "tls" else None,
        )
        try:
            await bernd.start()
            async with linphone(tmp_path / "linphone", config) as anna:
                (binding,) = await wait_registered(server, "101", anna)
                assert binding.flow is not None and binding.flow.transport == transport.upper()

                # Linphone calls 102
                await anna.command("call sip:102@office.example")
                leg = await bernd.next_call(5.0)
                await anna.wait_call_state("LinphoneCallStreamsRunning")
                for digit in "42":
                    await anna.command(f"dtmf {digit}")
                    await asyncio.sleep(0.3)  # each digit lasts 100 ms
                await until(lambda: rtp.digits() == ("42", 2), 3.0, f"digits at bernd: {rtp.digits()}")
                await anna.command("terminate")
                await anna.wait_call_state("LinphoneCallReleased")
                await asyncio.wait_for(leg.wait_ended(), 5.0)
                await until(lambda: ended, 5.0, "no CDR for the first call")
                first = ended[0]
                assert (first.caller, first.dialled, first.answered_by) == ("101", "102", "bernd")
                assert first.disposition is Disposition.ANSWERED

                # bernd calls 101
                since = len(anna.call_states())
                out = bernd.dial("101")
                await anna.wait_call_state("LinphoneCallIncomingReceived", since=since)
                await anna.command("answer")
                answer = await asyncio.wait_for(out.wait_answered(), 5.0)
                await anna.wait_call_state("LinphoneCallStreamsRunning", since=since)
                await rtp.send_digits("7#", media_address(answer.body))
                await until(lambda: anna.tones() == "7#", 3.0, f"tones at Linphone: {anna.tones()!r}", anna)
                out.bye()
                await anna.wait_call_state("LinphoneCallReleased", since=since)
                await until(lambda: len(ended) == 2, 5.0, "no CDR for the second call")
                second = ended[1]
                assert (second.caller, second.dialled, second.answered_by) == ("102", "101", "101")
                assert second.disposition is Disposition.ANSWERED
                assert not server.b2bua.active
        finally:
            rtp.close()
            await bernd.close()


@pytest.mark.interop
@pytest.mark.parametrize("dtmf", ["rfc4733", "info", "inband"])
async def test_linphone_dials_an_extension_during_the_greeting(tmp_path: Path, dtmf: str) -> None:
    """Linphone plays the provider: from 127.0.0.1 (the trunk's inbound_from) it calls the office number,
    the server answers with the greeting, and Linphone keys 1 0 2 — as RFC 4733 events, SIP INFO
    (application/dtmf-relay) or in-band tones. The server decodes each digit once (its ``digit`` event names
    the same source) and rings 102."""
    require_linphone()
    async with Server(office(tmp_path), listen=("udp:127.0.0.1:0",)) as server:
        digits: list[DigitPressed] = []
        ended: list[CallRecord] = []
        server.events.on("digit", digits.append)
        server.events.on("call_ended", ended.append)
        bernd = Phone("bernd", "bernd-102-secret", server.addresses[0][2])
        config = linphonerc(
            user="provider",
            password="unused",
            server=("127.0.0.1", server.addresses[0][2]),
            transport="udp",
            register=False,
            dtmf=dtmf,
        )
        try:
            await bernd.start()
            async with linphone(tmp_path / "linphone", config) as provider:
                await provider.command(f"call sip:{OFFICE_NUMBER}@office.example")
                await provider.wait_call_state("LinphoneCallStreamsRunning")  # the greeting plays (3 s)
                for digit in "102":
                    await provider.command(f"dtmf {digit}")
                    await asyncio.sleep(0.3)
                leg = await bernd.next_call(5.0)
                await asyncio.wait_for(leg.wait_answered(), 5.0)
                await provider.command("terminate")
                await asyncio.wait_for(leg.wait_ended(), 5.0)
                await until(lambda: ended, 5.0, "no CDR")
        finally:
            await bernd.close()
    assert [(d.digit, d.source) for d in digits] == [("1", dtmf), ("0", dtmf), ("2", dtmf)]
    (record,) = ended
    assert (record.source_trunk, record.dialled, record.digits) == ("provider", OFFICE_NUMBER, "102")
    assert (record.answered_by, record.disposition) == ("bernd", Disposition.ANSWERED)


@pytest.mark.interop
async def test_linphone_dials_an_extension_during_the_greeting_over_tls_and_srtp(tmp_path: Path) -> None:
    """Linphone plays the provider over TLS with SRTP required: it calls the office number, the server
    answers with RTP/SAVP and a key of its own and plays the greeting through SRTP; Linphone's digits 1 0 2
    (RFC 4733 events inside SRTP) are decrypted and collected, and 102 (a simulated phone, plain RTP over
    UDP) rings and answers."""
    from siptrace import SipTrace

    require_linphone()
    server = Server(office(tmp_path, tls=True), listen=("tls:127.0.0.1:0", "udp:127.0.0.1:0"))
    trace = SipTrace(server.endpoint)
    async with server:
        digits: list[DigitPressed] = []
        server.events.on("digit", digits.append)
        ports = {kind: port for kind, _, port in server.addresses}
        bernd = Phone("bernd", "bernd-102-secret", ports["UDP"])
        config = linphonerc(
            user="provider",
            password="unused",
            server=("localhost", ports["TLS"]),
            transport="tls",
            register=False,
            root_ca=ca_file(tmp_path),
            srtp=True,
        )
        try:
            await bernd.start()
            async with linphone(tmp_path / "linphone", config) as provider:
                await provider.command(f"call sip:{OFFICE_NUMBER}@office.example")
                await provider.wait_call_state("LinphoneCallStreamsRunning")  # the greeting plays (3 s)
                for digit in "102":
                    await provider.command(f"dtmf {digit}")
                    await asyncio.sleep(0.3)
                leg = await bernd.next_call(5.0)
                await asyncio.wait_for(leg.wait_answered(), 5.0)
                await provider.command("terminate")
                await asyncio.wait_for(leg.wait_ended(), 5.0)
        finally:
            await bernd.close()
    assert [(d.digit, d.source) for d in digits] == [("1", "rfc4733"), ("0", "rfc4733"), ("2", "rfc4733")]
    answers = [t for t in trace.messages if t.way == "out" and t.message.body and t.flow.transport == "TLS"]
    assert answers and b"RTP/SAVP" in answers[0].message.body and b"a=crypto:" in answers[0].message.body
    assert b"a=crypto" not in leg.request.body  # bernd's leg: plain RTP


@pytest.mark.interop
async def test_two_linphones_call_each_other_by_extension(tmp_path: Path) -> None:
    """The README's tour with two Linphones: bernd (over TCP) dials 101, anna (over UDP) answers, bernd's
    DTMF 5 reaches anna (the SDP passes through: the two Linphones talk RTP directly), anna hangs up."""
    require_linphone()
    async with Server(office(tmp_path), listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0")) as server:
        ended: list[CallRecord] = []
        server.events.on("call_ended", ended.append)
        ports = {kind.lower(): port for kind, _, port in server.addresses}
        anna_rc = linphonerc(
            user="101", password="anna-101-secret", server=("127.0.0.1", ports["udp"]), transport="udp"
        )
        bernd_rc = linphonerc(
            user="bernd", password="bernd-102-secret", server=("127.0.0.1", ports["tcp"]), transport="tcp"
        )
        async with (
            linphone(tmp_path / "anna", anna_rc) as anna,
            linphone(tmp_path / "bernd", bernd_rc) as bernd,
        ):
            await wait_registered(server, "101", anna)
            await wait_registered(server, "bernd", bernd)
            await bernd.command("call sip:101@office.example")
            await anna.wait_call_state("LinphoneCallIncomingReceived")
            await anna.command("answer")
            await bernd.wait_call_state("LinphoneCallStreamsRunning")
            await anna.wait_call_state("LinphoneCallStreamsRunning")
            await bernd.command("dtmf 5")
            await until(lambda: anna.tones() == "5", 3.0, f"tones at anna: {anna.tones()!r}", anna)
            await anna.command("terminate")
            await bernd.wait_call_state("LinphoneCallReleased")
            await until(lambda: ended, 5.0, "no CDR")
    (record,) = ended
    assert (record.caller, record.dialled, record.answered_by) == ("102", "101", "101")
    assert record.disposition is Disposition.ANSWERED


@pytest.mark.interop
async def test_linphone_hold_and_resume_on_an_anchored_call(tmp_path: Path) -> None:
    """Flow 6 with real phones on an anchored call: Linphone plays the provider calling the office number
    (extension processing: the B2BUA answers, plays the greeting and keeps the media) and keys 102; bernd's
    Linphone answers. The provider's ``call-pause`` sends a re-INVITE with ``a=sendonly``: the B2BUA answers
    it itself (``a=recvonly``, its own media address, unchanged) and re-INVITEs bernd with ``a=sendonly``,
    bernd's Linphone shows PausedByRemote and answers ``a=recvonly``. ``call-resume`` (an offer without a
    direction attribute: sendrecv) resumes both legs; the provider's DTMF 7 then reaches bernd through
    the B2BUA's media. Then bernd pauses and resumes: the same, mirrored onto the provider's leg."""
    from siptrace import SipTrace, Traced

    from durchwahl.sipcore.message import Request

    require_linphone()
    server = Server(office(tmp_path), listen=("udp:127.0.0.1:0",))
    trace = SipTrace(server.endpoint)
    async with server:
        port = server.addresses[0][2]
        provider_rc = linphonerc(
            user="provider", password="unused", server=("127.0.0.1", port), transport="udp", register=False
        )
        bernd_rc = linphonerc(
            user="bernd", password="bernd-102-secret", server=("127.0.0.1", port), transport="udp"
        )
        async with (
            linphone(tmp_path / "provider", provider_rc) as provider,
            linphone(tmp_path / "bernd", bernd_rc) as bernd,
        ):
            await wait_registered(server, "bernd", bernd)
            await provider.command(f"call sip:{OFFICE_NUMBER}@office.example")
            await provider.wait_call_state("LinphoneCallStreamsRunning")  # the greeting plays
            for digit in "102":
                await provider.command(f"dtmf {digit}")
                await asyncio.sleep(0.3)
            await bernd.wait_call_state("LinphoneCallIncomingReceived")
            await bernd.command("answer")
            await bernd.wait_call_state("LinphoneCallStreamsRunning")

            async def pause_and_resume(holder: Linphone, held: Linphone) -> None:
                """``holder`` pauses the call, then resumes it; ``held`` sees it paused, then running."""
                (call_id,) = set(holder.events("call-state-changed", "Id"))
                since = (len(holder.call_states()), len(held.call_states()))
                await holder.command(f"call-pause {call_id}")
                await holder.wait_call_state("LinphoneCallPaused", since=since[0])
                await held.wait_call_state("LinphoneCallPausedByRemote", since=since[1])
                await asyncio.sleep(0.3)
                since = (len(holder.call_states()), len(held.call_states()))
                await holder.command(f"call-resume {call_id}")
                await holder.wait_call_state("LinphoneCallStreamsRunning", since=since[0])
                await held.wait_call_state("LinphoneCallStreamsRunning", since=since[1])

            await pause_and_resume(provider, bernd)
            await asyncio.sleep(0.3)
            await provider.command("dtmf 7")
            await until(lambda: bernd.tones() == "7", 3.0, f"tones at bernd: {bernd.tones()!r}", bernd)
            await pause_and_resume(bernd, provider)
            await provider.command("terminate")
            await bernd.wait_call_state("LinphoneCallReleased")
    dump = trace.dump()
    invites = [
        t
        for t in trace.messages
        if isinstance(t.message, Request) and t.message.method == "INVITE" and t.message.to.tag is None
    ]
    (first_in,) = [t for t in invites if t.way == "in"]  # the provider's call
    (first_out,) = [t for t in invites if t.way == "out"]  # ours to bernd
    provider_call, bernd_call = first_in.message.call_id, first_out.message.call_id
    answer_a, answer_b = trace.answer(first_in), trace.answer(first_out)
    assert answer_a is not None and answer_b is not None, dump
    anchor_a = media_address(answer_a.message.body)  # where the B2BUA takes the provider's media
    anchor_b = media_address(first_out.message.body)  # … and bernd's

    def exchange(holder: str, way: str) -> tuple[list[str | None], list[str | None], list[bytes]]:
        """The re-INVITEs on ``holder``'s dialog that went ``way``: their directions, their answers'
        directions and the answers' bodies."""
        call_id = provider_call if holder == "provider" else bernd_call
        sent = trace.reinvites(way, call_id)
        answers = [trace.answer(t) for t in sent]
        assert all(isinstance(t, Traced) for t in answers), dump
        return (
            [t.direction for t in sent],
            [t.direction for t in answers if t],
            [t.message.body for t in answers if t],
        )

    # The provider holds and resumes: answered here (our anchor stays), told to bernd.
    offered, answered, bodies = exchange("provider", "in")
    assert (offered, answered) == (["sendonly", "sendrecv"], ["recvonly", "sendrecv"]), dump
    assert [media_address(body) for body in bodies] == [anchor_a, anchor_a], dump
    offered, answered, _ = exchange("bernd", "out")
    assert (offered, answered) == (["sendonly", "sendrecv"], ["recvonly", "sendrecv"]), dump
    # bernd holds and resumes: the same the other way round.
    offered, answered, bodies = exchange("bernd", "in")
    assert (offered, answered) == (["sendonly", "sendrecv"], ["recvonly", "sendrecv"]), dump
    assert [media_address(body) for body in bodies] == [anchor_b, anchor_b], dump
    offered, answered, _ = exchange("provider", "out")
    assert (offered, answered) == (["sendonly", "sendrecv"], ["recvonly", "sendrecv"]), dump
    # Our re-INVITEs to a leg always point it at the same anchor.
    assert {media_address(t.message.body) for t in trace.reinvites("out", bernd_call)} == {anchor_b}, dump
    assert {media_address(t.message.body) for t in trace.reinvites("out", provider_call)} == {anchor_a}, dump
