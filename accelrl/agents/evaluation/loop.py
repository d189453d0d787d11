"""The one rollout loop of the package: optimisers on trials in a native vector environment.

:func:`run_trials` runs an :class:`~accelrl.protocol.Optimiser` on trials of a
transverse-tuning task, records every step and returns one record per trial. Every rollout
in accelrl goes through it: ``accelrl evaluate``, the periodic evaluation during training,
``accelrl render`` and ``accelrl demo``, and BO sessions on the simulated machine.

Protocol of a trial (the published ARES-EA evaluation; Kaiser, Xu, Eichler et al., Sci. Rep.
14, 2024):

1. The environment is reset with ``seed=trial_seed(seed, trial.index)`` (``seed +
   trial.index``) and ``options={"trial": trial}``: the trial's incoming beam, misalignments
   and target, and the task's standard start settings; ``"direct"`` actions, termination
   disabled.
2. The optimiser is reset with the :class:`~accelrl.protocol.Problem` (actuator names and
   limits, start settings, target, ``max_delta`` = the delta-mode bound ``delta_fraction *
   max(|low|, |high|)``, the step budget and the same trial seed).
3. For ``max_steps`` steps the optimiser is asked for the next absolute settings given the
   latest :class:`~accelrl.protocol.Observation` (the screen reading, float64); the answer is
   timed, checked (shape ``[K]``, finite), clipped to the limits and applied.
4. Every step is recorded (step 0 = after the reset): settings, true beam, reading, target,
   MAE of the true beam (``info["mae"]``), reward, beam on screen, whether the answer was
   clipped, and the wall time of ``ask``.

An optimiser that raises, or answers NaN/inf or a wrong shape, fails *that trial*: the error
is recorded and the trial ends there (the machine keeps its last settings, so its metrics
come from the steps it ran). Errors of the simulation itself propagate.

**Vectorised path.** A :class:`~accelrl.protocol.BatchOptimiser` (a trained policy,
do-nothing, random steps) answers for all trials at once and the trials step together in
one vector environment of ``len(trials)`` environments; any other optimiser runs the trials
one after the other (one instance, reset for each) in a vector environment of one, which is
exactly a single environment. Environment ``i`` of a vector environment follows the single
environment to floating-point rounding (~1e-14 relative; see
:mod:`accelrl.envs.vector`). For a batch, ``ask_time_s`` is the batch's answer time shared
equally between the trials that asked.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from accelrl.protocol import BatchOptimiser, ObservationBatch, Optimiser, Problem

if TYPE_CHECKING:
    from accelrl.envs import TransverseTuningVectorEnv, Trial
    from accelrl.envs.world import WorldSpec

#: ``(trial index, step, info of that trial)``: called after every recorded step.
StepHook = Callable[[int, int, Mapping[str, Any]], None]


#: How a trial's seed follows from the run's base seed (recorded in every run's config).
TRIAL_SEED_RULE = "seed + trial.index"


def trial_seed(seed: int, index: int) -> int:
    """Seed of trial ``index`` in a run with base ``seed`` (environment reset and
    ``Problem.seed``): :data:`TRIAL_SEED_RULE`."""
    return int(seed) + int(index)


#: Evaluation environments of this process, per thread (an executor may run tasks in
#: threads: a Dask worker with several threads, a ThreadPoolExecutor).
_ENVS = threading.local()


def evaluation_env(
    env_id: str,
    backend: str,
    num_envs: int,
    max_steps: int,
    world: WorldSpec | None = None,
) -> TransverseTuningVectorEnv:
    """This thread's vector environment of task ``env_id`` for evaluation (``"direct"``
    actions, termination disabled, ``num_envs`` environments, truncation after
    ``max_steps``) on ``backend`` in ``world``; built once, every batch resets it fully.

    :param env_id: A registered id or the path of a task YAML.
    :param world: The world between the optimiser and the beam
        (:class:`~accelrl.envs.world.WorldSpec`); ``None``: the task spec's own world
        (``ideal`` for the shipped tasks).
    :raises ValueError: For an unregistered ``env_id``, or a world that does not fit the
        task (:class:`~accelrl.envs.world.WorldError`).
    """
    cache: dict[tuple[str, str, int, int, str], TransverseTuningVectorEnv] = (
        getattr(_ENVS, "envs", None) or {}
    )
    _ENVS.envs = cache
    wkey = "" if world is None else world.model_dump_json()
    key = (env_id, backend, int(num_envs), int(max_steps), wkey)
    if key not in cache:
        from accelrl.envs import TransverseTuningVectorEnv, resolve_task

        task = resolve_task(env_id)
        cache[key] = TransverseTuningVectorEnv(
            task.spec,
            num_envs,
            segment=task.segment,
            max_episode_steps=max_steps,
            backend=backend,
            action_mode="direct",
            terminate_on_target=False,
            world=world,
        )
    return cache[key]


def needs_to_trial(world: WorldSpec | None) -> bool:
    """Whether ``world`` changes the incoming beam to another trial's (an
    :class:`~accelrl.envs.world.IncomingChange` with ``to: other``), so that a trial's reset
    takes the beam it changes to (``to_trial``)."""
    from accelrl.envs.world import IncomingChange

    return world is not None and any(
        isinstance(s, IncomingChange) and s.to == "other" for s in world.scenarios
    )


def trial_problem(
    env: TransverseTuningVectorEnv, info: Mapping[str, Any], i: int, max_steps: int, seed: int
) -> Problem:
    """The :class:`~accelrl.protocol.Problem` of trial ``i`` of a batch just reset.

    :param env: An evaluation environment (:func:`evaluation_env`).
    :param info: The ``info`` of the reset (start settings ``"magnets"``, ``"target"``).
    :param i: The trial's position in the batch.
    :param max_steps: Step budget of the trial.
    :param seed: The trial's seed (:func:`trial_seed`).
    """
    low, high = env.core.low, env.core.high
    return Problem(
        actuator_names=tuple(a.name for a in env.task.actuators),
        low=low.copy(),
        high=high.copy(),
        start=np.array(info["magnets"][i], dtype=np.float64),
        target=np.array(info["target"][i], dtype=np.float64),
        max_delta=env.task.delta_fraction * np.maximum(np.abs(low), np.abs(high)),
        max_steps=max_steps,
        seed=seed,
    )


def describe_error(err: BaseException) -> str:
    """``Type: message (at file:line)`` of the innermost frame of ``err``."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def settings_problem(value: Any, names: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    """``(settings, None)`` for a valid answer ``[K]``, else ``(None, what is wrong)``."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return None, f"settings that are not numbers ({type(value).__name__}: {err})"
    if a.shape != (len(names),):
        return None, f"settings of shape {a.shape}, expected ({len(names)},) for {list(names)}"
    bad = ~np.isfinite(a)
    if bad.any():
        parts = ", ".join(f"{n}={a[i]}" for i, n in enumerate(names) if bad[i])
        return None, f"non-finite settings ({parts})"
    return a, None


