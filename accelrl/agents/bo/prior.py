"""Physics prior means: plain ``torch.nn.Module`` s over named physical inputs.

A prior is any ``nn.Module`` with an ``input_names`` attribute (a sequence of variable
names) whose ``forward`` maps ``x [..., len(input_names)]`` (SI units, columns in that
order) to the modelled objective ``[...]`` (in the units of the problem's objective after
its transform, e.g. ``log(MAE / m)``). The wrapper in :mod:`accelrl.agents.bo.model`
handles BoTorch's normalised inputs and standardised outputs, so a learned surrogate plugs in
the same way as :class:`BeamlinePrior`.

:class:`BeamlinePrior` is the ARES-EA physics prior: the compiled, differentiable beamline
(:mod:`accelrl.physics`) with the *design* incoming beam (centre of the randomisation ranges)
and no misalignments, returning ``log`` of the mean absolute error of the modelled screen
reading to the target. Its calibration parameters (incoming centroid offsets, quadrupole and
screen misalignments, incoming beam-size factors) start at the design values and are fitted
with the GP hyperparameters (see :class:`accelrl.agents.bo.model.CalibratedMean`); each is
bounded by its randomisation range through ``tanh``.

>>> import torch
>>> from accelrl.agents.bo.prior import BeamlinePrior
>>> prior = BeamlinePrior(target=[0.0, 1e-4, 0.0, 1e-4])
>>> prior.input_names
('Q1', 'Q2', 'CV', 'Q3', 'CH')
>>> prior(torch.tensor([[10.0, -10.0, 0.0, 10.0, 0.0]], dtype=torch.float64)).shape
torch.Size([1])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from accelrl.names import INCOMING, TRANSVERSE

__all__ = [
    "BeamlinePrior",
    "PriorLike",
    "SelectOutput",
    "WRONG_KINDS",
    "calibration_parameters",
]

_MU = [INCOMING.index(k) for k in ("mu_x", "mu_px", "mu_y", "mu_py")]
_SIGMA = [INCOMING.index(k) for k in ("sigma_x", "sigma_px", "sigma_y", "sigma_py")]

#: Deliberately wrong variants of :class:`BeamlinePrior` (for robustness tests):
#: ``"flipped"`` flips the sign of every quadrupole strength, ``"strong"`` evaluates the
#: quadrupoles at 3x their strength (in thin-lens optics: as if the drifts behind them were
#: 3x as long).
WRONG_KINDS: tuple[str, ...] = ("flipped", "strong")

#: What a prior module must provide (a ``torch.nn.Module`` with this attribute).
PriorLike = nn.Module


def calibration_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable calibration parameters of a prior module (empty for a fixed one)."""
    return [p for p in module.parameters() if p.requires_grad]


