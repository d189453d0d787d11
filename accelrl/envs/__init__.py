"""Gymnasium environments for beam tuning: single, natively batched, and SB3 adapters.

>>> import gymnasium as gym, accelrl
>>> env = gym.make("accelrl/AresEATransverseTuning-v0")
>>> venv = accelrl.envs.make_vec("accelrl/AresEATransverseTuning-v0", num_envs=64)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from accelrl.envs.ares_ea import ENV_ID as ARES_EA_ID
from accelrl.envs.ares_ea import AresEATransverseTuning, ares_ea_spec
from accelrl.envs.core import TuningCore
from accelrl.envs.rewards import Reward
from accelrl.envs.spec import SpecError, TaskSpec
from accelrl.envs.trials import Trial, load_trials
from accelrl.envs.tuning import TransverseTuningEnv, make_tuning_env
from accelrl.envs.vector import TransverseTuningVectorEnv

#: Registered environment id -> its task spec.
TASKS: dict[str, Callable[[], TaskSpec]] = {ARES_EA_ID: ares_ea_spec}


def make_vec(
    env_id: str, num_envs: int, device: str | Any | None = None, **kwargs: Any
) -> gym.vector.VectorEnv:
    """Native batched version of a registered environment (one process, one array op per step).

    :param env_id: A registered id, e.g. ``"accelrl/AresEATransverseTuning-v0"`` (a
        :class:`TransverseTuningVectorEnv`) or ``"accelrl/LPATuning-v0"`` (the environment's
        own vector class).
    :param num_envs: Number of environments.
    :param device: ``None`` (default): numpy arrays in and out. ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or a ``torch.device``: a
        :class:`~accelrl.envs.device.DeviceTuningVectorEnv` whose state stays on that device,
        torch tensors in and out (``NumpyView(env)`` for numpy code such as SB3). Available
        for the transverse-tuning tasks in the ideal world.
    :param kwargs: As for the vector class (for the transverse-tuning tasks
        ``max_episode_steps`` defaults to the registered TimeLimit).
    :raises DeviceError: For a device this machine cannot use (never a silent fallback).
    :raises ValueError: For an unknown id, or a device for an environment without a device
        version.
    """
    from accelrl.registration import CODE_ENVIRONMENTS

    if env_id in CODE_ENVIRONMENTS:
        if device is not None:
            raise ValueError(
                f"{env_id} has no device version (its surrogate stage runs on numpy); "
                "omit device= (or pass device=None)"
            )
        return load_env_creator(CODE_ENVIRONMENTS[env_id][1])(num_envs=num_envs, **kwargs)
    if env_id not in TASKS:
        known = sorted([*TASKS, *CODE_ENVIRONMENTS])
        raise ValueError(f"unknown environment {env_id!r}; registered: {known}")
    kwargs.setdefault("max_episode_steps", gym.spec(env_id).max_episode_steps)
    if device is not None:
        from accelrl.envs.device import DeviceTuningVectorEnv

        return DeviceTuningVectorEnv(TASKS[env_id](), num_envs, device=device, **kwargs)
    return TransverseTuningVectorEnv(TASKS[env_id](), num_envs, **kwargs)


def vector_entry_point(
    env_id: str = ARES_EA_ID, num_envs: int = 1, **kwargs: Any
) -> TransverseTuningVectorEnv:
    """Gymnasium's ``vector_entry_point``.

    Used by ``gym.make_vec(ID, n, vectorization_mode="vector_entry_point")``.
    """
    return make_vec(env_id, num_envs, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "SB3VecEnv":  # Stable-Baselines3 loads only when its adapter is used
        from accelrl.envs.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module 'accelrl.envs' has no attribute {name!r}")


__all__ = [
    "ARES_EA_ID",
    "AresEATransverseTuning",
    "Reward",
    "SB3VecEnv",
    "SpecError",
    "TASKS",
    "TaskSpec",
    "TransverseTuningEnv",
    "TransverseTuningVectorEnv",
    "Trial",
    "TuningCore",
    "load_trials",
    "make_tuning_env",
    "make_vec",
]
