"""Evaluation trials: fixed hidden state (incoming beam, misalignments), start and target.

The file format is the one of the published ARES-EA trial set (``rl-vs-bo/trials.yaml``),
a mapping ``index -> {incoming, misalignments, initial, target}`` in SI units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from accelrl.physics.beam import INCOMING, TRANSVERSE
from accelrl.resources import shipped

#: File keys of the incoming beam -> :data:`~accelrl.physics.beam.INCOMING` names.
_INCOMING_KEYS = {
    "mu_xp": "mu_px",
    "mu_yp": "mu_py",
    "sigma_xp": "sigma_px",
    "sigma_yp": "sigma_py",
    "sigma_s": "sigma_tau",
}
#: Short element names used by the ARES-EA file.
_ELEMENTS = {"q1": "AREAMQZM1", "q2": "AREAMQZM2", "q3": "AREAMQZM3", "screen": "AREABSCR1"}
_ACTUATORS = {"q1": "Q1", "q2": "Q2", "q3": "Q3", "cv": "CV", "ch": "CH"}

#: The published trial set shipped with the package.
DEFAULT_TRIALS = shipped("envs", "ares_ea_trials_300.yaml")


@dataclass(frozen=True)
class Trial:
    """One evaluation problem.

    :param index: Position in its trial set.
    :param incoming: Incoming beam ``[11]`` in :data:`~accelrl.physics.beam.INCOMING` order (SI).
    :param misalignments: ``"ELEMENT.x"``/``"ELEMENT.y"`` -> misalignment [m].
    :param target: Target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param initial: Actuator name -> setting (SI) stored with the trial. The published
        evaluations ignore it and start from the task's standard settings.
    """

    index: int
    incoming: np.ndarray
    misalignments: dict[str, float]
    target: np.ndarray
    initial: dict[str, float] = field(default_factory=dict)

    def misalignment_vector(self, names: list[str]) -> np.ndarray:
        """Misalignments in the order ``names`` (missing entries are 0 m)."""
        return np.array([self.misalignments.get(n, 0.0) for n in names], dtype=np.float64)


def _trial(index: int, entry: Mapping, source: str) -> Trial:
    try:
        inc = {_INCOMING_KEYS.get(k, k): float(v) for k, v in entry["incoming"].items()}
        missing = [k for k in INCOMING if k not in inc]
        if missing:
            raise ValueError(f"incoming lacks {missing}")
        mis: dict[str, float] = {}
        for key, value in entry.get("misalignments", {}).items():
            short, axis = key.rsplit("_", 1)
            mis[f"{_ELEMENTS.get(short, short)}.{axis}"] = float(value)
        target = np.array([float(entry["target"][k]) for k in TRANSVERSE])
        initial = {_ACTUATORS.get(k, k): float(v) for k, v in entry.get("initial", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{source}: trial {index} is malformed: {err!r}") from err
    if not np.all(np.isfinite(target)) or np.any(target[[1, 3]] < 0):
        raise ValueError(f"{source}: trial {index} has an invalid target {target.tolist()}")
    return Trial(index, np.array([inc[k] for k in INCOMING]), mis, target, initial)


def load_trials(path: str | Path | None = None) -> list[Trial]:
    """Read a trial set (default: the 300 published ARES-EA trials shipped with accelrl).

    :raises ValueError: Naming the file and the trial that is malformed.
    """
    path = Path(path) if path is not None else DEFAULT_TRIALS
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping index -> trial")
    return [_trial(int(i), data[i], str(path)) for i in sorted(data, key=int)]
