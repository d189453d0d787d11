"""Gymnasium environments for beam tuning: single, natively batched, and SB3 adapters.

>>> import gymnasium as gym, accelrl
>>> env = gym.make("accelrl/AresEATransverseTuning-v0")
>>> venv = accelrl.envs.make_vec("accelrl/AresEATransverseTuning-v0", num_envs=64)

Your own lattice: :func:`make_tuning_env` (a Cheetah segment, knobs, screen),
:func:`register_task` (a task spec or YAML, so ``gym.make``, :func:`make_vec`, evaluation and
training know its id); ``docs/custom_lattice.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from accelrl.envs.ares_ea import ENV_ID as ARES_EA_ID
from accelrl.envs.ares_ea import AresEATransverseTuning, ares_ea_spec
from accelrl.envs.core import TuningCore
from accelrl.envs.rewards import Reward
from accelrl.envs.spec import Randomisation, SpecError, TaskSpec
from accelrl.envs.tasks import SEGMENTS, TASKS, register_task, resolve_task, sample_trials
from accelrl.envs.trials import Trial, load_trials
from accelrl.envs.tuning import (
    DEFAULT_INCOMING,
    TransverseTuningEnv,
    make_tuning_env,
    task_segment,
)
from accelrl.envs.vector import TransverseTuningVectorEnv


def make_vec(
    env: str | Path | TaskSpec | gym.Env,
    num_envs: int,
    device: str | Any | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """Native batched version of a task (one process, one array operation per step).

    For transverse-tuning tasks this is a :class:`TransverseTuningVectorEnv`: environment
    ``i`` reset with ``seed=s`` follows a single environment reset with ``seed=s + i``.

    :param env: What to batch:

        * a registered id, e.g. ``"accelrl/AresEATransverseTuning-v0"``, ``"accelrl/
          LPATuning-v0"`` (the environment's own vector class) or one registered by
          :func:`register_task`;
        * the path of a task YAML (registered on first use; ``lattice:`` may name a file);
        * a :class:`TaskSpec` (pass ``segment=`` unless its ``lattice`` names one);
        * an environment from :func:`make_tuning_env` (or any ``TransverseTuningEnv``): its
          task, lattice, TimeLimit and settings (backend, action mode, reward, world, ...),
          each overridable by ``kwargs``.
    :param num_envs: Number of environments.
    :param device: ``None`` (default): numpy arrays in and out. ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or a ``torch.device``: a
        :class:`~accelrl.envs.device.DeviceTuningVectorEnv` whose state stays on that device,
        torch tensors in and out (``NumpyView(env)`` for numpy code such as SB3). Available
        for the transverse-tuning tasks in the ideal world.
    :param kwargs: As for the vector class (for the transverse-tuning tasks
        ``max_episode_steps`` defaults to the registered TimeLimit).
    :raises DeviceError: For a device this machine cannot use (never a silent fallback).
    :raises ValueError: For an unknown id, naming the registered ones, or a device for an
        environment without a device version.
    """
    from accelrl.registration import CODE_ENVIRONMENTS

    def batched(spec: TaskSpec, **options: Any) -> gym.vector.VectorEnv:
        if device is None:
            return TransverseTuningVectorEnv(spec, num_envs, **options)
        from accelrl.envs.device import DeviceTuningVectorEnv

        return DeviceTuningVectorEnv(spec, num_envs, device=device, **options)

    if isinstance(env, gym.Env):
        base = env.unwrapped
        if not isinstance(base, TransverseTuningEnv):
            raise ValueError(
                f"make_vec takes a TransverseTuningEnv (e.g. from make_tuning_env), got "
                f"{type(base).__name__}"
            )
        limit = getattr(env, "_max_episode_steps", None) or base.task.max_episode_steps
        settings = {**base.settings, "segment": base.segment, "max_episode_steps": limit}
        return batched(base.task, **{**settings, **kwargs})
    if isinstance(env, TaskSpec):
        return batched(env, **kwargs)
    if str(env) in CODE_ENVIRONMENTS:
        if device is not None:
            raise ValueError(
                f"{env} has no device version (its surrogate stage runs on numpy); "
                "omit device= (or pass device=None)"
            )
        return load_env_creator(CODE_ENVIRONMENTS[str(env)][1])(num_envs=num_envs, **kwargs)
    try:
        task = resolve_task(env)
    except ValueError:
        known = sorted([*TASKS, *CODE_ENVIRONMENTS])
        raise ValueError(
            f"unknown environment {str(env)!r}; registered: {known} (or a task YAML, a "
            "TaskSpec or an environment from make_tuning_env)"
        ) from None
    kwargs.setdefault("max_episode_steps", gym.spec(task.id).max_episode_steps)
    kwargs.setdefault("segment", task.segment)
    return batched(task.spec, **kwargs)


def vector_entry_point(
    env_id: str = ARES_EA_ID,
    num_envs: int = 1,
    spec: TaskSpec | None = None,
    **kwargs: Any,
) -> TransverseTuningVectorEnv:
    """Gymnasium's ``vector_entry_point``.

    Used by ``gym.make_vec(ID, n, vectorization_mode="vector_entry_point")``; a task from
    :func:`register_task` arrives with its ``spec`` (and ``segment``).
    """
    if spec is not None:
        kwargs.setdefault("max_episode_steps", spec.max_episode_steps)
        return TransverseTuningVectorEnv(spec, num_envs, **kwargs)
    return make_vec(env_id, num_envs, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "SB3VecEnv":  # Stable-Baselines3 loads only when its adapter is used
        from accelrl.envs.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module 'accelrl.envs' has no attribute {name!r}")


__all__ = [
    "ARES_EA_ID",
    "AresEATransverseTuning",
    "DEFAULT_INCOMING",
    "Randomisation",
    "Reward",
    "SEGMENTS",
    "SB3VecEnv",
    "SpecError",
    "TASKS",
    "TaskSpec",
    "TransverseTuningEnv",
    "TransverseTuningVectorEnv",
    "Trial",
    "TuningCore",
    "ares_ea_spec",
    "load_trials",
    "make_tuning_env",
    "make_vec",
    "register_task",
    "resolve_task",
    "sample_trials",
    "task_segment",
]
