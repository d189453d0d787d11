"""Deep-ensemble surrogate of a simulation dataset: a torch module over named physical inputs.

:class:`Surrogate` maps a batch of physical inputs ``x [B, d]`` (SI, columns
:attr:`Surrogate.input_names`) to

* ``mean [B, k]``: the predicted outputs in SI units (columns :attr:`Surrogate.output_names`);
  for outputs modelled in log space (charge, emittances, spreads, sizes) this is the
  exponential of the predicted log, i.e. the median of the predictive distribution;
* ``std [B, k]``: the predictive standard deviation in SI units (first-order propagation of
  the standard deviation in the modelled space, ``exp(mu) * s`` for log outputs);
* ``p_valid [B]``: the probability that the run gives a valid, intact beam (status ``ok``
  and, where the dataset records it, no charge lost: ``beam_intact``).

Inputs are normalised to ``[0, 1]`` over the spec bounds (in log space for ``scale: log``
inputs). Outputs are modelled in a transformed space (``log`` for strictly positive
outputs spanning a wide range, identity otherwise) and standardised there. Each ensemble
member is an MLP with a heteroscedastic Gaussian head (mean and log-variance), trained with
the beta-NLL loss; the predictive distribution in the modelled space is the moment-matched
mixture of the members, ``mu = mean_m mu_m`` and ``var = mean_m var_m + var_m mu_m``
(aleatoric + epistemic), times a per-output variance scale calibrated on the validation
split. The module computes in float64 (the physical inputs and outputs span many decades:
densities ~1e23 m^-3, charges ~1e-11 C). All of it is plain differentiable torch
(``torch.autograd`` gives d output / d input), so the module serves as a BO prior mean, in
gradient-based tuning and in ONNX export.

>>> from accelrl.surrogates.models import load_surrogate
>>> model = load_surrogate("lpa_beamloading")  # doctest: +SKIP
>>> mean, std, p_valid = model(x)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from accelrl.surrogates.spec import Columns

#: z-value of a central 95% Gaussian interval.
Z95 = 1.959963984540054

Activation = Literal["silu", "tanh", "relu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU}


class SurrogateError(ValueError):
    """Invalid input to a surrogate (wrong columns, NaN/inf, outside the trained bounds)."""


class InputInfo(BaseModel):
    """One input column of a surrogate.

    :param name: Column name.
    :param unit: SI unit (display only).
    :param low: Lower bound of the training design (SI).
    :param high: Upper bound (SI).
    :param scale: ``"linear"`` or ``"log"`` (normalised in log space).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    unit: str = ""
    low: float
    high: float
    scale: Literal["linear", "log"] = "linear"


class OutputInfo(BaseModel):
    """One output column of a surrogate.

    :param name: Column name.
    :param unit: SI unit (display only).
    :param transform: ``"log"`` (modelled as log of the value; value > 0) or ``"identity"``.
    :param loc: Mean of the transformed training targets.
    :param scale: Standard deviation of the transformed training targets.
    :param calibration: Variance scale fitted on the validation split (1: none).
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    unit: str = ""
    transform: Literal["log", "identity"] = "identity"
    loc: float = 0.0
    scale: float = 1.0
    calibration: float = 1.0


class Architecture(BaseModel):
    """Network shape of a surrogate.

    :param members: Ensemble members (>= 2 for an epistemic spread).
    :param hidden: Hidden widths of each regression member.
    :param activation: Hidden activation.
    :param classifier_hidden: Hidden widths of each validity-classifier member.
    """

    model_config = ConfigDict(extra="forbid")
    members: int = Field(default=5, ge=1, le=64)
    hidden: list[int] = Field(default_factory=lambda: [128, 128, 128])
    activation: Activation = "silu"
    classifier_hidden: list[int] = Field(default_factory=lambda: [64, 64])

    @field_validator("hidden", "classifier_hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError(f"hidden widths must be a non-empty list of positive ints, got {v}")
        return v


class EnsembleMLP(nn.Module):
    """``members`` independent MLPs evaluated as one batched matrix product per layer.

    :param n_in: Input width.
    :param n_out: Output width of each member.
    :param hidden: Hidden widths.
    :param members: Number of members.
    :param activation: Hidden activation name.
    :param generator: Seeds the initial weights (PyTorch's ``nn.Linear`` initialisation).
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        hidden: Sequence[int],
        members: int,
        activation: Activation = "silu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        widths = [n_in, *hidden, n_out]
        self.members = members
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            bound = 1.0 / math.sqrt(a)
            w = torch.rand(members, a, b, generator=generator, dtype=torch.float64) * 2 - 1
            bias = torch.rand(members, 1, b, generator=generator, dtype=torch.float64) * 2 - 1
            w, bias = w * bound, bias * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(bias))
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n_in]`` (shared) or ``[M, B, n_in]`` (per member) -> ``[M, B, n_out]``."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.matmul(h, w) + b
            if i < last:
                h = self.act(h)
        return h


