"""An ask/tell Bayesian-optimisation tuning session that persists and resumes.

>>> from accelrl.agents.bo import TuningSession, ares_ea_problem, BeamlinePrior
>>> session = TuningSession(ares_ea_problem(), prior=BeamlinePrior(target=[0, 1e-4, 0, 1e-4]))
>>> setting = session.suggest()            # dict name -> SI value   # doctest: +SKIP
>>> session.ingest(setting, {"mae": 3e-4, "on_screen": 1.0})        # doctest: +SKIP
>>> session.save("runs/bo-session")                                 # doctest: +SKIP
>>> TuningSession.load("runs/bo-session", limits=ares_ea_problem())  # doctest: +SKIP

Each :meth:`TuningSession.suggest` fits a ``SingleTaskGP`` per modelled output (the
objective, with the calibrated prior mean when one is given, and every ``modelled``
constraint), optimises the acquisition inside the box the :class:`~accelrl.agents.bo.guard.
TuningGuard` allows and passes the result through its final check. Torch runs on
``config.threads`` threads (default 1) during a suggestion.

Its size (~510 lines) is one class: its ingest, suggestion, diagnostics and save/load share the
session's rows, guard, fitted model states and pending proposals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from accelrl.agents.bo.acquisition import make_acquisition, optimise
from accelrl.agents.bo.config import SessionConfig, session_config
from accelrl.agents.bo.guard import TuningGuard
from accelrl.agents.bo.model import (
    FitResult,
    PriorMean,
    fit_gp,
    fit_models,
    is_calibrated,
    parameter_state,
    pearson,
)
from accelrl.agents.bo.persistence import (
    FORMAT_VERSION,
    Limits,
    SessionFileError,
    data_columns,
    prior_spec,
    read_session,
    write_session,
)
from accelrl.agents.bo.problem import ProblemError, TuningProblem

__all__ = ["SessionConfig", "SessionFileError", "SessionPaused", "TuningSession"]


class SessionPaused(RuntimeError):
    """Raised by :meth:`TuningSession.suggest` while the session is paused (a critical
    constraint was violated with ``on_critical="pause"``); call ``resume()``."""


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class TuningSession:
    """Ask/tell BO over a :class:`~accelrl.agents.bo.problem.TuningProblem`.

    :param problem: The problem (or a mapping validated into one).
    :param prior: Prior mean module over named physical inputs (see
        :mod:`accelrl.agents.bo.prior`), returning the objective in its modelled units (after
        the objective's ``log``), or ``None`` for a constant mean.
    :param config: Session settings.
    :param fixed_inputs: Values (SI) of prior inputs that are not variables of the problem.
    """

    def __init__(
        self,
        problem: TuningProblem | Mapping[str, Any],
        prior: nn.Module | None = None,
        config: SessionConfig | Mapping[str, Any] | None = None,
        fixed_inputs: dict[str, float] | None = None,
    ) -> None:
        self.problem = (
            problem if isinstance(problem, TuningProblem) else TuningProblem.create(problem)
        )
        self.config = session_config(config)
        p = self.problem
        self.safety = TuningGuard(p.low, p.high, p.max_step, p.initial_vector, self.config.trust)
        self.prior = prior
        self.fixed_inputs = dict(fixed_inputs or {})
        self._sign = -1.0 if p.objective.minimise else 1.0
        self.prior_mean: PriorMean | None = None
        if prior is not None:
            self.prior_mean = PriorMean(
                prior, p.names, p.low, p.high, self._sign, self.fixed_inputs
            )
        self.rows: list[dict[str, Any]] = []
        self.readback = p.initial_vector.copy()
        self._states: dict[str, dict[str, torch.Tensor]] = {}
        self._pending: list[np.ndarray] = []
        self._fit: FitResult | None = None
        self._diag: dict[str, Any] = {}

    # ------------------------------------------------------------------ data
    @property
    def names(self) -> tuple[str, ...]:
        """Variable names."""
        return self.problem.names

    def _modelled(self, row: Mapping[str, Any]) -> float:
        """The GP-space value of a row (larger is better), NaN when unusable."""
        value = self.problem.objective.transform(row[f"result.{self.problem.objective.name}"])
        return self._sign * value if math.isfinite(value) else math.nan

    def _best_row(self) -> dict[str, Any] | None:
        best, best_y = None, -math.inf
        for row in self.rows:
            y = self._modelled(row)
            if row["safe"] and row["feasible"] and math.isfinite(y) and y > best_y:
                best, best_y = row, y
        return best

    def _x(self, row: Mapping[str, Any]) -> np.ndarray:
        return np.array([row[f"setting.{n}"] for n in self.names], dtype=np.float64)

    def ingest(self, setting: Mapping[str, float], result: Mapping[str, Any]) -> None:
        """Record the ``result`` measured at ``setting`` (the read-back, SI).

        :param setting: Name -> value of every variable, as read back from the machine.
        :param result: Name -> value of the objective and of every constraint output. NaN or
            inf values are recorded but never fitted; a missing or non-finite critical output
            counts as a violation.
        :raises ProblemError: For missing or unknown variable names or a missing objective.
        """
        x = self.problem.vector(setting)
        if not isinstance(result, Mapping):
            raise ProblemError(f"result must be a mapping name -> value, got {type(result)}")
        obj = self.problem.objective.name
        if obj not in result:
            raise ProblemError(f"result has no objective {obj!r}; got keys {sorted(result)}")
        row: dict[str, Any] = {"step": len(self.rows)}
        row.update({f"setting.{n}": float(v) for n, v in zip(self.names, x, strict=True)})
        row[f"result.{obj}"] = _number(result[obj])
        safe, feasible, violated = True, True, []
        for c in self.problem.constraints:
            value = _number(result.get(c.name, math.nan))
            row[f"result.{c.name}"] = value
            if not c.satisfied(value):
                feasible = False
                if c.critical:
                    safe = False
                    violated.append(f"{c.name}={value}")
        for name in self.problem.observables:
            row[f"result.{name}"] = _number(result.get(name, math.nan))
        finite_x = bool(np.all(np.isfinite(x)))
        safe = safe and finite_x
        row["safe"], row["feasible"] = safe, feasible
        row["prior_prediction"] = self._predict(x)
        row["suggest_s"] = float(self._diag.get("suggest_s", math.nan)) if self.rows else math.nan
        y = self._modelled(row)
        best = self._best_row()
        best_y = -math.inf if best is None else self._modelled(best)
        self.rows.append(row)
        if finite_x:
            self.readback = x.copy()
        if safe:
            self.safety.last_safe = x.copy()
            self.safety.returning = False
            margin = self.config.trust.improvement * max(abs(best_y), 1.0)
            improved = math.isfinite(y) and feasible and (y > best_y + margin)
            if len(self.rows) > 1:
                self.safety.record(improved)
        else:
            reason = (
                "critical constraint violated: " + ", ".join(violated)
                if violated
                else "non-finite setting"
            )
            self.safety.reason = reason
            self.safety.shrink()
            self._pending = []
            if self.config.on_critical == "pause":
                self.safety.paused = True
            elif self.safety.last_safe is not None:
                self.safety.returning = True

    # ------------------------------------------------------------------ suggest
    def _training(self) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        rows = [r for r in self.rows if math.isfinite(self._modelled(r))]
        rows = [r for r in rows if np.all(np.isfinite(self._x(r)))]
        if not rows:
            return torch.empty(0, len(self.names)), torch.empty(0), rows
        X = np.stack([self._x(r) for r in rows])
        U = np.clip((X - self.problem.low) / (self.problem.high - self.problem.low), 0.0, 1.0)
        Y = np.array([self._modelled(r) for r in rows])
        return torch.as_tensor(U), torch.as_tensor(Y), rows

    def _predict(self, x: np.ndarray) -> float:
        """The prior's objective (modelled units) at ``x`` with the current calibration; NaN
        without a prior. Recorded before the result enters a fit: a true prediction."""
        if self.prior_mean is None or not np.all(np.isfinite(x)):
            return math.nan
        try:
            with torch.no_grad():
                value = float(self.prior_mean.raw(torch.as_tensor(x[None])).reshape(-1)[0])
        except Exception:  # a failing prior must not stop the session
            return math.nan
        return value if math.isfinite(value) else math.nan

    def _predictive_correlation(self) -> tuple[float, int]:
        """Pearson correlation of the recorded prior predictions with the modelled
        objective, and the number of points it used."""
        pairs = [
            (
                r["prior_prediction"],
                self.problem.objective.transform(r[f"result.{self.problem.objective.name}"]),
            )
            for r in self.rows
        ]
        pairs = [(p, y) for p, y in pairs if math.isfinite(p) and math.isfinite(y)]
        if len(pairs) < 3:
            return math.nan, len(pairs)
        a, b = torch.as_tensor(pairs, dtype=torch.float64).T
        return pearson(a, b), len(pairs)

    def _observables(self, rows: list[dict[str, Any]]) -> torch.Tensor | None:
        """Observed values ``[n, m]`` of the prior's observables at the training rows (NaN
        where not reported, and at unsafe rows), or ``None`` when the prior predicts none
        that the problem records."""
        if self.prior_mean is None:
            return None
        names = self.prior_mean.observable_names
        if not names or not set(names) & set(self.problem.observables):
            return None
        values = np.full((len(rows), len(names)), np.nan)
        for i, row in enumerate(rows):
            if row["safe"]:
                for j, name in enumerate(names):
                    values[i, j] = row.get(f"result.{name}", math.nan)
        return torch.as_tensor(values)

    def _seed(self) -> int:
        return (self.config.seed * 1_000_003 + len(self.rows) * 7919) % (2**31 - 1)

    def suggest(self, readback: Mapping[str, float] | None = None) -> dict[str, float]:
        """The next setting to apply, name -> SI value; always within the hard bounds and
        within the max step of the read-back (the last ingested setting unless given).

        :raises SessionPaused: While paused after a critical violation (``on_critical=
            "pause"``).
        """
        t0, c0 = time.perf_counter(), time.thread_time()
        if readback is not None:
            rb = self.problem.vector(readback, "readback")
            if np.all(np.isfinite(rb)):
                self.readback = rb
        if self.safety.paused:
            raise SessionPaused(f"session paused ({self.safety.reason}); call resume()")
        n_threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            with torch.random.fork_rng():
                torch.manual_seed(self._seed())
                x, mode = self._propose()
        finally:
            torch.set_num_threads(n_threads)
        x = self.safety.guard(x, self.readback)
        self._diag.update(
            mode=mode,
            suggest_s=time.perf_counter() - t0,
            suggest_cpu_s=time.thread_time() - c0,
        )
        return self.problem.named(x)

    def _propose(self) -> tuple[np.ndarray, str]:
        safety, rb = self.safety, self.readback
        if self._pending:
            return self._pending.pop(0), "route"
        if safety.returning and safety.last_safe is not None:
            return safety.towards(safety.last_safe, rb), "return-to-safe"
        train_x, train_y, rows = self._training()
        if len(rows) == 0:
            return rb.copy(), "measure-read-back"
        cfg = self.config
        fit = fit_models(
            train_x,
            train_y,
            self.prior_mean,
            self._states,
            maxiter=cfg.fit_maxiter,
            correlation_threshold=cfg.correlation_threshold,
            min_points=cfg.min_points_for_check,
            observables=self._observables(rows),
            predictive=self._predictive_correlation(),
        )
        self._fit, self._states = fit, fit.states
        constraints = []
        for c in self.problem.constraints:
            if not c.modelled:
                continue
            values = np.array([r[f"result.{c.name}"] for r in rows])
            ok = np.isfinite(values)
            if ok.sum() >= 2:
                key = f"constraint.{c.name}"
                gp = fit_gp(
                    train_x[torch.as_tensor(ok)],
                    torch.as_tensor(values[ok]),
                    None,
                    self._states.get(key),
                    cfg.fit_maxiter,
                )
                self._states[key] = parameter_state(gp)
                constraints.append((gp, c.lower, c.upper))
        best = self._best_row()  # safe and feasible: the incumbent of the acquisition
        best_f = self._modelled(best) if best is not None else float(train_y.min())
        acq = make_acquisition(cfg.acquisition, fit.model, best_f, cfg.beta, constraints)
        centre = self._x(best) if best is not None else None
        lo, hi = safety.box(rb, centre)
        low, span = self.problem.low, self.problem.high - self.problem.low
        lower = torch.as_tensor(np.clip((lo - low) / span, 0.0, 1.0))
        upper = torch.as_tensor(np.clip((hi - low) / span, 0.0, 1.0))
        anchors = [torch.as_tensor(np.clip((rb - low) / span, 0.0, 1.0))]
        if centre is not None:
            anchors.append(torch.as_tensor((centre - low) / span))
        u, value = optimise(
            acq,
            lower,
            upper,
            budget_s=cfg.budget_s,
            seed=self._seed(),
            anchors=anchors,
            restarts=cfg.restarts,
            raw_samples=cfg.raw_samples,
            maxiter=cfg.acq_maxiter,
        )
        self._diag.update(acquisition_value=value, fit_s=fit.fit_s)
        return low + u.numpy() * span, "bo"

    # ------------------------------------------------------------------ routes
    @property
    def pending(self) -> int:
        """Number of queued route moves (from :meth:`finish` or :meth:`rollback`)."""
        return len(self._pending)

    def best(self) -> tuple[dict[str, float], float] | None:
        """``(setting, objective)`` of the best safe, feasible observation (raw objective
        units), or ``None`` before the first one."""
        row = self._best_row()
        if row is None:
            return None
        return self.problem.named(self._x(row)), float(row[f"result.{self.problem.objective.name}"])

    def _route(self, goal: np.ndarray) -> list[dict[str, float]]:
        moves = self.safety.route(goal, self.readback)
        self._pending = [m.copy() for m in moves]
        return [self.problem.named(m) for m in moves]

    def finish(self) -> list[dict[str, float]]:
        """Moves (each within the max step) from the read-back to the best observed setting;
        the next ``suggest()`` calls return them one by one. Empty before any safe result."""
        best = self._best_row()
        return [] if best is None else self._route(self._x(best))

    def rollback(self) -> list[dict[str, float]]:
        """Moves (each within the max step) from the read-back back to the initial setting;
        the next ``suggest()`` calls return them one by one."""
        return self._route(self.problem.initial_vector)

    def resume(self) -> None:
        """Leave the paused state; the next suggestion first returns to the last safe setting."""
        self.safety.paused = False
        if self.safety.last_safe is not None:
            self.safety.returning = True

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, Any]:
        """What the session knows and decided (JSON-friendly).

        Keys: ``observations``, ``best`` (setting and objective), ``mode`` (how the last
        suggestion was made), ``uses_prior`` / ``prior_fallback`` / ``prior_correlation`` /
        ``correlation_threshold`` / ``prior_weight`` (the mismatch handling), ``calibration``
        (the prior's calibrated hidden state, when it exposes ``incoming()`` /
        ``misalignments()``), ``trust_length``, ``paused``, ``returning``, ``reason``,
        ``suggest_s`` (wall time of the last suggestion [s]), ``suggest_cpu_s`` (its CPU
        time on the calling thread [s]), ``fit_s``.
        """
        fit = self._fit
        best = self.best()
        out: dict[str, Any] = {
            "observations": len(self.rows),
            "best": None if best is None else {"setting": best[0], "objective": best[1]},
            "has_prior": self.prior is not None,
            "uses_prior": bool(fit.uses_prior) if fit else self.prior is not None,
            "prior_fallback": bool(fit.fallback) if fit else False,
            "prior_correlation": None
            if fit is None or math.isnan(fit.correlation)
            else fit.correlation,
            "correlation_threshold": self.config.correlation_threshold,
            "prior_weight": None if fit is None or math.isnan(fit.weight) else fit.weight,
            "trust_length": self.safety.length,
            "paused": self.safety.paused,
            "returning": self.safety.returning,
            "reason": self.safety.reason,
        }
        for key in ("mode", "suggest_s", "suggest_cpu_s", "fit_s", "acquisition_value"):
            out[key] = self._diag.get(key)
        prior = self.prior
        if prior is not None and hasattr(prior, "incoming") and hasattr(prior, "misalignments"):
            with torch.no_grad():
                out["calibration"] = {
                    "incoming": prior.incoming().tolist(),
                    "misalignments": prior.misalignments().tolist(),
                }
        return out

    def table(self) -> list[dict[str, Any]]:
        """The data table: one dict per ingested result (``setting.*``, ``result.*``,
        ``safe``, ``feasible``, ``suggest_s``)."""
        return [dict(r) for r in self.rows]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the session into ``directory`` (created): ``problem.json``,
        ``session.json``, ``data.csv``, ``model.npz`` and ``manifest.json`` with their sha256
        (see :mod:`accelrl.agents.bo.persistence`). :meth:`load` restores a session that
        makes the same next suggestion (for the same seed, when the time budget is not hit).
        """
        session = {
            "format_version": FORMAT_VERSION,
            "config": self.config.model_dump(),
            "prior": prior_spec(self.prior),
            "fixed_inputs": self.fixed_inputs,
            "safety": self.safety.state(),
            "readback": self.readback.tolist(),
            "pending": [m.tolist() for m in self._pending],
            "diagnostics": self.diagnostics(),
        }
        # a calibrated prior's parameters; any other prior is never changed
        prior_state = self.prior.state_dict() if is_calibrated(self.prior) else None
        return write_session(
            directory,
            self.problem.model_dump(),
            session,
            data_columns(self.problem),
            self.rows,
            self._states,
            prior_state,
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        prior: nn.Module | None = None,
        limits: Limits | None = None,
    ) -> TuningSession:
        """Restore a session written by :meth:`save`, after the checks of
        :func:`~accelrl.agents.bo.persistence.read_session` (nothing in the files runs).

        :param prior: The prior module, required when the saved prior is not a built-in one
            (its saved parameters are loaded into it).
        :param limits: The limits of the machine the session will drive: a machine config,
            a :class:`~accelrl.agents.bo.problem.TuningProblem` or ``name -> (low, high[,
            max_step])`` [SI]; bounds or a max step beyond them are refused.
        :raises SessionFileError: For a changed, damaged or missing file, an invalid value
            or bounds beyond ``limits`` (naming the file, field and value).
        :raises ValueError: For a custom prior that is not passed.
        """
        path = Path(directory)
        files = read_session(path, limits)
        meta = files.meta
        spec = meta["prior"]
        if spec is not None and prior is None:
            if isinstance(spec, dict) and spec.get("kind") == "beamline":
                from accelrl.agents.bo.prior import BeamlinePrior

                try:
                    prior = BeamlinePrior.from_config(spec)
                except (TypeError, ValueError, KeyError) as err:
                    raise SessionFileError(f"{path / 'session.json'}: prior: {err}") from None
            else:
                cls_name = spec.get("class") if isinstance(spec, dict) else spec
                raise ValueError(
                    f"{path}: the session used a custom prior ({cls_name}); pass prior= to load()"
                )
        if prior is not None and files.prior_state is not None:
            try:
                prior.load_state_dict(files.prior_state)
            except RuntimeError as err:
                raise SessionFileError(f"{path / 'model.npz'}: prior parameters: {err}") from None
        try:
            session = cls(files.problem, prior, meta["config"], meta.get("fixed_inputs"))
            session.safety.load_state(meta["safety"])
        except (ValueError, TypeError, KeyError) as err:
            raise SessionFileError(f"{path / 'session.json'}: {err}") from None
        session.rows = files.rows
        session.readback = np.asarray(meta["readback"], np.float64)
        session._pending = [np.asarray(m, np.float64) for m in meta["pending"]]
        session._states = files.states
        diagnostics = meta["diagnostics"] if isinstance(meta["diagnostics"], dict) else {}
        session._diag = {k: diagnostics.get(k) for k in ("mode", "suggest_s")}
        return session
