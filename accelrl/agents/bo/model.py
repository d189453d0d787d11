"""GP models of a session: the prior-mean wrapper, its calibration and the mismatch fallback.

* :class:`PriorMean` is the one place where BoTorch's conventions meet a physics prior: the
  GP sees inputs normalised to ``[0, 1]^d`` and standardised outputs; the prior module sees
  physical inputs (SI, by name) and returns the objective in its own units. ``PriorMean(x)
  = (sign * prior(low + x (high - low)) - y_mean) / y_std``.
* :class:`CalibratedMean` adds a learnt output scale and offset and a learnt blend with a
  constant mean; the prior module's own calibration parameters (e.g. misalignments) are
  fitted jointly with these and with the GP hyperparameters by maximising the marginal log
  likelihood (with a unit-normal prior on the raw calibration parameters).
* :func:`fit_models` fits the objective's ``SingleTaskGP`` and falls back to a
  constant-mean GP when the prior correlates poorly with the data: Pearson ``r <``
  :data:`CORRELATION_THRESHOLD` (0.5) on at least :data:`MIN_POINTS_FOR_CHECK` (5) points,
  where the session passes the correlation of the prior's *predictions* (made before each
  point was observed) with the observed objective.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.optim.fit import fit_gpytorch_mll_scipy
from gpytorch.means import ConstantMean, Mean
from gpytorch.mlls import AddedLossTerm, ExactMarginalLogLikelihood
from gpytorch.priors import NormalPrior
from torch import nn

from accelrl.agents.bo.config import CORRELATION_THRESHOLD, MIN_POINTS_FOR_CHECK

__all__ = [
    "CORRELATION_THRESHOLD",
    "MIN_POINTS_FOR_CHECK",
    "CalibratedMean",
    "FitResult",
    "PriorMean",
    "fit_gp",
    "fit_models",
]


DTYPE = torch.float64


def _raw_calibration(module: CalibratedMean) -> torch.Tensor:
    """Closure of the calibration prior: the prior module's raw calibration vector."""
    return module.prior_mean.prior.calibration_vector()


def is_calibrated(prior: nn.Module | None) -> bool:
    """Whether a session calibrates ``prior``: it exposes ``calibration_vector()`` (the
    calibration protocol of :class:`~accelrl.agents.bo.prior.BeamlinePrior`); its trainable
    parameters are then fitted with the GP. Any other module is used as it is."""
    return prior is not None and callable(getattr(prior, "calibration_vector", None))


