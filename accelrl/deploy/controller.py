"""The machine control loop: observe -> optimiser -> safety -> write -> settle -> repeat.

:class:`Controller` runs any optimiser of the protocol (:mod:`accelrl.protocol`) on a
machine through the safety layer: a verified policy bundle
(:class:`~accelrl.deploy.runtime.OnnxPolicy`), BO with the physics prior, Nelder-Mead, ...
Each step (:meth:`Controller.step`):

1. read a fresh observation and the knob readbacks (:meth:`SafetyLayer.read_observation`,
   :meth:`~SafetyLayer.read_knobs`), check health;
2. stop if the beam is within the thresholds of the target (``target_reached``);
3. ask the optimiser for the next settings (an :class:`~accelrl.protocol.Observation` of
   the reading, the readbacks, the commanded setpoints and the target; at the first step it
   is reset with a :class:`~accelrl.protocol.Problem` built from the safety layer's limits);
4. make them safe (:meth:`SafetyLayer.propose`: hard bounds, max step, rollback reach);
5. depending on the mode, write them with verification (:meth:`SafetyLayer.write`), and
   log the step.

It stops at the target, at the step budget, when the operator stops it (Ctrl-C once, the
stop file appearing, the stop callback returning ``True``, or ``q`` in confirm mode) or on
an abort; an abort (any :class:`~accelrl.deploy.safety.SafetyAbort`, or Ctrl-C twice)
rolls the knobs back to their initial settings at the rate limit.

Modes (:class:`Mode`):

``shadow``
    Reads and logs what it would do; never writes.
``confirm``
    Shows each proposed write and asks the operator (``y`` write, ``n`` skip this step,
    ``q`` stop); the prompt function is injectable.
``auto``
    Writes every safe proposal.

>>> controller = Controller(OnnxPolicy(bundle), machine, safety, "shadow",
...                         target=[0, 1e-4, 0, 1e-4], log_dir="runs/shadow")  # doctest: +SKIP
>>> result = controller.run()  # doctest: +SKIP

The machine reports no "beam on screen" flag: optimisers see the beam as on the screen, and
a lost beam ends the run through the safety layer (beam loss, non-finite reading).

This module needs numpy and onnxruntime only (no torch). It is one class and its results
(~620 lines): the step, the loop, the rollback and the summary share the state of one run.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from accelrl.bundle import BundleError
from accelrl.deploy.machine import Machine
from accelrl.deploy.operator import ConfirmRequest, Prompt, terminal_prompt
from accelrl.deploy.runlog import RunLog
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import AbortReason, Proposal, SafetyAbort, SafetyLayer
from accelrl.names import TRANSVERSE, Mode
from accelrl.protocol import Observation, Optimiser, Problem


class StopReason(StrEnum):
    """Why a run ended."""

    target_reached = "target_reached"
    step_budget = "step_budget"
    operator_stop = "operator_stop"
    abort = "abort"


@dataclass
class RunResult:
    """Outcome of :meth:`Controller.run`.

    :param reason: Why the run ended.
    :param steps: Steps logged (optimiser answers, plus the final reading).
    :param writes: Verified writes made by the controller (rollback writes not included).
    :param abort_reason: The rule that aborted the run (``None`` if not aborted).
    :param abort_detail: Its specifics.
    :param rollback: Rollback outcome (``None`` if none ran).
    :param initial: Initial setpoints (SI).
    :param final_setpoints: Setpoints at the end (SI), if readable.
    :param final_error: Last observed ``beam - target`` [m].
    :param log_dir: The run directory (``None`` when not logging).
    :param summary: The summary as written to ``summary.json``.
    """

    reason: StopReason
    steps: int
    writes: int
    abort_reason: AbortReason | None = None
    abort_detail: str = ""
    rollback: dict[str, Any] | None = None
    initial: dict[str, float] | None = None
    final_setpoints: dict[str, float] | None = None
    final_error: dict[str, float] | None = None
    log_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepOutcome:
    """What one step of :meth:`Controller.step` did.

    :param decision: ``"write"``, ``"shadow"``, ``"refused"`` (the operator said no),
        ``"target_reached"`` or ``"stopped"`` (the operator quit).
    :param wrote: A verified write was made.
    :param error: The observed ``beam - target`` [m] by beam parameter.
    """

    decision: str
    wrote: bool
    error: dict[str, float]


class _OperatorAbort(Exception):
    """Ctrl-C pressed twice."""


def check_bundle(policy: OnnxPolicy, machine: Machine, safety: SafetyLayer) -> None:
    """Raise unless the bundle fits the machine: knobs, observations, task and limits.

    :raises BundleError: For other knobs or a task other than the machine config's, or
        observations the machine lacks.
    :raises ValueError: If the safety layer's limits are wider than the bundle's (build it
        with :meth:`SafetyLayer.for_bundle`).
    """
    m = policy.manifest
    if tuple(machine.knob_names) != m.knob_names:
        raise BundleError(
            f"bundle knobs {m.knob_names} differ from the machine's {tuple(machine.knob_names)}"
        )
    missing = sorted(set(m.beam_names) - set(machine.observation_names))
    if missing:
        raise BundleError(f"machine observations {machine.observation_names} lack {missing}")
    if safety.config.env_id != m.env_id:
        raise BundleError(
            f"bundle was trained on {m.env_id!r}; machine {safety.config.name!r} provides "
            f"{safety.config.env_id!r}"
        )
    for k in m.knobs:
        lim = safety.limits[k.name]
        if lim.low < k.low or lim.high > k.high:
            raise ValueError(
                f"safety limits of {k.name} [{lim.low}, {lim.high}] are wider than the "
                f"bundle's [{k.low}, {k.high}]; build the layer with SafetyLayer.for_bundle"
            )


class Controller:
    """Runs an optimiser on a machine (see the module documentation).

    :param optimiser: Any :class:`~accelrl.protocol.Optimiser` (reset at the first step),
        e.g. a verified :class:`~accelrl.deploy.runtime.OnnxPolicy`, or a bundle directory
        (loaded and verified here).
    :param machine: The machine.
    :param safety: Its safety layer (for a bundle, e.g. :meth:`SafetyLayer.for_bundle`: its
        limits must lie within the bundle's knob limits).
    :param mode: ``"shadow"``, ``"confirm"`` or ``"auto"``.
    :param target: Target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] (sequence or mapping).
    :param thresholds: "Target reached" when every ``|beam - target|`` is below these [m];
        default a bundle's; required for other optimisers.
    :param max_steps: Step budget (optimiser answers).
    :param seed: ``Problem.seed`` of the optimiser's own randomness.
    :param log_dir: Run directory for :class:`~accelrl.deploy.runlog.RunLog` (``None``: no
        log files).
    :param prompt: Confirm-mode prompt (default :func:`terminal_prompt`).
    :param stop_file: The run stops when this file exists.
    :param stop_callback: The run stops when this returns ``True`` (checked every step).
    :param rollback_on_stop: Also roll back when the operator stops or the budget ends.
    :param plot: Write ``run.png`` at the end.
    :param fsync: fsync every log record (a step's in the background, on disk before the
        next write; :mod:`~accelrl.deploy.runlog`).
    :param announce: Shows the machine's protections at the start of :meth:`run` (one line
        each, an opt-out marked ``OFF`` with its reason); default: printed on stderr.
    :param on_record: Called with every log record right after it is written (``start``,
        each ``step``, each ``rollback`` event, ``end`` with the summary), also when
        ``log_dir`` is ``None``: how a command shows the run as it goes (``accelrl deploy
        run`` prints one line per step; the controller does not print steps itself). An
        exception from it is announced once and the callback is dropped; it never stops
        the run.
    :raises BundleError: If a bundle does not fit the machine (knobs, observations, task).
    :raises ValueError: For an invalid mode, target, thresholds or budget.
    """

    def __init__(
        self,
        optimiser: Optimiser | str | Path,
        machine: Machine,
        safety: SafetyLayer,
        mode: Mode | str = Mode.shadow,
        *,
        target: Sequence[float] | Mapping[str, float],
        thresholds: Sequence[float] | None = None,
        max_steps: int = 50,
        seed: int = 0,
        log_dir: str | Path | None = None,
        prompt: Prompt | None = None,
        stop_file: str | Path | None = None,
        stop_callback: Callable[[], bool] | None = None,
        rollback_on_stop: bool = False,
        plot: bool = True,
        fsync: bool = True,
        announce: Callable[[str], None] | None = None,
        on_record: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        if isinstance(optimiser, str | Path):
            optimiser = OnnxPolicy(optimiser)
        if mode not in tuple(Mode):
            raise ValueError(f"mode must be one of {[m.value for m in Mode]}, got {mode!r}")
        if safety.machine is not machine:
            raise ValueError("the safety layer guards a different machine")
        missing = [n for n in TRANSVERSE if n not in machine.observation_names]
        if missing:
            raise ValueError(
                f"machine {safety.config.name!r} observes {list(machine.observation_names)}; "
                f"the controller needs the beam reading {list(TRANSVERSE)} (missing {missing})"
            )
        bundle = optimiser if isinstance(optimiser, OnnxPolicy) else None
        if bundle is not None:
            check_bundle(bundle, machine, safety)
            if thresholds is None:
                thresholds = bundle.manifest.target_thresholds
        if thresholds is None:
            raise ValueError("thresholds [m] are required for an optimiser that is not a bundle")
        self.optimiser = optimiser
        self.bundle = bundle
        self.mode = Mode(mode)
        self.machine = machine
        self.safety = safety
        self.beam_names = TRANSVERSE
        self.knob_names: tuple[str, ...] = tuple(machine.knob_names)
        if isinstance(target, Mapping):
            target = [target[n] for n in self.beam_names]
        self.target = np.asarray(target, np.float64).reshape(-1)
        if self.target.shape != (4,) or not np.all(np.isfinite(self.target)):
            raise ValueError(f"target must be 4 finite values [m] {self.beam_names}, got {target}")
        if np.any(self.target[[1, 3]] < 0):
            raise ValueError(f"target sizes must be >= 0 m, got {self.target.tolist()}")
        self.thresholds = np.asarray(thresholds, np.float64).reshape(-1)
        if self.thresholds.shape != (4,) or not np.all(self.thresholds > 0):
            raise ValueError(f"thresholds must be 4 values > 0 m, got {self.thresholds.tolist()}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.seed = int(seed)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.prompt: Prompt = prompt or terminal_prompt
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.stop_callback = stop_callback
        self.rollback_on_stop = rollback_on_stop
        self.plot = plot
        self.fsync = fsync
        self.announce: Callable[[str], None] = announce or _print_stderr
        self.on_record = on_record
        self._interrupts = 0
        self._log: RunLog | None = None
        #: Records of this run that could not be written to the log (``log_errors`` of the
        #: summary): the abort record, rollback records, the end record.
        self._log_errors: list[str] = []

    def _note_log_error(self, what: str, err: Exception, first_only: bool = False) -> None:
        """Keep a run-log failure for the summary (``log_errors``) and announce it (with
        ``first_only``, only the run's first such failure: the run goes on)."""
        text = f"{what}: {type(err).__name__}: {err}"
        self._log_errors.append(text)
        if not first_only or len(self._log_errors) == 1:
            going_on = "; going on" if first_only else ""
            with contextlib.suppress(Exception):
                self.announce(f"run log: could not write the {text}{going_on}")

    # ------------------------------------------------------------------ operator stop
    def request_stop(self) -> None:
        """Ask the run to stop after the current step (what the first Ctrl-C does)."""
        self._interrupts = max(self._interrupts, 1)

    def _stop_requested(self) -> bool:
        if self._interrupts:
            return True
        if self.stop_file is not None and self.stop_file.exists():
            return True
        return bool(self.stop_callback is not None and self.stop_callback())

    @contextlib.contextmanager
    def _sigint(self) -> Iterator[None]:
        """First Ctrl-C: stop after this step; second: abort (with rollback)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._interrupts += 1
            if self._interrupts >= 2:
                raise _OperatorAbort()
            print("\nstopping after this step (Ctrl-C again to abort and roll back)", flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # ------------------------------------------------------------------ records
    def _named(self, names: Sequence[str], values: np.ndarray) -> dict[str, float]:
        return dict(zip(names, np.asarray(values, np.float64).tolist(), strict=True))

    def _source(self) -> dict[str, Any]:
        """What proposes the settings, for the log: the optimiser, and a bundle's files."""
        m = None if self.bundle is None else self.bundle.manifest
        return {
            "optimiser": self.optimiser.name,
            "source": "bundle" if m is not None else f"optimiser:{self.optimiser.name}",
            "bundle": None if self.bundle is None else str(self.bundle.path),
            "bundle_sha256": {} if m is None else dict(m.files),
            "action_mode": "direct" if m is None else m.action_mode,
        }

    def _start_record(self, initial: dict[str, float] | None) -> dict[str, Any]:
        return {
            "type": "start",
            "time": time.time(),
            "mode": self.mode.value,
            "machine": self.safety.config.name,
            "transport": self.safety.config.transport,
            **self._source(),
            "env_id": self.safety.config.env_id,
            "knob_names": list(self.knob_names),
            "observation_names": list(self.beam_names),
            "limits": {
                n: {
                    "low": lim.low,
                    "high": lim.high,
                    "max_step": lim.max_step,
                    "tolerance": lim.tolerance,
                    "unit": lim.unit,
                }
                for n, lim in self.safety.limits.items()
            },
            "target": self._named(self.beam_names, self.target),
            "thresholds": self.thresholds.tolist(),
            "max_steps": self.max_steps,
            "initial": initial,
            "protections": self.safety.config.protections(),
            "rollback_config": self.safety.config.rollback.model_dump(),
        }

    def _notify(self, record: Mapping[str, Any]) -> None:
        """Hand a written record to ``on_record``; a failing callback is dropped, never
        allowed to stop the run or its rollback."""
        if self.on_record is None:
            return
        try:
            self.on_record(record)
        except Exception as err:
            self.on_record = None
            with contextlib.suppress(Exception):
                self.announce(f"record callback failed ({type(err).__name__}: {err}); dropped")

    # ------------------------------------------------------------------ one step
    def _problem(self, start: np.ndarray) -> Problem:
        """The optimiser's problem on this machine: the safety layer's limits and max step."""
        lims = [self.safety.limits[n] for n in self.knob_names]
        return Problem(
            actuator_names=self.knob_names,
            low=np.array([lim.low for lim in lims]),
            high=np.array([lim.high for lim in lims]),
            start=start.copy(),
            target=self.target.copy(),
            max_delta=np.array([lim.max_step for lim in lims]),
            max_steps=self.max_steps,
            seed=self.seed,
        )

    def _ask_operator(self, step: int, proposal: Proposal, rec: dict[str, Any]) -> str:
        """Confirm mode: ``"write"``, ``"refused"`` or ``"stopped"``."""
        answer = self.prompt(
            ConfirmRequest(
                step=step,
                knob_names=self.knob_names,
                units={n: lim.unit for n, lim in self.safety.limits.items()},
                current=proposal.base,
                proposal=proposal,
                observation=rec["observation"],
                target=rec["target"],
            )
        )
        answer = {True: "yes", False: "no"}.get(answer, answer)  # type: ignore[call-overload]
        if answer not in ("yes", "no", "quit"):
            raise ValueError(f"prompt returned {answer!r}; expected yes, no or quit")
        return {"yes": "write", "no": "refused", "quit": "stopped"}[answer]

    def step(self, step: int, rec: dict[str, Any]) -> StepOutcome:
        """Run step ``step``, filling the log record ``rec`` as it goes (so an abort leaves
        what was done in it).

        :raises SafetyAbort: When a safety rule fires (the caller rolls back).
        """
        safety = self.safety
        wait0, t0 = safety.wait_s, time.perf_counter()
        reading = safety.read_observation(self.beam_names)
        knobs = safety.read_knobs(health=True)
        # the record's values as Python floats (float64 arithmetic, as numpy's)
        beam_v = reading.array(self.beam_names)
        magnets_v = knobs.array(self.knob_names)
        target_v = self.target.tolist()
        error_v = [b - t for b, t in zip(beam_v, target_v, strict=True)]
        error = dict(zip(self.beam_names, error_v, strict=True))
        rec.update(
            observation=dict(zip(self.beam_names, beam_v, strict=True)),
            observation_time=reading.timestamp,
            knobs=dict(zip(self.knob_names, magnets_v, strict=True)),
            target=dict(zip(self.beam_names, target_v, strict=True)),
            error=error,
        )
        timing: dict[str, float] = {"read_s": time.perf_counter() - t0}
        rec["timing"] = timing
        if all(abs(e) < t for e, t in zip(error_v, self.thresholds.tolist(), strict=True)):
            rec["decision"] = "target_reached"
            return StepOutcome("target_reached", False, error)
        beam, magnets = np.array(beam_v), np.array(magnets_v)
        t1 = time.perf_counter()
        if step == 0:
            self.optimiser.reset(self._problem(magnets))
        last = safety.commanded or {}
        commanded = np.array([last[n] for n in self.knob_names])
        answer = np.asarray(
            self.optimiser.ask(
                Observation(beam, magnets, self.target.copy(), True, step, setpoints=commanded)
            ),
            np.float64,
        ).reshape(-1)
        timing["policy_s"] = time.perf_counter() - t1
        rec["requested"] = dict(zip(self.knob_names, answer.tolist(), strict=False))
        t2 = time.perf_counter()
        proposal = safety.propose(answer, "direct")
        timing["safety_s"] = time.perf_counter() - t2
        rec.update(
            requested=proposal.requested,
            safe_setpoints=proposal.setpoints,
            clips=[vars(c) for c in proposal.clips],
        )
        decision = "write" if self.mode is Mode.auto else "shadow"
        t3 = time.perf_counter()
        if self.mode is Mode.confirm:
            decision = self._ask_operator(step, proposal, rec)
        timing["prompt_s"] = time.perf_counter() - t3
        rec["decision"] = decision
        wrote = False
        if decision == "write":
            t4 = time.perf_counter()
            if self._log is not None:
                self._log.sync()  # every earlier record on disk before this write
            result = safety.write(proposal.setpoints)
            rec["writes"] = {} if result is None else result.setpoints
            if result is not None:
                wrote = True
                rec.update(
                    setpoints_read=result.setpoints_read,
                    readbacks=result.readbacks,
                    settle_s=result.duration_s,
                )
            timing["write_s"] = time.perf_counter() - t4
        timing["wait_s"] = safety.wait_s - wait0
        timing["total_s"] = time.perf_counter() - t0
        return StepOutcome(decision, wrote, error)

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        """Run until the target, the budget, an operator stop or an abort (see the module
        documentation). Never raises for machine or optimiser failures: they end in an
        abort, a rollback and a complete log."""
        log = RunLog(self.log_dir, fsync=self.fsync) if self.log_dir is not None else None
        self._log = log

        def emit(record: dict[str, Any], sync: bool = True, plain: bool = False) -> None:
            if log is not None:
                log.write(record, sync=sync, plain=plain)
            self._notify(record)

        def emit_safe(record: dict[str, Any]) -> None:
            """:func:`emit` where a failing log must not stop what follows (the abort
            record, the rollback): the error is reported and kept for the summary."""
            try:
                emit(record)
            except Exception as err:
                self._note_log_error(f"{record.get('type')} record", err, first_only=True)
                self._notify(record)  # not written; shown all the same

        self._log_errors = []
        t_run = time.perf_counter()
        abort: SafetyAbort | None = None
        initial: dict[str, float] | None = None
        config = self.safety.config
        self.announce(f"protections of {config.name} ({config.transport}):")
        for line in config.protection_lines():
            self.announce(f"  {line}")
        try:
            initial = self.safety.start()
        except SafetyAbort as err:
            abort = err
        emit(self._start_record(initial))
        reason, steps, writes, last_error = StopReason.abort, 0, 0, None
        if abort is None:
            reason, steps, writes, last_error, abort = self._loop(emit, emit_safe)
        rollback = None
        if initial is not None and (
            abort is not None or (self.rollback_on_stop and self.safety.writes > 0)
        ):
            rollback = self._rollback(emit_safe)
        return self._finish(log, reason, steps, writes, initial, last_error, abort, rollback, t_run)

    def _loop(
        self, emit: Callable[..., None], emit_safe: Callable[[dict[str, Any]], None]
    ) -> tuple[StopReason, int, int, dict[str, float] | None, SafetyAbort | None]:
        """The steps: ``(reason, steps, writes, last error, abort)``. The abort record goes
        out through ``emit_safe``: a disk error writing it must not stop the rollback."""
        steps = writes = 0
        last_error: dict[str, float] | None = None
        rec: dict[str, Any] = {}
        with self._sigint():
            try:
                while True:
                    if steps >= self.max_steps:
                        return StopReason.step_budget, steps, writes, last_error, None
                    if self._stop_requested():
                        return StopReason.operator_stop, steps, writes, last_error, None
                    rec = {"type": "step", "step": steps, "time": time.time()}
                    outcome = self.step(steps, rec)
                    emit(rec, sync=False, plain=True)  # on disk before the next write (step)
                    last_error = outcome.error
                    if outcome.decision == "target_reached":
                        return StopReason.target_reached, steps, writes, last_error, None
                    if outcome.decision == "stopped":
                        return StopReason.operator_stop, steps, writes, last_error, None
                    writes += int(outcome.wrote)
                    steps += 1
            except SafetyAbort as err:
                abort = err
            except _OperatorAbort:
                abort = SafetyAbort(AbortReason.operator_abort, "Ctrl-C pressed twice")
            except Exception as err:  # a bug must not leave the machine mid-run
                abort = SafetyAbort(AbortReason.internal_error, f"{type(err).__name__}: {err}")
        if "error" in rec:
            last_error = rec["error"]
        if "decision" in rec:
            rec["intended"] = rec["decision"]
        rec.update(type="step", step=steps, decision="abort")
        rec.setdefault("time", time.time())
        rec["abort"] = {"reason": abort.reason.value, "detail": abort.detail}
        emit_safe(rec)
        return StopReason.abort, steps, writes, last_error, abort

    def _rollback(self, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Roll back, logging (and fsyncing) every ramp write attempt and every knob left
        alone as it happens: ``rollback`` records with ``event`` ``"write"`` (``index``,
        ``setpoints``, ``attempt``, ``may_hold``, ``ok``, ``error``, ``readbacks``),
        ``"foreign_write"`` or ``"waiting"``."""

        def on_write(index: int, write: Mapping[str, Any]) -> None:
            emit({"type": "rollback", "event": "write", "index": index, "time": time.time(),
                  **write})  # fmt: skip

        def on_note(note: Mapping[str, Any]) -> None:
            emit({"type": "rollback", "time": time.time(), **note})

        if self._log is not None:  # every step record on disk before the first rollback
            with contextlib.suppress(OSError):  # write; a disk error must not stop it
                self._log.sync()
        rb = self.safety.rollback(on_write=on_write, on_note=on_note)
        return {
            "complete": rb.complete,
            "verified": rb.verified,
            "writes": len(rb.writes),
            "detail": rb.detail,
            "not_restored": rb.not_restored,
            "foreign": rb.foreign,
            "waited_s": rb.waited_s,
            "final_setpoints": rb.final_setpoints,
        }

    def _finish(
        self,
        log: RunLog | None,
        reason: StopReason,
        steps: int,
        writes: int,
        initial: dict[str, float] | None,
        last_error: dict[str, float] | None,
        abort: SafetyAbort | None,
        rollback: dict[str, Any] | None,
        t_run: float,
    ) -> RunResult:
        """The summary (written to the log) and the :class:`RunResult`."""
        final_setpoints = None
        with contextlib.suppress(Exception):
            sp = self.machine.read_setpoints()
            final_setpoints = {n: float(sp.values[n]) for n in self.knob_names}
        aborted = None if abort is None else {"reason": abort.reason.value, "detail": abort.detail}
        source = self._source()
        summary = {
            "reason": reason.value,
            "mode": self.mode.value,
            "machine": self.safety.config.name,
            "source": source["source"],
            "bundle": source["bundle"],
            "steps": steps,
            "writes": writes,
            "abort": aborted,
            "rollback": rollback,
            "initial": initial,
            "final_setpoints": final_setpoints,
            "final_error": last_error,
            "final_mae": None if last_error is None else mae(last_error),
            "target": self._named(self.beam_names, self.target),
            "wall_s": time.perf_counter() - t_run,
            "log_errors": self._log_errors,
        }
        if log is not None:
            try:
                summary = log.finish(summary, plot=self.plot)
            except Exception as err:  # the run is over: report, and return its result
                with contextlib.suppress(Exception):
                    log.close()
                self._note_log_error("end record", err)
        self._notify({"type": "end", **summary})
        return RunResult(
            reason=reason,
            steps=steps,
            writes=writes,
            abort_reason=None if abort is None else abort.reason,
            abort_detail="" if abort is None else abort.detail,
            rollback=rollback,
            initial=initial,
            final_setpoints=final_setpoints,
            final_error=last_error,
            log_dir=self.log_dir,
            summary=summary,
        )


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def mae(error: Mapping[str, float] | None) -> float:
    """Mean absolute value of a beam error mapping [m] (NaN for ``None``)."""
    if not error:
        return math.nan
    return float(np.mean([abs(v) for v in error.values()]))
