"""The routing exception hierarchy: every error says what is wrong and where."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["ConfigError", "ConfigProblem", "RoutingError"]


class RoutingError(Exception):
    """Base class of every error raised by the routing package."""


@attrs.frozen
class ConfigProblem:
    """One thing wrong in a configuration file: where (file, 1-based line, dotted field) and what."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigError(RoutingError, ValueError):
    """A configuration file that cannot be used; ``problems`` lists everything found wrong, in file order."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = sorted(problems, key=lambda p: (p.file, p.line))
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[object, ...]:
        return (ConfigError, (self.problems,))
