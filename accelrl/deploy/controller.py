"""The runtime controller: observe -> policy -> safety -> write -> settle -> repeat.

:class:`Controller` runs a verified policy bundle on a machine through the safety layer:

1. read a fresh observation and the knob readbacks (:meth:`SafetyLayer.read_observation`,
   :meth:`~SafetyLayer.read_knobs`), check health;
2. stop if the beam is within the thresholds of the target (``target_reached``);
3. ask the policy (:class:`~accelrl.deploy.runtime.OnnxPolicy`, batch-1 path) for an
   action on ``[beam, knobs, target]``;
4. make it safe (:meth:`SafetyLayer.propose`: hard bounds, max step, rollback reach);
5. depending on the mode, write it with verification (:meth:`SafetyLayer.write`), and
   log the step.

It stops at the target, at the step budget, when the operator stops it (Ctrl-C once, the
stop file appearing, the stop callback returning ``True``, or ``q`` in confirm mode) or on
an abort; an abort (any :class:`~accelrl.deploy.safety.SafetyAbort`, or Ctrl-C twice)
rolls the knobs back to their initial settings at the rate limit.

Modes:

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

This module needs numpy and onnxruntime only (no torch).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from accelrl.deploy.bundle import BundleError
from accelrl.deploy.machine import Machine
from accelrl.deploy.runlog import RunLog
from accelrl.deploy.runtime import ActionSpec, OnnxPolicy
from accelrl.deploy.safety import AbortReason, Proposal, SafetyAbort, SafetyLayer


@runtime_checkable
class ActionSource(Protocol):
    """What proposes the controller's actions: an :class:`~accelrl.deploy.runtime.OnnxPolicy`
    or anything with the same three members (e.g. a BO session,
    :class:`accelrl.agents.bo.proposer.SessionProposer`)."""

    @property
    def spec(self) -> ActionSpec:
        """The interface (knobs, beam names, action mode, limits, thresholds, provenance)."""
        ...

    def observation(self, beam: np.ndarray, magnets: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The input of :meth:`act1` from the beam reading, the readbacks and the target."""
        ...

    def act1(self, observation: np.ndarray) -> np.ndarray:
        """The action ``[K]`` (SI) for one input."""
        ...


class Mode(StrEnum):
    """How the controller acts on its proposals."""

    shadow = "shadow"
    confirm = "confirm"
    auto = "auto"


class StopReason(StrEnum):
    """Why a run ended."""

    target_reached = "target_reached"
    step_budget = "step_budget"
    operator_stop = "operator_stop"
    abort = "abort"


@dataclass(frozen=True)
class ConfirmRequest:
    """What the operator is asked to approve in confirm mode.

    :param step: Step number (0-based).
    :param knob_names: Knobs in action order.
    :param units: Knob -> SI unit.
    :param current: Current setpoints (SI).
    :param proposal: The safe proposal (setpoints, clips).
    :param observation: The beam reading [m].
    :param target: The target [m].
    """

    step: int
    knob_names: tuple[str, ...]
    units: Mapping[str, str]
    current: Mapping[str, float]
    proposal: Proposal
    observation: Mapping[str, float]
    target: Mapping[str, float]

    def describe(self) -> str:
        """A plain-text table of the proposed change."""
        lines = [f"step {self.step}: proposed write"]
        lines.append(f"  {'knob':<6} {'current':>14} {'proposed':>14} {'change':>14}  unit")
        clipped = {c.knob for c in self.proposal.clips}
        for n in self.knob_names:
            cur, new = self.current[n], self.proposal.setpoints[n]
            mark = "  (clipped)" if n in clipped else ""
            lines.append(
                f"  {n:<6} {cur:>14.6g} {new:>14.6g} {new - cur:>+14.6g}  "
                f"{self.units.get(n, '')}{mark}"
            )
        err = ", ".join(
            f"{k} {1e6 * (self.observation[k] - self.target[k]):+.1f} um" for k in self.target
        )
        lines.append(f"  beam - target: {err}")
        return "\n".join(lines)


#: A confirm-mode prompt: returns ``"yes"``/``"no"``/``"quit"`` (or ``True``/``False``).
Prompt = Callable[[ConfirmRequest], "str | bool"]


