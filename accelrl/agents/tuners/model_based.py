"""Model-based tuning: fit the hidden state from every reading, then solve the fitted model.

:class:`ModelBasedTuner` keeps every ``(settings, reading)`` pair of the trial. At every
step it

1. **fits the hidden state** of the beamline model to all on-screen readings: the
   incoming beam's centroid (``mu_x, mu_px, mu_y, mu_py``), its transverse sizes and
   divergences (``sigma_x, sigma_px, sigma_y, sigma_py``) and the transverse misalignments
   of every randomised element (ARES-EA: quadrupoles AREAMQZM1-3 and the screen AREABSCR1);
2. **solves for the settings** that minimise the fitted model's MAE to the target
   (multi-start, within the limits);
3. **moves towards them** within a trust region of ``trust`` x ``max_delta`` per step,
   which grows while the fitted model predicts the next reading well and shrinks when it
   does not.

**Why the fit is a (bounded) linear least-squares problem.** In first-order optics the
reading is ``mu = R(k) mu_0 + sum_e T_e(k) d_e + c(k)`` (centroid: affine in the incoming
centroid and the misalignments ``d_e``, because a misaligned element is the aligned one
between two translations) and ``sigma^2 = sum_n R_n(k)^2 sigma_n^2`` (the incoming beam is
uncorrelated, so every squared size is linear in the incoming variances). The feature
columns ``R``, ``T_e``, ``c``, ``R_n^2`` at a data point are evaluated *through the
compiled beamline* (one batched call per new point, exact because of the linearity). With
the parameters normalised to their randomisation ranges (centroid and misalignments in
``[-1, 1]``, variances ``sigma_n^2 / high_n^2`` in ``[(low_n/high_n)^2, 1]``) the fit is
a ridge-regularised least squares with box bounds (the prior: a weak pull to the range
centre, and the ranges themselves), solved exactly by :func:`scipy.optimize.lsq_linear`.
The size residuals are in sigma (not sigma^2): iteratively reweighted with
``1 / (sigma_model + sigma_read)``, warm-started from the previous fit. This is the
global optimum of the same objective that gradient descent (Adam / L-BFGS) on the
normalised parameters would approach, in ~1 ms and without local minima. The beam energy
is not fitted: ``k1`` and steering angles are normalised to the beam rigidity, so the
transverse map does not depend on it.

**The solve** is a batched, projected Levenberg-Marquardt (Gauss-Newton on the smoothed
MAE ``mean sqrt(r^2 + eps^2)``, i.e. iteratively reweighted) from the current settings, the
best settings read so far, the previous solution and ``starts`` uniformly random settings;
Jacobians by finite differences on the compiled map's numpy path. Among the solutions
within ``tolerance`` of the best model MAE it takes the one closest to the current
settings (small moves keep the model's prediction local).

The model is the task's lattice (:class:`~accelrl.envs.model.TaskModel`; default
ARES-EA). A generic task works when its spec (and segment) are passed: the actuators come
from the spec and must match the problem's. Not modelled: calibration (gain) errors,
actuator failures and incoming-beam drift (``forget`` < 1 down-weights old readings for
drifts).
"""

from __future__ import annotations

import math
from typing import Any

import cheetah
import numpy as np
from scipy.optimize import lsq_linear

from accelrl.agents.tuners.base import TunerBase, from_unit, to_unit
from accelrl.envs.model import TaskModel, model_for
from accelrl.envs.spec import TaskSpec
from accelrl.names import INCOMING
from accelrl.protocol import Observation, Problem

__all__ = ["HiddenStateFit", "ModelBasedTuner"]

#: Columns of :data:`INCOMING` that are fitted.
_MU = [INCOMING.index(k) for k in ("mu_x", "mu_px", "mu_y", "mu_py")]
_SIGMA = [INCOMING.index(k) for k in ("sigma_x", "sigma_px", "sigma_y", "sigma_py")]


