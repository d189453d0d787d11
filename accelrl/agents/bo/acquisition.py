"""Acquisition functions and their gradient-based optimisation within a box and a time budget.

:func:`make_acquisition` builds LogEI (default; BoTorch's ``LogExpectedImprovement``) or UCB,
optionally weighted by the probability that modelled constraints hold. :func:`optimise`
maximises it with ``botorch.optim.optimize_acqf`` (L-BFGS-B from the best of a seeded set of
raw samples plus anchor points) inside the box the safety layer allows, within a wall-time
budget.

>>> x, value = optimise(acqf, lower, upper, budget_s=0.2, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement, UpperConfidenceBound
from botorch.models.model import Model
from botorch.optim import optimize_acqf
from botorch.utils.probability.utils import log_ndtr
from botorch.utils.transforms import t_batch_mode_transform

__all__ = ["ACQUISITIONS", "FeasibilityWeighted", "make_acquisition", "optimise"]

#: Acquisition names accepted by :func:`make_acquisition`.
ACQUISITIONS: tuple[str, ...] = ("logei", "ucb")

AcquisitionName = Literal["logei", "ucb"]


class FeasibilityWeighted(AcquisitionFunction):
    """``log acq(x) + sum_c log P(lower_c <= g_c(x) <= upper_c)`` with independent GPs ``g_c``.

    :param acquisition: A log-scale acquisition (LogEI).
    :param constraints: ``(model, lower, upper)`` per modelled constraint, bounds in the
        constraint's units (``None``: unbounded).
    """

    def __init__(
        self,
        acquisition: AcquisitionFunction,
        constraints: Sequence[tuple[Model, float | None, float | None]],
    ) -> None:
        super().__init__(model=acquisition.model)
        self.acquisition = acquisition
        self.constraint_models = torch.nn.ModuleList([m for m, _, _ in constraints])
        self.bounds_list = [(lo, hi) for _, lo, hi in constraints]

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        value = self.acquisition(X)
        for model, (lo, hi) in zip(self.constraint_models, self.bounds_list, strict=True):
            post = model.posterior(X)
            mean = post.mean.reshape(value.shape)
            std = post.variance.clamp_min(1e-12).sqrt().reshape(value.shape)
            if lo is not None and hi is not None:
                p = torch.special.ndtr((hi - mean) / std) - torch.special.ndtr((lo - mean) / std)
                value = value + torch.log(p.clamp_min(1e-300))
            elif hi is not None:
                value = value + log_ndtr((hi - mean) / std)
            elif lo is not None:
                value = value + log_ndtr((mean - lo) / std)
        return value


def make_acquisition(
    kind: AcquisitionName,
    model: Model,
    best_f: float,
    beta: float = 2.0,
    constraints: Sequence[tuple[Model, float | None, float | None]] = (),
) -> AcquisitionFunction:
    """The acquisition function ``kind`` on ``model`` (which models "larger is better").

    :param kind: ``"logei"`` (log expected improvement over ``best_f``) or ``"ucb"``
        (``mean + sqrt(beta) std``).
    :param best_f: Best modelled value so far (GP space, unstandardised).
    :param beta: UCB exploration weight.
    :param constraints: Modelled constraints (LogEI only; UCB ignores them).
    :raises ValueError: For an unknown ``kind`` or ``beta < 0``.
    """
    if kind == "logei":
        acq: AcquisitionFunction = LogExpectedImprovement(model, best_f=best_f)
        return FeasibilityWeighted(acq, constraints) if constraints else acq
    if kind == "ucb":
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        return UpperConfidenceBound(model, beta=beta)
    raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {kind!r}")


def optimise(
    acquisition: AcquisitionFunction,
    lower: torch.Tensor,
    upper: torch.Tensor,
    budget_s: float,
    seed: int,
    anchors: Sequence[torch.Tensor] = (),
    restarts: int = 4,
    raw_samples: int = 128,
    maxiter: int = 50,
) -> tuple[torch.Tensor, float]:
    """Maximise ``acquisition`` over the box ``[lower, upper]`` (normalised inputs ``[d]``).

    Raw samples are drawn uniformly in the box from a generator seeded with ``seed`` (plus the
    ``anchors``, clipped into the box: e.g. the current and the best setting); the best
    ``restarts`` start L-BFGS-B (``optimize_acqf``), stopped at ``budget_s`` wall time.

    :return: ``(x [d], acquisition value)``; ``x`` lies in the box.
    """
    t0 = time.perf_counter()
    d = lower.numel()
    lower, upper = lower.reshape(d), torch.maximum(upper.reshape(d), lower.reshape(d))
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(raw_samples, d, generator=g, dtype=lower.dtype)
    samples = lower + u * (upper - lower)
    if anchors:
        extra = torch.stack([a.reshape(d).to(lower.dtype) for a in anchors])
        samples = torch.cat([torch.minimum(torch.maximum(extra, lower), upper), samples])
    with torch.no_grad():
        values = acquisition(samples.unsqueeze(1))
    values = torch.nan_to_num(values, nan=-torch.inf)
    k = min(restarts, len(samples))
    order = torch.argsort(values, descending=True, stable=True)[:k]
    best_raw, best_value = samples[order[0]].clone(), float(values[order[0]])
    remaining = budget_s - (time.perf_counter() - t0)
    if remaining <= 0 or bool(torch.all(upper - lower <= 0)):
        return best_raw, best_value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x, value = optimize_acqf(
                acquisition,
                bounds=torch.stack([lower, upper]),
                q=1,
                num_restarts=k,
                batch_initial_conditions=samples[order].unsqueeze(1),
                options={"maxiter": int(maxiter)},
                timeout_sec=remaining,
                retry_on_optimization_warning=False,
            )
    except Exception:  # the best raw sample is always a valid answer
        return best_raw, best_value
    x = x.reshape(d)
    v = float(value.reshape(-1)[0]) if value is not None else -float("inf")
    if not torch.all(torch.isfinite(x)) or not v >= best_value:
        return best_raw, best_value
    return torch.minimum(torch.maximum(x, lower), upper), v
