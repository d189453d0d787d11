"""Evaluation trials: fixed hidden state (incoming beam, misalignments), start and target.

The file format is the one of the published ARES-EA trial set (``rl-vs-bo/trials.yaml``),
a mapping ``index -> {incoming, misalignments, initial, target}`` in SI units; it is read
and validated by :mod:`accelrl.trialset`. A :class:`Trial` checks its values when it is
made, so NaN, inf, a reference energy <= 0 or a negative size never reaches a reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accelrl.envs.validation import check_trial_values, real_array
from accelrl.trialset import DEFAULT_TRIALS, TrialRecord, TrialSetError, read_trial_set

__all__ = ["DEFAULT_TRIALS", "Trial", "TrialSetError", "load_trials"]


@dataclass(frozen=True)
class Trial:
    """One evaluation problem.

    :param index: Position in its trial set.
    :param incoming: Incoming beam ``[11]`` in :data:`~accelrl.physics.beam.INCOMING` order (SI).
    :param misalignments: ``"ELEMENT.x"``/``"ELEMENT.y"`` -> misalignment [m].
    :param target: Target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param initial: Actuator name -> setting (SI) stored with the trial. The published
        evaluations ignore it and start from the task's standard settings.
    :raises ValueError: For NaN or inf values, an energy <= 0 eV, negative sizes or
        misalignment names other than ``"ELEMENT.x"``/``"ELEMENT.y"`` (naming the value).
    """

    index: int
    incoming: np.ndarray
    misalignments: dict[str, float]
    target: np.ndarray
    initial: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"trial {self.index}"
        incoming = np.array(real_array(self.incoming, f"{where}: incoming")).reshape(-1)
        target = np.array(real_array(self.target, f"{where}: target")).reshape(-1)
        check_trial_values(self.index, incoming, target, self.misalignments, self.initial)
        object.__setattr__(self, "incoming", incoming)
        object.__setattr__(self, "target", target)

    def misalignment_vector(self, names: list[str]) -> np.ndarray:
        """Misalignments in the order ``names`` (missing entries are 0 m)."""
        return np.array([self.misalignments.get(n, 0.0) for n in names], dtype=np.float64)

    @classmethod
    def from_record(cls, index: int, record: TrialRecord) -> Trial:
        """The trial of a validated file record (:class:`accelrl.trialset.TrialRecord`)."""
        return cls(
            index,
            np.array(record.incoming.row()),
            record.misalignments_by_element(),
            np.array(record.target.row()),
            record.initial_by_actuator(),
        )


def load_trials(path: str | Path | None = None) -> list[Trial]:
    """Read a trial set (default: the 300 published ARES-EA trials shipped with accelrl).

    :raises TrialSetError: (a ``ValueError``) naming the file, each invalid trial, the field,
        the value and the allowed range.
    """
    return [Trial.from_record(index, record) for index, record in read_trial_set(path)]
