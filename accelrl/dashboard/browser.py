"""Headless Chromium for checking dashboard pages: the system's browser (Debian's
``chromium`` and ``chromedriver``; none is ever downloaded) driven by Selenium, and reading
values out of Bokeh's shadow DOM. Used by the tests, the follow benchmark and the docs'
screenshots.

>>> driver = start_browser()  # doctest: +SKIP
>>> driver.get("http://127.0.0.1:5006/?run=0/deploy-1")  # doctest: +SKIP
>>> field_text(driver, "steps")  # doctest: +SKIP
'12'
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

#: The system's browser and its driver.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Flags that work headless, as root, without network access or a GPU.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
#: Every element matching a selector, through all shadow roots (Bokeh renders its views
#: inside shadow DOM), as text.
DEEP_QUERY_JS = """
const sel = arguments[0];
const out = [];
function walk(root) {
  root.querySelectorAll(sel).forEach(e => out.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); });
}
walk(document);
return out.map(e => e.textContent);
"""


def browser_missing() -> str | None:
    """Why a browser cannot be started here, or ``None``."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is missing (pip install accelrl[dashboard])"
    return None


def start_browser(width: int = 1400, height: int = 1600) -> Any:
    """Headless Chromium under Selenium with a fresh profile (removed when it quits).

    :param width: Window width [px].
    :param height: Window height [px].
    :raises RuntimeError: When the browser or Selenium is missing.
    """
    reason = browser_missing()
    if reason is not None:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="accelrl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    quit_ = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit_and_clean
    return driver


def deep_texts(driver: Any, selector: str) -> list[str]:
    """Text of every element matching ``selector``, shadow DOM included."""
    return list(driver.execute_script(DEEP_QUERY_JS, selector))


def field_text(driver: Any, name: str) -> str | None:
    """Text of the first ``data-field=name`` element of the page, or ``None``."""
    texts = deep_texts(driver, f"[data-field='{name}']")
    return texts[0] if texts else None