def terminal_prompt(request: ConfirmRequest) -> str:
    """Ask on the terminal: ``y`` write, ``n`` skip this step, ``q`` stop the run."""
    print(request.describe(), flush=True)
    while True:
        try:
            answer = input("write? [y]es / [n]o, skip / [q]uit: ").strip().lower()
        except EOFError:
            return "quit"
        if answer in ("y", "yes"):
            return "yes"
        if answer in ("n", "no"):
            return "no"
        if answer in ("q", "quit"):
            return "quit"


@dataclass
class RunResult:
    """Outcome of :meth:`Controller.run`.

    :param reason: Why the run ended.
    :param steps: Steps logged (policy evaluations, plus the final reading).
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


class _OperatorAbort(Exception):
    """Ctrl-C pressed twice."""


class Controller:
    """Runs a policy bundle on a machine (see the module documentation).

    :param bundle: The verified policy (or a bundle directory, loaded and verified here), or
        any other :class:`ActionSource` (e.g. a BO session).
    :param machine: The machine.
    :param safety: Its safety layer (e.g. :meth:`SafetyLayer.for_bundle`); its limits must
        lie within the bundle's knob limits.
    :param mode: ``"shadow"``, ``"confirm"`` or ``"auto"``.
    :param target: Target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] (sequence or mapping).
    :param thresholds: "Target reached" when every ``|beam - target|`` is below these [m];
        default the bundle's.
    :param max_steps: Step budget (policy evaluations).
    :param log_dir: Run directory for :class:`~accelrl.deploy.runlog.RunLog` (``None``: no
        log files).
    :param prompt: Confirm-mode prompt (default :func:`terminal_prompt`).
    :param stop_file: The run stops when this file exists.
    :param stop_callback: The run stops when this returns ``True`` (checked every step).
    :param rollback_on_stop: Also roll back when the operator stops or the budget ends.
    :param plot: Write ``run.png`` at the end.
    :param fsync: fsync every log record.
    :raises BundleError: If the bundle does not fit the machine (knobs, observations, env).
    :raises ValueError: For an invalid mode, target, thresholds or budget.
    """

    def __init__(
        self,
        bundle: ActionSource | str | Path,
        machine: Machine,
        safety: SafetyLayer,
        mode: Mode | str = Mode.shadow,
        *,
        target: Sequence[float] | Mapping[str, float],
        thresholds: Sequence[float] | None = None,
        max_steps: int = 50,
        log_dir: str | Path | None = None,
        prompt: Prompt | None = None,
        stop_file: str | Path | None = None,
        stop_callback: Callable[[], bool] | None = None,
        rollback_on_stop: bool = False,
        plot: bool = True,
        fsync: bool = True,
    ) -> None:
        self.policy: ActionSource = OnnxPolicy(bundle) if isinstance(bundle, str | Path) else bundle
        m = self.policy.spec
        if mode not in tuple(Mode):
            raise ValueError(f"mode must be one of {[m.value for m in Mode]}, got {mode!r}")
        self.mode = Mode(mode)
        self.machine = machine
        self.safety = safety
        if safety.machine is not machine:
            raise ValueError("the safety layer guards a different machine")
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
        for name, (low, high) in m.knob_limits.items():
            lim = safety.limits[name]
            if lim.low < low or lim.high > high:
                raise ValueError(
                    f"safety limits of {name} [{lim.low}, {lim.high}] are wider than the "
                    f"{m.source}'s [{low}, {high}]; build the layer with SafetyLayer.for_bundle"
                )
        self.beam_names = m.beam_names
        self.knob_names = m.knob_names
        if isinstance(target, Mapping):
            target = [target[n] for n in self.beam_names]
        self.target = np.asarray(target, np.float64).reshape(-1)
        if self.target.shape != (4,) or not np.all(np.isfinite(self.target)):
            raise ValueError(f"target must be 4 finite values [m] {self.beam_names}, got {target}")
        if np.any(self.target[[1, 3]] < 0):
            raise ValueError(f"target sizes must be >= 0 m, got {self.target.tolist()}")
        self.thresholds = np.asarray(
            thresholds if thresholds is not None else m.target_thresholds, np.float64
        )
        if self.thresholds.shape != (4,) or not np.all(self.thresholds > 0):
            raise ValueError(f"thresholds must be 4 values > 0 m, got {self.thresholds.tolist()}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.prompt: Prompt = prompt or terminal_prompt
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.stop_callback = stop_callback
        self.rollback_on_stop = rollback_on_stop
        self.plot = plot
        self.fsync = fsync
        self._interrupts = 0

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

    # ------------------------------------------------------------------ run
    def _start_record(self, initial: dict[str, float] | None) -> dict[str, Any]:
        m = self.policy.spec
        return {
            "type": "start",
            "time": time.time(),
            "mode": self.mode.value,
            "machine": self.safety.config.name,
            "transport": self.safety.config.transport,
            "source": m.source,
            "bundle": m.location,
            "env_id": m.env_id,
            "bundle_sha256": dict(m.files),
            "action_mode": m.action_mode,
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
            "target": dict(zip(self.beam_names, self.target.tolist(), strict=True)),
            "thresholds": self.thresholds.tolist(),
            "max_steps": self.max_steps,
            "initial": initial,
        }

    def run(self) -> RunResult:
        """Run until the target, the budget, an operator stop or an abort (see the module
        documentation). Never raises for machine or policy failures: they end in an abort,
        a rollback and a complete log."""
        log = RunLog(self.log_dir, fsync=self.fsync) if self.log_dir is not None else None
        records: list[dict[str, Any]] = []

        def emit(record: dict[str, Any]) -> None:
            records.append(record)
            if log is not None:
                log.write(record)

        safety, policy, mode = self.safety, self.policy, self.mode
        action_mode = policy.spec.action_mode
        reason: StopReason | None = None
        abort: SafetyAbort | None = None
        initial: dict[str, float] | None = None
        writes = 0
        step = 0
        last_error: dict[str, float] | None = None
        t_run = time.perf_counter()
        try:
            initial = safety.start()
        except SafetyAbort as err:
            abort = err
        emit(self._start_record(initial))
        rec: dict[str, Any] = {}
        if abort is None:
            with self._sigint():
                try:
                    while True:
                        if step >= self.max_steps:
                            reason = StopReason.step_budget
                            break
                        if self._stop_requested():
                            reason = StopReason.operator_stop
                            break
                        rec = {"type": "step", "step": step, "time": time.time()}
                        wait0 = safety.wait_s
                        t0 = time.perf_counter()
                        obs = safety.read_observation(self.beam_names)
                        knobs = safety.read_knobs(health=True)
                        beam = np.array(obs.array(self.beam_names))
                        magnets = np.array(knobs.array(self.knob_names))
                        error = beam - self.target
                        last_error = dict(zip(self.beam_names, error.tolist(), strict=True))
                        rec.update(
                            observation=dict(zip(self.beam_names, beam.tolist(), strict=True)),
                            observation_time=obs.timestamp,
                            knobs=dict(zip(self.knob_names, magnets.tolist(), strict=True)),
                            target=dict(zip(self.beam_names, self.target.tolist(), strict=True)),
                            error=last_error,
                        )
                        t1 = time.perf_counter()
                        if np.all(np.abs(error) < self.thresholds):
                            rec["decision"] = "target_reached"
                            rec["timing"] = {"read_s": t1 - t0}
                            emit(rec)
                            rec = {}
                            reason = StopReason.target_reached
                            break
                        x = policy.observation(beam, magnets, self.target)
                        raw = policy.act1(x)
                        t2 = time.perf_counter()
                        rec["raw_action"] = dict(zip(self.knob_names, raw.tolist(), strict=True))
                        proposal = safety.propose(raw, action_mode)
                        t3 = time.perf_counter()
                        rec.update(
                            requested=proposal.requested,
                            safe_setpoints=proposal.setpoints,
                            clips=[vars(c) for c in proposal.clips],
                        )
                        decision = "write" if mode is Mode.auto else "shadow"
                        if mode is Mode.confirm:
                            answer = self.prompt(
                                ConfirmRequest(
                                    step=step,
                                    knob_names=self.knob_names,
                                    units={n: lim.unit for n, lim in safety.limits.items()},
                                    current=proposal.base,
                                    proposal=proposal,
                                    observation=rec["observation"],
                                    target=rec["target"],
                                )
                            )
                            answer = {True: "yes", False: "no"}.get(answer, answer)  # type: ignore[call-overload]
                            if answer not in ("yes", "no", "quit"):
                                raise ValueError(
                                    f"prompt returned {answer!r}; expected yes, no or quit"
                                )
                            decision = {"yes": "write", "no": "refused", "quit": "stopped"}[answer]
                        t4 = time.perf_counter()
                        if decision == "stopped":
                            rec["decision"] = decision
                            rec["timing"] = {"read_s": t1 - t0, "policy_s": t2 - t1}
                            emit(rec)
                            rec = {}
                            reason = StopReason.operator_stop
                            break
                        rec["decision"] = decision
                        if decision == "write":
                            result = safety.write(proposal.setpoints)
                            if result is not None:
                                writes += 1
                                rec.update(
                                    writes=result.setpoints,
                                    setpoints_read=result.setpoints_read,
                                    readbacks=result.readbacks,
                                    settle_s=result.duration_s,
                                )
                            else:
                                rec["writes"] = {}
                        t5 = time.perf_counter()
                        rec["timing"] = {
                            "read_s": t1 - t0,
                            "policy_s": t2 - t1,
                            "safety_s": t3 - t2,
                            "prompt_s": t4 - t3,
                            "write_s": t5 - t4,
                            "wait_s": safety.wait_s - wait0,
                            "total_s": t5 - t0,
                        }
                        emit(rec)
                        rec = {}
                        step += 1
                except SafetyAbort as err:
                    abort = err
                except _OperatorAbort:
                    abort = SafetyAbort(AbortReason.operator_abort, "Ctrl-C pressed twice")
                except Exception as err:  # a bug must not leave the machine mid-run
                    abort = SafetyAbort(AbortReason.internal_error, f"{type(err).__name__}: {err}")
        rollback: dict[str, Any] | None = None
        if abort is not None:
            reason = StopReason.abort
            if rec.get("type") != "step":  # aborted before the step's record began
                rec = {"type": "step", "step": step, "time": time.time()}
            if "decision" in rec:
                rec["intended"] = rec["decision"]
            rec["decision"] = "abort"
            rec["abort"] = {"reason": abort.reason.value, "detail": abort.detail}
            emit(rec)
        if initial is not None and (
            abort is not None or (self.rollback_on_stop and safety.writes > 0)
        ):
            rb = safety.rollback()
            for i, w in enumerate(rb.writes):
                emit({"type": "rollback", "index": i, "time": time.time(), **w})
            rollback = {
                "complete": rb.complete,
                "verified": rb.verified,
                "writes": len(rb.writes),
                "detail": rb.detail,
                "final_setpoints": rb.final_setpoints,
            }
        final_setpoints = None
        with contextlib.suppress(Exception):
            sp = self.machine.read_setpoints()
            final_setpoints = {n: float(sp.values[n]) for n in self.knob_names}
        assert reason is not None
        summary = {
            "reason": reason.value,
            "mode": self.mode.value,
            "machine": self.safety.config.name,
            "source": self.policy.spec.source,
            "bundle": self.policy.spec.location,
            "steps": step,
            "writes": writes,
            "abort": None
            if abort is None
            else {"reason": abort.reason.value, "detail": abort.detail},
            "rollback": rollback,
            "initial": initial,
            "final_setpoints": final_setpoints,
            "final_error": last_error,
            "final_mae": None if last_error is None else mae(last_error),
            "target": dict(zip(self.beam_names, self.target.tolist(), strict=True)),
            "wall_s": time.perf_counter() - t_run,
        }
        if log is not None:
            summary = log.finish(summary, plot=self.plot)
        return RunResult(
            reason=reason,
            steps=step,
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


def mae(error: Mapping[str, float] | None) -> float:
    """Mean absolute value of a beam error mapping [m] (NaN for ``None``)."""
    if not error:
        return math.nan
    return float(np.mean([abs(v) for v in error.values()]))