class _Episodes:
    """Per-step buffers of a batch of trials (step 0 = after the reset)."""

    def __init__(self, n: int, k: int, max_steps: int) -> None:
        m = max_steps + 1
        self.settings, self.beam = np.empty((n, m, k)), np.empty((n, m, 4))
        self.reading, self.mae = np.empty((n, m, 4)), np.empty((n, m))
        self.reward, self.ask_time = np.full((n, m), np.nan), np.full((n, m), np.nan)
        self.on_screen, self.clipped = np.zeros((n, m), bool), np.zeros((n, m), bool)
        self.steps = np.zeros(n, dtype=np.int64)

    def record(self, rows: np.ndarray, s: int, info: Mapping[str, Any]) -> None:
        self.settings[rows, s], self.beam[rows, s] = info["magnets"][rows], info["beam"][rows]
        self.reading[rows, s], self.mae[rows, s] = info["reading"][rows], info["mae"][rows]
        self.on_screen[rows, s] = info["on_screen"][rows]
        self.steps[rows] = s

    def trial(self, i: int) -> dict[str, np.ndarray]:
        m = int(self.steps[i]) + 1
        return {
            "settings": self.settings[i, :m],
            "beam": self.beam[i, :m],
            "reading": self.reading[i, :m],
            "mae": self.mae[i, :m],
            "reward": self.reward[i, :m],
            "on_screen": self.on_screen[i, :m],
            "clipped": self.clipped[i, :m],
            "ask_time_s": self.ask_time[i, :m],
        }


def _observations(info: Mapping[str, Any], target: np.ndarray, step: int) -> ObservationBatch:
    return ObservationBatch(
        beam=np.array(info["reading"], dtype=np.float64),
        magnets=np.array(info["magnets"], dtype=np.float64),
        target=target.copy(),
        on_screen=np.array(info["on_screen"], dtype=bool),
        step=step,
    )


def _ask(
    optimiser: Optimiser, batched: bool, obs: ObservationBatch, active: np.ndarray
) -> tuple[list[Any], list[str | None], float]:
    """Answers of the active trials, the error of each (``None``: answered) and the time."""
    n = len(obs)
    answers: list[Any] = [None] * n
    errors: list[str | None] = [None] * n
    start = time.perf_counter()
    try:
        if batched:
            out = np.asarray(optimiser.ask_batch(obs))  # type: ignore[attr-defined]
            if out.ndim != 2 or out.shape[0] != n:
                raise ValueError(f"ask_batch returned shape {out.shape}, expected ({n}, K)")
            answers = list(out)
        else:
            (i,) = np.flatnonzero(active)
            answers[i] = optimiser.ask(obs.row(int(i)))
    except Exception as err:  # an optimiser's failure ends its trials, not the run
        errors = [f"ask() at step {obs.step + 1} raised {describe_error(err)}"] * n
    return answers, errors, time.perf_counter() - start


