"""Hybrid beamline: surrogate plasma stage feeding a compiled Cheetah transport line.

## Description
The beam of a laser-plasma stage (deep-ensemble surrogate of Wake-T,
:mod:`accelrl.surrogates.models`) is transported by three quadrupoles and a dipole
spectrometer to a screen. The transport line is a Cheetah ``Segment`` (:func:`transport_segment`)
compiled with :mod:`accelrl.physics.compiled` into a batched differentiable map. The agent
sets plasma-stage inputs and transport knobs together so that the beam lands on a target
spot ``(mu_x, sigma_x, mu_y, sigma_y)`` on the screen.

Physics of the coupling (linear optics about the beam's own energy): the stage's predicted
mean energy ``E``, relative rms energy spread, rms sizes and divergences (uncorrelated at the
plasma exit) and bunch length form the incoming Gaussian beam. Quadrupole gradients ``g``
[T/m] act as ``k1 = g c / (p c / e)`` with the beam momentum ``p``, so the focusing changes
with the plasma stage's energy. The spectrometer dipole has a fixed geometry (bend angle
``theta0`` along the design orbit) and a field ``B`` [T]; the momentum following the design
orbit is ``p_ref = e B L / theta0``, and a beam of momentum ``p`` lands displaced by the
dispersion times ``delta = p / p_ref - 1``. Quadrupole misalignments are randomised per
episode; laser-energy jitter and plasma-density drift act on the stage as in
:mod:`accelrl.envs.lpa`.

## Action space
``Box(K + 4)``: the ``K`` actuated plasma inputs, then ``Q1.g, Q2.g, Q3.g`` [T/m] and
``SPEC.B`` [T]. ``action_mode="delta"`` (default, at most ``delta_fraction`` of each range per
step) or ``"direct"``. NaN/inf or a wrong shape raise ``ValueError``.

## Observation space
``Dict``: ``screen`` Box(4) = ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] (clipped to the screen:
a centroid off the screen reads at the edge); ``settings`` Box(K + 4) (SI); ``target`` Box(4)
[m]. float32.

## Rewards
``-p_valid MAE / scale - (1 - p_valid) fail - k_sigma std_m(MAE_m) / scale``: the mean absolute
error to the target spot in units of ``scale`` (1 mm), weighted by the probability of an
intact beam, minus a penalty on the disagreement of the ensemble members, each member's
predicted beam tracked through the line (``info["mae_members"]``).

## Starting state
Plasma inputs at the middle of their bounds, quadrupoles off, dipole field matched to the
middle of the training energy range; target uniform in the configured ranges.

## Episode end
No termination; truncation by the ``TimeLimit`` of ``gym.make`` (50 steps).

## Arguments
See :class:`HybridBeamlineEnv` and :class:`HybridConfig`.

## Version history
* v0: initial release.
"""

from __future__ import annotations

from typing import Any, Literal

import cheetah
import numpy as np
import scipy.constants as ct
import torch
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from accelrl.envs.lpa import DEFAULT_SURROGATE, DRIFT_INPUTS, JITTER_INPUTS
from accelrl.envs.stage import (
    StageCore,
    StageEnv,
    StageVectorEnv,
    check_render_mode,
    merge_config,
)
from accelrl.physics.compiled import CompiledBeamline
from accelrl.surrogates.models.ensemble import Surrogate
from accelrl.surrogates.models.io import load_surrogate
from accelrl.surrogates.objective import pick_column

ENV_ID = "accelrl/LPAHybridBeamline-v0"
#: Electron rest energy [eV].
MC2_EV = ct.m_e * ct.c**2 / ct.e
#: Transport knobs after the plasma inputs: name, unit, low, high.
TRANSPORT_KNOBS: tuple[tuple[str, str, float, float], ...] = (
    ("Q1.g", "T/m", -40.0, 40.0),
    ("Q2.g", "T/m", -40.0, 40.0),
    ("Q3.g", "T/m", -40.0, 40.0),
    ("SPEC.B", "T", 0.1, 2.0),
)
#: Surrogate outputs the line needs: energy, spread, sizes, divergences, bunch length.
BEAM_OUTPUTS = {
    "energy": ("energy_mean", "energy_median"),
    "spread": ("energy_spread_rms", "energy_spread_core", "energy_spread_mad"),
    "size_x": ("size_x",),
    "size_y": ("size_y",),
    "divergence_x": ("divergence_x",),
    "divergence_y": ("divergence_y",),
    "bunch_length": ("bunch_length",),
}
QUADS = ("Q1", "Q2", "Q3")


