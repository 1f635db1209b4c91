"""The ``durchwahl`` command line as an admin uses it."""

from __future__ import annotations

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


def test_parse_reports_valid_and_invalid_messages(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["parse", str(TORTURE / "wsinv.dat"), str(TORTURE / "badvers.dat")])
    out = capsys.readouterr().out
    assert status == 1
    assert "wsinv.dat: INVITE sip:vivekg@chair-dnrc.example.com;unknownparam" in out
    assert "badvers.dat: invalid (505)" in out
