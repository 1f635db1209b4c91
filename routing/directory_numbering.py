"""The numbering keys of the office file: a numbering plan (``country_code``, ``trunk_prefix``,
``international_prefix``; in ``[server]`` and per trunk) and the emergency numbers, checked and reported
with file, line and field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .config_check import Checker
from .dialstring import (
    DialStringError,
    NumberingPlan,
    check_country_code,
    check_international_prefix,
    check_trunk_prefix,
)
from .emergency import EMERGENCY_NUMBER_RE, EMERGENCY_NUMBERS

__all__ = ["read_emergency_numbers", "read_numbering_plan"]


def read_emergency_numbers(
    c: Checker, data: Mapping[str, Any], numbering: NumberingPlan
) -> tuple[str, ...] | None:
    """``emergency_numbers`` as given; None when not given (the country's, warned about when the country
    is not known) or wrong (a problem reported)."""
    if "emergency_numbers" not in data:
        country = numbering.country_code
        if country not in EMERGENCY_NUMBERS:
            c.warn(
                "server",
                None,
                "country_code" if "country_code" in data else None,
                f"no emergency numbers are known for country code {country}: only 112 is routed as one; "
                "list your country's in emergency_numbers",
            )
        return None
    given = c.get_str_list("server", None, data, "emergency_numbers")
    if given is None:
        return None
    numbers: list[str] = []
    for text in given:
        number = text.strip()
        if EMERGENCY_NUMBER_RE.fullmatch(number) is None:
            c.report("server", None, "emergency_numbers", f"{text!r} is not an emergency number (2–6 digits)")
            return None
        if number not in numbers:
            numbers.append(number)
    if not numbers:
        c.warn(
            "server",
            None,
            "emergency_numbers",
            "is empty: NO number reaches the emergency services from this office's phones",
        )
    return tuple(numbers)


def read_numbering_plan(
    c: Checker, table: str, index: int | None, data: Mapping[str, Any], base: NumberingPlan
) -> NumberingPlan | None:
    """``base`` with the ``country_code``, ``trunk_prefix`` and ``international_prefix`` that ``data``
    gives (None, and problems, when one is wrong)."""
    values: dict[str, str] = {}
    ok = True
    for key, check in (
        ("country_code", check_country_code),
        ("trunk_prefix", check_trunk_prefix),
        ("international_prefix", check_international_prefix),
    ):
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, str):
            c.report(table, index, key, f'must be a string of digits (quoted: "{value}"), not {value!r}')
            ok = False
            continue
        try:
            check(value.strip())
        except DialStringError as exc:
            c.report(table, index, key, str(exc))
            ok = False
            continue
        values[key] = value.strip()
    if not ok:
        return None
    try:
        return attrs.evolve(base, **values)
    except DialStringError as exc:
        c.report(
            table,
            index,
            "international_prefix" if "international_prefix" in data else "trunk_prefix",
            str(exc),
        )
        return None
