"""Evaluation protocols: named trial sets with their episode length.

* ``published``: the 300 published ARES-EA trials (Kaiser, Xu, Eichler et al., Sci. Rep.
  14, 2024; shipped as ``envs/ares_ea_trials_300.yaml``), 150 steps, from the task's
  standard start. The default of ``accelrl evaluate``.
* ``rl4aa25``: trials drawn as the RL4AA'25 ARES-EA challenge draws them
  (``RL4AA/rl4aa25-challenge``, ``src/eval/eval_rl_v3_sim.py``: ``generate_trials`` and the
  challenge environment's configuration): **20 trials, 150 steps**; the incoming beam
  uniform in the published randomisation ranges (energy 80-160 MeV, centroid +-1 mm /
  +-0.1 mrad, sizes 10-500 um, divergences 1-50 urad, sigma_tau 1-50 um, sigma_p 1e-4 -
  1e-3; the ARES-EA task spec's ``randomisation.incoming``), misalignments of Q1, Q2, Q3
  and the screen uniform in **+-500 um** in x and y, target **(0, 0, 0, 0)**, the standard
  start (Q1, Q2, CV, Q3, CH) = (10, -10, 0, 10, 0) (1/m^2, rad). The challenge's own trials
  come from NumPy's legacy global generator with a seed of the organisers; ours come from
  ``numpy.random.default_rng(`` :data:`RL4AA25_SEED` ``)``, so the numbers differ from the
  challenge's leaderboard trials while the distribution is the same. Its score is the
  challenge's (:mod:`~accelrl.agents.evaluation.challenge`), computed by every evaluation.

>>> trials = protocol("rl4aa25").trials()
>>> len(trials), trials[0].target.tolist()
(20, [0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from accelrl.envs import TASKS, Trial, load_trials
from accelrl.names import ARES_EA_ID, INCOMING

#: Seed of the ``rl4aa25`` trials (ours; not the challenge's).
RL4AA25_SEED = 2025
#: Number of trials of the ``rl4aa25`` protocol.
RL4AA25_TRIALS = 20
#: Half-range of the ``rl4aa25`` misalignments [m].
RL4AA25_MISALIGNMENT = 5e-4
#: Elements misaligned by the ``rl4aa25`` protocol (x and y each).
RL4AA25_MISALIGNED = ("AREAMQZM1", "AREAMQZM2", "AREAMQZM3", "AREABSCR1")


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol.

    :param name: Its name (``--protocol``).
    :param description: One line for humans.
    :param max_steps: Steps per trial.
    :param make_trials: Returns the protocol's trials.
    :param env_id: The task.
    """

    name: str
    description: str
    max_steps: int
    make_trials: Callable[[], list[Trial]]
    env_id: str = ARES_EA_ID

    def trials(self) -> list[Trial]:
        """The protocol's trials."""
        return self.make_trials()


def rl4aa25_trials(n: int = RL4AA25_TRIALS, seed: int = RL4AA25_SEED) -> list[Trial]:
    """``n`` trials drawn with the RL4AA'25 challenge's ranges (module docs).

    :param n: Number of trials (>= 1).
    :param seed: Seed of ``numpy.random.default_rng``.
    :raises ValueError: For ``n < 1`` or ``seed < 0``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    inc = TASKS[ARES_EA_ID]().randomisation.incoming
    low = np.array([inc[k].low for k in INCOMING], dtype=np.float64)
    high = np.array([inc[k].high for k in INCOMING], dtype=np.float64)
    rng = np.random.default_rng(seed)
    names = [f"{e}.{axis}" for e in RL4AA25_MISALIGNED for axis in ("x", "y")]
    out = []
    for i in range(n):
        incoming = low + rng.random(len(INCOMING)) * (high - low)
        mis = rng.uniform(-RL4AA25_MISALIGNMENT, RL4AA25_MISALIGNMENT, len(names))
        out.append(Trial(i, incoming, dict(zip(names, mis.tolist(), strict=True)), np.zeros(4)))
    return out


#: The shipped protocols.
PROTOCOLS: dict[str, Protocol] = {
    "published": Protocol(
        "published",
        "the 300 published ARES-EA trials (Sci. Rep. 2024), 150 steps",
        150,
        load_trials,
    ),
    "rl4aa25": Protocol(
        "rl4aa25",
        "20 trials drawn with the RL4AA'25 challenge's ranges (target 0, misalignments "
        "+-500 um), 150 steps",
        150,
        rl4aa25_trials,
    ),
}


def protocol(name: str) -> Protocol:
    """The protocol called ``name``.

    :raises ValueError: For an unknown name, listing the known ones.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
