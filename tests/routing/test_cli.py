"""The ``durchwahl`` command line as an admin uses it."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server import copy_office

from durchwahl.routing.cli import main

ROOT = Path(__file__).resolve().parents[2]
TORTURE = ROOT.parent / "shared" / "sip-torture"


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "examples" / "office.toml")]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 employees")


def test_check_config_reports_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "office.toml"
    bad.write_text(
        '[server]\ndomain = "x"\n\n[[employee]]\nextension = "12345"\nname = "A"\npassword = "p"\n'
    )
    assert main(["check-config", str(bad)]) == 1
    assert f"{bad}:5: employee[1].extension:" in capsys.readouterr().out


def check(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *, bom: bool = False
) -> tuple[int, str]:
    """``durchwahl check-config`` on ``text`` (beside the example greeting): exit status and output."""
    (tmp_path / "greeting.wav").write_bytes((ROOT / "examples" / "greeting.wav").read_bytes())
    path = tmp_path / "office.toml"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    status = main(["check-config", str(path)])
    return status, capsys.readouterr().out


EXAMPLE = (ROOT / "examples" / "office.toml").read_text(encoding="utf-8")


def test_check_config_reads_a_file_with_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Windows editors save UTF-8 with a BOM; it is not a TOML statement."""
    status, out = check(tmp_path, EXAMPLE, capsys, bom=True)
    assert (status, out.splitlines()[-1]) == (
        0,
        "OK: 3 employees, 1 group, 1 trunk, 1 number, 2 CRM contacts",
    )


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ('["udp:127.0.0.1:5060", "udp:127.0.0.1:5060"]', "udp:127.0.0.1:5060 is given twice"),
        ('["tcp:[::1]:5060", "tcp:[0:0::1]:5060"]', "tcp:[0:0::1]:5060 is tcp:[::1]:5060 again"),
        (
            '["udp:0.0.0.0:5060", "udp:127.0.0.1:5060"]',
            "udp:127.0.0.1:5060 and udp:0.0.0.0:5060 clash: udp:0.0.0.0:5060 already takes that port on "
            "every IPv4 address",
        ),
    ],
)
def test_check_config_refuses_listen_addresses_that_cannot_all_be_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str, message: str
) -> None:
    old = 'listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]'
    status, out = check(tmp_path, EXAMPLE.replace(old, f"listen = {listen}"), capsys)
    assert status == 1
    assert f"office.toml:6: server.listen: {message}" in out
    # Other transports, other ports and port 0 (a free port each) do not clash.
    fine = (
        '["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "udp:127.0.0.1:0", "udp:127.0.0.1:0", "udp:[::]:5060"]'
    )
    status, out = check(tmp_path, EXAMPLE.replace(old, f"listen = {fine}"), capsys)
    assert status == 0, out


def test_check_config_warns_loudly_when_anyone_becomes_the_trunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.replace('inbound_from = ["127.0.0.1/32"]', 'inbound_from = ["0.0.0.0/0", "10.0.0.0/8"]')
    status, out = check(tmp_path, text, capsys)
    lines = out.splitlines()
    assert status == 0  # legal, but hardly meant: a warning, not a problem
    line = next(n for n, text in enumerate(text.splitlines(), 1) if text.startswith("inbound_from"))
    assert lines[0].startswith(
        f"{tmp_path / 'office.toml'}:{line}: trunk[1].inbound_from: warning: 0.0.0.0/0 is"
    )
    assert "ANYONE on the network becomes trunk 'provider'" in lines[0]
    assert "10.0.0.0/8 holds 16,777,216 addresses" in lines[1]
    assert lines[-1] == "OK: 3 employees, 1 group, 1 trunk, 1 number, 2 CRM contacts (2 warnings)"


def test_check_config_refuses_external_fallbacks_without_a_trunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        '[server]\ndomain = "office.example"\n\n[[employee]]\nextension = "101"\nname = "Anna"\n'
        'password = "a"\nfallback = "+49 170 1234567"\n\n[[group]]\nextension = "200"\nname = "G"\n'
        'members = ["101"]\nfallback = "+49 30 7654321"\n'
    )
    status, out = check(tmp_path, text, capsys)
    assert status == 1
    assert (
        "office.toml:8: employee[1].fallback: +491701234567 is an external number, but there is no [[trunk]]"
        in out
    )
    assert "office.toml:14: group[1].fallback: +49307654321 is an external number" in out


