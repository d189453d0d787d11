"""The SB3 training environment of a recipe: the native vector env adapted for SB3.

:func:`make_training_env`: the recipe's native batched environment
(:func:`accelrl.envs.make_vec`: one array operation steps all ``num_envs``), adapted to SB3
by :class:`~accelrl.envs.sb3.SB3VecEnv` with actions normalised to ``[-1, 1]``, its ``Dict``
observation flattened to ``[beam (4), magnets (K), target (4)]``
(:class:`FlattenObservation`), episode statistics recorded by ``VecMonitor`` and
observations/rewards normalised by ``VecNormalize``. PPO additionally acts in a
``tanh``-squashed latent space (:class:`TanhLatentActions`) so that its deterministic policy
is exactly exportable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor, VecNormalize

from accelrl.agents.export.sb3 import PPO_LATENT_BOUND
from accelrl.agents.policy import OBS_KEYS
from accelrl.agents.training.recipes import Recipe
from accelrl.envs import make_vec
from accelrl.envs.sb3 import SB3VecEnv

__all__ = ["FlattenObservation", "TanhLatentActions", "make_training_env"]


class FlattenObservation(VecEnvWrapper):
    """``Dict(beam, magnets, target)`` observations -> one flat float32 ``Box``, in
    :data:`~accelrl.agents.policy.OBS_KEYS` order (also ``terminal_observation``)."""

    def __init__(self, venv: VecEnv) -> None:
        space = venv.observation_space
        if not isinstance(space, spaces.Dict) or list(space.spaces) != list(OBS_KEYS):
            raise ValueError(f"need Dict observations with keys {OBS_KEYS}, got {space}")
        low = np.concatenate([space[k].low for k in OBS_KEYS]).astype(np.float32)
        high = np.concatenate([space[k].high for k in OBS_KEYS]).astype(np.float32)
        super().__init__(venv, observation_space=spaces.Box(low, high, dtype=np.float32))

    @staticmethod
    def flatten(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([obs[k] for k in OBS_KEYS], axis=-1).astype(np.float32)

    def reset(self) -> np.ndarray:
        return self.flatten(self.venv.reset())

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        obs, reward, done, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self.flatten(info["terminal_observation"])
        return self.flatten(obs), reward, done, infos


class TanhLatentActions(VecEnvWrapper):
    """Presents the latent box ``[-B, B]^K`` (``B`` = :data:`PPO_LATENT_BOUND`) and forwards
    ``tanh(u)`` to the wrapped ``[-1, 1]`` action space.

    PPO's Gaussian then acts in an unbounded (practically) latent space; its deterministic
    action ``tanh(mean)`` is what the portable policy computes. The squashing is part of the
    environment, so PPO's likelihood ratios (of the latent actions) stay exact.
    """

    def __init__(self, venv: VecEnv) -> None:
        space = venv.action_space
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            raise ValueError(f"need a [-1, 1] action space to squash into, got {space}")
        latent = spaces.Box(
            -PPO_LATENT_BOUND, PPO_LATENT_BOUND, shape=space.shape, dtype=np.float32
        )
        super().__init__(venv, action_space=latent)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        self.venv.step_async(np.tanh(np.asarray(actions, np.float64)))

    def step_wait(self) -> Any:
        return self.venv.step_wait()


def make_training_env(recipe: Recipe) -> VecNormalize:
    """The recipe's training environment: native batched env -> SB3 adapter (actions in
    ``[-1, 1]``) -> flat observations -> (PPO: tanh latent actions) -> ``VecMonitor`` ->
    ``VecNormalize``. Seeded: environment ``i`` starts from ``recipe.seed + i``."""
    venv = make_vec(recipe.env.id, recipe.num_envs, **recipe.env.kwargs())
    env: VecEnv = FlattenObservation(SB3VecEnv(venv, normalise_actions=True))
    if recipe.algorithm == "ppo":
        env = TanhLatentActions(env)
    env = VecMonitor(env)
    vn = recipe.vecnormalize
    env = VecNormalize(
        env,
        norm_obs=vn.obs,
        norm_reward=vn.reward,
        clip_obs=vn.clip_obs,
        clip_reward=vn.clip_reward,
        gamma=recipe.hyperparameters.gamma,
        epsilon=vn.epsilon,
    )
    env.seed(recipe.seed)
    return env
