"""The cluster's outside parts for tests: Redis (and Kamailio) started on free loopback ports in a temporary
folder, stopped by PID afterwards. Locally a missing binary skips the test; in CI (``CI`` set) it fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from durchwahl.routing.cluster_run import Part, missing_binaries, start_redis


def require(*binaries: str) -> None:
    """Skip (locally) or fail (in CI) when one of ``binaries`` is not installed."""
    missing = missing_binaries(*binaries)
    if missing:
        packages = {"redis-server": "redis-server", "kamailio": "kamailio", "sipp": "sip-tester"}
        names = " ".join(packages.get(m, m) for m in missing)
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} not installed; CI must install it (apt-get install {names})")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install {names})")


def redis_url(part: Part, db: int = 0) -> str:
    return f"redis://127.0.0.1:{part.port}/{db}"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Part]:
    """One redis-server for a test module (each test flushes what it uses)."""
    require("redis-server")
    part = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield part
    finally:
        part.stop()
