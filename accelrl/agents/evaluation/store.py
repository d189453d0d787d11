"""An evaluation that writes as it runs: one part per finished chunk, resumable.

With ``out=``, :func:`~accelrl.agents.evaluation.runner.evaluate_many` keeps in
``out/parts/``:

``plan.json``
    What is evaluated, i.e. everything the records depend on: format version, task,
    backend, steps, base seed, trial-seed rule, the optimisers (label, spec, name), the
    trials (sha256 of their content, and their indices) and the chunk size. Written before
    the first chunk runs.
``<i>-<j>.records.parquet`` and ``<i>-<j>.trials.parquet``
    The records and per-trial metrics of chunk ``j`` of optimiser ``i`` (the tables of
    :class:`~accelrl.agents.evaluation.result.EvaluationResult`), each written atomically
    and flushed to disk as soon as the chunk finishes. The trials file is written last: its
    presence marks the chunk as done.

A resumed evaluation must have the same plan (:class:`EvaluationStoreError` names what
differs) and runs only the chunks without parts. An optimiser takes all of a trial's
randomness from the trial seed, so the resumed result equals the uninterrupted one
(timings aside).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from accelrl.runs import atomic_write

__all__ = ["ChunkTables", "EvaluationStore", "EvaluationStoreError"]

#: Folder of the parts, inside the output folder.
PARTS = "parts"
PLAN = "plan.json"


class EvaluationStoreError(ValueError):
    """An output folder whose evaluation cannot be resumed as asked (the message names the
    file and what differs)."""


@dataclass(frozen=True)
class ChunkTables:
    """The records and per-trial metrics of one finished chunk (see
    :class:`~accelrl.agents.evaluation.result.EvaluationResult`)."""

    records: pa.Table
    trials: pa.Table


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(saved: Mapping[str, Any], plan: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(plan)):
        a, b = saved.get(key), plan.get(key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{key}: {_short(a)} there, {_short(b)} now")
    return out


class EvaluationStore:
    """The parts of an evaluation in ``directory/parts`` (see the module documentation).

    :param directory: The output folder.
    :param plan: What is evaluated (JSON-able; compared as it is).
    :param resume: Continue the evaluation found there (its plan must equal ``plan``);
        otherwise the folder must hold no parts.
    :raises EvaluationStoreError: When resuming without a plan there, with a different plan,
        or with a damaged plan file.
    """

    def __init__(self, directory: str | Path, plan: Mapping[str, Any], resume: bool) -> None:
        self.directory = Path(directory)
        self.parts = self.directory / PARTS
        self.plan = json.loads(json.dumps(plan))
        path = self.parts / PLAN
        if resume:
            if not path.is_file():
                raise EvaluationStoreError(
                    f"{self.directory}: no evaluation to resume ({path} is missing)"
                )
            try:
                saved = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise EvaluationStoreError(f"{path}: cannot be read ({err})") from None
            differ = _differences(saved, self.plan) if isinstance(saved, dict) else ["plan"]
            if differ:
                raise EvaluationStoreError(
                    f"{path}: the evaluation there differs from this one, so it cannot be "
                    "resumed (" + "; ".join(differ) + "); use the same settings, another "
                    "--out, or --force to replace it"
                )
        else:
            self.parts.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.plan, indent=2, allow_nan=False) + "\n"
            atomic_write(path, lambda tmp: tmp.write_text(text))

    def _paths(self, i: int, j: int) -> tuple[Path, Path]:
        return (self.parts / f"{i}-{j}.records.parquet", self.parts / f"{i}-{j}.trials.parquet")

    def finished(self, jobs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], ChunkTables]:
        """The chunks of ``jobs`` whose parts are complete, read back.

        :raises EvaluationStoreError: For a part that exists but cannot be read.
        """
        out = {}
        for i, j in jobs:
            records, trials = self._paths(i, j)
            if not trials.is_file():
                continue
            try:
                out[i, j] = ChunkTables(pq.read_table(records), pq.read_table(trials))
            except (OSError, pa.ArrowException) as err:
                raise EvaluationStoreError(
                    f"{records.parent}: part {i}-{j} cannot be read ({err}); delete its two "
                    "files to run that chunk again"
                ) from None
        return out

    def write(self, i: int, j: int, tables: ChunkTables) -> None:
        """Write the parts of chunk ``j`` of optimiser ``i`` (records first, then trials)."""
        records, trials = self._paths(i, j)
        atomic_write(records, lambda tmp: pq.write_table(tables.records, tmp))
        atomic_write(trials, lambda tmp: pq.write_table(tables.trials, tmp))
