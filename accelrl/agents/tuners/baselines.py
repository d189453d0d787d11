"""Classic black-box baselines under the optimiser protocol, as in the published comparison.

Kaiser, Xu, Eichler et al., "Reinforcement learning-trained optimisers and Bayesian
optimisation for online particle accelerator tuning", Sci. Rep. 14 (2024) compare their
RL-trained optimiser with Bayesian optimisation, Nelder-Mead, random search and "do nothing"
on the same trials. This module holds those baselines plus classic extremum seeking:

* :class:`DoNothing` keeps the start settings (the reference every method must beat).
* :class:`RandomSearch` proposes settings uniformly within the limits at every step.
* :class:`NelderMead` runs :func:`scipy.optimize.minimize` (``method="Nelder-Mead"``, bounded)
  on the normalised settings, one function evaluation per step (ask/tell).
* :class:`ExtremumSeeking` dithers every actuator with its own sinusoid and descends the
  demodulated cost.

All work in the *normalised* settings space ``u = 2 (x - low) / (high - low) - 1`` in
``[-1, 1]^K``; their cost is the mean absolute error (MAE) of the screen reading to the
target [m] that the optimiser observes (an optimiser never sees the true beam). "Best so
far" is tracked by the evaluation: optimisers only propose.

>>> from accelrl.agents.tuners.baselines import RandomSearch
>>> opt = RandomSearch()
>>> opt.reset(problem)                      # doctest: +SKIP
>>> settings = opt.ask(observation)         # doctest: +SKIP
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize

from accelrl.agents.tuners.base import TunerBase, check_problem, from_unit, to_unit
from accelrl.protocol import Observation, ObservationBatch, Problem

__all__ = ["DoNothing", "ExtremumSeeking", "NelderMead", "RandomSearch", "RandomSteps"]


# --------------------------------------------------------------------------- trivial
class DoNothing(TunerBase):
    """Keeps the start settings for the whole trial (the published "do nothing" reference).

    A :class:`~accelrl.protocol.BatchOptimiser`: many trials are answered at once.
    """

    name = "do-nothing"

    def ask(self, observation: Observation) -> np.ndarray:
        """The start settings ``[K]`` (SI)."""
        self._check(observation)
        return self.start.copy()

    def reset_batch(self, problems: Sequence[Problem]) -> None:
        """Start ``N`` trials (each problem validated)."""
        for problem in problems:
            check_problem(problem)
        self._starts = np.stack([np.asarray(p.start, np.float64) for p in problems])

    def ask_batch(self, observations: ObservationBatch) -> np.ndarray:
        """The start settings ``[N, K]`` (SI)."""
        return self._starts.copy()


class RandomSearch(TunerBase):
    """Uniformly random settings within the limits at every step (the published baseline).

    Seeded from ``problem.seed``, so a trial is reproducible.
    """

    name = "random"

    def ask(self, observation: Observation) -> np.ndarray:
        """Settings ``[K]`` (SI) drawn uniformly in ``[low, high]``."""
        self._check(observation)
        return self._out(self.rng.uniform(self.low, self.high))


class RandomSteps(TunerBase):
    """A random walk: at every step a change drawn uniformly in ``[-max_delta, max_delta]``
    for each actuator, added to the current settings and clipped to the limits.

    What a delta-action agent that acts at random does (the ``random`` policy of the
    vectorised rollouts). Seeded from ``problem.seed``; a
    :class:`~accelrl.protocol.BatchOptimiser` (one generator per trial, so trial ``i`` of a
    batch draws what a single trial with its problem draws).
    """

    name = "random-steps"

    def ask(self, observation: Observation) -> np.ndarray:
        """Current settings plus a uniform random change, within the limits ``[K]`` (SI)."""
        _, magnets = self._check(observation)
        return self._out(magnets + self.rng.uniform(-self.max_delta, self.max_delta))

    def reset_batch(self, problems: Sequence[Problem]) -> None:
        """Start ``N`` trials, one generator each (seeded from its ``problem.seed``)."""
        for problem in problems:
            check_problem(problem)
        self._rngs = [np.random.default_rng(int(p.seed)) for p in problems]
        self._low = np.stack([np.asarray(p.low, np.float64) for p in problems])
        self._high = np.stack([np.asarray(p.high, np.float64) for p in problems])
        self._delta = np.stack([np.asarray(p.max_delta, np.float64) for p in problems])

    def ask_batch(self, observations: ObservationBatch) -> np.ndarray:
        """Settings ``[N, K]`` (SI): every trial's own random change."""
        step = np.stack([r.uniform(-d, d) for r, d in zip(self._rngs, self._delta, strict=True)])
        return np.clip(observations.magnets + step, self._low, self._high)


