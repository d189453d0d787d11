"""Shared code of the dashboard tests: the dashboard as a subprocess, headless Chromium
(Debian's, driven by Selenium through chromedriver; never downloaded), reading values out of
Bokeh's shadow DOM, screenshots for the docs, and simulated runs."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelrl.dashboard.browser import browser_missing, deep_texts, field_text, start_browser

__all__ = [
    "Dashboard",
    "browser_missing",
    "controller_run",
    "deep_texts",
    "field_text",
    "open_page",
    "retry",
    "screenshot",
    "start_browser",
    "tree_state",
    "wait_field",
    "wait_for",
]

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "agents" / "apg-ares-ea" / "bundle"
SIM_CONFIG = ROOT / "deploy" / "sim_ares_ea.yaml"
#: Screenshots are also copied here when set (e.g. ``docs/img``): the docs come from the tests.
DOCS_ENV = "ACCELRL_DOCS_SCREENSHOTS"
#: Window size of screenshots; the tests run in a smaller one (less for the browser to paint).
SHOT_SIZE = (1400, 1600)
LIVE_SIZE = (1100, 800)
SHOT_SETTLE_S = 2.0


def open_page(driver: Any, url: str) -> None:
    """Load ``url`` (retried: a page load times out on a heavily loaded machine)."""
    retry(lambda: driver.get(url), timeout=120)


def retry(get: Callable[[], Any], timeout: float = 60.0, what: str = "the page") -> Any:
    """``get()``, retried while it raises (a browser busy on a loaded machine times out)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Call ``check`` until it returns something true (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as err:  # e.g. the page is reloading
            last = err
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def wait_field(driver: Any, name: str, timeout: float = 15.0) -> str:
    """Wait until ``data-field=name`` is on the page; its text."""
    return wait_for(lambda: field_text(driver, name), timeout, f"field {name!r}")


def screenshot(driver: Any, directory: Path, name: str) -> Path:
    """Save the window as ``directory/name`` (trailing blank rows cut off); also copied into
    ``$ACCELRL_DOCS_SCREENSHOTS`` when set."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    size = retry(driver.get_window_size)
    retry(lambda: driver.set_window_size(*SHOT_SIZE))
    time.sleep(SHOT_SETTLE_S)  # let the page lay itself out at the larger size
    retry(lambda: driver.save_screenshot(str(path)))
    retry(lambda: driver.set_window_size(size["width"], size["height"]))
    try:
        from PIL import Image, ImageChops

        with Image.open(path) as image:
            rgb = image.convert("RGB")
            background = Image.new("RGB", rgb.size, (255, 255, 255))
            box = ImageChops.difference(rgb, background).getbbox()
            if box is not None:
                rgb.crop((0, 0, rgb.width, min(rgb.height, box[3] + 16))).save(path)
    except ImportError:
        pass
    docs = os.environ.get(DOCS_ENV)
    if docs:
        target = Path(docs)
        if not target.is_absolute():
            target = ROOT / target
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


class Dashboard:
    """``accelrl dashboard ROOT... --port 0`` as a subprocess.

    :param roots: Folders to serve.
    :param poll_ms: Page refresh period.
    """

    def __init__(self, roots: list[Path], poll_ms: int = 200) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelrl.cli",
                "dashboard",
                *map(str, roots),
                "--port",
                "0",
                "--poll-ms",
                str(poll_ms),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.output: list[str] = []
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        self.url = ""
        while time.monotonic() < deadline and not self.url:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(r"accelrl dashboard: (http://\S+/)", line)
            if match:
                self.url = match.group(1)
        if not self.url:
            self.stop()
            raise RuntimeError("the dashboard did not start:\n" + "".join(self.output))
        wait_for(self._up, 30, "the dashboard to answer")

    def _up(self) -> bool:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            return response.status == 200

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def page(self, *run_ids: str) -> str:
        """URL of a run's page (several: side by side)."""
        from accelrl.dashboard.links import page_url

        return self.url.rstrip("/") + page_url(list(run_ids))

    def stop(self) -> None:
        """Stop the server (the process this object started)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def tree_state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """``relative path -> (size, mtime_ns, first bytes)`` of every file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, path.read_bytes()[:256])
    return out


def controller_run(
    log_dir: Path,
    faults: Any = (),
    max_steps: int = 6,
    settle_delay_s: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """A real controller run (not started) on the simulated ARES-EA, trial 30: the shipped
    policy bundle in auto mode, thresholds too tight to reach (it runs its budget).

    :return: ``(controller, machine)``.
    """
    import torch

    from accelrl.deploy.config import load_machine_config
    from accelrl.deploy.controller import Controller
    from accelrl.deploy.plant import Plant
    from accelrl.deploy.runtime import OnnxPolicy
    from accelrl.deploy.safety import SafetyLayer
    from accelrl.deploy.sim import SimMachine

    torch.set_num_threads(1)
    policy = OnnxPolicy(BUNDLE)
    config = load_machine_config(SIM_CONFIG)
    plant = Plant.from_trial(30)
    machine = SimMachine(plant, config, settle_delay_s=settle_delay_s, faults=list(faults))
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    controller = Controller(
        policy, machine, safety, "auto", target=plant.target, thresholds=[1e-9] * 4,
        max_steps=max_steps, log_dir=log_dir, plot=False, **kwargs,
    )  # fmt: skip
    return controller, machine
