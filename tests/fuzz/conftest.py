"""The long fuzz run (tests marked ``fuzz``) is skipped unless asked for: ``pytest -m fuzz`` (any
marker expression naming fuzz) or ``SPARSEFT_FUZZ=1``. The short run is always part of the suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .child import Worker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = "fuzz" in (config.getoption("markexpr", "") or "") or os.environ.get("SPARSEFT_FUZZ") == "1"
    if wanted:
        return
    skip = pytest.mark.skip(reason="long fuzz run: pytest -m fuzz (or SPARSEFT_FUZZ=1), see docs/testing.md")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """One child process for the module's calls (restarted after a crash)."""
    w = Worker(timeout=float(os.environ.get("SPARSEFT_FUZZ_TIMEOUT", "60")))
    yield w
    w.close()