# --------------------------------------------------------------------------- Nelder-Mead
class _Stop(Exception):
    """Raised inside the objective to abandon a worker's optimisation."""


def _stop_worker(stop: threading.Event, values: queue.Queue) -> None:
    """Ask a worker to end: it raises :class:`_Stop` at its next (or current) evaluation."""
    stop.set()
    values.put(None)


def _nelder_mead_worker(
    x0: np.ndarray,
    simplex: np.ndarray,
    options: dict[str, Any],
    proposals: queue.Queue,
    values: queue.Queue,
    stop: threading.Event,
) -> None:
    """Run scipy's bounded Nelder-Mead; every evaluation is handed to the main thread.

    Holds no reference to the optimiser, so an abandoned optimiser can be collected (its
    finaliser then stops this thread).
    """

    def objective(u: np.ndarray) -> float:
        if stop.is_set():
            raise _Stop
        proposals.put(("x", np.array(u, dtype=np.float64)))
        value = values.get()
        if value is None or stop.is_set():
            raise _Stop
        return float(value)

    try:
        result = minimize(
            objective,
            x0,
            method="Nelder-Mead",
            bounds=[(-1.0, 1.0)] * len(x0),
            options={**options, "initial_simplex": simplex},
        )
        proposals.put(("done", result))
    except _Stop:
        return
    except BaseException as err:  # noqa: BLE001 - reported to the caller of ask()
        proposals.put(("error", err))