def run_trials(
    env: TransverseTuningVectorEnv,
    optimiser: Optimiser,
    trials: Sequence[Trial],
    max_steps: int,
    seed: int,
    on_step: StepHook | None = None,
    to_trials: Mapping[int, Trial] | None = None,
) -> list[dict[str, Any]]:
    """Run ``optimiser`` on ``trials`` under the protocol (see the module documentation).

    :param env: An evaluation environment of ``len(trials)`` environments for a
        :class:`~accelrl.protocol.BatchOptimiser`, else of one (:func:`evaluation_env`).
    :param optimiser: The optimiser (one instance; reset for every trial).
    :param trials: The trials.
    :param max_steps: Steps per trial.
    :param seed: Base seed; trial ``t`` uses ``trial_seed(seed, t.index)``.
    :param on_step: Called with ``(trial index, step, info)`` after every recorded step.
    :param to_trials: Trial index -> the trial whose incoming beam the world's beam change
        goes to (reset option ``"to_trial"``; for worlds with an incoming-beam change to
        another beam, see :func:`needs_to_trial`); ``None``: no such option.
    :return: One record per trial: ``trial``, ``seed``, ``target``, the per-step arrays of
        the steps that ran (``settings, beam, reading, mae, reward, on_screen, clipped,
        ask_time_s``), ``error`` (``None`` when none), ``reset_time_s`` and ``wall_s``.
    :raises ValueError: If the environment's size does not fit the optimiser.
    """
    batched = isinstance(optimiser, BatchOptimiser)
    groups = [list(trials)] if batched else [[t] for t in trials]
    if env.num_envs != len(groups[0]):
        raise ValueError(
            f"the environment has {env.num_envs} environments; this optimiser runs "
            f"{len(groups[0])} trial(s) at a time"
        )
    out: list[dict[str, Any]] = []
    for group in groups:
        out += _run_group(env, optimiser, batched, group, max_steps, seed, on_step, to_trials)
    return out


def _run_group(
    env: TransverseTuningVectorEnv,
    optimiser: Optimiser,
    batched: bool,
    trials: Sequence[Trial],
    max_steps: int,
    seed: int,
    on_step: StepHook | None,
    to_trials: Mapping[int, Trial] | None = None,
) -> list[dict[str, Any]]:
    """The trials of one vector environment, stepped together."""
    start = time.perf_counter()
    n, names = len(trials), [a.name for a in env.task.actuators]
    low, high = env.core.low, env.core.high
    seeds = [trial_seed(seed, t.index) for t in trials]
    options: dict[str, Any] = {"trial": list(trials)}
    if to_trials is not None:
        options["to_trial"] = [to_trials[int(t.index)] for t in trials]
    _, info = env.reset(seed=seeds, options=options)
    target = np.array(info["target"], dtype=np.float64)
    problems = [trial_problem(env, info, i, max_steps, seeds[i]) for i in range(n)]
    ep = _Episodes(n, len(names), max_steps)
    every = np.arange(n)
    ep.record(every, 0, info)
    errors: list[str | None] = [None] * n
    own_time = np.zeros(n)  # ask and reset time of each trial, plus its share of env steps
    t = time.perf_counter()
    try:
        if batched:
            optimiser.reset_batch(problems)  # type: ignore[attr-defined]
        else:
            optimiser.reset(problems[0])
    except Exception as err:  # an optimiser's failure ends its trials, not the run
        errors = [f"reset() raised {describe_error(err)}"] * n
    reset_time = (time.perf_counter() - t) / n
    own_time += reset_time
    if on_step is not None:
        for i in every:
            on_step(int(trials[i].index), 0, {k: v[i] for k, v in info.items()})
    settings = np.array(info["magnets"], dtype=np.float64)
    for s in range(1, max_steps + 1):
        active = np.array([e is None for e in errors])
        if not active.any():
            break
        answers, ask_errors, elapsed = _ask(
            optimiser, batched, _observations(info, target, s - 1), active
        )
        asked = np.flatnonzero(active)
        for i in asked:
            if ask_errors[i] is not None:
                errors[i] = ask_errors[i]
                continue
            value, problem = settings_problem(answers[i], names)
            if value is None:
                errors[i] = f"ask() at step {s} returned {problem}"
                continue
            applied = np.minimum(np.maximum(value, low), high)
            ep.clipped[i, s] = bool(np.any(applied != value))
            settings[i] = applied
        stepped = np.array([e is None for e in errors])
        ep.ask_time[stepped, s] = elapsed / len(asked)
        own_time[asked] += elapsed / len(asked)
        if not stepped.any():
            break
        t = time.perf_counter()
        _, reward, _, _, info = env.step(settings)  # failed trials hold their settings
        own_time[stepped] += (time.perf_counter() - t) / int(stepped.sum())
        rows = np.flatnonzero(stepped)
        ep.record(rows, s, info)
        ep.reward[rows, s] = reward[rows]
        if on_step is not None:
            for i in rows:
                on_step(int(trials[i].index), s, {k: v[i] for k, v in info.items()})
    wall = time.perf_counter() - start
    return [
        {
            "trial": int(trial.index),
            "seed": seeds[i],
            "target": target[i],
            **ep.trial(i),
            "error": errors[i],
            "reset_time_s": reset_time,
            "wall_s": float(own_time[i]) if n > 1 else wall,
        }
        for i, trial in enumerate(trials)
    ]