class PriorMean(Mean):
    """A prior module over named physical inputs as a GP mean over normalised inputs.

    :param prior: ``nn.Module`` with ``input_names`` whose ``forward(x [..., m])`` (SI,
        columns in ``input_names`` order) returns the objective ``[...]`` (or ``[..., 1]``,
        or a tuple whose first element is that, e.g. a surrogate's ``(mean, std, ...)``).
        Only a module with ``calibration_vector()`` (e.g.
        :class:`~accelrl.agents.bo.prior.BeamlinePrior`) is calibrated: its trainable
        parameters are fitted with the GP. Any other module is used through a frozen copy
        in evaluation mode (``prior`` is that copy); the caller's module is never changed.
    :param names: The problem's variable names, in GP-input order.
    :param low: Lower bounds ``[d]`` (SI) that normalised 0 maps to.
    :param high: Upper bounds ``[d]`` (SI) that normalised 1 maps to.
    :param sign: ``-1`` when the GP models the negated objective (minimisation), else ``+1``.
    :param fixed_inputs: Values (SI) of prior inputs that are not problem variables.
    :raises ValueError: When a prior input is neither a variable nor fixed, or the module
        lacks ``input_names``.
    """

    def __init__(
        self,
        prior: nn.Module,
        names: Sequence[str],
        low: Sequence[float] | torch.Tensor,
        high: Sequence[float] | torch.Tensor,
        sign: float = 1.0,
        fixed_inputs: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        input_names = getattr(prior, "input_names", None)
        if input_names is None:
            raise ValueError(
                f"prior {type(prior).__name__} must have an `input_names` attribute naming the "
                "columns of its input"
            )
        fixed = dict(fixed_inputs or {})
        names = list(names)
        columns: list[int] = []
        for n in input_names:
            if n in names:
                columns.append(names.index(n))
            elif n in fixed:
                columns.append(-1)
            else:
                raise ValueError(
                    f"prior input {n!r} is not a problem variable {names} and has no fixed value"
                )
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {sign}")
        if is_calibrated(prior):
            self.prior = prior  # a submodule: its trainable parameters are the calibration
        else:
            # Any other module (a surrogate, a fixed model) is used through a frozen copy in
            # evaluation mode, held outside the module tree: the GP's fits neither change nor
            # accumulate gradients on the caller's module, and its state is not saved.
            try:
                frozen = copy.deepcopy(prior)
            except Exception as err:
                raise ValueError(
                    f"prior {type(prior).__name__} cannot be copied ({err}); a prior without "
                    "calibration_vector() is used through a frozen copy"
                ) from err
            object.__setattr__(self, "prior", frozen.requires_grad_(False).eval())
        self.names = tuple(names)
        self.input_names = tuple(input_names)
        self.columns = columns
        self.sign = float(sign)
        self.register_buffer("low", torch.as_tensor(low, dtype=DTYPE).reshape(-1))
        self.register_buffer("high", torch.as_tensor(high, dtype=DTYPE).reshape(-1))
        values = [
            fixed.get(n, 0.0) if c < 0 else 0.0 for n, c in zip(input_names, columns, strict=True)
        ]
        self.register_buffer("fixed", torch.tensor(values, dtype=DTYPE))
        self.register_buffer("y_mean", torch.zeros((), dtype=DTYPE))
        self.register_buffer("y_std", torch.ones((), dtype=DTYPE))

    def set_standardisation(self, mean: float | torch.Tensor, std: float | torch.Tensor) -> None:
        """Use the outcome standardisation ``(y - mean) / std`` of the GP."""
        self.y_mean = torch.as_tensor(mean, dtype=DTYPE).reshape(())
        self.y_std = torch.as_tensor(std, dtype=DTYPE).reshape(())

    def physical(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[..., d]`` -> physical inputs ``[..., d]`` (SI)."""
        return self.low + x * (self.high - self.low)

    def raw(self, x_phys: torch.Tensor) -> torch.Tensor:
        """The prior module's output ``[...]`` at physical ``x_phys [..., d]`` (problem order)."""
        return self._objective(self.prior(self._module_input(x_phys)), x_phys.shape[:-1])

    def _objective(self, out: Any, shape: torch.Size) -> torch.Tensor:
        """The module's output as ``[...]`` objective values (see the class docs)."""
        if isinstance(out, (tuple, list)):  # e.g. (mean, std, ...) of a surrogate: the mean
            out = out[0]
        x_phys_shape = (*shape, 0)
        if out.shape != shape:
            if out.shape[-1:] != (1,) or out.shape[:-1] != shape:
                raise ValueError(
                    f"prior {type(self.prior).__name__} returned shape {tuple(out.shape)} for "
                    f"{tuple(x_phys_shape[:-1])} points; expected {tuple(shape)} (one "
                    "objective value per point; wrap multi-output models with SelectOutput)"
                )
            out = out[..., 0]
        return out

    def _module_input(self, x_phys: torch.Tensor) -> torch.Tensor:
        cols = [
            x_phys[..., c] if c >= 0 else self.fixed[i].expand(x_phys.shape[:-1])
            for i, c in enumerate(self.columns)
        ]
        return torch.stack(cols, dim=-1)

    @property
    def observable_names(self) -> tuple[str, ...]:
        """Names of the observables the prior predicts (``()`` if none)."""
        if not callable(getattr(self.prior, "observe", None)):
            return ()
        return tuple(getattr(self.prior, "observable_names", ()))

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """The prior's observables ``[..., m]`` (their SI units) at normalised ``x [..., d]``."""
        return self.prior.observe(self._module_input(self.physical(x.to(DTYPE))))

    def forward_and_observe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(x), observe(x))`` from one evaluation of the prior when it offers
        ``forward_and_observe`` (the beamline: one tracking for both)."""
        x_phys = self.physical(x.to(DTYPE))
        inputs = self._module_input(x_phys)
        both = getattr(self.prior, "forward_and_observe", None)
        if callable(both):
            out, observed = both(inputs)
        else:
            out, observed = self.prior(inputs), self.prior.observe(inputs)
        out = self._objective(out, x_phys.shape[:-1])
        return (self.sign * out - self.y_mean) / self.y_std, observed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised GP-space prior ``[..., n]`` at normalised ``x [..., n, d]``."""
        return (self.sign * self.raw(self.physical(x.to(DTYPE))) - self.y_mean) / self.y_std


class CalibratedMean(Mean):
    """``w (a p(x) + b) + (1 - w) c``: a calibrated prior ``p`` blended with a constant ``c``.

    ``w = sigmoid(raw_weight)`` in (0, 1), ``a = exp(log_scale)`` > 0, ``b``, ``c`` and the
    prior's own trainable parameters are hyperparameters of the GP (fitted by MLL). Priors:
    ``raw_weight ~ N(2, 1.5)`` (starts trusting the physics), ``log_scale ~ N(0, 0.5)``,
    ``b ~ N(0, 1)`` and, when the prior has ``calibration_vector()``, ``N(0, 1)`` on every raw
    calibration parameter.

    **Observables.** When the prior also predicts observables that the results report (e.g.
    the screen reading ``mu_x, sigma_x, mu_y, sigma_y`` [m]), :meth:`set_observables` adds
    their log likelihood under "prior prediction + Gaussian noise" (one learnt noise level
    per observable, ``log_noise ~ N(log 0.05, 1)`` in units of the observable's spread) to
    the marginal log likelihood, so the shared calibration parameters are fitted to every
    measured output, not only to the objective.

    :param prior_mean: The wrapped prior.
    :param num_observables: Number of observables ``m`` (0: none).
    """

    def __init__(self, prior_mean: PriorMean, num_observables: int = 0) -> None:
        super().__init__()
        self.prior_mean = prior_mean
        self.log_noise = nn.Parameter(torch.full((num_observables,), math.log(0.05), dtype=DTYPE))
        if num_observables:
            self.register_prior("noise_prior", NormalPrior(math.log(0.05), 1.0), "log_noise")
        self.register_added_loss_term("observables")
        self.raw_weight = nn.Parameter(torch.tensor(2.0, dtype=DTYPE))
        self.log_scale = nn.Parameter(torch.tensor(0.0, dtype=DTYPE))
        self.offset = nn.Parameter(torch.tensor(0.0, dtype=DTYPE))
        self.constant = nn.Parameter(torch.tensor(0.0, dtype=DTYPE))
        self.register_prior("weight_prior", NormalPrior(2.0, 1.5), "raw_weight")
        self.register_prior("scale_prior", NormalPrior(0.0, 0.5), "log_scale")
        self.register_prior("offset_prior", NormalPrior(0.0, 1.0), "offset")
        prior = prior_mean.prior
        if is_calibrated(prior) and any(p.requires_grad for p in prior.parameters()):
            self.register_prior("calibration_prior", NormalPrior(0.0, 1.0), _raw_calibration)

    def set_observables(self, x: torch.Tensor, values: torch.Tensor) -> None:
        """Fit the calibration also to observed ``values [n, m]`` (SI, NaN where missing) at
        normalised ``x [n, d]``."""
        if values.shape[-1] != self.log_noise.numel():
            raise ValueError(
                f"expected {self.log_noise.numel()} observables, got shape {tuple(values.shape)}"
            )
        self.update_added_loss_term("observables", ObservableTerm(self, x, values))

    @property
    def weight(self) -> torch.Tensor:
        """Blend weight of the prior ``w`` in (0, 1)."""
        return torch.sigmoid(self.raw_weight)

    def prior_term(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated prior ``a p(x) + b`` ``[..., n]`` (standardised units)."""
        return torch.exp(self.log_scale) * self.prior_mean(x) + self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        term = self._added_loss_terms.get("observables")
        if (
            self.training
            and isinstance(term, ObservableTerm)
            and x.shape == term.x.shape
            and torch.equal(x, term.x)
        ):  # the MLL's pass over the training data: one prior evaluation for both terms
            standardised, term.predicted = self.prior_mean.forward_and_observe(x)
            prior = torch.exp(self.log_scale) * standardised + self.offset
        else:
            if isinstance(term, ObservableTerm):
                term.predicted = None
            prior = self.prior_term(x)
        return w * prior + (1.0 - w) * self.constant


class ObservableTerm(AddedLossTerm):
    """Log likelihood of observed observables under the calibrated prior plus noise.

    :param mean: The calibrated mean (prior and noise levels).
    :param x: Normalised inputs ``[n, d]``.
    :param values: Observed values ``[n, m]`` (SI; NaN where missing).
    """

    def __init__(self, mean: CalibratedMean, x: torch.Tensor, values: torch.Tensor) -> None:
        self.mean = mean
        self.x = x.to(DTYPE)
        values = values.to(DTYPE)
        self.mask = torch.isfinite(values)
        self.values = torch.where(self.mask, values, torch.zeros_like(values))
        spread = []
        for j in range(values.shape[-1]):
            v = values[self.mask[:, j], j]
            spread.append(float(v.abs().mean()) if v.numel() else 1.0)
        self.scale = torch.tensor(spread, dtype=DTYPE).clamp_min(1e-12)
        #: Prediction at ``x`` from the mean's latest training pass (``None``: recompute).
        self.predicted: torch.Tensor | None = None

    def loss(self, *args: Any) -> torch.Tensor:
        """Sum of Gaussian log densities of the observed values (added to the MLL)."""
        if not bool(self.mask.any()):
            return torch.zeros((), dtype=DTYPE)
        predicted = self.predicted
        self.predicted = None  # used once: the next pass of the MLL computes a new one
        if predicted is None:
            predicted = self.mean.prior_mean.observe(self.x)
        sigma = torch.exp(self.mean.log_noise)
        z = (predicted - self.values) / (self.scale * sigma)
        density = -0.5 * z * z - self.mean.log_noise - 0.5 * math.log(2.0 * math.pi)
        return torch.where(self.mask, density, torch.zeros_like(density)).sum()


@dataclass
class FitResult:
    """A fitted objective GP and what was learnt about the prior.

    :param model: The GP used for the acquisition.
    :param uses_prior: Whether ``model`` has the calibrated prior mean.
    :param correlation: The correlation the fallback rule tested: predictive when given,
        else in-sample of the calibrated prior term (NaN without a prior or with too few
        points).
    :param fallback: The prior was available but replaced by the constant mean.
    :param weight: Learnt blend weight ``w`` (NaN without a prior).
    :param states: Fitted parameters per model kind (``"prior"``, ``"constant"``) for the
        next warm start.
    :param fit_s: Wall time of the fits [s].
    """

    model: SingleTaskGP
    uses_prior: bool
    correlation: float
    fallback: bool
    weight: float
    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    fit_s: float = 0.0


def parameter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _load_parameters(model: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    if not state:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            p = params.get(name)
            if p is not None and p.shape == value.shape and torch.all(torch.isfinite(value)):
                p.copy_(value)


def fit_gp(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    mean_module: Mean | None = None,
    state: dict[str, torch.Tensor] | None = None,
    maxiter: int = 50,
    timeout_s: float | None = None,
) -> SingleTaskGP:
    """A ``SingleTaskGP`` on normalised ``train_x [n, d]`` and ``train_y [n]`` (standardised
    inside), its hyperparameters fitted by L-BFGS on the marginal log likelihood.

    :param mean_module: Mean (default: ``ConstantMean``). A :class:`CalibratedMean` gets the
        GP's standardisation before the fit.
    :param state: Parameters to start from (warm start), as returned by a previous fit.
    :param maxiter: L-BFGS iterations.
    :param timeout_s: Wall-time limit of the fit [s].
    """
    mean = mean_module if mean_module is not None else ConstantMean()
    with warnings.catch_warnings():  # constant or unscaled data is expected and handled
        warnings.simplefilter("ignore")
        model = SingleTaskGP(
            train_x, train_y.reshape(-1, 1), mean_module=mean, outcome_transform=Standardize(m=1)
        )
    if isinstance(mean, CalibratedMean):
        ot = model.outcome_transform
        mean.prior_mean.set_standardisation(ot.means.reshape(()), ot.stdvs.reshape(()))
    initial = parameter_state(model)
    _load_parameters(model, state)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll_scipy(mll, options={"maxiter": int(maxiter)}, timeout_sec=timeout_s)
    except Exception:  # a failed fit keeps the start values, never the session
        _load_parameters(model, initial)
    if not all(torch.all(torch.isfinite(p)) for p in model.parameters()):
        _load_parameters(model, initial)
    model.eval()
    return model


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(torch.sqrt((a * a).sum() * (b * b).sum()))
    if not denominator > 0 or not math.isfinite(denominator):
        return math.nan
    return float((a * b).sum()) / denominator


def fit_models(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    prior_mean: PriorMean | None,
    states: dict[str, dict[str, torch.Tensor]] | None = None,
    maxiter: int = 50,
    timeout_s: float | None = None,
    correlation_threshold: float = CORRELATION_THRESHOLD,
    min_points: int = MIN_POINTS_FOR_CHECK,
    observables: torch.Tensor | None = None,
    predictive: tuple[float, int] | None = None,
) -> FitResult:
    """Fit the objective GP with the calibrated prior (if any) and apply the fallback rule.

    :param train_x: Normalised inputs ``[n, d]``.
    :param train_y: Modelled objective in GP space ``[n]`` (larger is better).
    :param prior_mean: The wrapped prior, or ``None`` for a constant mean.
    :param states: Warm-start parameters per kind (``"prior"``, ``"constant"``).
    :param maxiter: L-BFGS iterations per fit.
    :param timeout_s: Wall-time limit of each fit [s].
    :param correlation_threshold: Fallback when the calibrated prior's correlation with the
        data is below this value.
    :param min_points: Fewest points before the fallback can trigger.
    :param observables: Observed values ``[n, m]`` of the prior's observables (SI, NaN
        where missing), fitted jointly (see :class:`CalibratedMean`).
    :param predictive: ``(correlation, points)`` of the prior's *predictions* (made before
        each point was observed) with the observed objective. When given, the fallback rule
        tests it instead of the in-sample correlation of the calibrated prior (which a
        flexible calibration can inflate).
    """
    t0 = time.perf_counter()
    states = dict(states or {})
    if prior_mean is None:
        model = fit_gp(train_x, train_y, None, states.get("constant"), maxiter, timeout_s)
        states["constant"] = parameter_state(model)
        return FitResult(model, False, math.nan, False, math.nan, states, time.perf_counter() - t0)
    mean = CalibratedMean(prior_mean, 0 if observables is None else observables.shape[-1])
    if observables is not None:
        mean.set_observables(train_x, observables)
    model = fit_gp(train_x, train_y, mean, states.get("prior"), maxiter, timeout_s)
    states["prior"] = parameter_state(model)
    if predictive is None:  # in-sample: the prior term against the standardised data
        with torch.no_grad():
            term = mean.prior_term(train_x)
            y_std = model.outcome_transform(train_y.reshape(-1, 1))[0].reshape(-1)
        tested = pearson(term, y_std) if len(train_y) >= 3 else math.nan
        points = len(train_y)
    else:
        tested, points = predictive
    weight = float(mean.weight.detach())
    poor = points >= min_points and not (tested >= correlation_threshold)
    if not poor:
        return FitResult(model, True, tested, False, weight, states, time.perf_counter() - t0)
    constant = fit_gp(train_x, train_y, None, states.get("constant"), maxiter, timeout_s)
    states["constant"] = parameter_state(constant)
    return FitResult(constant, False, tested, True, weight, states, time.perf_counter() - t0)