class NelderMead(TunerBase):
    """Bounded Nelder-Mead simplex search (scipy), one function evaluation per step.

    scipy's ``minimize(method="Nelder-Mead", bounds=[(-1, 1)] * K)`` runs in a daemon
    worker thread on the normalised settings; each objective evaluation is handed to
    :meth:`ask` through a queue and answered with the next observation, so the evaluation
    drives scipy step by step. The objective is the observed MAE to the target in um
    (``log=True``: its natural log, which weighs the final approach more). The initial
    simplex is the start settings plus one vertex per actuator displaced by ``simplex_size``
    normalised units (a fraction ``simplex_size / 2`` of the actuator's range; towards the
    interior when the start is near a limit). The published study used a fixed simplex
    found by a hyperparameter search, with vertices spread over ~0.1-0.9 normalised units;
    ``simplex_size=0.2`` (10% of each range: 14.4 1/m^2 for the ARES quadrupoles, 1.24 mrad
    for the steerers) measured best on our harness among 0.05-0.5.

    When scipy converges before the budget ends, the search restarts from the best point
    seen with the simplex scaled by ``restart_shrink``. A new :meth:`reset` (or the
    optimiser being garbage-collected, or :meth:`close`) abandons the previous worker;
    a worker left waiting at the end of a trial costs nothing and never blocks.

    :param simplex_size: Edge length of the initial simplex in normalised units (>0, <=2).
    :param log: Minimise ``log(MAE)`` instead of the MAE.
    :param restart_shrink: Factor on the simplex size at every restart (0 < f <= 1).
    :param xatol: scipy's absolute tolerance on the normalised settings.
    :param fatol: scipy's absolute tolerance on the objective (um, or log units).
    :param timeout: Seconds :meth:`ask` waits for the worker before raising.
    """

    name = "nelder-mead"

    def __init__(
        self,
        simplex_size: float = 0.2,
        log: bool = False,
        restart_shrink: float = 0.5,
        xatol: float = 1e-4,
        fatol: float = 1e-3,
        timeout: float = 60.0,
    ) -> None:
        super().__init__()
        if not 0.0 < simplex_size <= 2.0:
            raise ValueError(f"simplex_size must be in (0, 2] normalised units, got {simplex_size}")
        if not 0.0 < restart_shrink <= 1.0:
            raise ValueError(f"restart_shrink must be in (0, 1], got {restart_shrink}")
        if xatol <= 0 or fatol <= 0:
            raise ValueError(f"xatol and fatol must be > 0, got {xatol}, {fatol}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.simplex_size = float(simplex_size)
        self.log = bool(log)
        self.restart_shrink = float(restart_shrink)
        self.xatol = float(xatol)
        self.fatol = float(fatol)
        self.timeout = float(timeout)
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._values: queue.Queue | None = None
        self._proposals: queue.Queue | None = None
        self._finalizer: weakref.finalize | None = None
        self.restarts = 0

    # -- worker management
    def close(self) -> None:
        """Abandon the current worker thread (idempotent); it exits promptly."""
        if self._finalizer is not None:
            self._finalizer()  # calls _stop_worker once
            self._finalizer = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._thread = self._stop = self._values = self._proposals = None

    def _launch(self, x0: np.ndarray, f0: float, size: float) -> None:
        """Start a worker at ``x0`` (normalised), whose cost ``f0`` is already measured."""
        self.close()
        K = len(x0)
        simplex = np.tile(x0, (K + 1, 1))
        for i in range(K):
            step = size if x0[i] + size <= 1.0 else -size
            simplex[i + 1, i] = np.clip(x0[i] + step, -1.0, 1.0)
        remaining = max(int(self._problem.max_steps) - self._evaluations, 1) + K + 1
        options = {"maxfev": remaining, "xatol": self.xatol, "fatol": self.fatol}
        self._stop, self._values, self._proposals = threading.Event(), queue.Queue(), queue.Queue()
        self._thread = threading.Thread(
            target=_nelder_mead_worker,
            args=(x0.copy(), simplex, options, self._proposals, self._values, self._stop),
            name="accelrl-nelder-mead",
            daemon=True,
        )
        self._finalizer = weakref.finalize(self, _stop_worker, self._stop, self._values)
        self._known: tuple[np.ndarray | None, float] = (x0.copy(), f0)
        self._pending = None
        self._thread.start()

    def _next_message(self) -> tuple[str, Any]:
        """The worker's next message; raises if it died silently or timed out."""
        waited = 0.0
        while True:
            try:
                return self._proposals.get(timeout=0.25)
            except queue.Empty:
                waited += 0.25
                if not self._thread.is_alive() and self._proposals.empty():
                    raise RuntimeError("Nelder-Mead worker ended without an answer") from None
                if waited >= self.timeout:
                    raise RuntimeError(
                        f"Nelder-Mead worker did not answer within {self.timeout} s"
                    ) from None

    def __del__(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles the configuration only (a running worker does not travel)."""
        keep = ("simplex_size", "log", "restart_shrink", "xatol", "fatol", "timeout")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    # -- protocol
    def reset(self, problem: Problem) -> None:
        """Start a trial; abandons the previous trial's worker."""
        self.close()
        super().reset(problem)
        self._evaluations = 0
        self._best_u: np.ndarray | None = None
        self._best_f = math.inf
        self._size = self.simplex_size
        self._pending = None
        self.restarts = 0

    def _objective(self, beam: np.ndarray) -> float:
        mae = self._mae(beam)
        if not math.isfinite(mae):
            return 1e12
        mae_um = mae * 1e6
        return math.log(max(mae_um, 1e-9)) if self.log else mae_um

    def ask(self, observation: Observation) -> np.ndarray:
        """Report the observation's cost to scipy and return its next evaluation point (SI).

        :raises RuntimeError: If the worker failed or did not answer within ``timeout`` s.
        """
        beam, magnets = self._check(observation)
        f = self._objective(beam)
        u = np.clip(to_unit(magnets, self.low, self.high), -1.0, 1.0)
        self._evaluations += 1
        if f < self._best_f:
            self._best_f, self._best_u = f, u.copy()
        if self._thread is None:  # first ask of the trial (or after close()/a collapse)
            self._launch(u, f, self._size)
        elif self._pending is not None:
            self._values.put(f)
            self._pending = None
        launches = 0
        while True:
            kind, payload = self._next_message()
            if kind == "x":
                known_u, known_f = self._known
                if known_u is not None and np.allclose(payload, known_u, rtol=0.0, atol=1e-12):
                    self._values.put(known_f)  # a vertex we have already measured
                    self._known = (None, math.inf)
                    continue
                self._pending = payload
                return self._out(from_unit(payload, self.low, self.high))
            if kind == "error":
                raise RuntimeError(f"Nelder-Mead worker failed: {payload!r}") from payload
            # "done": scipy converged; restart from the best point with a smaller simplex
            launches += 1
            self.restarts += 1
            self._size *= self.restart_shrink
            if launches > 3 or self._size < 10 * self.xatol:
                # the simplex collapses at once: stay at the best point for this step and
                # start afresh with the initial simplex size at the next one
                self.close()
                self._size = self.simplex_size
                return self._out(from_unit(self._best_u, self.low, self.high))
            self._launch(self._best_u, self._best_f, self._size)


# --------------------------------------------------------------------------- extremum seeking
class ExtremumSeeking(TunerBase):
    """Classic dithering extremum seeking (ES) on the normalised settings.

    Every actuator ``k`` is perturbed by ``amplitude * sin(omega_k * n)`` around an
    estimate ``p_k`` (normalised units, step ``n``); the cost ``C_n`` = observed MAE
    divided by the MAE at the start (``log=True``: ``log`` of it) is high-pass filtered
    (``eta_n = C_n - L_n``, ``L_n = L_{n-1} + hp * (C_n - L_{n-1})``), demodulated with
    each actuator's dither (``eta_n * sin(omega_k n)``, an estimate of ``amplitude/2 *
    dC/dp_k``) and integrated: ``p_k -= gain * eta_n * sin(omega_k n)``. ``p`` stays in
    ``[-1, 1]``; a step of ``p`` is limited to ``max_step`` normalised units.

    The frequencies are ``omega_k = 2 pi f_k`` with ``f_k`` spread evenly over
    ``[f_min, f_max]`` cycles per step (for the 5 ARES actuators 0.12, 0.19, 0.26, 0.33,
    0.40 cycles/step: distinct, no one a low harmonic of another, below the 0.5 Nyquist
    limit).

    The defaults (amplitude 0.03, gain 0.1, hp 0.5, linear cost) measured best on 20 ARES-EA
    trials x 150 steps among amplitudes 0.02-0.1, gains 0.01-1 and hp 0.2-1.

    :param amplitude: Dither amplitude [normalised units] (0.03 = 1.5% of each range).
    :param gain: Integrator gain [normalised units per unit of cost].
    :param hp: High-pass filter coefficient in (0, 1].
    :param f_min: Lowest dither frequency [cycles/step].
    :param f_max: Highest dither frequency [cycles/step] (< 0.5).
    :param log: Use the log of the normalised cost.
    :param max_step: Largest change of the estimate per step [normalised units].
    """

    name = "extremum-seeking"

    def __init__(
        self,
        amplitude: float = 0.03,
        gain: float = 0.1,
        hp: float = 0.5,
        f_min: float = 0.12,
        f_max: float = 0.4,
        log: bool = False,
        max_step: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 < amplitude <= 1.0:
            raise ValueError(f"amplitude must be in (0, 1] normalised units, got {amplitude}")
        if gain <= 0:
            raise ValueError(f"gain must be > 0, got {gain}")
        if not 0.0 < hp <= 1.0:
            raise ValueError(f"hp must be in (0, 1], got {hp}")
        if not 0.0 < f_min <= f_max < 0.5:
            raise ValueError(
                f"need 0 < f_min <= f_max < 0.5 cycles/step (Nyquist), got {f_min}, {f_max}"
            )
        if max_step <= 0:
            raise ValueError(f"max_step must be > 0 normalised units, got {max_step}")
        self.amplitude = float(amplitude)
        self.gain = float(gain)
        self.hp = float(hp)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.log = bool(log)
        self.max_step = float(max_step)

    def reset(self, problem: Problem) -> None:
        super().reset(problem)
        K = len(self.low)
        freq = np.linspace(self.f_min, self.f_max, K) if K > 1 else np.array([self.f_max])
        self.omega = 2.0 * math.pi * freq
        self._p = to_unit(self.start, self.low, self.high)
        self._n = 0
        self._c0: float | None = None
        self._lowpass: float | None = None

    def ask(self, observation: Observation) -> np.ndarray:
        """Next dithered settings ``[K]`` (SI)."""
        beam, _ = self._check(observation)
        mae = self._mae(beam)
        if self._c0 is None:
            self._c0 = max(mae if math.isfinite(mae) else 1.0, 1e-9)
        cost = (mae if math.isfinite(mae) else 10 * self._c0) / self._c0
        if self.log:
            cost = math.log(max(cost, 1e-9))
        if self._lowpass is None:
            self._lowpass = cost
        eta = cost - self._lowpass
        self._lowpass += self.hp * (cost - self._lowpass)
        if self._n > 0:  # the cost of the settings dithered with sin(omega * n)
            delta = -self.gain * eta * np.sin(self.omega * self._n)
            self._p = np.clip(self._p + np.clip(delta, -self.max_step, self.max_step), -1, 1)
        self._n += 1
        u = np.clip(self._p + self.amplitude * np.sin(self.omega * self._n), -1.0, 1.0)
        return self._out(from_unit(u, self.low, self.high))
