"""Dashboard follow benchmark: how fast a page shows what a deploy run writes, and what the
dashboard server costs meanwhile.

A writer appends deploy-style step records (the fields of
:class:`accelrl.deploy.controller.Controller`'s ``step`` records, five knobs, through
:class:`accelrl.deploy.runlog.RunLog`: flushed and fsync'ed, one line each) at ``--rate``
records per second for ``--seconds`` seconds. ``accelrl dashboard`` (``python -m
accelrl.cli dashboard``, a subprocess, ``--poll-ms``) serves the run; headless Chromium (Debian's,
through Selenium) shows its page, and a script in the page notes the time at which each new
value of the page's "last step" appears. Measured:

* **lag**: for every written step, from its write (the record's ``time``) to the first moment
  the page shows that step or a later one (p50, p95, max over all steps);
* **server CPU**: the dashboard process's CPU time over the writing period divided by its
  wall time (psutil), as a percentage of one core and of the whole machine, and the same
  with the page open and nothing written (idle).

Targets: lag < 1 s, server CPU < 5 % (of one core) on the 2-core reference machine. The
last line is one line of JSON::

    {"rate_hz": ..., "steps": ..., "lag_p50_s": ..., "lag_p95_s": ..., "lag_max_s": ...,
     "server_cpu_percent": ..., "server_cpu_percent_of_machine": ...,
     "server_idle_cpu_percent": ..., "poll_ms": ..., "targets_met": ...}

Run: ``.venv/bin/python benchmarks/dashboard_follow.py [--rate 20] [--seconds 30]``
(needs ``apt-get install chromium chromium-driver`` and ``pip install accelrl[dashboard]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from accelrl.dashboard.browser import field_text, start_browser
from accelrl.dashboard.links import page_url
from accelrl.deploy.runlog import RunLog

KNOBS = ("Q1", "Q2", "CV", "Q3", "CH")
BEAM = ("mu_x", "sigma_x", "mu_y", "sigma_y")
LIMITS = {
    "Q1": (-72.0, 72.0, 7.2, "1/m^2"),
    "Q2": (-72.0, 72.0, 7.2, "1/m^2"),
    "CV": (-6.1782e-3, 6.1782e-3, 6.1782e-4, "rad"),
    "Q3": (-72.0, 72.0, 7.2, "1/m^2"),
    "CH": (-6.1782e-3, 6.1782e-3, 6.1782e-4, "rad"),
}
#: Notes when each new value of the "last step" field appears (checked every 5 ms).
SAMPLER_JS = """
window.__seen = {};
let el = null;
function find(root) {
  const hit = root.querySelector("[data-field='last-step']");
  if (hit) { return hit; }
  for (const e of root.querySelectorAll('*')) {
    if (e.shadowRoot) { const f = find(e.shadowRoot); if (f) { return f; } }
  }
  return null;
}
setInterval(() => {
  if (el === null || !el.isConnected) { el = find(document); }
  if (el === null) { return; }
  const v = el.textContent;
  if (!(v in window.__seen)) { window.__seen[v] = Date.now() / 1000; }
}, 5);
return true;
"""


def start_record() -> dict[str, Any]:
    """The ``start`` record of a simulated ARES-EA run in auto mode."""
    return {
        "type": "start",
        "time": time.time(),
        "mode": "auto",
        "machine": "benchmark",
        "transport": "sim",
        "source": "bundle",
        "bundle": "agents/apg-ares-ea/bundle",
        "env_id": "accelrl/AresEATransverseTuning-v0",
        "action_mode": "delta",
        "knob_names": list(KNOBS),
        "observation_names": list(BEAM),
        "limits": {
            k: {"low": lo, "high": hi, "max_step": st, "tolerance": 1e-6, "unit": u}
            for k, (lo, hi, st, u) in LIMITS.items()
        },
        "target": {"mu_x": 0.0, "sigma_x": 1e-4, "mu_y": 0.0, "sigma_y": 1e-4},
        "thresholds": [2e-5] * 4,
        "max_steps": 10**9,
        "initial": {k: 0.0 for k in KNOBS},
    }


def step_record(step: int, rng: np.random.Generator) -> dict[str, Any]:
    """A step record with every field the controller writes (values drawn at random)."""
    knobs = {k: float(rng.uniform(0.2, 0.4) * LIMITS[k][1]) for k in KNOBS}
    delta = {k: float(rng.uniform(-0.5, 0.5) * LIMITS[k][2]) for k in KNOBS}
    safe = {k: knobs[k] + delta[k] for k in KNOBS}
    obs = {b: float(rng.normal(0, 2e-4)) for b in BEAM}
    target = {"mu_x": 0.0, "sigma_x": 1e-4, "mu_y": 0.0, "sigma_y": 1e-4}
    return {
        "type": "step",
        "step": step,
        "time": time.time(),
        "observation": obs,
        "observation_time": time.time(),
        "knobs": knobs,
        "target": target,
        "error": {b: obs[b] - target[b] for b in BEAM},
        "raw_action": delta,
        "requested": safe,
        "safe_setpoints": safe,
        "clips": [],
        "decision": "write",
        "writes": safe,
        "setpoints_read": safe,
        "readbacks": safe,
        "settle_s": 0.001,
        "timing": {
            "read_s": 1e-4,
            "policy_s": 5e-5,
            "safety_s": 1e-4,
            "prompt_s": 0.0,
            "write_s": 1e-3,
            "wait_s": 0.0,
            "total_s": 1.3e-3,
        },  # fmt: skip
    }


def start_dashboard(root: Path, poll_ms: int) -> tuple[subprocess.Popen[str], str]:
    """The dashboard as a subprocess on a free port, and its URL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "accelrl.cli", "dashboard", str(root), "--port", "0",
         "--poll-ms", str(poll_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        match = re.search(r"accelrl dashboard: (http://\S+/)", line)
        if match:
            url = match.group(1)
            break
        if time.monotonic() > deadline:
            break
    else:
        raise RuntimeError("the dashboard did not start")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the dashboard does not answer")


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of a process and its children [s]."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="step records per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="writing time [s]")
    parser.add_argument("--poll-ms", type=int, default=250, help="page refresh period [ms]")
    parser.add_argument("--idle", type=float, default=5.0, help="idle measurement [s]")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be > 0")
    with tempfile.TemporaryDirectory(prefix="accelrl-follow-") as tmp:
        root = Path(tmp)
        run = root / "bench"
        log = RunLog(run, fsync=True)
        log.write(start_record())
        server, url = start_dashboard(root, args.poll_ms)
        driver = start_browser()
        try:
            driver.get(url.rstrip("/") + page_url(["0/bench"]))
            deadline = time.monotonic() + 30
            while field_text(driver, "steps") is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if field_text(driver, "steps") is None:
                raise RuntimeError("the run's page did not appear")
            driver.execute_script(SAMPLER_JS)
            proc = psutil.Process(server.pid)
            c0, t0 = cpu_seconds(proc), time.monotonic()
            time.sleep(args.idle)
            idle = 100 * (cpu_seconds(proc) - c0) / (time.monotonic() - t0)
            rng = np.random.default_rng(0)
            n = int(args.rate * args.seconds)
            written = np.empty(n)
            c0, t0 = cpu_seconds(proc), time.monotonic()
            for k in range(n):
                due = t0 + k / args.rate
                while (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                record = step_record(k, rng)
                log.write(record)
                written[k] = record["time"]
            wall = time.monotonic() - t0
            busy = 100 * (cpu_seconds(proc) - c0) / wall
            time.sleep(2.0)  # let the last steps arrive
            seen_raw = driver.execute_script("return window.__seen;")
        finally:
            driver.quit()
            server.terminate()
            server.wait(10)
            log.close()
    seen = sorted((int(k), float(v)) for k, v in seen_raw.items() if re.fullmatch(r"\d+", k))
    shown_steps = np.array([s for s, _ in seen])
    shown_at = np.array([t for _, t in seen])
    lags = np.full(n, math.nan)
    for k in range(n):  # first moment the page showed step k or a later one
        later = shown_steps >= k
        if later.any():
            lags[k] = shown_at[later].min() - written[k]
    missed = int(np.isnan(lags).sum())
    lag = lags[np.isfinite(lags)]
    p50, p95, worst = (float(np.percentile(lag, q)) for q in (50, 95, 100))
    cores = psutil.cpu_count() or 1
    met = worst < 1.0 and missed == 0 and busy < 5.0
    print(f"dashboard follow: {n} step records at {args.rate:g}/s for {wall:.1f} s, page "
          f"refresh {args.poll_ms} ms, {cores} cores")  # fmt: skip
    print(f"{'quantity':<44} {'value':>10}  target")
    print(f"{'lag write -> page, p50 [s]':<44} {p50:>10.3f}")
    print(f"{'lag write -> page, p95 [s]':<44} {p95:>10.3f}")
    print(f"{'lag write -> page, max [s]':<44} {worst:>10.3f}  < 1 s")
    print(f"{'steps never shown':<44} {missed:>10d}  0")
    print(f"{'distinct values the page showed':<44} {len(seen):>10d}")
    print(f"{'server CPU while following [% of one core]':<44} {busy:>10.2f}  < 5 %")
    print(f"{'server CPU while following [% of machine]':<44} {busy / cores:>10.2f}")
    print(f"{'server CPU idle, page open [% of one core]':<44} {idle:>10.2f}")
    print(f"targets {'met' if met else 'MISSED'}")
    print(
        json.dumps(
            {
                "rate_hz": args.rate,
                "steps": n,
                "lag_p50_s": round(p50, 3),
                "lag_p95_s": round(p95, 3),
                "lag_max_s": round(worst, 3),
                "steps_never_shown": missed,
                "server_cpu_percent": round(busy, 2),
                "server_cpu_percent_of_machine": round(busy / cores, 2),
                "server_idle_cpu_percent": round(idle, 2),
                "poll_ms": args.poll_ms,
                "targets_met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
