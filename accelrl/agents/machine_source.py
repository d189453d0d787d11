"""Any optimiser of the evaluation protocol on a machine, through the deploy controller.

:class:`OptimiserSource` puts an :class:`~accelrl.agents.protocol.Optimiser` (BO with the
physics prior, Nelder-Mead, the model-based tuner, ...) in the place of a policy bundle in
:class:`accelrl.deploy.controller.Controller`. The optimiser then gets everything the
controller gives a policy on a simulated or EPICS machine: ``shadow`` / ``confirm`` /
``auto`` modes, the safety layer on every write (hard bounds of the machine config, max
step, readback verification, interlock / beam loss / heartbeat / disconnect aborts with
rollback), stop at the target, and the run log.

Each controller step hands the source the fresh beam reading and the readbacks; the source
passes them to the optimiser as an :class:`~accelrl.agents.protocol.Observation` and answers
the optimiser's next settings (``direct`` actions). The optimiser's problem is built from
the machine config at the first step: knob limits, the readbacks as the start, the config's
``max_step`` as the largest change per step, the step budget and the target.

>>> from accelrl.agents.bo import BOOptimiser
>>> source = OptimiserSource(config, BOOptimiser(prior="physics"), max_steps=30)  # doctest: +SKIP
>>> Controller(source, machine, SafetyLayer(machine, config), "confirm",
...            target=target, max_steps=30).run()                                # doctest: +SKIP

The machine reports no "beam on screen" flag: the optimiser sees the beam as on the screen,
and a lost beam ends the run through the safety layer (beam loss, non-finite reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from accelrl.agents.protocol import Observation, Optimiser, Problem
from accelrl.deploy.runtime import ActionSpec
from accelrl.physics.beam import TRANSVERSE

if TYPE_CHECKING:
    from accelrl.deploy.config import MachineConfig

__all__ = ["OptimiserSource"]


class OptimiserSource:
    """An optimiser as the controller's action source (see the module documentation).

    :param config: The machine config (knobs with limits and ``max_step``; observations
        named ``mu_x, sigma_x, mu_y, sigma_y``).
    :param optimiser: The optimiser; reset at the first step.
    :param max_steps: The run's step budget (the optimiser plans its return to the best
        setting within it).
    :param seed: Seed of the optimiser's randomness.
    :param target_thresholds: "Target reached" thresholds [m]; default the task's.
    :raises ValueError: If the config lacks the beam observations or ``max_steps < 1``.

    A source serves one controller run (its first :meth:`act1` starts the optimiser's
    problem); build a new one for the next run.
    """

    def __init__(
        self,
        config: MachineConfig,
        optimiser: Optimiser,
        max_steps: int,
        seed: int = 0,
        target_thresholds: Sequence[float] | None = None,
    ) -> None:
        missing = [n for n in TRANSVERSE if n not in config.observation_names]
        if missing:
            raise ValueError(
                f"machine {config.name!r} observes {list(config.observation_names)}; an "
                f"optimiser needs the beam reading {list(TRANSVERSE)} (missing {missing})"
            )
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if target_thresholds is None:
            from accelrl.envs import TASKS

            task = TASKS.get(config.env_id)
            target_thresholds = (
                task().termination.thresholds if task is not None else (2e-5, 2e-5, 2e-5, 2e-5)
            )
        self.config = config
        self.optimiser = optimiser
        self.max_steps = int(max_steps)
        self.seed = int(seed)
        self._spec = ActionSpec(
            env_id=config.env_id,
            knob_names=config.knob_names,
            beam_names=TRANSVERSE,
            action_mode="direct",
            knob_limits={k.name: (k.low, k.high) for k in config.knobs},
            target_thresholds=tuple(float(t) for t in target_thresholds),
            source=f"optimiser:{optimiser.name}",
        )
        self._step = 0

    @property
    def spec(self) -> ActionSpec:
        """The interface for the controller (direct actions within the config's limits)."""
        return self._spec

    @property
    def steps(self) -> int:
        """Observations handed to the optimiser so far."""
        return self._step

    def observation(self, beam: np.ndarray, magnets: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``[beam (4) m, magnets (K) SI, target (4) m]``, the input of :meth:`act1`."""
        return np.concatenate(
            [np.asarray(v, np.float64).reshape(-1) for v in (beam, magnets, target)]
        )

    def act1(self, observation: np.ndarray) -> np.ndarray:
        """Hand one reading to the optimiser; its next settings ``[K]`` (SI).

        :raises ValueError: For an input of the wrong size.
        """
        x = np.asarray(observation, np.float64).reshape(-1)
        k = len(self._spec.knob_names)
        if x.shape != (8 + k,):
            raise ValueError(f"observation must have {8 + k} values, got shape {x.shape}")
        beam, magnets, target = x[:4], x[4 : 4 + k], x[4 + k :]
        if self._step == 0:
            knobs = self.config.knobs
            self.optimiser.reset(
                Problem(
                    actuator_names=self._spec.knob_names,
                    low=np.array([kb.low for kb in knobs], np.float64),
                    high=np.array([kb.high for kb in knobs], np.float64),
                    start=magnets.copy(),
                    target=target.copy(),
                    max_delta=np.array([kb.max_step for kb in knobs], np.float64),
                    max_steps=self.max_steps,
                    seed=self.seed,
                )
            )
        obs = Observation(
            beam=beam, magnets=magnets, target=target, on_screen=True, step=self._step
        )
        self._step += 1
        return np.asarray(self.optimiser.ask(obs), np.float64).reshape(k)
