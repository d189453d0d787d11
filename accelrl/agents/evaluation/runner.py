"""Evaluate optimisers on a trial set: :func:`evaluate` and :func:`evaluate_many`.

The protocol of each trial is that of :mod:`accelrl.agents.evaluation.loop` (the published
ARES-EA evaluation; Kaiser, Xu, Eichler et al., Sci. Rep. 14, 2024).

Trials are split into fixed chunks (``chunk_size``, set from the number of trials only) and
the chunks run in parallel through a :class:`concurrent.futures.Executor`: a local process
pool (default, one torch/BLAS thread per worker), in-process (``"serial"``), Dask
(``"dask"``: a local cluster, or the scheduler at ``dask_address``) or any executor you
pass. One optimiser instance serves the trials of one chunk: reset for each trial, or for
all of them at once when it is a :class:`~accelrl.protocol.BatchOptimiser` (the chunk then
steps as one vector environment). An optimiser must take all of a trial's randomness from
``Problem.seed``; then every executor gives identical records (timings aside).

With ``out=``, every finished chunk is written to ``out/parts/`` at once
(:mod:`~accelrl.agents.evaluation.store`) and the result to ``out`` at the end. Ctrl-C or
SIGTERM stops the run, ends the pool's workers and writes the finished trials as a partial
result (``config["status"] == "partial"``) before :class:`EvaluationInterrupted` is raised;
``resume=True`` continues it, running only the missing chunks, and gives the result an
uninterrupted run gives (timings aside). An ``out`` that holds files is refused unless
``resume`` or ``force`` (replace: the earlier run's files, figures included, are removed).

On a SLURM cluster, start a ``dask_jobqueue.SLURMCluster`` (``[cluster]`` extra), scale it,
and pass ``dask_address=cluster.scheduler_address`` (or ``executor=client.get_executor()``);
the workers need accelrl installed and the optimiser factories importable.

>>> from accelrl.agents.evaluation import evaluate
>>> result = evaluate("nelder-mead", trials=None, executor="process")  # doctest: +SKIP
>>> result.summary_json()["nelder-mead"]["sigma_pos"]["median_best_mae_um"]  # doctest: +SKIP

Its size (~590 lines) is mostly :func:`evaluate_many` (~260 lines, a quarter of them its
docstring): the plan, the chunk jobs, the part files and the partial or resumed result are the
state of one run.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import pickle
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from accelrl.agents.evaluation.loop import (
    TRIAL_SEED_RULE,
    StepHook,
    evaluation_env,
    needs_to_trial,
    run_trials,
)
from accelrl.agents.evaluation.result import (
    FORMAT_VERSION,
    OUTPUT_FILES,
    EvaluationResult,
    records_table,
    summarise_trials,
    trials_table,
)
from accelrl.agents.evaluation.store import ChunkTables, EvaluationStore
from accelrl.agents.evaluation.trialset import chunk_trials, resolve_trials, trials_digest
from accelrl.execution import (
    ExecutorArg,
    executor_scope,
    git_state,
    one_thread,
    package_versions,
)
from accelrl.interrupts import (
    deferred_interrupts,
    interrupt_on_sigterm,
    pool_initializer,
    stop_process_pool,
)
from accelrl.names import ARES_EA_ID
from accelrl.progress import progress_bar
from accelrl.protocol import BatchOptimiser, Optimiser

if TYPE_CHECKING:
    from accelrl.envs import Trial
    from accelrl.envs.world import WorldSpec

#: Default task.
DEFAULT_ENV_ID = ARES_EA_ID

#: Trials drawn from a task's randomisation when it has no trial set (``trials=None``).
SAMPLED_TRIALS = 100
#: Episode length of the published evaluation [steps].
DEFAULT_MAX_STEPS = 150
#: Distributions whose versions every run records.
_VERSIONED = ("accelrl", "torch", "numpy", "cheetah-accelerator", "gymnasium", "pyarrow", "scipy")

#: A picklable zero-argument callable returning a fresh optimiser.
MakeOptimiser = Callable[[], Optimiser]


class EvaluationInterrupted(KeyboardInterrupt):
    """An evaluation stopped by Ctrl-C or SIGTERM.

    :param result: The finished trials as a partial result (``config["status"] ==
        "partial"``), or ``None`` when no chunk had finished.
    :param out: Where it was written (``None`` without ``out=``).
    """

    def __init__(self, result: EvaluationResult | None, out: Path | None) -> None:
        done = 0 if result is None else result.trials.num_rows
        super().__init__(f"evaluation interrupted; {done} finished trial(s) kept")
        self.result = result
        self.out = out


# --------------------------------------------------------------------------- optimiser specs
@dataclass(frozen=True)
class _Entry:
    label: str  # key in the results (spec string, or the optimiser's name)
    factory: MakeOptimiser
    spec: str  # the spec string, or the factory's repr
    name: str  # optimiser.name
    batched: bool  # the optimiser is a BatchOptimiser


def _check_optimiser(obj: Any, origin: str) -> str:
    for attr in ("reset", "ask"):
        if not callable(getattr(obj, attr, None)):
            raise TypeError(f"{origin} returned {obj!r}, which has no {attr}() method")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{origin} returned {obj!r}, whose `name` is not a non-empty string")
    return name


def _factory_text(factory: Any) -> str:
    """``module.QualName`` of a class or function, else its repr."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(factory)