def transport_segment(dipole_angle: float = 0.1, dipole_length: float = 0.3) -> cheetah.Segment:
    """The transport line from the plasma exit to the spectrometer screen (Cheetah).

    Drift 0.3 m, three 0.1 m quadrupoles (0.15 m apart), drift 0.5 m, a 0.3 m sector dipole
    bending ``dipole_angle`` [rad] in x, drift 1.0 m, screen ``SCREEN``.
    """
    f64 = torch.float64
    t = lambda v: torch.tensor(v, dtype=f64)  # noqa: E731
    elements = [
        cheetah.Drift(length=t(0.3), name="D0", dtype=f64),
        cheetah.Quadrupole(length=t(0.1), k1=t(0.0), name="Q1", dtype=f64),
        cheetah.Drift(length=t(0.15), name="D1", dtype=f64),
        cheetah.Quadrupole(length=t(0.1), k1=t(0.0), name="Q2", dtype=f64),
        cheetah.Drift(length=t(0.15), name="D2", dtype=f64),
        cheetah.Quadrupole(length=t(0.1), k1=t(0.0), name="Q3", dtype=f64),
        cheetah.Drift(length=t(0.5), name="D3", dtype=f64),
        cheetah.Dipole(length=t(dipole_length), angle=t(dipole_angle), name="SPEC", dtype=f64),
        cheetah.Drift(length=t(1.0), name="D4", dtype=f64),
        cheetah.Screen(
            resolution=(1000, 1000),
            pixel_size=torch.tensor([2e-5, 2e-5], dtype=f64),
            name="SCREEN",
            dtype=f64,
        ),
    ]
    return cheetah.Segment(elements, name="lpa_spectrometer")


