"""The example office shipped inside the package: what ``durchwahl demo`` plays and ``durchwahl init`` writes.

The office and its greeting are package data (``routing/example/``; in the repository these are links to
``examples/office.toml`` and ``examples/greeting.wav``, the one copy ``make run`` serves), read through
``importlib.resources`` so they are found wherever and however the package is installed.

``durchwahl init DIR`` writes a starter office from it: the same commented file and greeting, with fresh
passwords for the employees (a sample's well-known passwords must never become a running server's), and
never over a file that exists.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import tomllib
from collections.abc import Callable
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TextIO

import attrs

from durchwahl.sipcore.auth import compute_ha1

__all__ = [
    "GREETING",
    "OFFICE",
    "Login",
    "StarterExists",
    "example_file",
    "init_main",
    "starter_text",
    "write_starter",
]

#: The file names, in the package and in the folder ``durchwahl init`` writes.
OFFICE = "office.toml"
GREETING = "greeting.wav"

_HEADER = """\
# Written by `durchwahl init` from durchwahl's example office: edit it to be yours. Start with the [server]
# domain and listen addresses, then the employees, the trunk your provider gave you and your numbers.
# The employees' passwords below are fresh; the greeting.wav beside this file is the example greeting.
#
"""
_TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z_]+)\s*\]\]?")
_SECRET = re.compile(r'^(?P<key>\s*(?:password|ha1|ha1_sha256)\s*=\s*)"[^"]*"(?P<rest>.*)$')


class StarterExists(FileExistsError):
    """``durchwahl init`` would overwrite a file."""


@attrs.frozen
class Login:
    """What a phone needs to register as an employee of the written office."""

    extension: str
    name: str
    sip_user: str
    password: str


def example_file(name: str) -> Traversable:
    """``office.toml`` or ``greeting.wav`` of the example office, from the installed package."""
    package = __package__ or __name__.rpartition(".")[0]
    return files(package) / "example" / name


def _fresh_password() -> str:
    return secrets.token_urlsafe(12)


def starter_text(new_password: Callable[[], str] = _fresh_password) -> tuple[str, list[Login]]:
    """The example office's text with a new password for every employee, and the logins it holds.

    An employee stored as HA1 values gets new HA1 values of a new password (realm: the office's domain).
    """
    text = example_file(OFFICE).read_text(encoding="utf-8")
    office = tomllib.loads(text)
    realm = str(office["server"]["domain"])
    employees = list(office.get("employee", []))
    logins = [
        Login(
            str(e["extension"]),
            str(e["name"]),
            str(e.get("sip_user", e["extension"])),
            new_password(),
        )
        for e in employees
    ]
    out: list[str] = []
    table, index = "", -1
    for line in text.splitlines(keepends=True):
        header = _TABLE.match(line)
        if header is not None:
            table = header.group(1)
            if table == "employee":
                index += 1
        if table == "employee" and index >= 0:
            line = _renew(line, logins[index], realm)
        out.append(line)
    return _HEADER + "".join(out), logins


def _renew(line: str, login: Login, realm: str) -> str:
    """``line`` of ``login``'s employee table with its new secret; a comment naming the example's password
    (what its HA1 values were made of) names none."""
    secret = _SECRET.match(line)
    if secret is None:
        made_of = f"{login.sip_user}:{realm}:"
        return re.sub(rf'"{re.escape(made_of)}[^"]*"', lambda _: f'"{made_of}<password>"', line)
    key = secret.group("key").split("=")[0].strip()
    if key == "password":
        return f'{secret.group("key")}"{login.password}"{secret.group("rest")}\n'
    algorithm = "MD5" if key == "ha1" else "SHA-256"
    return f'{secret.group("key")}"{compute_ha1(algorithm, login.sip_user, realm, login.password)}"\n'


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_starter(folder: Path, new_password: Callable[[], str] = _fresh_password) -> list[Login]:
    """Write ``office.toml`` (owner-only: it holds passwords) and ``greeting.wav`` into ``folder`` (created if
    missing); raise :class:`StarterExists` naming the files that exist, writing nothing."""
    targets = [folder / OFFICE, folder / GREETING]
    existing = [str(path) for path in targets if path.exists() or path.is_symlink()]
    if existing:
        raise StarterExists(f"not overwriting {' and '.join(existing)}")
    text, logins = starter_text(new_password)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _write_new(folder / GREETING, example_file(GREETING).read_bytes(), 0o644)
        _write_new(folder / OFFICE, text.encode("utf-8"), 0o600)
    except FileExistsError as exc:  # created by someone else since the check
        raise StarterExists(f"not overwriting {exc.filename}") from None
    return logins


def init_main(folder: str, out: TextIO | None = None) -> int:
    """``durchwahl init DIR``: write the starter office and say what to do next (0), or why not (1)."""
    stream = out or sys.stdout
    where = Path(folder)
    try:
        logins = write_starter(where)
    except StarterExists as exc:
        print(f"durchwahl init: {exc}; choose another folder or move them away", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"durchwahl init: cannot write the starter office: {exc}", file=sys.stderr)
        return 1
    office = where / OFFICE
    print(f"Wrote {office} and {where / GREETING}: a starter office to edit.", file=stream)
    print("Its employees, with the fresh passwords their phones register with:", file=stream)
    for login in logins:
        print(
            f"  extension {login.extension} {login.name}: user {login.sip_user}, password {login.password}",
            file=stream,
        )
    print("Next:", file=stream)
    print(f"  durchwahl check-config {office}", file=stream)
    print(f"  durchwahl serve --config {office}", file=stream)
    return 0
