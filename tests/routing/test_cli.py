"""The ``durchwahl`` command line as an admin uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routing.cli import main

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
    from routing.cdr import CallRecord, Disposition, SqliteCdrStore

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
    assert "90s" in lines[2] and "answered" in lines[2] and "employee 102" in lines[2]

    assert main(["cdr", "--config", str(office), "--json", "-n", "1"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["call_id"] == "c2" and row["disposition"] == "answered" and row["ended_at"] == base + 7295

    assert main(["cdr", "--config", str(office), "--since", "tomorrow"]) == 2


def test_parse_reports_valid_and_invalid_messages(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["parse", str(TORTURE / "wsinv.dat"), str(TORTURE / "badvers.dat")])
    out = capsys.readouterr().out
    assert status == 1
    assert "wsinv.dat: INVITE sip:vivekg@chair-dnrc.example.com;unknownparam" in out
    assert "badvers.dat: invalid (505)" in out


def test_dtmf_prints_digits_and_start_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import wave

    import numpy as np

    from media.dtmf_tones import dtmf_tone

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

    from routing.cli import JsonFormatter

    record = logging.LogRecord(
        "sipcore.endpoint", logging.INFO, __file__, 1, "listening on %s", ("UDP",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "INFO" and entry["logger"] == "sipcore.endpoint"
    assert entry["message"] == "listening on UDP"


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