class SelectOutput(nn.Module):
    """One output of a multi-output model as a prior (e.g. a surrogate predicting several
    beam quantities), optionally transformed.

    :param model: Module with ``input_names``; ``forward`` returns ``[..., k]`` or a tuple
        whose first element is ``[..., k]`` (the mean).
    :param index: Column of the objective among the ``k`` outputs.
    :param log: Return ``log`` of the output (for objectives modelled in log).
    """

    def __init__(self, model: nn.Module, index: int, log: bool = False) -> None:
        super().__init__()
        self.model = model
        self.index = int(index)
        self.log = bool(log)
        self.input_names: tuple[str, ...] = tuple(model.input_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out[..., self.index]
        return torch.log(out) if self.log else out


class BeamlinePrior(nn.Module):
    """Log MAE of the nominal compiled beamline to a target, with calibration parameters.

    :param target: Target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param calibrate: Make the calibration parameters trainable (otherwise the design model).
    :param wrong: ``None`` or one of :data:`WRONG_KINDS`, a deliberately wrong model.
    :param floor: Smallest MAE [m] inside the log (keeps the output finite).
    :param spec: Task spec (default ARES-EA); its actuators are the input names.
    """

    def __init__(
        self,
        target: Sequence[float],
        calibrate: bool = True,
        wrong: Literal["flipped", "strong"] | None = None,
        floor: float = 1e-9,
        spec: object | None = None,
    ) -> None:
        super().__init__()
        from accelrl.envs.model import TaskModel, default_model

        model = default_model() if spec is None else TaskModel(spec)  # type: ignore[arg-type]
        target_arr = np.asarray(target, dtype=np.float64).reshape(-1)
        if target_arr.shape != (4,) or not np.all(np.isfinite(target_arr)):
            raise ValueError(
                f"target must be 4 finite values (mu_x, sigma_x, mu_y, sigma_y) [m], got {target}"
            )
        if wrong is not None and wrong not in WRONG_KINDS:
            raise ValueError(f"wrong must be None or one of {WRONG_KINDS}, got {wrong!r}")
        if not floor > 0:
            raise ValueError(f"floor must be > 0 m, got {floor}")
        self.input_names: tuple[str, ...] = model.actuator_names
        self.beamline = model.beamline
        self.wrong = wrong
        self.floor = float(floor)
        self.calibrate = bool(calibrate)
        quads = [a.attribute == "k1" for a in model.spec.actuators]
        self.register_buffer("quadrupole", torch.tensor(quads, dtype=torch.bool))
        self.register_buffer("target", torch.as_tensor(target_arr))
        self.register_buffer("incoming_nominal", torch.as_tensor(model.incoming_nominal))
        lo, hi = model.incoming_low, model.incoming_high
        self.register_buffer("mu_half", torch.as_tensor(0.5 * (hi[_MU] - lo[_MU])))
        self.register_buffer("mu_centre", torch.as_tensor(0.5 * (hi[_MU] + lo[_MU])))
        self.register_buffer("misalignment_half", torch.as_tensor(model.misalignment_half))
        # sigma factor range: the randomisation range relative to the nominal size
        nominal = model.incoming_nominal[_SIGMA]
        self.register_buffer("log_sigma_low", torch.as_tensor(np.log(lo[_SIGMA] / nominal)))
        self.register_buffer("log_sigma_high", torch.as_tensor(np.log(hi[_SIGMA] / nominal)))
        M = len(model.misalignment_half)
        #: Raw calibration parameters (0: design values); bounded through tanh.
        self.raw_centroid = nn.Parameter(
            torch.zeros(4, dtype=torch.float64), requires_grad=calibrate
        )
        self.raw_misalignment = nn.Parameter(
            torch.zeros(M, dtype=torch.float64), requires_grad=calibrate
        )
        self.raw_size = nn.Parameter(torch.zeros(4, dtype=torch.float64), requires_grad=calibrate)

    # -- calibrated hidden state
    def incoming(self) -> torch.Tensor:
        """Calibrated incoming beam ``[11]`` (SI)."""
        inc = self.incoming_nominal.clone()
        inc[_MU] = self.mu_centre + self.mu_half * torch.tanh(self.raw_centroid)
        # log size factor in [log_sigma_low, log_sigma_high], 0 at raw = 0
        t = torch.tanh(self.raw_size)
        log_f = torch.where(t >= 0, t * self.log_sigma_high, -t * self.log_sigma_low)
        inc[_SIGMA] = self.incoming_nominal[_SIGMA] * torch.exp(log_f)
        return inc

    def misalignments(self) -> torch.Tensor:
        """Calibrated misalignments ``[M]`` [m]."""
        return self.misalignment_half * torch.tanh(self.raw_misalignment)

    def calibration_vector(self) -> torch.Tensor:
        """All raw calibration parameters ``[P]`` (0 = design; a unit normal prior is
        placed on them when they are fitted)."""
        return torch.cat([self.raw_centroid, self.raw_misalignment, self.raw_size])

    # -- the model
    def reading(self, x: torch.Tensor) -> torch.Tensor:
        """Modelled screen reading ``[..., 4]`` [m] at settings ``x [..., K]`` (SI)."""
        x = x.to(torch.float64)
        if self.wrong == "flipped":
            x = torch.where(self.quadrupole, -x, x)
        elif self.wrong == "strong":
            x = torch.where(self.quadrupole, 3.0 * x, x)
        return self.beamline(x, self.incoming(), self.misalignments())

    #: Observables :meth:`observe` predicts: the screen reading [m].
    observable_names: tuple[str, ...] = TRANSVERSE

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """The modelled screen reading ``[..., 4]`` ``(mu_x, sigma_x, mu_y, sigma_y)`` [m]."""
        return self.reading(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log(MAE / m)`` ``[...]`` of the modelled reading to the target at ``x [..., K]``."""
        return self.forward_and_observe(x)[0]

    def forward_and_observe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(x), observe(x))`` from one evaluation of the beamline."""
        reading = self.reading(x)
        mae = (reading - self.target).abs().mean(dim=-1)
        return torch.log(mae + self.floor), reading

    def config(self) -> dict[str, object]:
        """JSON-friendly constructor arguments (for saving a session; the spec must be the
        default ARES-EA one)."""
        return {
            "kind": "beamline",
            "target": self.target.tolist(),
            "calibrate": self.calibrate,
            "wrong": self.wrong,
            "floor": self.floor,
        }

    @classmethod
    def from_config(cls, config: dict[str, object]) -> BeamlinePrior:
        """Rebuild from :meth:`config` (calibration parameters at their design values)."""
        kwargs = {k: v for k, v in config.items() if k != "kind"}
        return cls(**kwargs)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return (
            f"inputs={list(self.input_names)}, calibrate={self.calibrate}, wrong={self.wrong}, "
            f"floor={self.floor:g} m"
        )
