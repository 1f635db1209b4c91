"""The ``[server]`` keys of admission control (``routing.admission.AdmissionConfig``), each checked with a
problem that names the key (pure; used by ``routing.directory_file``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .admission import AdmissionConfig
from .config_check import Checker

__all__ = ["ADMISSION_KEYS", "read_admission"]

#: The [server] keys of admission control: (key, least value, an integer only, the AdmissionConfig field).
ADMISSION_KEYS: Final = (
    ("max_calls", 1, True, "max_calls"),
    ("max_cps", 0, False, "max_cps"),
    ("max_registers_per_second", 0, False, "max_registers_per_second"),
    ("max_requests_per_second", 0, False, "max_requests_per_second"),
    ("overload_queue_ms", 0, True, "overload_delay"),
    ("retry_after", 1, True, "retry_after"),
)


def _number(c: Checker, data: Mapping[str, Any], key: str, least: float, integer: bool) -> float | None:
    """``data[key]`` as a number of at least ``least`` (greater than 0 where ``least`` is 0 and fractions
    are allowed: a rate of 0 would refuse everything); None and a problem otherwise."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        c.report("server", None, key, f"must be {'an integer' if integer else 'a number'}, not {value!r}")
        return None
    if value < least or (not integer and value <= 0):
        bound = f"at least {least}" if integer else "greater than 0"
        c.report("server", None, key, f"must be {bound}, not {value}")
        return None
    return value


def read_admission(c: Checker, data: Mapping[str, Any]) -> AdmissionConfig | None:
    """The admission caps of the ``[server]`` table ``data`` (defaults for keys left out); None when one of
    them has a problem (reported to ``c``)."""
    admission: dict[str, float | None] = {}
    good = True
    for key, least, integer, field in ADMISSION_KEYS:
        if key in data:
            value = _number(c, data, key, least, integer)
            good = good and value is not None
            if value is None:
                continue
            if key == "overload_queue_ms":
                admission[field] = value / 1000 if value else None
            else:
                admission[field] = int(value) if integer else float(value)
    if not good:
        return None
    return AdmissionConfig(**admission)  # type: ignore[arg-type]
