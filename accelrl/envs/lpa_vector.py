"""Native batched LPA tuning: ``num_envs`` environments stepped as one surrogate evaluation.

:class:`LPATuningVectorEnv` is a ``gymnasium.vector.VectorEnv``. Environment ``i`` reset with
``seed=s`` follows the trajectory of a single :class:`~accelrl.envs.lpa.LPATuningEnv` reset
with ``seed=s + i`` (same targets, drifts, jitter and, to floating-point rounding of the
batched matrix products, the same rewards).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from accelrl.envs.lpa import LPACore, LPATaskConfig, _config, observation_space
from accelrl.surrogates.models.ensemble import Surrogate


class LPATuningVectorEnv(VectorEnv):
    """``num_envs`` LPA tuning environments in one process, batched.

    :param num_envs: Number of environments.
    :param config: Task settings (:class:`~accelrl.envs.lpa.LPATaskConfig` or mapping).
    :param surrogate: A loaded surrogate (default: ``config.surrogate``).
    :param max_episode_steps: Truncation (default: ``config.max_episode_steps``).
    :param kwargs: Fields of :class:`~accelrl.envs.lpa.LPATaskConfig`.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        config: LPATaskConfig | dict[str, Any] | None = None,
        surrogate: Surrogate | None = None,
        max_episode_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.config = _config(config, kwargs)
        self.core = LPACore(self.config, surrogate, num_envs)
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps or self.config.max_episode_steps
        self.single_observation_space = observation_space(self.core)
        self.single_action_space = spaces.Box(
            self.core.action_low.astype(np.float32),
            self.core.action_high.astype(np.float32),
            dtype=np.float32,
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._all = np.arange(num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._mask = np.ones(num_envs, dtype=bool)
        self.core.reset(self._all)

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all environments; ``seed`` int gives environment ``i`` the seed ``seed + i``."""
        if seed is not None:
            seeds = (
                [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            )
            if len(seeds) != self.num_envs:
                raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
            self.core.seed(self._all, seeds)
        self.core.reset(self._all, options)
        self._needs_reset[:] = False
        return self.core.observation(), self._info()

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        core = self.core
        a = core.validate_actions(actions)
        resetting = np.nonzero(self._needs_reset)[0]
        counters = core.counters[resetting].copy()
        reward = core.step(a)
        truncated = core.steps >= self.max_episode_steps
        if resetting.size:
            # rewind the streams of the environments due for a reset, so that they match a
            # single environment that is reset instead of stepped
            core.counters[resetting] = counters
            core.reset(resetting)
            reward[resetting] = 0.0
            truncated[resetting] = False
        terminated = np.zeros(self.num_envs, dtype=bool)
        self._needs_reset = truncated.copy()
        return core.observation(), reward, terminated, truncated, self._info()

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.core.info()
        for key in list(info):
            info["_" + key] = self._mask
        return info
