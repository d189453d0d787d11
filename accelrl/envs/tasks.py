"""The task registry: transverse-tuning tasks by id, shipped and your own.

:func:`register_task` adds a task (a :class:`~accelrl.envs.spec.TaskSpec`, or the path of
a task YAML whose ``lattice:`` names a lattice file) under its ``id``, so that
``gym.make(id)``, :func:`accelrl.envs.make_vec`, evaluation (``accelrl evaluate --env``)
and training work on it; :func:`resolve_task` turns an id or a task-YAML path into the
registered task; :func:`sample_trials` draws evaluation trials from a task's randomisation.

>>> import gymnasium as gym, accelrl
>>> env_id = accelrl.envs.register_task("envs/fodo_task.yaml")  # doctest: +SKIP
>>> env = gym.make(env_id)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import cheetah
import gymnasium as gym
import numpy as np

from accelrl.envs.ares_ea import ENV_ID as ARES_EA_ID
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.spec import TaskSpec
from accelrl.envs.trials import Trial
from accelrl.resources import resolve

__all__ = ["SEGMENTS", "TASKS", "RegisteredTask", "register_task", "resolve_task", "sample_trials"]

#: Registered environment id -> its task spec.
TASKS: dict[str, Callable[[], TaskSpec]] = {ARES_EA_ID: ares_ea_spec}

#: Registered id -> the Cheetah segment given to :func:`register_task` (tasks whose spec
#: names its lattice are absent).
SEGMENTS: dict[str, cheetah.Segment] = {}

#: Task-YAML path (resolved) -> the id it was registered under.
_FILES: dict[Path, str] = {}


class RegisteredTask(NamedTuple):
    """A registered task: its id, spec and segment (``None``: the spec's lattice)."""

    id: str
    spec: TaskSpec
    segment: cheetah.Segment | None


def _is_task_file(ref: str | Path) -> bool:
    return Path(ref).suffix.lower() in (".yaml", ".yml")


def register_task(
    spec: TaskSpec | str | Path, segment: cheetah.Segment | None = None, check: bool = True
) -> str:
    """Register a transverse-tuning task with Gymnasium and accelrl; return its id.

    Registering the same id again replaces the earlier registration (the shipped ids cannot
    be replaced).

    :param spec: A task spec, or the path of its YAML (its ``lattice:`` may name a lattice
        file relative to the YAML); ``envs/...`` names the shipped file when there is no such
        file in the working folder (``envs/fodo_task.yaml``).
    :param segment: The lattice (default: the spec's ``lattice``).
    :param check: Build the task's beamline once now, so a bad lattice, knob or screen fails
        here rather than at ``gym.make``.
    :raises ValueError: (``SpecError``, ``LatticeFileError``) naming the file, field and value.
    """
    from accelrl.envs.tuning import build_core
    from accelrl.registration import CODE_ENVIRONMENTS, ENVIRONMENTS

    path = None
    if not isinstance(spec, TaskSpec):
        path = resolve(spec).resolve()
        spec = TaskSpec.from_yaml(path)
    if spec.id in ENVIRONMENTS or spec.id in CODE_ENVIRONMENTS:
        raise ValueError(f"id {spec.id!r} is a shipped task; give your task another id")
    if check:
        build_core(spec, 1, segment)
    TASKS[spec.id] = lambda spec=spec: spec
    if segment is not None:
        SEGMENTS[spec.id] = segment
    else:
        SEGMENTS.pop(spec.id, None)
    if path is not None:
        _FILES[path] = spec.id
    gym.registry.pop(spec.id, None)
    gym.register(
        id=spec.id,
        entry_point="accelrl.envs.tuning:TransverseTuningEnv",
        vector_entry_point="accelrl.envs:vector_entry_point",
        max_episode_steps=spec.max_episode_steps,
        kwargs={"spec": spec, "segment": segment},
    )
    return spec.id


def resolve_task(ref: str | Path) -> RegisteredTask:
    """The registered task of an id, or of a task YAML (registered on first use).

    :raises ValueError: For an id that is not registered, naming the registered ones.
    """
    if _is_task_file(ref) and (isinstance(ref, Path) or str(ref) not in TASKS):
        path = resolve(ref).resolve()
        env_id = _FILES.get(path) or register_task(path)
        return RegisteredTask(env_id, TASKS[env_id](), SEGMENTS.get(env_id))
    env_id = str(ref)
    if env_id not in TASKS:
        raise ValueError(
            f"unknown environment {env_id!r}; registered: {sorted(TASKS)} (or give the path "
            "of a task YAML)"
        )
    return RegisteredTask(env_id, TASKS[env_id](), SEGMENTS.get(env_id))


def sample_trials(ref: str | Path, n: int, seed: int = 0) -> list[Trial]:
    """``n`` evaluation trials drawn from a task's randomisation (incoming beam,
    misalignments, target), trial ``i`` from a reset with seed ``seed + i``: reproducible,
    and what a published trial set is for a task that has none.

    :param ref: A registered id or a task-YAML path.
    :param n: Number of trials (>= 1).
    :param seed: Seed of the first trial.
    """
    from accelrl.envs.tuning import TransverseTuningEnv

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    task = resolve_task(ref)
    env = TransverseTuningEnv(task.spec, segment=task.segment)
    names = env.core.misalignment_names
    trials = []
    for i in range(n):
        _, info = env.reset(seed=seed + i)
        mis = np.asarray(info["misalignments"], dtype=np.float64)
        trials.append(
            Trial(
                i,
                np.asarray(info["incoming"], dtype=np.float64),
                {name: float(v) for name, v in zip(names, mis, strict=True)},
                np.asarray(info["target"], dtype=np.float64),
            )
        )
    return trials
