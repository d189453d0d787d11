"""The trial set of an evaluation: which trials, where they came from, how they are chunked.

:func:`resolve_trials` reads a trial set (the published one by default) and records its
provenance; :func:`trials_digest` fingerprints the trials' content, so a resumed evaluation
can tell that it runs the same trials whatever file they were read from;
:func:`chunk_trials` splits them into the fixed chunks that one optimiser instance serves.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from accelrl.envs import Trial

__all__ = ["chunk_trials", "resolve_trials", "trials_digest"]


def resolve_trials(
    trials: Sequence[Trial] | str | Path | None, limit: int | None = None
) -> tuple[list[Trial], dict]:
    """The trials to evaluate and their provenance: ``source`` (path or ``"in-memory"``),
    ``sha256`` of the file, ``default``, ``n``, ``limit`` and ``indices``.

    :param trials: Trials, a trial-set YAML path, or ``None`` for the published set.
    :param limit: Keep the first ``limit`` trials.
    :raises ValueError: For ``limit < 1``, no trials, or repeated trial indices.
    """
    from accelrl.envs.trials import DEFAULT_TRIALS, load_trials

    if trials is None or isinstance(trials, (str, Path)):
        path = Path(trials) if trials is not None else DEFAULT_TRIALS
        out = load_trials(path)
        source = {
            "source": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "default": trials is None,
        }
    else:
        out, source = list(trials), {"source": "in-memory", "sha256": None, "default": False}
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        out = out[:limit]
    if not out:
        raise ValueError("no trials to evaluate")
    idx = [int(t.index) for t in out]
    if len(set(idx)) != len(idx):
        raise ValueError("trial indices must be unique within one evaluation")
    source.update(n=len(out), limit=limit, indices=idx)
    return out, source


def chunk_trials(trials: list[Trial], chunk_size: int | None) -> list[list[Trial]]:
    """``trials`` in chunks of ``chunk_size`` (default ``ceil(N / 64)``), fixed by the list
    alone so that results do not depend on the executor."""
    if chunk_size is None:
        chunk_size = max(1, math.ceil(len(trials) / 64))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [trials[i : i + chunk_size] for i in range(0, len(trials), chunk_size)]


def trials_digest(trials: Sequence[Trial]) -> str:
    """sha256 of the content of ``trials`` (index, incoming beam, misalignments, target,
    initial setting; floats exactly), whatever file they came from."""
    h = hashlib.sha256()
    for t in trials:
        entry = {
            "index": int(t.index),
            "incoming": [repr(float(v)) for v in np.asarray(t.incoming).reshape(-1)],
            "misalignments": {k: repr(float(v)) for k, v in sorted(t.misalignments.items())},
            "target": [repr(float(v)) for v in np.asarray(t.target).reshape(-1)],
            "initial": {k: repr(float(v)) for k, v in sorted(t.initial.items())},
        }
        h.update(json.dumps(entry, sort_keys=True).encode())
    return h.hexdigest()
