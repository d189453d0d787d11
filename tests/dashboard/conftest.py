"""Fixtures of the dashboard tests: the browser (skipped with the reason when Chromium is
missing) and the screenshot folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_testlib import LIVE_SIZE, browser_missing, start_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (one per test module)."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    driver = start_browser(*LIVE_SIZE)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (a pytest tmp folder; copied to the docs when asked)."""
    return tmp_path_factory.mktemp("screenshots")
