"""The surrogate plasma-stage tasks' shared pieces (:mod:`accelrl.envs.lpa`,
:mod:`accelrl.envs.hybrid`).

:class:`StageCore` (random streams, laser-energy jitter and plasma-density drift, delta or
direct actions), :class:`StageEnv` (one environment over a core of one) and
:class:`StageVectorEnv` (``num_envs`` environments, one batched evaluation per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from pydantic import BaseModel

from accelrl.envs import rng
from accelrl.envs.batched import (
    CoreVectorEnv,
    action_box,
    reset_core,
    single_action,
    step_with_autoreset,
)


class StageCore:
    """State and dynamics that the surrogate plasma-stage tasks share (batched).

    A subclass sets, before :meth:`_init_state`: ``config`` (with ``action_mode``,
    ``delta_fraction``, ``jitter_rel_rms`` and ``drift_rel_step``), the setting bounds
    ``low``/``high``, the surrogate's input bounds ``in_low``/``in_high`` and nominal inputs
    ``base``, and the columns ``jitter_col``/``drift_col`` (``-1``: none); it implements
    :attr:`actuator_names`, ``reset``, ``_evaluate``, ``observation`` and ``info``.

    :param num_envs: Batch size ``B``.
    """

    #: Key of ``last`` that :meth:`step` returns as the reward.
    reward_key: str = "reward"
    config: Any
    low: np.ndarray
    high: np.ndarray
    base: np.ndarray
    in_low: np.ndarray
    in_high: np.ndarray
    jitter_col: int
    drift_col: int
    target: np.ndarray

    def __init__(self, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs

    @property
    def actuator_names(self) -> list[str]:
        """Names of the settings, in action order."""
        raise NotImplementedError

    def _init_state(self, start: np.ndarray) -> None:
        """Action bounds, random streams and the state of every environment at ``start``."""
        c = self.config
        step = c.delta_fraction * (self.high - self.low)
        self.action_low, self.action_high = (
            (-step, step) if c.action_mode == "delta" else (self.low.copy(), self.high.copy())
        )
        B = self.num_envs
        self.keys = np.array([rng.key_from_seed(None) for _ in range(B)], dtype=np.uint64)
        self.counters = np.zeros(B, dtype=np.uint64)
        self.settings = np.tile(start, (B, 1))
        self.drift = np.zeros(B)
        self.jitter = np.zeros(B)
        self.steps = np.zeros(B, dtype=np.int64)
        self.last: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ random streams
    def seed(self, idx: np.ndarray, seeds: Sequence[int | None]) -> None:
        """Re-key the random streams of environments ``idx``."""
        self.keys[idx] = np.array([rng.key_from_seed(s) for s in seeds], dtype=np.uint64)
        self.counters[idx] = 0

    def _uniform(self, idx: np.ndarray, n: int) -> np.ndarray:
        u = rng.uniform(self.keys[idx], self.counters[idx], n)
        self.counters[idx] += np.uint64(1)
        return u

    def _normal(self, idx: np.ndarray, n: int) -> np.ndarray:
        z = rng.normal(self.keys[idx], self.counters[idx], n)
        self.counters[idx] += np.uint64(1)
        return z

    # ------------------------------------------------------------------ dynamics
    def _stage_inputs(
        self, cols: np.ndarray, settings: np.ndarray, drift: np.ndarray, jitter: np.ndarray
    ) -> np.ndarray:
        """All surrogate inputs ``[B, d]``: ``settings`` in columns ``cols``, jitter and drift
        applied, clipped to the design bounds (the surrogate is not trusted outside them)."""
        x = np.tile(self.base, (len(settings), 1))
        x[:, cols] = settings
        if self.jitter_col >= 0:
            x[:, self.jitter_col] *= 1.0 + jitter
        if self.drift_col >= 0:
            x[:, self.drift_col] *= 1.0 + drift
        return np.clip(x, self.in_low, self.in_high)

    def _restart(
        self, idx: np.ndarray, settings: np.ndarray, target: np.ndarray, drift: np.ndarray
    ) -> None:
        """Start new episodes of environments ``idx`` and evaluate them."""
        self.settings[idx] = settings
        self.target[idx] = target
        self.drift[idx] = drift
        self.jitter[idx] = 0.0
        self.steps[idx] = 0
        self._evaluate(idx)

    def validate_actions(self, actions: Any) -> np.ndarray:
        """``[B, K]`` float64 actions, clipped to the action box.

        :raises ValueError: For a wrong shape or NaN/inf values, naming the actuators.
        """
        a = np.asarray(actions, dtype=np.float64)
        names = self.actuator_names
        shape = (self.num_envs, len(names))
        if a.shape != shape:
            raise ValueError(f"actions must have shape {shape}, got {a.shape}")
        bad = ~np.isfinite(a)
        if bad.any():
            cols = sorted({names[j] for j in np.nonzero(bad)[1]})
            raise ValueError(f"actions hold NaN or inf for {cols}")
        return np.clip(a, self.action_low, self.action_high)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance all environments by validated actions ``[B, K]``; returns the rewards
        ``[B]`` and the terminated flags ``[B]`` (always ``False``: stage tasks only
        truncate)."""
        c = self.config
        all_ = np.arange(self.num_envs)
        settings = self.settings + actions if c.action_mode == "delta" else actions
        self.settings = np.clip(settings, self.low, self.high)
        z = self._normal(all_, 2)
        self.jitter = c.jitter_rel_rms * z[:, 0] if self.jitter_col >= 0 else 0 * z[:, 0]
        if self.drift_col >= 0:
            self.drift = np.clip(self.drift + c.drift_rel_step * z[:, 1], -0.2, 0.2)
        self.steps += 1
        self._evaluate(all_)
        return self.last[self.reward_key].copy(), np.zeros(self.num_envs, dtype=bool)

    def _store(self, idx: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Keep the evaluated ``values`` of environments ``idx`` in ``last``."""
        if not self.last:  # first call (constructor): all environments
            self.last = {k: np.array(v) for k, v in values.items()}
            return
        for k, v in values.items():
            self.last[k][idx] = v


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def merge_config(
    cls: type[ConfigT], config: ConfigT | dict[str, Any] | None, kwargs: dict[str, Any]
) -> ConfigT:
    """Task settings ``cls`` from a model or mapping ``config``, overridden by ``kwargs``.

    :raises pydantic.ValidationError: For an invalid or unknown field.
    """
    data = config.model_dump() if isinstance(config, cls) else dict(config or {})
    data.update(kwargs)
    return cls.model_validate(data)


def check_render_mode(render_mode: str | None) -> None:
    """The stage tasks do not render: ``render_mode`` must be ``None``."""
    if render_mode is not None:
        raise ValueError(f"render_mode must be None, got {render_mode!r}")


class StageEnv(gym.Env):
    """One environment of a stage task over a :class:`StageCore` of one; a subclass builds
    the core, calls :meth:`_attach` and implements ``_info``."""

    metadata = {"render_modes": []}

    def _attach(self, core: StageCore, observation_space: spaces.Space) -> None:
        self.core = core
        self.observation_space = observation_space
        self.action_space = action_box(core.action_low, core.action_high)
        self._all = np.array([0])
        core.reset(self._all)

    @property
    def actuator_names(self) -> list[str]:
        return list(self.core.actuator_names)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        reset_core(self.core, self._all, None if seed is None else [seed], options)
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = single_action(action, self.action_space)
        reward, _ = self.core.step(self.core.validate_actions(a))
        return self._obs(), float(reward[0]), False, False, self._info()

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.core.observation().items()}

    def _info(self) -> dict[str, Any]:
        raise NotImplementedError


class StageVectorEnv(CoreVectorEnv):
    """``num_envs`` environments of a stage task, one batched evaluation per step.

    Environment ``i`` reset with ``seed=s`` matches a single environment reset with ``s + i``.

    :param core: The batched core.
    :param single_observation_space: Observation space of one environment.
    :param max_episode_steps: Truncation.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self, core: StageCore, single_observation_space: spaces.Space, max_episode_steps: int
    ) -> None:
        self.core = core
        self.num_envs = num_envs = core.num_envs
        self.max_episode_steps = max_episode_steps
        self.single_observation_space = single_observation_space
        self.single_action_space = action_box(core.action_low, core.action_high)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._start_core()

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        core = self.core
        a = core.validate_actions(actions)
        reward, terminated, truncated = step_with_autoreset(
            core, a, self._needs_reset, self.max_episode_steps
        )
        self._needs_reset = truncated.copy()
        return core.observation(), reward, terminated, truncated, self._info()