class Surrogate(nn.Module, Columns):
    """Deep-ensemble surrogate over named physical inputs (see the module documentation).

    :param inputs: Input columns with their design bounds.
    :param outputs: Output columns with their transforms and standardisation.
    :param architecture: Network shape.
    :param has_classifier: Whether the validity classifier was trained (``False`` when the
        training data held no invalid run: ``p_valid`` is then 1).
    :param seed: Seeds the initial weights.
    :param provenance: Free-form record (dataset, split, metrics), stored with the weights.
    """

    def __init__(
        self,
        inputs: Sequence[InputInfo],
        outputs: Sequence[OutputInfo],
        architecture: Architecture | None = None,
        has_classifier: bool = True,
        seed: int = 0,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not inputs or not outputs:
            raise ValueError("a surrogate needs at least one input and one output")
        self.inputs = [InputInfo.model_validate(i) for i in inputs]
        self.outputs = [OutputInfo.model_validate(o) for o in outputs]
        self.architecture = architecture or Architecture()
        self.has_classifier = has_classifier
        self.provenance: dict[str, Any] = dict(provenance or {})
        arch = self.architecture
        gen = torch.Generator().manual_seed(seed)
        d, k = len(self.inputs), len(self.outputs)
        self.regressor = EnsembleMLP(d, 2 * k, arch.hidden, arch.members, arch.activation, gen)
        self.classifier = EnsembleMLP(
            d, 1, arch.classifier_hidden, arch.members, arch.activation, gen
        )
        log_in = torch.tensor([i.scale == "log" for i in self.inputs])
        low = torch.tensor([i.low for i in self.inputs], dtype=torch.float64)
        high = torch.tensor([i.high for i in self.inputs], dtype=torch.float64)
        low = torch.where(log_in, low.log(), low)
        high = torch.where(log_in, high.log(), high)
        self.register_buffer("in_log", log_in)
        self.register_buffer("in_low", low)
        self.register_buffer("in_span", high - low)
        self._refresh_output_buffers()

    def _refresh_output_buffers(self) -> None:
        """(Re)build the output buffers from :attr:`outputs` (after calibration changes)."""
        o = self.outputs
        self.register_buffer("out_log", torch.tensor([x.transform == "log" for x in o]))
        self.register_buffer("out_loc", torch.tensor([x.loc for x in o], dtype=torch.float64))
        self.register_buffer("out_scale", torch.tensor([x.scale for x in o], dtype=torch.float64))
        self.register_buffer(
            "out_calibration", torch.tensor([x.calibration for x in o], dtype=torch.float64)
        )

    def set_calibration(self, factors: Sequence[float]) -> None:
        """Set the per-output variance scale (fitted on a validation split)."""
        if len(factors) != len(self.outputs):
            raise ValueError(f"need {len(self.outputs)} factors, got {len(factors)}")
        for info, f in zip(self.outputs, factors, strict=True):
            if not (np.isfinite(f) and f > 0):
                raise ValueError(f"calibration factor of {info.name!r} must be > 0, got {f}")
            info.calibration = float(f)
        self.out_calibration.copy_(torch.tensor([float(f) for f in factors], dtype=torch.float64))

    # ------------------------------------------------------------------ names
    @property
    def members(self) -> int:
        """Number of ensemble members."""
        return self.architecture.members

    # ------------------------------------------------------------------ transforms
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Physical inputs ``[..., d]`` -> ``[0, 1]`` over the design bounds (differentiable)."""
        if x.shape[-1] != len(self.inputs):
            raise SurrogateError(
                f"inputs must have {len(self.inputs)} columns {self.input_names}, got shape "
                f"{tuple(x.shape)}"
            )
        x = x.to(self.in_low.dtype)
        # clamped so that the unused log branch of a linear input stays finite (no NaN grads)
        logged = torch.log(torch.clamp(x, min=1e-30))
        z = torch.where(self.in_log, logged, x)
        return (z - self.in_low) / self.in_span

    def _run(self, net: EnsembleMLP, u: torch.Tensor, per_member: bool) -> torch.Tensor:
        """``net`` on normalised inputs ``[..., d]`` (any leading batch shape, e.g. BoTorch's
        ``[b, q, d]``) -> ``[M, ..., n_out]``; ``per_member``: ``u`` is ``[M, B, d]``, one
        batch per member (training)."""
        if per_member:
            return net(u)
        lead = u.shape[:-1]
        out = net(u.reshape(-1, u.shape[-1]))
        return out.reshape(out.shape[0], *lead, out.shape[-1])

    def member_outputs(
        self, x: torch.Tensor, normalised: bool = False, per_member: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member mean and variance in the standardised modelled space.

        :param x: ``[..., d]`` physical inputs (or normalised, with ``normalised=True``).
        :param per_member: ``x`` is ``[M, B, d]`` normalised, one batch per member.
        :return: ``mu [M, ..., k]`` and ``var [M, ..., k]`` (aleatoric).
        """
        u = x if normalised else self.normalise(x)
        out = self._run(self.regressor, u, per_member)
        k = len(self.outputs)
        mu, log_var = out[..., :k], out[..., k:]
        var = torch.exp(torch.clamp(log_var, -14.0, 6.0))
        return mu, var

    def predict_standardised(
        self, x: torch.Tensor, normalised: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Calibrated predictive mean, aleatoric and epistemic variance in the standardised
        modelled space, each ``[B, k]``."""
        mu_m, var_m = self.member_outputs(x, normalised)
        mu = mu_m.mean(0)
        alea = var_m.mean(0) * self.out_calibration
        epi = (
            mu_m.var(0, unbiased=False) * self.out_calibration
            if mu_m.shape[0] > 1
            else (torch.zeros_like(mu))
        )
        return mu, alea, epi

    def to_modelled(self, y: torch.Tensor) -> torch.Tensor:
        """Physical outputs ``[..., k]`` -> standardised modelled space."""
        t = torch.where(self.out_log, torch.log(torch.clamp(y, min=1e-300)), y)
        return (t - self.out_loc) / self.out_scale

    def from_standardised(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised modelled space -> physical outputs (float64)."""
        t = z * self.out_scale + self.out_loc
        return torch.where(self.out_log, torch.exp(torch.where(self.out_log, t, 0.0)), t)

    def p_valid(self, x: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """Probability ``[...]`` that the run gives an intact beam (ensemble-averaged)."""
        u = x if normalised else self.normalise(x)
        if not self.has_classifier:
            return torch.ones(u.shape[:-1], dtype=u.dtype, device=u.device)
        return torch.sigmoid(self._run(self.classifier, u, False)[..., 0]).mean(0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictive mean and standard deviation (SI) and validity probability.

        :param x: ``[..., d]`` physical inputs (SI), columns :attr:`input_names` (any leading
            batch shape).
        :return: ``mean [..., k]``, ``std [..., k]`` (SI), ``p_valid [...]``.
        """
        u = self.normalise(x)
        mu, alea, epi = self.predict_standardised(u, normalised=True)
        scale, loc = self.out_scale, self.out_loc
        s = torch.sqrt(alea + epi) * scale
        t = mu * scale + loc
        mean = torch.where(self.out_log, torch.exp(torch.where(self.out_log, t, 0.0)), t)
        std = torch.where(self.out_log, mean * s, s)
        return mean, std, self.p_valid(u, normalised=True)

    def moments(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, epistemic and aleatoric standard deviation (SI, first-order) and validity.

        The epistemic part is the ensemble disagreement (what more data would remove); the
        aleatoric part is the scatter the members learnt from the data (for a deterministic
        code such as Wake-T: numerical noise, a non-smooth dependence on the inputs).

        :return: ``mean [B, k]``, ``std_epistemic [B, k]``, ``std_aleatoric [B, k]``,
            ``p_valid [B]``.
        """
        u = self.normalise(x)
        mu, alea, epi = self.predict_standardised(u, normalised=True)
        mean = self.from_standardised(mu)
        jac = torch.where(self.out_log, mean, torch.ones_like(mean)) * self.out_scale
        return mean, torch.sqrt(epi) * jac, torch.sqrt(alea) * jac, self.p_valid(u, True)

    def interval(
        self, x: torch.Tensor, z: float = Z95
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Central predictive interval (SI) of half-width ``z`` standard deviations in the
        modelled space (exact for the Gaussian there, asymmetric for log outputs).

        :return: ``median [B, k]``, ``low [B, k]``, ``high [B, k]``.
        """
        mu, alea, epi = self.predict_standardised(x)
        s = torch.sqrt(alea + epi)
        return (
            self.from_standardised(mu),
            self.from_standardised(mu - z * s),
            self.from_standardised(mu + z * s),
        )

    # ------------------------------------------------------------------ numpy convenience
    def as_tensor(
        self,
        x: Any,
        check_bounds: bool = True,
        tolerance: float = 1e-6,
    ) -> torch.Tensor:
        """Validated ``[B, d]`` float64 tensor from an array, a mapping of columns or a
        DataFrame.

        :param x: ``[B, d]`` / ``[d]`` array in column order, a ``{name: value(s)}`` mapping,
            or a DataFrame with (at least) the input columns.
        :param check_bounds: Reject values outside the design bounds (extrapolation).
        :param tolerance: Relative slack of the bounds check (fraction of the range).
        :raises SurrogateError: Naming missing columns, NaN/inf values or out-of-bounds inputs.
        """
        names = self.input_names
        if hasattr(x, "columns") or isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            if missing:
                raise SurrogateError(f"missing input columns {missing}; need {names}")
            arr = np.stack([np.atleast_1d(np.asarray(x[n], np.float64)) for n in names], -1)
        else:
            arr = np.array(x, np.float64)
            if arr.ndim == 1:
                arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise SurrogateError(
                f"inputs must have shape [B, {len(names)}] (columns {names}), got {arr.shape}"
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            cols = sorted({names[j] for j in np.nonzero(bad)[1]})
            raise SurrogateError(f"inputs hold NaN or inf in {cols}")
        if check_bounds:
            b = self.bounds
            slack = tolerance * (b[:, 1] - b[:, 0])
            out = (arr < b[:, 0] - slack) | (arr > b[:, 1] + slack)
            if out.any():
                i, j = (int(v[0]) for v in np.nonzero(out))
                raise SurrogateError(
                    f"input {names[j]!r} = {arr[i, j]:.6g} is outside the trained range "
                    f"[{b[j, 0]:.6g}, {b[j, 1]:.6g}] (row {i}); pass check_bounds=False to "
                    "extrapolate"
                )
        return torch.as_tensor(arr, dtype=torch.float64, device=self.in_low.device)

    @torch.no_grad()
    def predict(self, x: Any, check_bounds: bool = True) -> dict[str, np.ndarray]:
        """Numpy predictions: ``{"mean", "std", "low95", "high95"}`` ``[B, k]`` (SI) and
        ``"p_valid"`` ``[B]``.

        :param x: Inputs as accepted by :meth:`as_tensor`.
        :param check_bounds: Reject inputs outside the design bounds.
        """
        t = self.as_tensor(x, check_bounds=check_bounds)
        mean, std, p = self(t)
        _, low, high = self.interval(t)
        return {
            "mean": mean.double().numpy(),
            "std": std.double().numpy(),
            "low95": low.double().numpy(),
            "high95": high.double().numpy(),
            "p_valid": p.double().numpy(),
        }

    # ------------------------------------------------------------------ serialisation
    def config(self) -> dict[str, Any]:
        """JSON-able description (everything but the weights)."""
        return {
            "inputs": [i.model_dump() for i in self.inputs],
            "outputs": [o.model_dump() for o in self.outputs],
            "architecture": self.architecture.model_dump(),
            "has_classifier": self.has_classifier,
            "provenance": self.provenance,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Surrogate:
        """An untrained surrogate of the shape ``config`` describes (see :meth:`config`)."""
        return cls(
            [InputInfo.model_validate(i) for i in config["inputs"]],
            [OutputInfo.model_validate(o) for o in config["outputs"]],
            Architecture.model_validate(config["architecture"]),
            has_classifier=bool(config.get("has_classifier", True)),
            provenance=config.get("provenance", {}),
        )


class SurrogateOutput(nn.Module):
    """One scalar of a :class:`Surrogate` as a module ``x [B, d] -> [B]`` (e.g. a BO prior mean).

    :param surrogate: The surrogate.
    :param output: Output name.
    :param kind: ``"mean"``, ``"std"`` or ``"p_valid"``.
    """

    def __init__(self, surrogate: Surrogate, output: str, kind: str = "mean") -> None:
        super().__init__()
        if output not in surrogate.output_names:
            raise ValueError(f"unknown output {output!r}; available: {surrogate.output_names}")
        if kind not in ("mean", "std", "p_valid"):
            raise ValueError(f"kind must be 'mean', 'std' or 'p_valid', got {kind!r}")
        self.surrogate = surrogate
        self.index = surrogate.output_names.index(output)
        self.kind = kind
        self.input_names = surrogate.input_names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std, p = self.surrogate(x)
        if self.kind == "p_valid":
            return p
        return (mean if self.kind == "mean" else std)[..., self.index]