class HybridBeamline(nn.Module):
    """Surrogate stage + compiled transport line: a differentiable torch module.

    :param surrogate: The plasma-stage surrogate.
    :param dipole_angle: Design bend angle of the spectrometer [rad].
    :param dipole_length: Dipole length [m].
    """

    def __init__(
        self, surrogate: Surrogate, dipole_angle: float = 0.1, dipole_length: float = 0.3
    ) -> None:
        super().__init__()
        self.surrogate = surrogate
        names = surrogate.output_names
        self.cols = {k: pick_column(names, v, f"{k} output") for k, v in BEAM_OUTPUTS.items()}
        self.dipole_angle = dipole_angle
        self.dipole_length = dipole_length
        self.segment = transport_segment(dipole_angle, dipole_length)
        self.line = CompiledBeamline(
            self.segment, [(q, "k1") for q in QUADS], observe="SCREEN", misalign=list(QUADS)
        )

    @property
    def misalignment_names(self) -> list[str]:
        return self.line.misalignment_names

    def screen(
        self, beam: torch.Tensor, transport: torch.Tensor, misalignments: torch.Tensor
    ) -> torch.Tensor:
        """Screen reading ``[..., 4]`` [m] of plasma-exit beams ``[..., k]`` (surrogate output
        columns) for transport knobs ``[..., 4]`` (g1, g2, g3 [T/m], B [T])."""
        c = self.cols
        e_kin = beam[..., c["energy"]]
        e_tot = e_kin + MC2_EV
        pc = torch.sqrt(torch.clamp(e_tot**2 - MC2_EV**2, min=1.0))  # [eV]
        k1 = transport[..., :3] * ct.c / pc.unsqueeze(-1)  # [1/m^2]
        p_ref = transport[..., 3] * self.dipole_length / self.dipole_angle * ct.c  # [eV]
        delta = pc / p_ref - 1.0
        zero = torch.zeros_like(e_tot)
        incoming = torch.stack(
            [
                e_tot,
                zero,
                zero,
                zero,
                zero,
                beam[..., c["size_x"]],
                beam[..., c["divergence_x"]],
                beam[..., c["size_y"]],
                beam[..., c["divergence_y"]],
                beam[..., c["bunch_length"]],
                beam[..., c["spread"]],
            ],
            dim=-1,
        )
        mom = self.line(k1, incoming, misalignments, full=True)
        cov = mom.cov
        dispersion = cov[..., 0, 5] / cov[..., 5, 5]  # R16 [m]
        mu_x = mom.mu[..., 0] + dispersion * delta
        return torch.stack(
            [mu_x, torch.sqrt(cov[..., 0, 0]), mom.mu[..., 2], torch.sqrt(cov[..., 2, 2])], -1
        )

    def forward(
        self, x: torch.Tensor, transport: torch.Tensor, misalignments: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Screen readings of the ensemble mean and of every member, and ``p_valid``.

        :param x: ``[B, d]`` plasma-stage inputs (SI).
        :param transport: ``[B, 4]`` transport knobs.
        :param misalignments: ``[B, 6]`` quadrupole misalignments [m].
        :return: ``reading [B, 4]``, ``members [M, B, 4]`` [m], ``p_valid [B]``.
        """
        s = self.surrogate
        u = s.normalise(x)
        mu_m, _ = s.member_outputs(u, normalised=True)
        beams_m = s.from_standardised(mu_m)  # [M, B, k]
        beam = s.from_standardised(mu_m.mean(0))
        reading = self.screen(beam, transport, misalignments)
        lead = beams_m.shape[:-1]
        members = self.screen(
            beams_m,
            transport.expand(*lead, transport.shape[-1]),
            misalignments.expand(*lead, misalignments.shape[-1]),
        )
        return reading, members, s.p_valid(u, normalised=True)


class HybridConfig(BaseModel):
    """Settings of the hybrid task (SI units).

    :param surrogate: Surrogate directory or dataset name.
    :param plasma_actuators: Plasma inputs the agent sets (default: laser energy, plasma
        density and witness delay, those present).
    :param target_mu_x: Range of the target centroid x [m].
    :param target_sigma: Range of the target rms sizes [m].
    :param screen_half_extent: Half width and height of the screen [m].
    :param misalignment: Half-range of the uniform quadrupole misalignments [m].
    :param scale: Error scale of the reward [m].
    :param fail_penalty: Reward of a lost beam (in units of ``scale``).
    :param k_sigma: Penalty on the member spread of the error.
    :param jitter_rel_rms: Laser-energy jitter (relative rms per shot).
    :param drift_rel_step: Plasma-density random-walk step (relative rms).
    :param action_mode: ``"delta"`` or ``"direct"``.
    :param delta_fraction: Largest delta action as a fraction of each range.
    :param max_episode_steps: Truncation of the vector environment.
    """

    model_config = ConfigDict(extra="forbid")
    surrogate: str = DEFAULT_SURROGATE
    plasma_actuators: list[str] | None = None
    target_mu_x: tuple[float, float] = (-5e-3, 5e-3)
    target_sigma: tuple[float, float] = (2e-4, 2e-3)
    screen_half_extent: tuple[float, float] = (1e-2, 1e-2)
    misalignment: float = Field(default=1e-4, ge=0, le=1e-3)
    scale: float = Field(default=1e-3, gt=0)
    fail_penalty: float = Field(default=10.0, ge=0)
    k_sigma: float = Field(default=1.0, ge=0)
    jitter_rel_rms: float = Field(default=0.01, ge=0, le=0.2)
    drift_rel_step: float = Field(default=0.002, ge=0, le=0.05)
    action_mode: Literal["delta", "direct"] = "delta"
    delta_fraction: float = Field(default=0.1, gt=0, le=1)
    max_episode_steps: int = Field(default=50, ge=1)


class HybridCore(StageCore):
    """State and dynamics of ``num_envs`` hybrid-beamline environments (batched).

    :param config: Task settings.
    :param surrogate: The surrogate (default: loaded from ``config.surrogate``).
    :param num_envs: Batch size ``B``.
    """

    def __init__(
        self, config: HybridConfig, surrogate: Surrogate | None = None, num_envs: int = 1
    ) -> None:
        super().__init__(num_envs)
        self.config = c = config
        sur = surrogate if surrogate is not None else load_surrogate(c.surrogate)
        sur.eval()
        self.model = HybridBeamline(sur)
        names = sur.input_names
        if c.plasma_actuators is None:
            acts = [n for n in ("laser_energy", "plasma_density", "beam_delay") if n in names]
            acts = acts or list(names)
        else:
            acts = list(c.plasma_actuators)
        unknown = [n for n in acts if n not in names]
        if unknown:
            raise ValueError(f"plasma_actuators {unknown} are not surrogate inputs {names}")
        self.plasma_actuators = acts
        self.names = acts + [k[0] for k in TRANSPORT_KNOBS]
        b = sur.bounds
        self.base = b.mean(1)
        self.pcols = np.array([names.index(n) for n in acts])
        self.low = np.concatenate([b[self.pcols, 0], [k[2] for k in TRANSPORT_KNOBS]])
        self.high = np.concatenate([b[self.pcols, 1], [k[3] for k in TRANSPORT_KNOBS]])
        self.in_low, self.in_high = b[:, 0], b[:, 1]
        self.jitter_col = pick_column(names, JITTER_INPUTS, "jitter_input", None, required=False)
        self.drift_col = pick_column(names, DRIFT_INPUTS, "drift_input", None, required=False)
        # standard start: quads off, dipole matched to the middle of the training energies
        e_mid = float(
            sur.provenance.get("output_ranges", {}).get(
                sur.output_names[self.model.cols["energy"]], [0, 0, 5e8]
            )[2]
        )
        pc = np.sqrt((e_mid + MC2_EV) ** 2 - MC2_EV**2)
        b_mid = pc / ct.c * self.model.dipole_angle / self.model.dipole_length
        self.standard = np.concatenate(
            [self.base[self.pcols], [0.0, 0.0, 0.0], [np.clip(b_mid, 0.1, 2.0)]]
        )
        self._init_state(self.standard)
        self.target = np.zeros((num_envs, 4))
        self.misalign = np.zeros((num_envs, 6))
        self._evaluate(np.arange(num_envs))

    @property
    def actuator_names(self) -> list[str]:
        return self.names

    def true_inputs(self, idx: np.ndarray) -> np.ndarray:
        """All surrogate inputs ``[len(idx), d]`` the stage of environments ``idx`` sees."""
        settings = self.settings[idx, : len(self.pcols)]
        return self._stage_inputs(self.pcols, settings, self.drift[idx], self.jitter[idx])

    def reset(self, idx: np.ndarray, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - {"settings", "target", "misalignments"})
        if unknown:
            raise ValueError(
                f"unknown reset options {unknown}; allowed: settings, target, misalignments"
            )
        c = self.config
        u = self._uniform(idx, 3 + 6 + 1)
        mx, sg = c.target_mu_x, c.target_sigma
        target = np.stack(
            [
                mx[0] + u[:, 0] * (mx[1] - mx[0]),
                sg[0] + u[:, 1] * (sg[1] - sg[0]),
                np.zeros(len(idx)),
                sg[0] + u[:, 2] * (sg[1] - sg[0]),
            ],
            -1,
        )
        misalign = (2 * u[:, 3:9] - 1) * c.misalignment
        drift = (2 * u[:, 9] - 1) * 0.02 if self.drift_col >= 0 else 0 * u[:, 9]
        settings = np.tile(self.standard, (len(idx), 1))
        for key, shape in (
            ("settings", (len(self.names),)),
            ("target", (4,)),
            ("misalignments", (6,)),
        ):
            if key in options:
                v = np.asarray(options[key], np.float64)
                if v.shape != shape or not np.isfinite(v).all():
                    raise ValueError(f"options[{key!r}] must be {shape[0]} finite values, got {v}")
                if key == "settings":
                    settings = np.tile(np.clip(v, self.low, self.high), (len(idx), 1))
                elif key == "target":
                    target = np.tile(v, (len(idx), 1))
                else:
                    misalign = np.tile(v, (len(idx), 1))
        self.misalign[idx] = misalign
        self._restart(idx, settings, target, drift)

    @torch.no_grad()
    def _evaluate(self, idx: np.ndarray) -> None:
        c = self.config
        x = torch.as_tensor(self.true_inputs(idx))
        transport = torch.as_tensor(self.settings[idx, len(self.pcols) :])
        mis = torch.as_tensor(self.misalign[idx])
        reading, members, p = self.model(x, transport, mis)
        reading, members, p = reading.numpy(), members.numpy(), p.numpy()
        hx, hy = c.screen_half_extent
        lim_lo = np.array([-hx, 0.0, -hy, 0.0])
        lim_hi = np.array([hx, hx, hy, hy])
        shown = np.clip(np.nan_to_num(reading, nan=hx), lim_lo, lim_hi)
        on_screen = (np.abs(reading[:, 0]) < hx) & (np.abs(reading[:, 2]) < hy)
        tgt = self.target[idx]
        mae = np.abs(shown - tgt).mean(-1)
        mae_m = np.abs(np.clip(np.nan_to_num(members, nan=hx), lim_lo, lim_hi) - tgt).mean(-1)
        spread = mae_m.std(0)
        reward = -p * mae / c.scale - (1 - p) * c.fail_penalty - c.k_sigma * spread / c.scale
        values = {
            "reading": reading,
            "screen": shown,
            "mae": mae,
            "mae_members": mae_m.T,
            "mae_std": spread,
            "p_valid": p,
            "reward": reward,
            "on_screen": on_screen,
            "inputs": x.numpy(),
        }
        self._store(idx, values)

    def observation(self) -> dict[str, np.ndarray]:
        return {
            "screen": self.last["screen"].astype(np.float32),
            "settings": self.settings.astype(np.float32),
            "target": self.target.astype(np.float32),
        }

    def info(self) -> dict[str, Any]:
        keys = ("mae", "mae_members", "mae_std", "p_valid", "on_screen", "inputs", "reading")
        info = {k: self.last[k].copy() for k in keys}
        info.update(
            misalignments=self.misalign.copy(),
            laser_jitter=np.asarray(self.jitter, np.float64).copy(),
            density_drift=self.drift.copy(),
            step=self.steps.copy(),
        )
        return info


def _observation_space(core: HybridCore) -> spaces.Dict:
    c = core.config
    hx, hy = c.screen_half_extent
    t_lo = [c.target_mu_x[0], c.target_sigma[0], 0.0, c.target_sigma[0]]
    t_hi = [c.target_mu_x[1], c.target_sigma[1], 0.0, c.target_sigma[1]]
    return spaces.Dict(
        {
            "screen": spaces.Box(
                np.array([-hx, 0, -hy, 0], np.float32),
                np.array([hx, hx, hy, hy], np.float32),
                dtype=np.float32,
            ),
            "settings": spaces.Box(
                core.low.astype(np.float32), core.high.astype(np.float32), dtype=np.float32
            ),
            "target": spaces.Box(
                np.array(t_lo, np.float32), np.array(t_hi, np.float32), dtype=np.float32
            ),
        }
    )


class HybridBeamlineEnv(StageEnv):
    """Plasma stage + transport line tuning (see the module documentation).

    :param config: Task settings (:class:`HybridConfig` or a mapping of its fields).
    :param surrogate: A loaded surrogate (default: ``config.surrogate``).
    :param render_mode: Only ``None``.
    :param kwargs: Fields of :class:`HybridConfig`.
    """

    core: HybridCore

    def __init__(
        self,
        config: HybridConfig | dict[str, Any] | None = None,
        surrogate: Surrogate | None = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_render_mode(render_mode)
        self.config = merge_config(HybridConfig, config, kwargs)
        core = HybridCore(self.config, surrogate, 1)
        self._attach(core, _observation_space(core))

    def _info(self) -> dict[str, Any]:
        info = {k: v[0] for k, v in self.core.info().items()}
        for k in ("mae", "mae_std", "p_valid", "laser_jitter", "density_drift"):
            info[k] = float(info[k])
        info["on_screen"] = bool(info["on_screen"])
        info["step"] = int(info["step"])
        return info


class HybridBeamlineVectorEnv(StageVectorEnv):
    """``num_envs`` hybrid-beamline environments, one batched evaluation per step.

    Environment ``i`` reset with ``seed=s`` matches a single environment reset with ``s + i``.

    :param num_envs: Number of environments.
    :param config: Task settings (:class:`HybridConfig` or a mapping of its fields).
    :param surrogate: A loaded surrogate (default: ``config.surrogate``).
    :param max_episode_steps: Truncation (default: ``config.max_episode_steps``).
    :param kwargs: Fields of :class:`HybridConfig`.
    """

    core: HybridCore
    info_masks = False

    def __init__(
        self,
        num_envs: int,
        config: HybridConfig | dict[str, Any] | None = None,
        surrogate: Surrogate | None = None,
        max_episode_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.config = merge_config(HybridConfig, config, kwargs)
        core = HybridCore(self.config, surrogate, num_envs)
        steps = max_episode_steps or self.config.max_episode_steps
        super().__init__(core, _observation_space(core), steps)
