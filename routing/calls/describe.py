"""Callers, routes and collected digits in words, for the log lines an administrator reads."""

from __future__ import annotations

from ..collector import ExtensionDialled, NoExtension
from ..dialstring import format_post_dial
from ..resolver import (
    Caller,
    FromEmployee,
    FromTrunk,
    Route,
    ToEmployee,
    ToExtensionProcessing,
    ToExternal,
    ToGroup,
)

__all__ = ["describe_caller", "describe_collected", "describe_route"]


def describe_caller(caller: Caller) -> str:
    """Who calls: an extension, a trunk (and the number it gave), or the source address."""
    if isinstance(caller, FromEmployee):
        return caller.extension
    if isinstance(caller, FromTrunk):
        return f"{caller.calling or 'an unknown number'} via trunk {caller.name}"
    return caller.source


def describe_route(route: Route) -> str:
    """Where a call goes (``ringing employee 101 (Anna Schmidt)`` …)."""
    if isinstance(route, ToEmployee):
        return f"ringing employee {route.employee.extension} ({route.employee.name})"
    if isinstance(route, ToGroup):
        return f"ringing group {route.group.extension} ({route.group.name}, {route.group.strategy.value})"
    if isinstance(route, ToExternal):
        post_dial = f", then digits {format_post_dial(route.post_dial)}" if route.post_dial else ""
        return f"calling {route.e164} via trunk {route.trunk}{post_dial}"
    if isinstance(route, ToExtensionProcessing):
        return f"answering with the greeting of {route.number.number}"
    return f"refused with {route.status} {route.reason}"


def describe_collected(result: ExtensionDialled | NoExtension) -> str:
    """What a caller keyed in during the greeting."""
    if isinstance(result, ExtensionDialled):
        return f"extension {result.extension} dialled"
    digits = f" (digits {result.digits})" if result.digits else ""
    return f"no extension dialled: {result.reason.value.replace('_', ' ')}{digits}"