def _entries(optimisers: Sequence[str | MakeOptimiser] | Mapping[str, Any]) -> list[_Entry]:
    """Labels and factories; every factory is called once here to fail early and get names."""
    if isinstance(optimisers, str) or callable(optimisers):
        optimisers = [optimisers]
    items = (
        list(optimisers.items())
        if isinstance(optimisers, Mapping)
        else [(None, o) for o in optimisers]
    )
    if not items:
        raise ValueError("no optimiser to evaluate")
    out: list[_Entry] = []
    for label, spec in items:
        if isinstance(spec, str):
            from accelrl.agents.registry import OptimiserFactory

            factory: MakeOptimiser = OptimiserFactory(spec)
            text = spec
        elif callable(spec):
            factory, text = spec, _factory_text(spec)
        else:
            raise TypeError(
                f"an optimiser must be a spec string or a zero-argument factory, got {spec!r}"
            )
        probe = factory()
        name = _check_optimiser(probe, f"optimiser {text!r}")
        batched = isinstance(probe, BatchOptimiser)
        close = getattr(probe, "close", None)
        if callable(close):
            close()
        label = label or (spec if isinstance(spec, str) else name)
        out.append(_Entry(label, factory, text, name, batched))
    labels = [e.label for e in out]
    for i, e in enumerate(out):  # same names: "x", "x#2", ...
        if labels.count(e.label) > 1:
            k = labels[:i].count(e.label) + 1
            if k > 1:
                out[i] = _Entry(f"{e.label}#{k}", e.factory, e.spec, e.name, e.batched)
    return out


# --------------------------------------------------------------------------- worker side
def _run_chunk(
    factory: MakeOptimiser,
    batched: bool,
    trials: Sequence[Trial],
    max_steps: int,
    backend: str,
    seed: int,
    env_id: str,
    world: WorldSpec | None = None,
    to_trials: Mapping[int, Trial] | None = None,
    on_step: StepHook | None = None,
) -> list[dict[str, Any]]:
    """Worker task: one optimiser instance for the trials of the chunk."""
    env = evaluation_env(env_id, backend, len(trials) if batched else 1, max_steps, world)
    optimiser = factory()
    try:
        return run_trials(env, optimiser, trials, max_steps, seed, on_step, to_trials)
    finally:
        close = getattr(optimiser, "close", None)
        if callable(close):
            close()


