"""Tuning objective of a laser-plasma stage from a surrogate, with an uncertainty penalty.

The objective (to maximise) of a plasma-stage setting, from the surrogate's predicted
outputs, is

``J = -w_E |E / E_target - 1| - w_S spread + w_Q Q / Q_ref``

with ``E`` the (median) beam energy [eV], ``spread`` the relative energy spread and ``Q`` the
charge [C] (by default the robust outputs: median energy, core spread, charge within the
energy acceptance). A run without a beam scores ``J_fail = -w_E`` (100% energy error, no
charge); the predicted ``J`` is ``p_valid J + (1 - p_valid) J_fail``. Its standard deviation
``sigma_J`` is the first-order propagation of the per-output standard deviations. The
*penalised* objective is ``J - k sigma_J``: with ``k > 0`` an optimiser is pushed away from
settings where the ensemble members disagree (``uncertainty="epistemic"``, default), where
a surrogate's plain mean is least trustworthy and most easily exploited.

:class:`SurrogateObjective` is a torch module over the named tuned inputs (``x [B, d] ->
[B]``), differentiable, usable as a BO objective or in gradient tuning.

>>> from accelrl.surrogates.models import load_surrogate
>>> from accelrl.surrogates.objective import ObjectiveConfig, SurrogateObjective
>>> f = SurrogateObjective(load_surrogate("lpa_beamloading"),
...                        ObjectiveConfig(target_energy=1.0e9))  # doctest: +SKIP
>>> f(x)  # [B] penalised objective  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from accelrl.surrogates.models.ensemble import Surrogate, SurrogateError

#: Preferred output names per objective term, most robust first.
ENERGY_OUTPUTS = ("energy_median", "energy_mean")
SPREAD_OUTPUTS = ("energy_spread_core", "energy_spread_mad", "energy_spread_rms", "energy_spread")
CHARGE_OUTPUTS = ("charge_in_acceptance", "charge")


def pick_column(
    names: Sequence[str],
    candidates: Sequence[str],
    what: str,
    given: str | None = None,
    required: bool = True,
) -> int:
    """Index in ``names`` of the surrogate column ``given``, else of the first of
    ``candidates`` that ``names`` has.

    :param names: The surrogate's input or output names.
    :param candidates: Names to look for, in order of preference.
    :param what: What the column is, for the messages (e.g. ``"energy output"``).
    :param given: A name chosen by the user (``""``: none, -1).
    :param required: Raise when no candidate is found (else -1).
    :raises ValueError: For a ``given`` name that is not in ``names``, or no candidate found
        when ``required``.
    """
    names = list(names)
    if given == "":
        return -1
    if given is not None:
        if given not in names:
            raise ValueError(f"{what}={given!r} is not one of the surrogate's {names}")
        return names.index(given)
    for c in candidates:
        if c in names:
            return names.index(c)
    if required:
        raise ValueError(
            f"the surrogate has no {what} column; tried {list(candidates)}, has {names}"
        )
    return -1


class ObjectiveWeights(BaseModel):
    """Weights and uncertainty penalty of the tuning objective.

    :param weight_energy: Weight of the relative energy error.
    :param weight_spread: Weight of the relative energy spread.
    :param weight_charge: Weight of the charge in units of ``charge_ref``.
    :param charge_ref: Charge scale [C]; default the geometric mean of the training charge.
    :param k_sigma: Penalty in standard deviations of ``J`` (0: plain mean).
    :param uncertainty: ``"epistemic"`` (ensemble disagreement) or ``"total"`` (plus the
        numerical noise) in the penalty.
    """

    model_config = ConfigDict(extra="forbid")
    weight_energy: float = Field(default=1.0, ge=0)
    weight_spread: float = Field(default=1.0, ge=0)
    weight_charge: float = Field(default=0.01, ge=0)
    charge_ref: float | None = Field(default=None, gt=0)
    k_sigma: float = Field(default=1.0, ge=0)
    uncertainty: Literal["epistemic", "total"] = "epistemic"

    def weights(self) -> dict[str, Any]:
        """The fields of :class:`ObjectiveWeights` alone (of a subclass too)."""
        return {k: getattr(self, k) for k in ObjectiveWeights.model_fields}


class ObjectiveConfig(ObjectiveWeights):
    """Weights and outputs of the tuning objective (SI units).

    :param target_energy: Target beam energy [eV] (> 0).
    :param energy_output: Output used as energy (default: first of :data:`ENERGY_OUTPUTS`).
    :param spread_output: Output used as spread (default: first of :data:`SPREAD_OUTPUTS`).
    :param charge_output: Output used as charge (default: first of :data:`CHARGE_OUTPUTS`).

    The weights and the penalty are those of :class:`ObjectiveWeights`.
    """

    target_energy: float = Field(gt=0)
    energy_output: str | None = None
    spread_output: str | None = None
    charge_output: str | None = None


class ObjectiveTerms(nn.Module):
    """Objective, its standard deviation and its terms from a surrogate, batched over targets.

    :param surrogate: The surrogate.
    :param config: Weights and outputs (its ``target_energy`` is the default target).
    """

    def __init__(self, surrogate: Surrogate, config: ObjectiveConfig) -> None:
        super().__init__()
        names = surrogate.output_names
        self.surrogate = surrogate
        self.config = config
        self.energy = config.energy_output or names[pick_column(names, ENERGY_OUTPUTS, "energy")]
        self.spread = config.spread_output or names[pick_column(names, SPREAD_OUTPUTS, "spread")]
        self.charge = config.charge_output or names[pick_column(names, CHARGE_OUTPUTS, "charge")]
        for n in (self.energy, self.spread, self.charge):
            if n not in names:
                raise ValueError(f"output {n!r} is not an output of the surrogate {names}")
        self.idx = [names.index(n) for n in (self.energy, self.spread, self.charge)]
        q_ref = config.charge_ref
        if q_ref is None:
            info = surrogate.outputs[self.idx[2]]
            q_ref = float(np.exp(info.loc)) if info.transform == "log" else abs(info.loc)
        if not q_ref > 0:
            raise ValueError(f"charge_ref must be > 0, got {q_ref}; set it in the config")
        self.charge_ref = float(q_ref)

    def forward(
        self, x: torch.Tensor, target_energy: torch.Tensor | float | None = None
    ) -> dict[str, torch.Tensor]:
        """Terms ``[B]`` at physical inputs ``x [B, d]`` (all surrogate inputs).

        :param target_energy: ``[B]`` or scalar target [eV] (default: the config's).
        :return: ``objective`` (expected J), ``sigma`` (its std), ``penalised``
            (``objective - k sigma``), ``p_valid``, ``energy`` [eV], ``spread``, ``charge`` [C],
            ``energy_error`` (relative), and ``std`` ``[B, k]`` (the per-output std used).
        """
        c = self.config
        mean, epi, alea, p = self.surrogate.moments(x)
        std = epi if c.uncertainty == "epistemic" else torch.sqrt(epi**2 + alea**2)
        t = c.target_energy if target_energy is None else target_energy
        t = torch.as_tensor(t, dtype=mean.dtype)
        ie, is_, iq = self.idx
        e, s, q = mean[..., ie], mean[..., is_], mean[..., iq]
        err = torch.abs(e / t - 1.0)
        j_ok = -c.weight_energy * err - c.weight_spread * s + c.weight_charge * q / self.charge_ref
        j_fail = -c.weight_energy
        objective = p * j_ok + (1.0 - p) * j_fail
        var = (
            (c.weight_energy * std[..., ie] / t) ** 2
            + (c.weight_spread * std[..., is_]) ** 2
            + (c.weight_charge * std[..., iq] / self.charge_ref) ** 2
        )
        sigma = p * torch.sqrt(var + 1e-30)
        return {
            "objective": objective,
            "sigma": sigma,
            "penalised": objective - c.k_sigma * sigma,
            "p_valid": p,
            "energy": e,
            "spread": s,
            "charge": q,
            "energy_error": err,
            "std": std,
            "mean": mean,
        }


def objective_from_outputs(
    terms: ObjectiveTerms, outputs: Mapping[str, float], target_energy: float, intact: bool
) -> float:
    """``J`` of measured or simulated outputs (SI, by name), with the weights, outputs and
    charge scale of ``terms``; a beam that is not intact scores ``-w_E``.

    Use it to score a simulator's result on the surrogate's scale (e.g. re-simulated optima).
    """
    c = terms.config
    if not intact:
        return -c.weight_energy
    e, s, q = (float(outputs[n]) for n in (terms.energy, terms.spread, terms.charge))
    return (
        -c.weight_energy * abs(e / target_energy - 1.0)
        - c.weight_spread * s
        + c.weight_charge * q / terms.charge_ref
    )


class SurrogateObjective(nn.Module):
    """Penalised objective ``J - k sigma_J`` over the tuned inputs: ``x [B, d_tuned] -> [B]``.

    Inputs not tuned are held at ``fixed`` values (default: the middle of their bounds).

    :param surrogate: The surrogate.
    :param config: Objective weights and target.
    :param tuned: Names of the tuned inputs (default: all surrogate inputs), in column order.
    :param fixed: Values (SI) of the inputs not tuned.
    :param penalised: Return ``J - k sigma`` (default) or the plain expected ``J``.
    """

    def __init__(
        self,
        surrogate: Surrogate,
        config: ObjectiveConfig,
        tuned: Sequence[str] | None = None,
        fixed: Mapping[str, float] | None = None,
        penalised: bool = True,
    ) -> None:
        super().__init__()
        names = surrogate.input_names
        self.input_names = list(tuned) if tuned is not None else list(names)
        unknown = [n for n in self.input_names if n not in names]
        if unknown:
            raise ValueError(f"tuned inputs {unknown} are not surrogate inputs {names}")
        fixed = dict(fixed or {})
        bad = [n for n in fixed if n not in names or n in self.input_names]
        if bad:
            raise ValueError(f"fixed inputs {bad} are unknown or also tuned")
        b = surrogate.bounds
        full = b.mean(1)
        for n, v in fixed.items():
            full[names.index(n)] = float(v)
        self.terms = ObjectiveTerms(surrogate, config)
        self.penalised = penalised
        self.register_buffer("base", torch.as_tensor(full, dtype=torch.float64))
        self.register_buffer(
            "columns", torch.tensor([names.index(n) for n in self.input_names], dtype=torch.long)
        )
        self.bounds = b[[names.index(n) for n in self.input_names]]

    def full_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """All surrogate inputs ``[B, d]`` from the tuned ones ``[B, d_tuned]``."""
        if x.shape[-1] != len(self.input_names):
            raise SurrogateError(
                f"x must have {len(self.input_names)} columns {self.input_names}, got shape "
                f"{tuple(x.shape)}"
            )
        full = self.base.expand(*x.shape[:-1], -1).clone()
        full[..., self.columns] = x.to(full.dtype)
        return full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        terms = self.terms(self.full_inputs(x))
        return terms["penalised" if self.penalised else "objective"]

    @torch.no_grad()
    def evaluate(self, x: Any) -> dict[str, np.ndarray]:
        """Numpy terms (see :meth:`ObjectiveTerms.forward`) of tuned inputs ``[B, d_tuned]``."""
        arr = np.atleast_2d(np.asarray(x, np.float64))
        if not np.isfinite(arr).all():
            raise SurrogateError("x holds NaN or inf")
        out = self.terms(self.full_inputs(torch.as_tensor(arr)))
        return {k: v.numpy() for k, v in out.items()}
