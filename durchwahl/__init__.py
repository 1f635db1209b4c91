"""durchwahl: an asyncio SIP back-to-back user agent. The names an embedding application needs, in one place.

``from durchwahl import Server, CallRecord, ToEmployee`` keeps working when the modules behind these names
move; docs/EMBEDDING.md describes each. Every name is imported on first use, so ``import durchwahl`` (and
importing the pure protocol modules of the stack) loads no asyncio shell, pyee, aiortc or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routing.cdr import CallRecord, Disposition
    from routing.dialstring import DialString
    from routing.directory import Directory, Employee, Group, Number, Trunk
    from routing.directory_file import load_directory
    from routing.errors import ConfigError, RoutingError
    from routing.events import (
        CallAnswered,
        CallRinging,
        CallStarted,
        CallTransferred,
        DigitPressed,
        DigitSent,
    )
    from routing.location import InMemoryLocationStore, LocationStore, SqliteLocationStore
    from routing.registrar_service import Registered, Unregistered
    from routing.resolver import (
        Anonymous,
        Caller,
        FromEmployee,
        FromTrunk,
        Refused,
        ResolverHook,
        Route,
        ToEmployee,
        ToExtensionProcessing,
        ToExternal,
        ToGroup,
    )
    from routing.server import Server

    __version__: str

__all__ = [
    "Anonymous",
    "CallAnswered",
    "CallRecord",
    "CallRinging",
    "CallStarted",
    "CallTransferred",
    "Caller",
    "ConfigError",
    "DialString",
    "DigitPressed",
    "DigitSent",
    "Directory",
    "Disposition",
    "Employee",
    "FromEmployee",
    "FromTrunk",
    "Group",
    "InMemoryLocationStore",
    "LocationStore",
    "Number",
    "Refused",
    "Registered",
    "ResolverHook",
    "Route",
    "RoutingError",
    "Server",
    "SqliteLocationStore",
    "ToEmployee",
    "ToExtensionProcessing",
    "ToExternal",
    "ToGroup",
    "Trunk",
    "Unregistered",
    "__version__",
    "load_directory",
]

#: Where each public name lives (the module is imported when the name is first used).
_HOMES = {
    "Server": "routing.server",
    "ConfigError": "routing.errors",
    "RoutingError": "routing.errors",
    "Directory": "routing.directory",
    "Employee": "routing.directory",
    "Group": "routing.directory",
    "Number": "routing.directory",
    "Trunk": "routing.directory",
    "load_directory": "routing.directory_file",
    "CallStarted": "routing.events",
    "CallRinging": "routing.events",
    "CallAnswered": "routing.events",
    "DigitPressed": "routing.events",
    "DigitSent": "routing.events",
    "CallTransferred": "routing.events",
    "Registered": "routing.registrar_service",
    "Unregistered": "routing.registrar_service",
    "CallRecord": "routing.cdr",
    "Disposition": "routing.cdr",
    "DialString": "routing.dialstring",
    "Caller": "routing.resolver",
    "FromEmployee": "routing.resolver",
    "FromTrunk": "routing.resolver",
    "Anonymous": "routing.resolver",
    "Route": "routing.resolver",
    "ToEmployee": "routing.resolver",
    "ToGroup": "routing.resolver",
    "ToExternal": "routing.resolver",
    "ToExtensionProcessing": "routing.resolver",
    "Refused": "routing.resolver",
    "ResolverHook": "routing.resolver",
    "LocationStore": "routing.location",
    "InMemoryLocationStore": "routing.location",
    "SqliteLocationStore": "routing.location",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("durchwahl")
        except PackageNotFoundError:  # a source tree that was never installed
            return "unknown"
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
