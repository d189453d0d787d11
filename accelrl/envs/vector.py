"""Native batched environments: N tuning environments stepped as one array operation.

:class:`TransverseTuningVectorEnv` is a ``gymnasium.vector.VectorEnv`` whose step evaluates
the beamline once for all environments. Environment ``i`` reset with ``seed=s`` follows
the trajectory of a single environment reset with ``seed=s + i``: the same hidden state,
targets, terminations and truncations, and beams equal to floating-point rounding (~1e-14
relative: the single environment evaluates the map on Python floats, the batch on numpy).
:class:`accelrl.envs.sb3.SB3VecEnv` adapts it to Stable-Baselines3's ``VecEnv`` interface.

Make one with :func:`accelrl.envs.make_vec` from a registered id, a task YAML, a
:class:`~accelrl.envs.spec.TaskSpec` or an environment of :func:`accelrl.envs.make_tuning_env`
(``docs/custom_lattice.md``), or directly: ``TransverseTuningVectorEnv(spec, num_envs,
segment=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cheetah
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from accelrl.envs.batched import CoreVectorEnv, step_with_autoreset
from accelrl.envs.core import ActionMode, StartMode
from accelrl.envs.spec import TaskSpec
from accelrl.envs.tuning import build_core, observation_space, render_core
from accelrl.envs.world.spec import WorldSpec


class TransverseTuningVectorEnv(CoreVectorEnv):
    """``num_envs`` transverse-tuning environments in one process, batched.

    :param spec: Task spec (or path to its YAML).
    :param num_envs: Number of environments.
    :param max_episode_steps: Truncation after this many steps (default: the spec's).
    :param autoreset_mode: ``"next_step"`` (Gymnasium's default: a finished environment is
        reset by the following ``step``) or ``"same_step"`` (reset at once; the last
        observation is in ``info["final_obs"]``).
    :param segment, backend, num_particles, action_mode, reward, start, terminate_on_target,
        world: As for :class:`~accelrl.envs.tuning.TransverseTuningEnv` (the world's
        scenario steps must fit in ``max_episode_steps``).
    """

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        spec: TaskSpec | str,
        num_envs: int,
        max_episode_steps: int | None = None,
        autoreset_mode: str = "next_step",
        segment: cheetah.Segment | None = None,
        backend: str = "fast",
        num_particles: int = 10_000,
        action_mode: ActionMode = "delta",
        reward: str | list[dict] | None = None,
        start: StartMode = "standard",
        terminate_on_target: bool | None = None,
        render_mode: str | None = None,
        world: WorldSpec | str | Path | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(spec, TaskSpec):
            spec = TaskSpec.from_yaml(spec)
        modes = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}
        if autoreset_mode not in modes:
            raise ValueError(
                f"autoreset_mode must be one of {sorted(modes)}, got {autoreset_mode!r}"
            )
        self.metadata = {**self.metadata, "autoreset_mode": modes[autoreset_mode]}
        self.task = spec
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps or spec.max_episode_steps
        self.core = build_core(
            spec,
            num_envs,
            segment,
            backend,
            num_particles,
            action_mode=action_mode,
            reward=reward,
            start=start,
            terminate_on_target=terminate_on_target,
            world=world,
            max_episode_steps=self.max_episode_steps,
        )
        self.render_mode = render_mode
        self.single_observation_space = observation_space(spec)
        self.single_action_space = spaces.Box(
            low=self.core.action_low.astype(np.float32),
            high=self.core.action_high.astype(np.float32),
            dtype=np.float32,
        )
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
        done = terminated | truncated
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
            self._needs_reset[:] = False
            finished = np.nonzero(done)[0]
            infos = self._info()
            if finished.size:
                final_obs = core.observation()
                final_info = self._info()
                core.reset(finished)
                infos = self._info()
                infos["final_obs"] = final_obs
                infos["final_info"] = final_info
                infos["_final_obs"] = done.copy()
                infos["_final_info"] = done.copy()
            return core.observation(), reward, terminated, truncated, infos
        self._needs_reset = done
        return core.observation(), reward, terminated, truncated, self._info()

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode != "rgb_array":
            return None
        return tuple(render_core(self.core, i) for i in range(self.num_envs))
