"""Finding runs: which folders under the dashboard's roots hold a run, and of what kind.

A folder is a run by the files it holds (never by its name):

==============  =================================================================================
kind            marker files
==============  =================================================================================
``deploy``      ``run.jsonl`` (the deploy controller's log: ``accelrl deploy run``, and the
                ``run/`` folder of ``accelrl tune`` on a machine config)
``tuning``      ``progress.jsonl`` of kind ``tuning``, or ``session.json`` / ``problem.json``
                (a saved BO session of ``accelrl tune``)
``training``    ``progress.jsonl`` of kind ``apg`` or ``sb3``, ``train_summary.json``,
                ``logs/progress.csv``, ``evaluations.json`` or ``episodes.csv``
``evaluation``  ``records.parquet``, or ``trial_metrics.csv`` with ``config.json``
==============  =================================================================================

The scan follows no symbolic link (a link never leads the dashboard out of its roots), skips
hidden folders and the folders named in :data:`SKIP_DIRS`, and goes at most ``max_depth``
levels down. Runs are named ``<root index>/<path relative to the root>`` (``0/.`` for a root
that is itself a run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from accelrl.runfiles import PROGRESS_FILE, first_record

#: Folders never searched (environments, caches, SB3 checkpoints, screen frames).
SKIP_DIRS: frozenset[str] = frozenset(
    {"__pycache__", "node_modules", "site-packages", "checkpoints", "screens"}
)


class RunKind(StrEnum):
    """What a run folder holds."""

    deploy = "deploy"
    tuning = "tuning"
    training = "training"
    evaluation = "evaluation"


#: Display order of the kinds.
KIND_ORDER: tuple[RunKind, ...] = (
    RunKind.deploy,
    RunKind.tuning,
    RunKind.training,
    RunKind.evaluation,
)


@dataclass(frozen=True)
class RunInfo:
    """One discovered run.

    :param id: ``<root index>/<relative path>``: how pages and links name it.
    :param root: Index of the root it was found under.
    :param path: The run folder (absolute, as found: no link resolved).
    :param kind: What it holds.
    :param detail: The trainer for training runs (``apg``/``sb3``), else ``""``.
    """

    id: str
    root: int
    path: Path
    kind: RunKind
    detail: str = ""

    @property
    def label(self) -> str:
        """The path relative to its root."""
        return self.id.split("/", 1)[1]


def classify(folder: Path, names: set[str]) -> tuple[RunKind, str] | None:
    """The kind (and trainer) of ``folder`` from the names of the entries it holds, or
    ``None`` when it holds no run."""
    if "run.jsonl" in names:
        return RunKind.deploy, ""
    if PROGRESS_FILE in names:
        start = first_record(folder / PROGRESS_FILE)
        kind = (start or {}).get("kind")
        if kind == "tuning":
            return RunKind.tuning, ""
        if kind in ("apg", "sb3"):
            return RunKind.training, str(kind)
        if start is None:  # being written: its first line is not complete yet
            return RunKind.training, ""
    if "records.parquet" in names or {"trial_metrics.csv", "config.json"} <= names:
        return RunKind.evaluation, ""
    if "session.json" in names or "problem.json" in names:
        return RunKind.tuning, ""
    if "train_summary.json" in names or "evaluations.json" in names or "episodes.csv" in names:
        return RunKind.training, "sb3"
    if "logs" in names and (folder / "logs" / "progress.csv").is_file():
        return RunKind.training, "sb3"
    return None


def discover(roots: list[Path], max_depth: int = 6, limit: int = 2000) -> list[RunInfo]:
    """Every run under ``roots`` (see the module documentation), sorted by root and path.

    :param roots: Folders to search (a root that is missing or not a folder yields nothing).
    :param max_depth: Deepest level searched below a root.
    :param limit: Most runs returned (the search stops there).
    """
    runs: list[RunInfo] = []
    for index, root in enumerate(roots):
        stack: list[tuple[Path, int]] = [(Path(root), 0)]
        while stack and len(runs) < limit:
            folder, depth = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError:
                continue
            names = {e.name for e in entries}
            found = classify(folder, names)
            if found is not None:
                rel = os.path.relpath(folder, root)
                runs.append(RunInfo(f"{index}/{Path(rel).as_posix()}", index, folder, *found))
            if depth >= max_depth:
                continue
            for e in entries:
                if e.name.startswith(".") or e.name in SKIP_DIRS:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((Path(e.path), depth + 1))
                except OSError:
                    continue
    return sorted(runs, key=lambda r: (r.root, r.label))
