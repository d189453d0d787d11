"""Native batched environments: N tuning environments stepped as one array operation.

:class:`TransverseTuningVectorEnv` is a ``gymnasium.vector.VectorEnv`` whose step evaluates
the beamline once for all environments. Environment ``i`` reset with ``seed=s`` follows
exactly the trajectory of a single environment reset with ``seed=s + i``.
:class:`SB3VecEnv` adapts it to Stable-Baselines3's ``VecEnv`` interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cheetah
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env import VecEnv

from accelrl.envs.core import ActionMode, StartMode
from accelrl.envs.render import screen_image
from accelrl.envs.spec import TaskSpec
from accelrl.envs.tuning import build_core, observation_space


class TransverseTuningVectorEnv(VectorEnv):
    """``num_envs`` transverse-tuning environments in one process, batched.

    :param spec: Task spec (or path to its YAML).
    :param num_envs: Number of environments.
    :param max_episode_steps: Truncation after this many steps (default: the spec's).
    :param autoreset_mode: ``"next_step"`` (Gymnasium's default: a finished environment is
        reset by the following ``step``) or ``"same_step"`` (reset at once; the last
        observation is in ``info["final_obs"]``).
    :param segment, backend, num_particles, action_mode, reward, start, terminate_on_target:
        As for :class:`~accelrl.envs.tuning.TransverseTuningEnv`.
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
        # All environments step as one batch; those due for a reset are then reset, with
        # their random streams rewound so that they match a single environment exactly.
        counters = core.counters[resetting].copy()
        reward, terminated = core.step(a)
        truncated = (core.steps >= self.max_episode_steps) & ~terminated
        if resetting.size:
            core.counters[resetting] = counters
            core.reset(resetting)
            reward[resetting] = 0.0
            terminated[resetting] = False
            truncated[resetting] = False
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

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.core.info()
        for key in list(info):
            info["_" + key] = self._mask
        return info

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode != "rgb_array":
            return None
        c = self.core
        hx = self.task.screen.half_extent
        return tuple(
            screen_image(c.reading[i], c.target[i], hx, on_screen=bool(c.on_screen[i]))
            for i in range(self.num_envs)
        )


class SB3VecEnv(VecEnv):
    """Stable-Baselines3 ``VecEnv`` over a :class:`TransverseTuningVectorEnv`.

    Finished environments are reset in the same step, as SB3 expects; their last
    observation is in ``infos[i]["terminal_observation"]`` and time-limit truncation in
    ``infos[i]["TimeLimit.truncated"]``.

    :param venv: The batched environment (its autoreset mode is switched to same-step).
    :param info_keys: Keys of the privileged info copied into every step's per-env info
        dicts (e.g. ``("mae",)``); empty by default because building N dicts is not free.
    """

    def __init__(self, venv: TransverseTuningVectorEnv, info_keys: Sequence[str] = ()) -> None:
        venv.metadata = {**venv.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.venv = venv
        self.info_keys = tuple(info_keys)
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> dict[str, np.ndarray]:
        seeds = self._seeds
        seed = seeds if any(s is not None for s in seeds) else None
        options = self._options[0] if self._options and self._options[0] else None
        obs, _ = self.venv.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict]]:
        obs, reward, terminated, truncated, infos = self.venv.step(self._actions)
        done = terminated | truncated
        out: list[dict] = [{} for _ in range(self.num_envs)]
        for key in self.info_keys:
            for i, value in enumerate(infos[key]):
                out[i][key] = value
        for i in np.nonzero(done)[0]:
            final = infos["final_obs"]
            out[i]["terminal_observation"] = {k: v[i] for k, v in final.items()}
            out[i]["TimeLimit.truncated"] = bool(truncated[i])
        return obs, reward.astype(np.float32), done, out

    def close(self) -> None:
        self.venv.close()

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
    ) -> list[Any]:
        return [getattr(self.venv, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._indices(indices)]