async def test_cdr_prints_the_newest_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from durchwahl.routing.cdr import CallRecord, Disposition, SqliteCdrStore

    office = tmp_path / "office.toml"
    office.write_text('[server]\ndomain = "office.example"\nstate_dir = "state"\n')
    assert main(["cdr", "--config", str(office)]) == 1
    assert "no CDR file" in capsys.readouterr().err

    store = SqliteCdrStore(tmp_path / "state" / "cdr.sqlite3")
    base = 1_780_000_000.0
    for n in range(3):
        store.write(
            CallRecord(
                call_id=f"c{n}",
                caller="101",
                dialled=f"10{n}",
                started_at=base + n * 3600,
                ended_at=base + n * 3600 + 95,
                answered_at=base + n * 3600 + 5 if n != 1 else None,
                disposition=Disposition.ANSWERED if n != 1 else Disposition.BUSY,
                destination_kind="employee",
                destination_id=f"10{n}",
                answered_by=f"10{n}" if n != 1 else None,
                status=None if n != 1 else 486,
            )
        )
    await store.records()
    await store.close()

    assert main(["cdr", "--config", str(office), "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("started")
    assert "busy (486)" in lines[1] and "employee 101" in lines[1]
    assert "1 min 30 s" in lines[2] and "answered" in lines[2] and "employee 102" in lines[2]

    assert main(["cdr", "--config", str(office), "--json", "-n", "1"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["call_id"] == "c2" and row["disposition"] == "answered" and row["ended_at"] == base + 7295

    assert main(["cdr", "--config", str(office), "--since", "tomorrow"]) == 2


async def test_cdr_shows_whole_numbers_and_uris_in_their_own_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Numbers of 15 digits, SIP URIs and the trunk are shown whole; who answered is an extension (the
    record keeps the SIP user), an outside caller is its number."""
    from durchwahl.routing.cdr import CallRecord, Disposition, SqliteCdrStore

    config = copy_office(tmp_path)
    store = SqliteCdrStore(tmp_path / "var" / "cdr.sqlite3")
    base = 1_780_000_000.0
    rows = [
        CallRecord(  # a provider's call to the office's number, the caller dialled 102 during the greeting
            call_id="in",
            caller="sip:+493012345678901@sip.provider.example",
            source_trunk="provider",
            dialled="+49301234567",
            started_at=base,
            answered_at=base + 9,
            ended_at=base + 9 + 123,
            disposition=Disposition.ANSWERED,
            destination_kind="employee",
            destination_id="102",
            answered_by="bernd",
            digits="102",
        ),
        CallRecord(  # Anna calls a long international number out
            call_id="out",
            caller="101",
            dialled="+861012345678901;105",
            started_at=base + 60,
            ended_at=base + 90,
            disposition=Disposition.NO_ANSWER,
            destination_kind="external",
            destination_id="+861012345678901",
            status=480,
        ),
        CallRecord(  # a caller without a number
            call_id="anon",
            caller="sip:anonymous@anonymous.invalid",
            source_trunk="provider",
            dialled="+49301234567",
            started_at=base + 120,
            ended_at=base + 121,
            disposition=Disposition.CANCELLED,
            destination_kind="number",
            destination_id="+49301234567",
        ),
    ]
    for row in rows:
        store.write(row)
    await store.records()
    await store.close()

    assert main(["cdr", "--config", str(config)]) == 0
    header, incoming, outgoing, anonymous = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "started", "caller", "trunk", "dialled", "destination", "answered", "by", "talk", "result"
    ]  # fmt: skip
    assert incoming.split()[2:8] == ["+493012345678901", "provider", "+49301234567", "employee", "102", "102"]
    assert incoming.endswith("2 min 3 s  answered, digits 102")
    assert outgoing.split()[2:7] == ["101", "-", "+861012345678901;105", "external", "+861012345678901"]
    assert outgoing.endswith("no-answer (480)")
    assert "sip:anonymous@anonymous.invalid  provider" in anonymous
    # Columns line up: each starts at the same offset in every row.
    assert incoming.index("provider") == anonymous.index("provider") == header.index("trunk")
    assert outgoing.index("+861012345678901;105") == header.index("dialled")
    assert incoming.index("2 min 3 s") + len("2 min 3 s") == header.index("talk") + len("talk")


def test_cdr_before_the_first_call_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server has started with the state_dir (its nonce secret is there) but no call has ended yet."""
    from durchwahl.routing.server import load_secret

    config = copy_office(tmp_path)
    load_secret(tmp_path / "var")  # what every server start does
    assert main(["cdr", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("no calls recorded yet") and captured.err == ""


def test_parse_reports_valid_and_invalid_messages(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["parse", str(TORTURE / "wsinv.dat"), str(TORTURE / "badvers.dat")])
    out = capsys.readouterr().out
    assert status == 1
    assert "wsinv.dat: INVITE sip:vivekg@chair-dnrc.example.com;unknownparam" in out
    assert "badvers.dat: invalid (505)" in out


def test_dtmf_prints_digits_and_start_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import wave

    import numpy as np

    from durchwahl.media.dtmf_tones import dtmf_tone

    silence = np.zeros(800)  # 100 ms
    parts = [silence]
    for digit in "42#":
        parts += [dtmf_tone(digit, 640), silence]  # 80 ms tone, 100 ms pause
    signal = np.concatenate(parts).astype(np.int16)
    path = tmp_path / "digits.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(signal.tobytes())
    assert main(["dtmf", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["4", "2", "#"]
    starts = [int(line.split()[1]) for line in lines]
    for start, expected in zip(starts, (800, 800 + 1440, 800 + 2 * 1440), strict=True):
        assert abs(start - expected) <= 16  # within 2 ms


def test_json_log_lines_are_json_objects() -> None:
    import json
    import logging

    from durchwahl.routing.cli import JsonFormatter

    record = logging.LogRecord(
        "durchwahl.sipcore.endpoint", logging.INFO, __file__, 1, "listening on %s", ("UDP",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "INFO" and entry["logger"] == "durchwahl.sipcore.endpoint"
    assert entry["message"] == "listening on UDP"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``durchwahl serve`` installs its own log handler on the root logger: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_serve_names_the_address_already_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = copy_office(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        spec = f"udp:127.0.0.1:{taken.getsockname()[1]}"
        assert main(["serve", "--config", str(config), "--listen", spec]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on {spec}: Address already in use" in err, err
    assert "[server] listen" in err and "Errno" not in err, err


def test_dtmf_says_so_when_a_recording_has_no_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import wave

    path = tmp_path / "silence.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(2 * 8000))  # one second of silence
    assert main(["dtmf", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no DTMF digits in {path} (1.0 s of audio)" in captured.err


@pytest.mark.parametrize("command", ["serve", "status", "originate", "cdr"])
def test_help_shows_the_default_config(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "(default: examples/office.toml)" in " ".join(capsys.readouterr().out.split())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder near the root of /tmp: a Unix socket path (the control socket) must stay under ~107 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dw-") as folder:
        yield Path(folder)


async def test_status_lists_active_calls_and_blocked_sources(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One call connected (bernd -> 101, answered), one ringing (bernd -> 103, never answered), one source
    blocked after failed logins: ``durchwahl status`` shows each with its parties, state and age."""
    import asyncio
    import re
    import time

    from phones import Phone, Script
    from test_flows import answered

    from durchwahl.routing.server import Server

    config = copy_office(short_dir)
    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        port = server.addresses[0][2]
        anna = await Phone("101", "anna-101-secret", port, script=Script("answer")).start()
        carla = await Phone("103", "carla-103-secret", port, script=Script("ignore")).start()
        bernd = await Phone("bernd", "bernd-102-secret", port).start()
        try:
            talking = bernd.dial("101")
            await answered(talking)
            ringing = bernd.dial("103")
            await carla.next_call()
            guard = server.registrar.guard
            while guard.status("203.0.113.5", time.time(), "101").blocked_until is None:
                guard.failed("203.0.113.5", time.time(), "101")
            calls = {c.call_id: c for c in server.b2bua.calls()}
            assert [c.phase.value for c in calls.values()] == ["connected", "ringing"]
            assert calls[talking.call_id].answered_by == "101"
            assert (calls[ringing.call_id].destination_kind, calls[ringing.call_id].destination_id) == (
                "employee",
                "103",
            )
            assert await asyncio.to_thread(main, ["status", "--config", str(config)]) == 0
            assert await asyncio.to_thread(main, ["unblock", "203.0.113.5", "--config", str(config)]) == 0
            assert guard.admits("203.0.113.5", time.time())
            assert guard.blocks(time.time()) == ()
            talking.bye()
            ringing.cancel()
        finally:
            for phone in (anna, bernd, carla):
                await phone.close()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "active calls: 2" in lines, out
    header = lines.index("active calls: 2") + 1
    assert lines[header].split() == [
        "caller",
        "dialled",
        "destination",
        "state",
        "for",
        "answered",
        "by",
        "call-id",
    ]
    assert re.fullmatch(
        rf"  102 +101 +employee 101 +connected +\d+ s +101 +{re.escape(talking.call_id)}", lines[header + 1]
    ), out
    assert re.fullmatch(
        rf"  102 +103 +employee 103 +ringing +\d+ s +- +{re.escape(ringing.call_id)}", lines[header + 2]
    ), out
    assert "blocked sources: 1" in lines, out
    assert re.search(
        r"^  203\.0\.113\.5  user 101  for \d+ min \d+ s more  \(\d+ failures\)$", out, re.MULTILINE
    ), out
    assert "unblocked 203.0.113.5" in lines, out


def test_durations_read_as_people_say_them() -> None:
    from durchwahl.routing.cli import _duration

    assert [_duration(s) for s in (0, 42.4, 123, 3600, 3725)] == [
        "0 s",
        "42 s",
        "2 min 3 s",
        "1 h 0 min",
        "1 h 2 min",
    ]


async def test_originate_says_why_a_call_cannot_start_and_exits_non_zero(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid number, an unknown extension and an extension without a registered phone are errors
    (exit 1, the reason on standard error); a good click-to-call answers once the employee's phone rings."""
    import asyncio

    from phones import Phone, Script

    from durchwahl.routing.server import Server

    config = copy_office(short_dir)

    async def originate(extension: str, number: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, ["originate", extension, number, "--config", str(config)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    async with Server(config, listen=("udp:127.0.0.1:0",)) as server:
        anna = await Phone("101", "anna-101-secret", server.addresses[0][2], script=Script("ignore")).start()
        try:
            code, out, err = await originate("101", "+49 89 abc")
            assert (code, out) == (1, "")
            assert err.startswith(
                "durchwahl: cannot call +49 89 abc for 101: '+49 89 abc' is not a phone number"
            )
            assert err.rstrip().endswith("(484)"), err
            assert await originate("999", "+49891234567") == (
                1,
                "",
                "durchwahl: cannot call +49891234567 for 999: no employee has extension 999 (404)\n",
            )
            assert await originate("102", "+49891234567") == (
                1,
                "",
                "durchwahl: cannot call +49891234567 for 102: no phone of 102 is registered (480)\n",
            )
            assert anna.calls.empty()
            code, out, err = await originate("101", "+49891234567")
            assert (code, err) == (0, "")
            assert out == "calling: the phones of 101 ring; once one answers, +49891234567 is called\n"
            await anna.next_call()  # the employee's phone rings
        finally:
            await anna.close()


def test_serve_prints_addresses_and_phone_settings_as_plain_text(tmp_path: Path) -> None:
    """``durchwahl serve`` as a process: what it prints on start, its log lines, a clean stop on SIGINT."""
    import signal
    import subprocess
    import sys

    config = copy_office(tmp_path)
    command = [sys.executable, "-m", "durchwahl.routing.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--listen", "udp:127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()  # flushed as soon as the server listens
        assert first.startswith("durchwahl: listening on UDP 127.0.0.1:"), first
        process.send_signal(signal.SIGINT)
        out, err = first + process.stdout.read(), process.stderr.read()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "durchwahl: register a phone with domain/realm office.example, server as above:" in out, out
    assert "  extension 102 Bernd Meier: user bernd, password (see the config)" in out, out
    assert "'" not in out, out
    assert "INFO durchwahl.sipcore.endpoint: listening on UDP 127.0.0.1:" in err, err


@pytest.mark.usefixtures("restore_logging")
def test_serve_names_a_state_dir_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = copy_office(tmp_path)
    (tmp_path / "var").write_text("a file where the state directory should be")
    assert main(["serve", "--config", str(config), "--listen", "udp:127.0.0.1:0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"durchwahl: cannot use {tmp_path / 'var'}"), err
    assert "(see [server] state_dir)" in err and "Errno" not in err, err


# --------------------------------------------------------------------------------- emergency numbers


@pytest.mark.parametrize(
    ("old", "new", "needle", "field", "message"),
    [
        (
            'extension = "103"',
            'extension = "112"',
            'extension = "112"',
            "employee[3].extension",
            "112 is an emergency number",
        ),
        (
            'extension = "200"',
            'extension = "110"',
            'extension = "110"',
            "group[1].extension",
            "110 is an emergency number",
        ),
        (
            'extension = "103"',
            'extension = "11"',
            'extension = "11"',
            "employee[3].extension",
            "11 is the start of emergency number 112: whoever dials 112 could reach extension 11 instead",
        ),
        (
            'domain = "office.example"',
            'domain = "office.example"\nemergency_numbers = ["112", "1x0"]',
            "emergency_numbers",
            "server.emergency_numbers",
            "'1x0' is not an emergency number (2–6 digits)",
        ),
        (
            'domain = "office.example"',
            'domain = "office.example"\nemergency_trunk = "provder"',
            "emergency_trunk",
            "server.emergency_trunk",
            "unknown trunk 'provder' (did you mean 'provider'?)",
        ),
        # Another country's numbers: 999 is an emergency number in Britain (and 110 is not).
        (
            'name = "Carla Weber"',
            'name = "Carla Weber"\n\n[[employee]]\nextension = "999"\nname = "X"\npassword = "x"',
            'extension = "999"',
            "employee[4].extension",
            "999 is an emergency number",
        ),
    ],
)
def test_check_config_refuses_extensions_that_would_take_an_emergency_number(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    needle: str,
    field: str,
    message: str,
) -> None:
    assert old in EXAMPLE
    text = EXAMPLE.replace(old, new, 1)
    if "999" in new:
        assert 'country_code = "49"' in text
        text = text.replace('country_code = "49"', 'country_code = "44"')
    status, out = check(tmp_path, text, capsys)
    assert status == 1, out
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith(needle))
    expected = f"{tmp_path / 'office.toml'}:{line}: {field}: {message}"
    assert any(printed.startswith(expected) for printed in out.splitlines()), out


def test_check_config_accepts_the_emergency_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = 'emergency_numbers = ["112", "110", "116117"]\nemergency_trunk = "provider"'
    text = EXAMPLE.replace('domain = "office.example"', f'domain = "office.example"\n{settings}')
    text = text.replace('"103"', '"1100"')  # starts with 110 but takes nothing from it
    status, out = check(tmp_path, text, capsys)
    assert (status, out) == (0, "OK: 3 employees, 1 group, 1 trunk, 1 number, 2 CRM contacts\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[server]\ndomain = "office.example"\n',
            "server: warning: there is no [[trunk]]: emergency calls (112, 110) CANNOT be connected",
        ),
        (
            '[server]\ndomain = "office.example"\nemergency_numbers = []\n',
            "server.emergency_numbers: warning: is empty: NO number reaches the emergency services",
        ),
        (
            '[server]\ndomain = "office.example"\ncountry_code = "998"\n\n'
            '[[trunk]]\nname = "p"\nhost = "192.0.2.1"\n',
            "server.country_code: warning: no emergency numbers are known for country code 998: only 112",
        ),
    ],
)
def test_check_config_warns_when_emergency_calls_cannot_be_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    status, out = check(tmp_path, text, capsys)
    assert status == 0 and message in out and out.endswith("(1 warning)\n"), out
