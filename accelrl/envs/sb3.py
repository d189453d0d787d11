"""Stable-Baselines3 ``VecEnv`` adapter over the native batched environment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from accelrl.envs.vector import TransverseTuningVectorEnv


class SB3VecEnv(VecEnv):
    """Stable-Baselines3 ``VecEnv`` over a :class:`TransverseTuningVectorEnv`.

    Finished environments are reset in the same step, as SB3 expects; their last
    observation is in ``infos[i]["terminal_observation"]`` and time-limit truncation in
    ``infos[i]["TimeLimit.truncated"]``.

    :param venv: The batched environment (its autoreset mode is switched to same-step).
    :param info_keys: Keys of the privileged info copied into every step's per-env info
        dicts (e.g. ``("mae",)``); empty by default because building N dicts is not free.
    :param normalise_actions: Present the action space as ``[-1, 1]^K`` (SB3's recommended
        form) and rescale actions linearly to the environment's SI bounds.
    """

    def __init__(
        self,
        venv: TransverseTuningVectorEnv,
        info_keys: Sequence[str] = (),
        normalise_actions: bool = False,
    ) -> None:
        venv.metadata = {**venv.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.venv = venv
        self.info_keys = tuple(info_keys)
        space = venv.single_action_space
        self.normalise_actions = normalise_actions
        self._low, self._high = space.low.astype(np.float64), space.high.astype(np.float64)
        if normalise_actions:
            space = spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)
        super().__init__(venv.num_envs, venv.single_observation_space, space)
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
        if self.normalise_actions:
            actions = self._low + (np.asarray(actions, dtype=np.float64) + 1.0) * 0.5 * (
                self._high - self._low
            )
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
            out[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            for key in self.info_keys:  # a finished env reports its terminal step, as in SB3
                out[i][key] = infos["final_info"][key][i]
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
