"""``durchwahl demo`` plays its scripted office day over loopback and passes every step; a broken office makes
it fail with the step named."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from durchwahl.routing.cli import main as cli_main
from durchwahl.routing.demo import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_demo_passes_every_step_and_prints_a_readable_ladder() -> None:
    out = io.StringIO()
    assert main(out) == 0, out.getvalue()
    ladder = out.getvalue()
    for line in (
        "Step 1: the phones register",
        "REGISTER Bernd Meier, user 'bernd': 401 -> digest -> 200 OK",
        "Step 2: a customer calls the company number and dials 101",
        "INVITE +49301234567 (the company number)",
        "dials 1 0 1 during the greeting (RFC 4733 events)",
        "101 mobile             INVITE from +4940555123 (rings)",
        "CANCEL: answered elsewhere",
        "audio relayed by durchwahl: ",
        "Step 3: a customer dials an extension that does not exist (9)",
        "ring group 200 'Vertrieb'",
        "Step 4: 102 calls a CRM contact whose number has post-dial digits",
        "(the contact: Müller GmbH, +49891234567, then the digits '105' after the answer)",
        "INVITE sip:+49891234567@127.0.0.1:",
        "post-dial digits 1 0 5 (RFC 4733 events)",
        "OK: every step happened as scripted.",
    ):
        assert line in ladder, f"{line!r} missing from:\n{ladder}"
    assert "greeting plays: " in ladder and "FAILED" not in ladder


def test_a_failed_step_is_named_and_exits_non_zero(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "office.toml").read_text(encoding="utf-8").replace('"+49891234567;105"', '"+49891234567"')
    )
    (tmp_path / "office.toml").write_text(text, encoding="utf-8")
    shutil.copy(EXAMPLES / "greeting.wav", tmp_path / "greeting.wav")
    out = io.StringIO()
    assert main(out, tmp_path / "office.toml") == 1
    assert "OK: every step" not in out.getvalue()
    assert (
        "FAILED: Step 4: 102 calls a CRM contact whose number has post-dial digits: "
        "the office has no CRM contact with post-dial digits"
    ) in out.getvalue()


def test_demo_is_a_cli_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["demo", "--help"])
    assert exited.value.code == 0
    assert "scripted office day" in capsys.readouterr().out
