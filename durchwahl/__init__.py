"""durchwahl: an asyncio SIP back-to-back user agent. The names an embedding application needs, in one place.

``from durchwahl import Server, CallRecord, ToEmployee`` keeps working when the modules behind these names
move; docs/EMBEDDING.md describes each. Every name is imported on first use, so ``import durchwahl`` (and
importing the pure protocol modules of the stack) loads no asyncio shell, pyee, aiortc or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durchwahl.routing.cdr import CallRecord, Disposition
    from durchwahl.routing.dialstring import DialString
    from durchwahl.routing.directory import Directory, Employee, Group, Number, Trunk
    from durchwahl.routing.directory_file import load_directory
    from durchwahl.routing.errors import ConfigError, RoutingError
    from durchwahl.routing.events import (
        CallAnswered,
        CallRinging,
        CallStarted,
        CallTransferred,
        DigitPressed,
        DigitSent,
    )
    from durchwahl.routing.location import InMemoryLocationStore, LocationStore, SqliteLocationStore
    from durchwahl.routing.registrar_service import Registered, Unregistered
    from durchwahl.routing.resolver import (
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
    from durchwahl.routing.server import Server

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
    "Server": "durchwahl.routing.server",
    "ConfigError": "durchwahl.routing.errors",
    "RoutingError": "durchwahl.routing.errors",
    "Directory": "durchwahl.routing.directory",
    "Employee": "durchwahl.routing.directory",
    "Group": "durchwahl.routing.directory",
    "Number": "durchwahl.routing.directory",
    "Trunk": "durchwahl.routing.directory",
    "load_directory": "durchwahl.routing.directory_file",
    "CallStarted": "durchwahl.routing.events",
    "CallRinging": "durchwahl.routing.events",
    "CallAnswered": "durchwahl.routing.events",
    "DigitPressed": "durchwahl.routing.events",
    "DigitSent": "durchwahl.routing.events",
    "CallTransferred": "durchwahl.routing.events",
    "Registered": "durchwahl.routing.registrar_service",
    "Unregistered": "durchwahl.routing.registrar_service",
    "CallRecord": "durchwahl.routing.cdr",
    "Disposition": "durchwahl.routing.cdr",
    "DialString": "durchwahl.routing.dialstring",
    "Caller": "durchwahl.routing.resolver",
    "FromEmployee": "durchwahl.routing.resolver",
    "FromTrunk": "durchwahl.routing.resolver",
    "Anonymous": "durchwahl.routing.resolver",
    "Route": "durchwahl.routing.resolver",
    "ToEmployee": "durchwahl.routing.resolver",
    "ToGroup": "durchwahl.routing.resolver",
    "ToExternal": "durchwahl.routing.resolver",
    "ToExtensionProcessing": "durchwahl.routing.resolver",
    "Refused": "durchwahl.routing.resolver",
    "ResolverHook": "durchwahl.routing.resolver",
    "LocationStore": "durchwahl.routing.location",
    "InMemoryLocationStore": "durchwahl.routing.location",
    "SqliteLocationStore": "durchwahl.routing.location",
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