# --------------------------------------------------------------------------- world
def resolve_world(
    world: str | Path | WorldSpec | Mapping[str, Any] | None,
    spec: Any,
    max_steps: int,
    seed: int,
) -> tuple[WorldSpec | None, dict[str, Any]]:
    """The world of an evaluation, checked against the task, and its record for the run's
    config: ``name``, ``source`` (file(s) or name), ``ideal`` (changes nothing), ``seed``
    (the run's base seed: the world's draws of trial ``t`` use the trial seed
    :data:`~accelrl.agents.evaluation.loop.TRIAL_SEED_RULE`), ``seed_rule`` and ``spec``
    (every value of the world).

    :param world: See :func:`evaluate_many`.
    :param spec: The task spec (:class:`~accelrl.envs.spec.TaskSpec`).
    :param max_steps: Steps per trial; a scenario must happen within them.
    :param seed: The run's base seed.
    :return: ``(world or None for the task's own world, record)``.
    :raises ValueError: (:class:`~accelrl.envs.world.WorldError`) For an unknown name, a
        missing or invalid file, or a world that does not fit the task, naming the file,
        the field and the value.
    """
    from accelrl.envs.world import WorldSpec as _WorldSpec
    from accelrl.envs.world import load_world

    if world is None:
        resolved = spec.world if spec.world is not None else load_world(None)
        out: _WorldSpec | None = None
    else:
        resolved = world if isinstance(world, _WorldSpec) else load_world(world)
        resolved.check(spec, max_steps)
        out = resolved
    entry = {
        "name": resolved.name or "ideal",
        "source": resolved.source,
        "ideal": resolved.is_ideal,
        "seed": int(seed),
        "seed_rule": TRIAL_SEED_RULE,
        "spec": resolved.model_dump(mode="json"),
    }
    return out, entry


# --------------------------------------------------------------------------- provenance
def _git() -> dict[str, Any]:
    """Commit of the accelrl checkout (and whether tracked files differ), if it is one."""
    state = git_state()
    if state is None:
        return {"commit": None, "dirty": None}
    commit, dirty = state
    return {"commit": commit or None, "dirty": dirty}


