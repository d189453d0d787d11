"""Native batched LPA tuning: ``num_envs`` environments stepped as one surrogate evaluation.

:class:`LPATuningVectorEnv` is a ``gymnasium.vector.VectorEnv``. Environment ``i`` reset with
``seed=s`` follows the trajectory of a single :class:`~accelrl.envs.lpa.LPATuningEnv` reset
with ``seed=s + i`` (same targets, drifts, jitter and, to floating-point rounding of the
batched matrix products, the same rewards).
"""

from __future__ import annotations

from typing import Any

from accelrl.envs.lpa import LPACore, LPATaskConfig, observation_space
from accelrl.envs.stage import StageVectorEnv, merge_config
from accelrl.surrogates.models.ensemble import Surrogate


class LPATuningVectorEnv(StageVectorEnv):
    """``num_envs`` LPA tuning environments in one process, batched.

    :param num_envs: Number of environments.
    :param config: Task settings (:class:`~accelrl.envs.lpa.LPATaskConfig` or mapping).
    :param surrogate: A loaded surrogate (default: ``config.surrogate``).
    :param max_episode_steps: Truncation (default: ``config.max_episode_steps``).
    :param kwargs: Fields of :class:`~accelrl.envs.lpa.LPATaskConfig`.
    """

    core: LPACore

    def __init__(
        self,
        num_envs: int,
        config: LPATaskConfig | dict[str, Any] | None = None,
        surrogate: Surrogate | None = None,
        max_episode_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.config = merge_config(LPATaskConfig, config, kwargs)
        core = LPACore(self.config, surrogate, num_envs)
        steps = max_episode_steps or self.config.max_episode_steps
        super().__init__(core, observation_space(core), steps)
