"""Call-flow tests marked ``virtual_time`` run on the harness's event loop: a virtual clock and an in-memory
network instead of sockets (see ``harness.py``); every other async test on asyncio's own loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
from harness import VirtualTimeLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    marker = item.get_closest_marker("virtual_time")
    if marker is not None and marker.args[:1] != (False,):
        return {"virtual_time": VirtualTimeLoop}
    return {"asyncio": asyncio.new_event_loop}