# --------------------------------------------------------------------------- entry points
def evaluate_many(
    optimisers: Sequence[str | MakeOptimiser] | Mapping[str, str | MakeOptimiser],
    trials: Sequence[Trial] | str | Path | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    backend: str = "fast",
    seed: int = 0,
    executor: ExecutorArg = None,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = True,
    *,
    env_id: str = DEFAULT_ENV_ID,
    chunk_size: int | None = None,
    limit: int | None = None,
    on_step: StepHook | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    world: str | Path | WorldSpec | Mapping[str, Any] | None = None,
    reachability: bool = True,
    protocol: str | None = None,
) -> EvaluationResult:
    """Evaluate several optimisers on the same trials, as one comparative result.

    :param optimisers: Spec strings (``"nelder-mead"``, ``"policy:PATH"``, ... resolved by
        :func:`accelrl.agents.registry.make_optimiser` in each worker) and/or picklable
        zero-argument factories returning an :class:`~accelrl.protocol.Optimiser`;
        or a mapping ``label -> spec or factory``. Labels default to the spec string, or the
        optimiser's ``name`` for factories (repeats get ``#2``, ``#3``). Each factory is
        called once up front, in this process, to fail early and read the name.
    :param trials: Trials, a trial-set YAML path, or ``None``: the 300 published ARES-EA
        trials for ARES-EA, :data:`SAMPLED_TRIALS` trials drawn from the task's
        randomisation (:func:`accelrl.envs.sample_trials`, seeds ``seed``, ``seed + 1``,
        ...) for any other task. Trial indices must be unique.
    :param max_steps: Steps per trial (default 150, as published).
    :param backend: ``"fast"`` (compiled map), ``"cheetah"`` or ``"cheetah-particles"``.
    :param seed: Base seed (>= 0); trial ``t`` uses
        :func:`~accelrl.agents.evaluation.loop.trial_seed`.
    :param executor: ``None``/``"process"`` (local process pool, default), ``"serial"``
        (in-process), ``"dask"`` (``dask.distributed``: a ``LocalCluster`` with ``workers``
        single-threaded workers, or the scheduler at ``dask_address``; needs the
        ``[cluster]`` extra) or any :class:`concurrent.futures.Executor` (not shut down;
        it must be able to import accelrl and pickle the factories).
    :param workers: Workers of the pool or local Dask cluster (default: CPU count).
    :param dask_address: Scheduler address, e.g. ``"tcp://10.0.0.1:8786"``; implies
        ``executor="dask"``.
    :param progress: Show a progress bar (rich, on stderr) over trials.
    :param env_id: Registered task (default ARES-EA), or the path of a task YAML
        (registered on first use, also in every worker).
    :param chunk_size: Trials per task (default ``ceil(N / 64)``); one optimiser instance
        serves a chunk. Fixed by the trial list, so results do not depend on the executor.
    :param limit: Evaluate only the first ``limit`` trials (the source stays recorded).
    :param on_step: Called with ``(trial index, step, info)`` after every recorded step of
        every trial (``executor="serial"`` only), e.g. for a live display.
    :param out: Output folder: each finished chunk is written there as it finishes, the
        result at the end (:meth:`EvaluationResult.save`), a partial result on an interrupt.
    :param resume: Continue the evaluation in ``out`` (same settings required), running
        only the chunks it does not hold.
    :param force: Replace what ``out`` holds (the earlier run's files are removed first).
    :param world: The world between the optimisers and the beam (:mod:`accelrl.envs.world`):
        a shipped preset (``"ideal"``, ``"ares-realistic"``, ``"harsh"``), a preset with
        scenario overlays (``"ares-realistic+q3-failure"``), a YAML path, a mapping or a
        :class:`~accelrl.envs.world.WorldSpec`; ``None`` (default): the task spec's world
        (``ideal`` for the shipped tasks). ``"ideal"`` gives exactly the records of ``None``.
        The world's randomness (magnet errors, noise, drift, failures) follows the trial
        seed, like the rest of the trial. In a world whose incoming beam changes to another
        (``beam-animation``, ``beam-switch``), trial ``k`` of the evaluated list changes to
        the beam of trial ``k + 1`` (the last to the first's): on the published 300 trials,
        the published rule ``(i + 1) % 300``. Recorded in ``config["world"]``.
    :param reachability: Give the result each trial's model optimum for the ``reachable``
        target class of its breakdown (:mod:`~accelrl.agents.evaluation.classes`; ~0.3 s
        per trial, solved when the breakdown is first needed, e.g. by ``out=``, once per
        trial set and process); ``False`` leaves that class out.
    :raises ValueError: For invalid arguments, an ``out`` that holds files without
        ``resume``/``force``, or one whose evaluation differs from this one when resuming;
        errors of the simulation or of an optimiser factory propagate; errors of
        ``reset``/``ask`` fail only their trial.
    :raises EvaluationInterrupted: On Ctrl-C or SIGTERM, after the finished trials were
        kept (and written, with ``out``).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    from accelrl.envs import resolve_task, sample_trials
    from accelrl.physics import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if on_step is not None and executor != "serial":
        raise ValueError("on_step needs executor='serial' (it runs in this process)")
    protocol_name = None
    if protocol is not None:
        from accelrl.agents.evaluation.protocols import protocol as get_protocol

        chosen = get_protocol(protocol)
        if trials is not None:
            raise ValueError(f"give either trials or protocol={protocol!r}, not both")
        if env_id != chosen.env_id:
            raise ValueError(f"protocol {protocol!r} is for {chosen.env_id}, not {env_id}")
        protocol_name = chosen.name
        if chosen.name != "published":
            trials = chosen.trials()
    task = resolve_task(env_id)
    spec = task.spec
    sampled = trials is None and task.id != DEFAULT_ENV_ID
    if sampled:  # a task without a published trial set: trials from its randomisation
        trials = sample_trials(env_id, SAMPLED_TRIALS, seed)
    trial_list, trial_source = resolve_trials(trials, limit)
    if sampled:
        trial_source.update(
            source=f"sampled: {SAMPLED_TRIALS} trials of {task.id}'s randomisation, seeds "
            f"{seed}..{seed + SAMPLED_TRIALS - 1}",
        )
    if protocol_name is not None:
        trial_source["protocol"] = protocol_name
    world_spec, world_entry = resolve_world(world, spec, max_steps, seed)
    to_trials = (
        {int(t.index): trial_list[(k + 1) % len(trial_list)] for k, t in enumerate(trial_list)}
        if needs_to_trial(world_spec)
        else None
    )
    entries = _entries(optimisers)
    chunks = chunk_trials(trial_list, chunk_size)
    keys = ("name", "element", "attribute", "unit", "low", "high")
    actuators = [{k: getattr(a, k) for k in keys} for a in spec.actuators]
    plan = {
        "format_version": FORMAT_VERSION,
        "env_id": task.id,
        "backend": backend,
        "max_steps": max_steps,
        "seed": seed,
        "trial_seed": TRIAL_SEED_RULE,
        "optimisers": [{"label": e.label, "spec": e.spec, "name": e.name} for e in entries],
        "trials": {
            "content_sha256": trials_digest(trial_list),
            "indices": trial_source["indices"],
        },
        "chunk_size": len(chunks[0]),
        "world": world_entry,
    }
    if protocol_name is not None:
        plan["protocol"] = protocol_name
    order = [(i, j) for i in range(len(entries)) for j in range(len(chunks))]
    local = executor in (None, "process") and dask_address is None  # a pool started here
    if local:  # checked before anything is written
        for e in entries:
            try:
                pickle.dumps(e.factory)
            except Exception as err:
                raise TypeError(
                    f"optimiser {e.spec} cannot be pickled for a process pool ({err}); use "
                    "a spec string, a module-level class/function or functools.partial, "
                    "or executor='serial'"
                ) from err
    store: EvaluationStore | None = None
    done: dict[tuple[int, int], ChunkTables] = {}
    if out is not None:
        from accelrl.runs import prepare_output

        mode = prepare_output(out, resume=resume, force=force, owned=OUTPUT_FILES)
        store = EvaluationStore(out, plan, resume=mode == "resume")
        done = store.finished(order)
    elif resume or force:
        raise ValueError("resume and force need out=")
    n_loaded = len(done)

    def finish(i: int, j: int, records: list[dict[str, Any]]) -> None:
        e = entries[i]
        tables = ChunkTables(
            records_table([(e.label, records)], actuators),
            trials_table([(e.label, e.name, records)]),
        )
        with deferred_interrupts():  # written and recorded, or neither
            if store is not None:
                store.write(i, j, tables)
            done[i, j] = tables

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    initializer = pool_initializer(one_thread) if local else one_thread
    interrupted: KeyboardInterrupt | None = None
    with (
        interrupt_on_sigterm(),
        executor_scope(executor, workers, dask_address, initializer) as (pool, kind, n_workers),
    ):
        args = (max_steps, backend, seed, env_id, world_spec, to_trials)
        jobs = [
            (i, j, (entries[i].factory, entries[i].batched, chunks[j]))
            for i, j in order
            if (i, j) not in done
        ]
        # Submit before the progress bar starts its thread (a fork-started pool forks here).
        futures = (
            {}
            if pool is None
            else {pool.submit(_run_chunk, *job, *args): (i, j) for i, j, job in jobs}
        )
        with progress_bar(middle=["trials"], transient=True, enabled=progress) as bar:
            tasks = [bar.add_task(f"{e.label} ({kind})", total=len(trial_list)) for e in entries]
            for i, j in done:
                bar.advance(tasks[i], len(chunks[j]))
            try:
                if pool is None:
                    for i, j, job in jobs:
                        finish(i, j, _run_chunk(*job, *args, on_step=on_step))
                        bar.advance(tasks[i], len(chunks[j]))
                else:
                    for fut in cf.as_completed(futures):
                        i, j = futures[fut]
                        finish(i, j, fut.result())
                        bar.advance(tasks[i], len(chunks[j]))
            except KeyboardInterrupt as err:
                interrupted = err
                if local:
                    stop_process_pool(pool)
                else:  # not a pool of ours: cancel what is queued
                    for fut in futures:
                        fut.cancel()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    low = np.array([a.low for a in spec.actuators])
    high = np.array([a.high for a in spec.actuators])
    config = {
        **plan,
        "status": "complete" if interrupted is None else "partial",
        "trials": {**trial_source, **plan["trials"]},
        "trials_done": {
            e.label: sum(len(chunks[j]) for (i, j) in done if i == k) for k, e in enumerate(entries)
        },
        "chunks_resumed": n_loaded,
        "actuators": actuators,
        "max_delta": (spec.delta_fraction * np.maximum(np.abs(low), np.abs(high))).tolist(),
        "start": list(spec.start),
        "screen": {"element": spec.screen.element, "half_extent_m": list(spec.screen.half_extent)},
        "executor": kind,
        "workers": n_workers,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "versions": package_versions(_VERSIONED, missing=None),
        "git": _git(),
        "platform": platform.platform(),
    }
    finished = [key for key in order if key in done]
    result = None
    if finished:
        records = pa.concat_tables([done[k].records for k in finished]).combine_chunks()
        table = pa.concat_tables([done[k].trials for k in finished]).combine_chunks()
        labels = [e.label for e in entries]
        result = EvaluationResult(records, table, summarise_trials(table, labels), config)
        if reachability:  # solved when the breakdown is first asked for
            result.reachability_trials(trial_list, env_id, plan["trials"]["content_sha256"])
        if out is not None:
            result.save(out)
    if interrupted is not None:
        raise EvaluationInterrupted(result, None if out is None else Path(out)) from interrupted
    assert result is not None  # every chunk finished
    return result


def evaluate(
    optimiser_factory: str | MakeOptimiser,
    trials: Sequence[Trial] | str | Path | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    backend: str = "fast",
    seed: int = 0,
    executor: ExecutorArg = None,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = True,
    *,
    env_id: str = DEFAULT_ENV_ID,
    chunk_size: int | None = None,
    limit: int | None = None,
    label: str | None = None,
    on_step: StepHook | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    world: str | Path | WorldSpec | Mapping[str, Any] | None = None,
    reachability: bool = True,
    protocol: str | None = None,
) -> EvaluationResult:
    """Evaluate one optimiser on every trial (see the module docs for the protocol).

    :param optimiser_factory: A spec string (``"nelder-mead"``, ``"policy:PATH"``, ...) or a
        picklable zero-argument callable returning an
        :class:`~accelrl.protocol.Optimiser`.
    :param label: Key of the optimiser in the result (default: the spec string, or the
        optimiser's ``name``).

    The other arguments are those of :func:`evaluate_many`.

    >>> class Hold:
    ...     name = "hold"
    ...     def reset(self, problem): self.start = problem.start
    ...     def ask(self, observation): return self.start
    >>> from accelrl.envs import load_trials
    >>> r = evaluate(Hold, load_trials()[:2], max_steps=3, executor="serial", progress=False)
    >>> r.records.num_rows
    8
    """
    optimisers = {label: optimiser_factory} if label is not None else [optimiser_factory]
    return evaluate_many(
        optimisers,
        trials,
        max_steps,
        backend,
        seed,
        executor,
        workers,
        dask_address,
        progress,
        env_id=env_id,
        chunk_size=chunk_size,
        limit=limit,
        on_step=on_step,
        out=out,
        resume=resume,
        force=force,
        world=world,
        reachability=reachability,
        protocol=protocol,
    )
