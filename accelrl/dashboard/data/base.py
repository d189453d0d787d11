"""The part every follower shares: the folder, problems to show, and the read generation."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from pathlib import Path

#: A folder whose newest file is older than this, without an end record, is "stalled" [s].
STALL_S = 30.0


def um(value: float) -> float:
    """Metres -> micrometres."""
    return value * 1e6


def finite_or_nan(value: float) -> float:
    """``value`` unchanged when finite, else NaN (plots draw gaps, never infinities)."""
    return value if math.isfinite(value) else math.nan


class Follower:
    """Follows one run folder. Subclasses read their files in :meth:`_poll`.

    :attr generation: Increases whenever what was read before became void (a file was
        truncated, replaced or rewritten): views then rebuild from scratch.
    :attr problems: Messages for the page (corrupt lines, unreadable files, a deleted
        folder); the newest last, at most :attr:`max_problems`.
    :param path: The run folder.
    :param min_interval_s: :meth:`poll` reads the files at most this often (shared by every
        page that shows the run).
    """

    max_problems = 20

    def __init__(self, path: Path, min_interval_s: float = 0.1) -> None:
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self.generation = 0
        self.version = 0
        self._problems: deque[str] = deque(maxlen=self.max_problems)
        self._last_poll = -math.inf
        self.folder_missing = False
        self.last_change = time.time()

    @property
    def problems(self) -> list[str]:
        """Current problems, oldest first."""
        out = list(self._problems)
        if self.folder_missing:
            out.append(
                f"the run folder {self.path} is gone (deleted or moved): showing what was "
                "read before"
            )
        return out

    def problem(self, text: str) -> None:
        """Record a problem (repeats of the newest one are dropped)."""
        if not self._problems or self._problems[-1] != text:
            self._problems.append(text)

    def restart(self) -> None:
        """Forget what was read (a file was reset): views rebuild."""
        self.generation += 1

    def changed(self) -> None:
        """Note that new data arrived (views compare :attr:`version`)."""
        self.version += 1
        self.last_change = time.time()

    def poll(self, force: bool = False) -> None:
        """Read what was added since the last poll (at most every ``min_interval_s``)."""
        now = time.monotonic()
        if not force and now - self._last_poll < self.min_interval_s:
            return
        self._last_poll = now
        self.folder_missing = not self.path.is_dir()
        if self.folder_missing:
            return
        self._poll()

    def _poll(self) -> None:
        raise NotImplementedError

    def newest_mtime(self, names: tuple[str, ...]) -> float | None:
        """Newest modification time of the named files in the folder (``None``: none)."""
        times = []
        for name in names:
            try:
                times.append(os.stat(self.path / name).st_mtime)
            except OSError:
                continue
        return max(times) if times else None