class HiddenStateFit:
    """Least-squares estimate of the hidden state of a :class:`TaskModel` from readings.

    :param model: The beamline model.
    :param reading_scale: Reading error [m] that one unit of normalised prior deviation is
        worth (smaller: weaker prior).
    :param bounded: Keep the parameters within their randomisation ranges.
    :param forget: Weight factor per step of age of a reading (1: all readings equal).
    """

    def __init__(
        self,
        model: TaskModel,
        reading_scale: float = 1e-6,
        bounded: bool = True,
        forget: float = 1.0,
    ) -> None:
        self.model = model
        self.reading_scale = reading_scale
        self.bounded = bounded
        self.forget = forget
        M = model.num_misalignments
        lo, hi = model.incoming_low, model.incoming_high
        # centroid parameters: incoming mu (4) then misalignments (M), as centre + half * theta
        self.mu_centre = np.concatenate([0.5 * (lo[_MU] + hi[_MU]), np.zeros(M)])
        self.mu_half = np.concatenate([0.5 * (hi[_MU] - lo[_MU]), model.misalignment_half])
        # variance parameters: sigma_n^2 = high_n^2 * v_n
        self.var_high = hi[_SIGMA] ** 2
        self.v_low = (lo[_SIGMA] / hi[_SIGMA]) ** 2
        self.v_centre = (0.5 * (lo[_SIGMA] + hi[_SIGMA]) / hi[_SIGMA]) ** 2
        self.reset()

    def reset(self) -> None:
        """Forget all data; the estimate returns to the prior centre."""
        self._F: list[np.ndarray] = []  # [2, P] centroid features per reading
        self._o: list[np.ndarray] = []  # [2] centroid offsets
        self._G: list[np.ndarray] = []  # [2, 4] variance features
        self._og: list[np.ndarray] = []  # [2] variance offsets
        self._y: list[np.ndarray] = []  # [4] readings
        self._kind: list[np.ndarray] = []  # [2] 0: centroid read, +-1: beyond +-edge
        self._sizes: list[bool] = []  # sizes were read (on screen)
        self.theta = np.zeros(len(self.mu_half))
        self.v = self.v_centre.copy()

    def __len__(self) -> int:
        """Number of readings recorded."""
        return len(self._y)

    # -- features
    def _feature_rows(self, settings: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(F_mu [2,P], o_mu [2], G [2,4], o_var [2])`` at ``settings`` (one batched call).

        ``mu = o_mu + F_mu theta`` and ``sigma^2 = o_var + G v`` (x then y).
        """
        model = self.model
        P, M = len(self.mu_half), model.num_misalignments
        base_inc = model.incoming_nominal.copy()
        base_inc[_MU] = self.mu_centre[:4]
        base_inc[_SIGMA] = 0.0
        rows = 1 + P + 4
        inc = np.tile(base_inc, (rows, 1))
        mis = np.zeros((rows, M))
        for i in range(4):
            inc[1 + i, _MU[i]] += self.mu_half[i]
        for j in range(M):
            mis[1 + 4 + j, j] = self.mu_half[4 + j]
        for n in range(4):
            inc[1 + P + n, _SIGMA[n]] = math.sqrt(self.var_high[n])
        out = model.evaluate(np.broadcast_to(settings, (rows, len(settings))), inc, mis)
        mu, var = out[:, [0, 2]], out[:, [1, 3]] ** 2
        F = (mu[1 : 1 + P] - mu[0]).T
        G = (var[1 + P :] - var[0]).T
        return F, mu[0], G, var[0]

    def add(self, settings: np.ndarray, reading: np.ndarray, on_screen: bool = True) -> None:
        """Record a reading ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] at ``settings`` (SI).

        An off-screen reading (centroid clamped to the screen edge, sizes replaced, as the
        environments report it) still tells that the clamped centroid lies beyond that
        edge, and a centroid that is inside the screen was read: both enter the fit (the
        first as a one-sided constraint); its sizes do not.
        """
        reading = np.asarray(reading, np.float64)
        F, o, G, og = self._feature_rows(np.asarray(settings, np.float64))
        kind = np.zeros(2)
        if not on_screen:
            half = self.model.screen_half_extent
            mu = reading[[0, 2]]
            kind = np.where(np.abs(mu) >= half * (1 - 1e-9), np.sign(mu), 0.0)
        self._F.append(F)
        self._o.append(o)
        self._G.append(G)
        self._og.append(og)
        self._y.append(reading)
        self._kind.append(kind)
        self._sizes.append(bool(on_screen))

    # -- fit
    def fit(self) -> None:
        """Update :attr:`theta` (centroid) and :attr:`v` (variances) from all readings."""
        n = len(self._y)
        P = len(self.mu_half)
        s = self.reading_scale
        age_w = self.forget ** np.arange(n - 1, -1, -1, dtype=np.float64)
        bounds = (-1.0, 1.0) if self.bounded else (-np.inf, np.inf)
        prior_A, prior_b = np.eye(P), np.zeros(P)
        if n == 0:
            self.theta = np.zeros(P)
            return
        F = np.concatenate(self._F)  # [2n, P]
        o = np.concatenate(self._o)
        y = np.concatenate([r[[0, 2]] for r in self._y])
        kind = np.concatenate(self._kind)
        w = np.repeat(np.sqrt(age_w), 2) / s
        edge = np.tile(self.model.screen_half_extent, n) * kind
        target = np.where(kind == 0, y, edge)
        use = kind == 0
        for _ in range(5):  # active set of the one-sided (off-screen) constraints
            A = np.concatenate([F[use] * w[use, None], prior_A])
            b = np.concatenate([(target[use] - o[use]) * w[use], prior_b])
            theta = lsq_linear(A, b, bounds=bounds, method="bvls").x
            violated = (kind != 0) & (kind * (o + F @ theta - edge) < 0) & ~use
            if not violated.any():
                break
            use = use | violated
        self.theta = theta

        # sizes: IRLS on the sigma residual, warm-started from the previous estimate
        rows = np.repeat(np.array(self._sizes), 2)
        if not rows.any():
            return
        G = np.concatenate(self._G)[rows]  # [2n', 4]
        og = np.concatenate(self._og)[rows]
        sig = np.maximum(np.concatenate([r[[1, 3]] for r in self._y])[rows], 1e-9)
        ws = np.repeat(np.sqrt(age_w), 2)[rows]
        v = self.v
        lo = self.v_low if self.bounded else np.zeros(4)
        hi = np.ones(4) if self.bounded else np.full(4, np.inf)
        for _ in range(3):
            model_sig = np.sqrt(np.maximum(og + G @ v, 1e-24))
            scale = ws / ((model_sig + sig) * s)
            A = np.concatenate([G * scale[:, None], np.eye(4)])
            b = np.concatenate([(sig**2 - og) * scale, self.v_centre])
            v = lsq_linear(A, b, bounds=(lo, hi), method="bvls").x
        self.v = v

    # -- estimate
    @property
    def incoming(self) -> np.ndarray:
        """Fitted incoming beam ``[11]`` (SI; energy, bunch length and spread nominal)."""
        inc = self.model.incoming_nominal.copy()
        mu = self.mu_centre + self.mu_half * self.theta
        inc[_MU] = mu[:4]
        inc[_SIGMA] = np.sqrt(self.var_high * self.v)
        return inc

    @property
    def misalignments(self) -> np.ndarray:
        """Fitted misalignments ``[M]`` [m]."""
        return (self.mu_centre + self.mu_half * self.theta)[4:]

    def predict(self, settings: np.ndarray) -> np.ndarray:
        """Readings ``[B, 4]`` [m] of the fitted model at ``settings [B, K]``."""
        return self.model.evaluate(settings, self.incoming, self.misalignments)


class ModelBasedTuner(TunerBase):
    """Fits the hidden state to every reading, then steps towards the fitted model's optimum.

    See the module documentation for the method.

    :param starts: Random starts of the solve (besides current, best and previous solution).
    :param iterations: Levenberg-Marquardt iterations of the solve.
    :param tolerance: Solutions within this model MAE [m] of the best count as equally
        good; the closest to the current settings is taken.
    :param smoothing: ``eps`` [m] of the smoothed absolute value in the solve.
    :param reading_scale: Prior strength: reading error [m] worth one unit of normalised
        parameter deviation from the range centre.
    :param trust: Initial trust region, in units of the problem's ``max_delta``.
    :param trust_min: Smallest trust region [max_delta].
    :param trust_max: Largest trust region [max_delta] (20: the whole ARES range).
    :param grow: Factor on the trust region after a well-predicted step.
    :param shrink: Factor after a badly predicted step or an off-screen reading.
    :param probe: Number of first steps that excite one actuator each by ``probe_size`` x
        ``max_delta`` before the model is trusted (0: none).
    :param probe_size: Probe amplitude [max_delta].
    :param forget: Weight per step of age of a reading in the fit (1: none).
    :param bounded: Keep the fitted hidden state within its randomisation ranges.
    :param spec: Task spec of the model (default ARES-EA).
    :param segment: Lattice of the model (default: the spec's shipped lattice).
    """

    name = "model-based"

    def __init__(
        self,
        starts: int = 5,
        iterations: int = 25,
        tolerance: float = 1e-6,
        smoothing: float = 1e-7,
        reading_scale: float = 1e-6,
        trust: float = 1.0,
        trust_min: float = 0.05,
        trust_max: float = 20.0,
        grow: float = 2.0,
        shrink: float = 0.5,
        probe: int = 0,
        probe_size: float = 0.5,
        forget: float = 1.0,
        bounded: bool = True,
        spec: TaskSpec | None = None,
        segment: cheetah.Segment | None = None,
    ) -> None:
        super().__init__()
        checks: list[tuple[str, Any, bool, str]] = [
            ("starts", starts, starts >= 0, ">= 0"),
            ("iterations", iterations, iterations >= 1, ">= 1"),
            ("tolerance", tolerance, tolerance >= 0, ">= 0 m"),
            ("smoothing", smoothing, smoothing > 0, "> 0 m"),
            ("reading_scale", reading_scale, reading_scale > 0, "> 0 m"),
            ("trust_min", trust_min, trust_min > 0, "> 0"),
            ("trust", trust, trust_min <= trust <= trust_max, "in [trust_min, trust_max]"),
            ("grow", grow, grow >= 1, ">= 1"),
            ("shrink", shrink, 0 < shrink <= 1, "in (0, 1]"),
            ("probe", probe, probe >= 0, ">= 0"),
            ("probe_size", probe_size, probe_size > 0, "> 0"),
            ("forget", forget, 0 < forget <= 1, "in (0, 1]"),
        ]
        for label, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{label} must be {allowed}, got {value}")
        self.starts = int(starts)
        self.iterations = int(iterations)
        self.tolerance = float(tolerance)
        self.smoothing = float(smoothing)
        self.trust0 = float(trust)
        self.trust_min = float(trust_min)
        self.trust_max = float(trust_max)
        self.grow = float(grow)
        self.shrink = float(shrink)
        self.probe = int(probe)
        self.probe_size = float(probe_size)
        self.model = model_for(spec, segment)
        self.fit = HiddenStateFit(self.model, reading_scale, bounded, forget)

    def reset(self, problem: Problem) -> None:
        super().reset(problem)
        self.model.check(problem)
        self.fit.reset()
        self.trust = self.trust0
        self._scale = 0.5 * (self.high - self.low)
        self._md = self.max_delta / self._scale  # max_delta in normalised units
        self._last_good: np.ndarray | None = None  # settings of the last on-screen reading
        self._best: tuple[float, np.ndarray] | None = None
        self._solution: np.ndarray | None = None
        self._prediction: tuple[np.ndarray, np.ndarray] | None = None  # (previous, predicted)
        self._n = 0

    # -- the solve
    def _residuals(self, U: np.ndarray, incoming: np.ndarray, mis: np.ndarray) -> np.ndarray:
        pred = self.model.evaluate(from_unit(U, self.low, self.high), incoming, mis)
        return pred - self.target

    def _objective(self, r: np.ndarray) -> np.ndarray:
        e = self.smoothing
        return np.mean(np.sqrt(r * r + e * e), axis=-1)

    def solve(
        self, starts: np.ndarray, lower: np.ndarray | float = -1.0, upper: np.ndarray | float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Minimise the fitted model's smoothed MAE from ``starts [B, K]`` (normalised).

        :param lower: Lower bounds (normalised, broadcast to ``[B, K]``), within ``[-1, 1]``.
        :param upper: Upper bounds (normalised).
        :return: ``(solutions [B, K] normalised, model MAE [B] m)``.
        """
        inc, mis = self.fit.incoming, self.fit.misalignments
        B, K = np.shape(starts)
        lower = np.broadcast_to(np.maximum(lower, -1.0), (B, K))
        upper = np.broadcast_to(np.minimum(upper, 1.0), (B, K))
        h = 1e-6
        eye = np.eye(K)
        e2 = self.smoothing**2

        def block(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Residuals ``[B, 4]`` and finite-difference Jacobians ``[B, 4, K]`` at ``V``,
            from one batched evaluation of ``B (K + 1)`` settings."""
            step = np.where(V + h <= 1.0, h, -h)  # one-sided differences inside [-1, 1]
            rows = np.concatenate([V[:, None, :], V[:, None, :] + step[:, :, None] * eye], 1)
            res = self._residuals(rows.reshape(B * (K + 1), K), inc, mis).reshape(B, K + 1, 4)
            jac = ((res[:, 1:] - res[:, :1]) / step[:, :, None]).transpose(0, 2, 1)
            return res[:, 0], jac

        U = np.clip(np.array(starts, dtype=np.float64), lower, upper)
        r, J = block(U)
        f = self._objective(r)
        lam = np.full(B, 1e-3)
        for _ in range(self.iterations):
            done = (lam > 1e6) | (np.mean(np.abs(r), axis=1) < 1e-10)
            if done.all():
                break
            w = 1.0 / np.sqrt(r * r + e2)  # IRLS weights of the smoothed |r|
            JW = J * w[:, :, None]
            H = np.einsum("bik,bil->bkl", JW, J)
            g = np.einsum("bik,bi->bk", JW, r)
            # variables at a bound whose gradient pushes outwards stay there
            active = ((U <= lower) & (g > 0)) | ((U >= upper) & (g < 0))
            free = ~active
            H = H * (free[:, :, None] & free[:, None, :]) + active[:, :, None] * eye
            g = g * free
            diag = np.einsum("bkk->bk", H)
            damping = lam[:, None] * diag + 1e-12 * diag.max(1, keepdims=True) + 1e-300
            delta = -np.linalg.solve(H + damping[:, :, None] * eye, g[:, :, None])[:, :, 0]
            Un = np.clip(U + delta, lower, upper)
            rn, Jn = block(Un)
            fn = self._objective(rn)
            better = (fn < f) & ~done
            U = np.where(better[:, None], Un, U)
            r = np.where(better[:, None], rn, r)
            J = np.where(better[:, None, None], Jn, J)
            f = np.where(better, fn, f)
            lam = np.where(better, lam / 3.0, lam * 4.0)
        mae = np.mean(np.abs(r), axis=-1)
        return U, mae

    # -- the protocol
    def ask(self, observation: Observation) -> np.ndarray:
        """Refit, solve and step ``[K]`` (SI) within the trust region."""
        beam, magnets = self._check(observation)
        u_now = np.clip(to_unit(magnets, self.low, self.high), -1.0, 1.0)
        on_screen = bool(observation.on_screen) and bool(np.all(np.isfinite(beam)))
        if on_screen:
            mae = self._mae(beam)
            if self._best is None or mae < self._best[0]:
                self._best = (mae, u_now.copy())
            if self._prediction is not None:  # how well did the model predict this reading?
                previous, predicted = self._prediction
                error = float(np.mean(np.abs(predicted - beam)))
                change = float(np.mean(np.abs(predicted - previous)))
                ratio = error / max(change, 1e-6)
                if ratio < 0.25:
                    self.trust = min(self.trust * self.grow, self.trust_max)
                elif ratio > 0.75:
                    self.trust = max(self.trust * self.shrink, self.trust_min)
            self._last_good = u_now.copy()
        elif self._last_good is not None:  # stepped off the screen: smaller steps from the
            self.trust = max(self.trust * self.shrink, self.trust_min)  # last good settings
        if np.all(np.isfinite(beam)):
            self.fit.add(magnets, beam, on_screen)
        origin = u_now if self._last_good is None else self._last_good
        self._n += 1

        if self._n <= self.probe:  # excitation: one actuator per step, alternating sign
            k = (self._n - 1) % len(origin)
            u = origin.copy()
            sign = 1.0 if (self._n // len(origin)) % 2 == 0 else -1.0
            u[k] += sign * self.probe_size * self._md[k]
            if u[k] > 1.0 or u[k] < -1.0:
                u[k] = origin[k] - sign * self.probe_size * self._md[k]
            self._prediction = None
            return self._out(from_unit(np.clip(u, -1, 1), self.low, self.high))

        self.fit.fit()
        candidates = [origin]
        if self._best is not None:
            candidates.append(self._best[1])
        if self._solution is not None:
            candidates.append(self._solution)
        candidates += list(self.rng.uniform(-1.0, 1.0, size=(self.starts, len(origin))))
        U, mae = self.solve(np.stack(candidates))
        good = mae <= mae.min() + self.tolerance
        distance = np.where(good, np.abs(U - origin).max(axis=1), np.inf)
        target = U[int(np.argmin(distance))]
        self._solution = target.copy()

        limit = self.trust * self._md
        if np.any(np.abs(target - origin) > limit * (1 + 1e-9)):
            # out of reach: the fitted model's best settings within the trust region, from the
            # current settings, the step towards the solution and the solution projected
            lower, upper = origin - limit, origin + limit
            delta = target - origin
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(np.abs(delta) > 0, limit / np.abs(delta), np.inf)
            line = origin + min(1.0, float(ratios.min())) * delta
            local, local_mae = self.solve(np.stack([origin, line, target]), lower, upper)
            target = local[int(np.argmin(local_mae))]
        u = target
        x = self._out(from_unit(u, self.low, self.high))
        previous = self.fit.predict(from_unit(origin, self.low, self.high)[None])[0]
        predicted = self.fit.predict(x[None])[0]
        self._prediction = (previous, predicted)
        return x
