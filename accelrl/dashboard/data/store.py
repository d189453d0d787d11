"""One follower per run, shared by every page that shows it, and run discovery with a cache."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from accelrl.dashboard.data.base import Follower
from accelrl.dashboard.data.deploy import DeployFollower
from accelrl.dashboard.data.evaluation import EvaluationFollower
from accelrl.dashboard.data.training import TrainingFollower
from accelrl.dashboard.data.tuning import TuningFollower
from accelrl.dashboard.discovery import RunInfo, RunKind, discover

_FOLLOWERS: dict[RunKind, type[Follower]] = {
    RunKind.deploy: DeployFollower,
    RunKind.tuning: TuningFollower,
    RunKind.training: TrainingFollower,
    RunKind.evaluation: EvaluationFollower,
}


def follower_for(info: RunInfo) -> Follower:
    """A new follower of the run's kind."""
    return _FOLLOWERS[info.kind](info.path)


class RunStore:
    """The dashboard's runs: discovery (re-scanned at most every ``rescan_s``) and one
    follower per run.

    :param roots: The folders the dashboard serves.
    :param rescan_s: Least time between two scans of the roots [s].
    :param max_depth: Deepest folder level searched below a root.
    """

    def __init__(self, roots: list[Path], rescan_s: float = 2.0, max_depth: int = 6) -> None:
        self.roots = [Path(r) for r in roots]
        self.rescan_s = float(rescan_s)
        self.max_depth = int(max_depth)
        self._runs: dict[str, RunInfo] = {}
        self._scanned = -float("inf")
        self._followers: dict[str, Follower] = {}
        self._lock = threading.Lock()

    def runs(self, force: bool = False) -> list[RunInfo]:
        """Every run under the roots (from the cache when it is recent)."""
        with self._lock:
            now = time.monotonic()
            if force or now - self._scanned >= self.rescan_s:
                found = discover(self.roots, self.max_depth)
                self._runs = {r.id: r for r in found}
                self._scanned = now
            return list(self._runs.values())

    def lookup(self, run_id: str, force: bool = False) -> RunInfo | None:
        """The run named ``run_id`` (``<root>/<path>``), or ``None`` when no such run was
        found under the roots; ``force`` rescans first."""
        self.runs(force=False)
        with self._lock:
            found = self._runs.get(run_id)
        if found is None and force:
            self.runs(force=True)
            with self._lock:
                found = self._runs.get(run_id)
        return found

    def follower(self, info: RunInfo) -> Follower:
        """The shared follower of a run (created on first use; a new one if the run's kind
        changed)."""
        with self._lock:
            existing = self._followers.get(info.id)
            if existing is None or type(existing) is not _FOLLOWERS[info.kind]:
                existing = follower_for(info)
                self._followers[info.id] = existing
            return existing
