"""``durchwahl init DIR`` writes a starter office a new user edits, from the example office in the package: it
passes check-config, its employees' phones register with the fresh passwords it prints (the example's
well-known ones no longer work), and it never overwrites a file."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from phones import Phone

from durchwahl.routing.cli import main
from durchwahl.routing.directory_file import load_directory
from durchwahl.routing.server import Server
from durchwahl.routing.starter import GREETING, OFFICE, example_file, write_starter
from durchwahl.sipcore.auth import compute_ha1

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PASSWORDS = ("anna-101-secret", "bernd-102-secret", "carla-103-secret")
LOGIN = re.compile(r"extension (\d+) .*: user (\S+), password (\S+)")


def _init(folder: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """Run ``durchwahl init folder``; the SIP user -> password lines it printed."""
    assert main(["init", str(folder)]) == 0
    return {user: password for _, user, password in LOGIN.findall(capsys.readouterr().out)}


def test_the_package_carries_the_example_office_make_run_serves() -> None:
    """One example office: the package's files are the repository's examples/, byte for byte."""
    assert example_file(OFFICE).read_bytes() == (ROOT / "examples" / OFFICE).read_bytes()
    assert example_file(GREETING).read_bytes() == (ROOT / "examples" / GREETING).read_bytes()


def test_init_writes_a_commented_office_that_passes_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "office"
    logins = _init(folder, capsys)
    assert sorted(logins) == ["101", "103", "bernd"]
    office = folder / OFFICE
    assert (folder / GREETING).read_bytes() == example_file(GREETING).read_bytes()
    assert stat.S_IMODE(office.stat().st_mode) == 0o600  # it holds passwords
    text = office.read_text(encoding="utf-8")
    assert text.startswith("# Written by `durchwahl init`")
    assert "see docs/CONFIGURATION.md for every key" in text  # the example's comments come along
    assert main(["check-config", str(office)]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 employees, 1 group, 1 trunk, 1 number")


def test_init_gives_every_employee_a_fresh_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logins = _init(tmp_path / "a", capsys)
    text = (tmp_path / "a" / OFFICE).read_text(encoding="utf-8")
    for password in EXAMPLE_PASSWORDS:
        assert password not in text
    directory = load_directory(tmp_path / "a" / OFFICE)
    realm = directory.server.realm
    for employee in directory.employees:
        password = logins[employee.sip_user]
        for algorithm in ("MD5", "SHA-256"):
            expected = compute_ha1(algorithm, employee.sip_user, realm, password)
            assert employee.digest_secret.ha1(algorithm, employee.sip_user, realm) == expected
    carla = directory.employee("103")
    assert carla is not None and carla.password is None and carla.ha1 is not None  # still stored as HA1
    assert _init(tmp_path / "b", capsys) != logins


async def test_phones_register_with_the_printed_passwords_not_the_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logins = _init(tmp_path, capsys)
    async with Server(tmp_path / OFFICE, listen=("udp:127.0.0.1:0",), control=False) as server:
        port = server.addresses[0][2]
        for user in ("101", "103"):  # a clear password and an employee stored as HA1 values
            phone = await Phone(user, logins[user], port).start()
            await phone.close()
        stale = Phone("103", "carla-103-secret", port)
        await stale.endpoint.listen("udp:127.0.0.1:0")
        try:
            assert (await stale.register()).status in (401, 403)
        finally:
            await stale.close()


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / OFFICE
    mine.write_text("# my office\n", encoding="utf-8")
    assert main(["init", str(tmp_path)]) == 1
    assert f"not overwriting {mine}" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "# my office\n"
    assert not (tmp_path / GREETING).exists()  # nothing written at all

    other = tmp_path / "other"
    other.mkdir()
    (other / GREETING).write_bytes(b"RIFF mine")
    assert main(["init", str(other)]) == 1
    assert not (other / OFFICE).exists()
    assert (other / GREETING).read_bytes() == b"RIFF mine"


def test_init_writes_into_the_current_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert f"durchwahl check-config {OFFICE}" in capsys.readouterr().out
    assert (tmp_path / OFFICE).is_file() and (tmp_path / GREETING).is_file()


def test_write_starter_uses_the_passwords_it_is_given(tmp_path: Path) -> None:
    passwords = iter(["pw-one", "pw-two", "pw-three"])
    logins = write_starter(tmp_path, lambda: next(passwords))
    assert [(login.extension, login.password) for login in logins] == [
        ("101", "pw-one"),
        ("102", "pw-two"),
        ("103", "pw-three"),
    ]
    assert 'password = "pw-one"' in (tmp_path / OFFICE).read_text(encoding="utf-8")
