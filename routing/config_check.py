"""Problems in a TOML file by file, line and field: the positions ``tomllib`` does not give, and a checker
that collects every problem (and warning) instead of stopping at the first."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from .errors import ConfigProblem

__all__ = ["MISSING", "Checker", "Locator", "Missing", "hint", "tables_of"]

T = TypeVar("T")

_TYPE_NAMES: Final = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


_TABLE_ARRAY_RE: Final = re.compile(r"\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]\s*(#.*)?$")
_TABLE_RE: Final = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY_RE: Final = re.compile(r"\s*([A-Za-z0-9_-]+)\s*[.=]")


class Locator:
    """Line numbers of tables and keys, found by scanning the TOML source (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self._tables: dict[tuple[str, int], int] = {}
        self._keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        current = ("", 0)
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            quotes = line.count('"""') + line.count("'''")
            if in_multiline:
                in_multiline = quotes % 2 == 0
                continue
            if quotes % 2 == 1:
                in_multiline = True
            match = _TABLE_ARRAY_RE.match(line)
            if match:
                name = match.group(1)
                current = (name, counts.get(name, 0))
                counts[name] = current[1] + 1
                self._tables.setdefault(current, number)
                continue
            match = _TABLE_RE.match(line)
            if match:
                current = (match.group(1), 0)
                self._tables.setdefault(current, number)
                continue
            match = _KEY_RE.match(line)
            if match:
                self._keys.setdefault((*current, match.group(1)), number)

    def table(self, table: str, index: int) -> int:
        line = self._tables.get((table, index))
        if line is None:
            line = self._keys.get(("", 0, table), 1)
        return line

    def key(self, table: str, index: int, key: str) -> int:
        line = self._keys.get((table, index, key))
        return line if line is not None else self.table(table, index)


class Missing:
    """No default: the key is required."""


MISSING: Final = Missing()


class Checker:
    """Collects problems while the loader reads the parsed TOML document."""

    def __init__(self, file: str, locator: Locator, tables: Mapping[str, Iterable[str]]) -> None:
        self.file = file
        self.locator = locator
        #: The keys each table may have (anything else is reported, with a suggestion).
        self.tables = tables
        self.problems: list[ConfigProblem] = []
        #: Things that work but are probably not meant (``check-config`` prints them, the server logs them).
        self.warnings: list[ConfigProblem] = []

    @staticmethod
    def field_name(table: str, index: int | None, key: str | None) -> str:
        base = table if index is None else f"{table}[{index + 1}]"
        return base if key is None else f"{base}.{key}"

    def line(self, table: str, index: int | None, key: str | None) -> int:
        i = 0 if index is None else index
        return self.locator.table(table, i) if key is None else self.locator.key(table, i, key)

    def report(self, table: str, index: int | None, key: str | None, message: str) -> None:
        self.problems.append(self._problem(table, index, key, message))

    def warn(self, table: str, index: int | None, key: str | None, message: str) -> None:
        self.warnings.append(self._problem(table, index, key, message))

    def _problem(self, table: str, index: int | None, key: str | None, message: str) -> ConfigProblem:
        return ConfigProblem(
            self.file, self.line(table, index, key), self.field_name(table, index, key), message
        )

    def unknown_keys(self, table: str, index: int | None, data: Mapping[str, Any]) -> None:
        known = set(self.tables[table])
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                suffix = (
                    f" (did you mean {hint[0]!r}?)" if hint else f"; known keys: {', '.join(sorted(known))}"
                )
                self.report(table, index, key, f"unknown key{suffix}")

    def get(
        self,
        table: str,
        index: int | None,
        data: Mapping[str, Any],
        key: str,
        kind: type[T],
        default: T | Missing = MISSING,
    ) -> T | None:
        """``data[key]`` checked to be of ``kind``; None (and a problem) when missing or of another type."""
        if key not in data:
            if isinstance(default, Missing):
                self.report(table, index, key, "missing (required)")
                return None
            return default
        value = data[key]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            self.report(table, index, key, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}, not {value!r}")
            return None
        if kind is str and not value.strip():
            self.report(table, index, key, "must not be empty")
            return None
        return value  # type: ignore[no-any-return]

    def get_str_list(
        self, table: str, index: int | None, data: Mapping[str, Any], key: str
    ) -> list[str] | None:
        value = self.get(table, index, data, key, list, [])
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            self.report(table, index, key, "must be a list of strings")
            return None
        return list(value)


def tables_of(doc: Mapping[str, Any], name: str, checker: Checker) -> list[tuple[int, Mapping[str, Any]]]:
    """The ``[[name]]`` tables of the document, each with its index."""
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        checker.report(name, None, None, f"must be an array of tables, written [[{name}]]")
        return []
    return list(enumerate(value))


def hint(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
