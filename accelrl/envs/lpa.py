"""Tuning a laser-plasma accelerator stage on its deep-ensemble surrogate.

## Description
Set the inputs of a laser-driven plasma stage with an externally injected witness bunch
(laser energy, plasma density, witness current profile and position, ...) so that the
accelerated beam reaches a target energy with the smallest energy spread and the most
charge. The stage is the deep-ensemble surrogate of a Wake-T dataset
(:mod:`accelrl.surrogates.models`): one batched torch evaluation per step for all
environments. Shot-to-shot laser-energy jitter and a slow plasma-density drift act on the
inputs the agent sets; the agent does not see them.

## Action space
``Box(K)`` in the actuated inputs' SI units. ``action_mode="delta"`` (default): the change of
each setting, at most ``delta_fraction`` (10%) of its range per step; the result is clipped
to the design bounds. ``"direct"``: the absolute settings within the bounds. Actions outside
the box are clipped; NaN/inf or a wrong shape raise ``ValueError``.

## Observation space
``Dict``: ``settings`` Box(K) = current settings (SI); ``beam`` Box(3) = the measured beam
``(energy [eV], relative energy spread, charge [C])`` (surrogate mean at the inputs the stage
actually sees, jitter and drift included); ``target`` Box(1) = target energy [eV]. float32.

## Rewards
The penalised objective of :mod:`accelrl.surrogates.objective` at the actual inputs:
``J - k sigma_J``, ``J = -w_E |E/E_t - 1| - w_S spread + w_Q Q/Q_ref`` weighted by the
probability of an intact beam, ``sigma_J`` from the ensemble disagreement (``k_sigma=1`` by
default, so settings where the members disagree, where a surrogate is most easily
exploited, score lower). ``info`` carries the plain ``objective``, ``sigma``, the per-output
ensemble standard deviation ``ensemble_std``, ``p_valid`` and the hidden state.

## Starting state
Settings at the middle of the design bounds (``start="standard"``) or uniform within them
(``"random"``); target energy uniform in ``target_energy``; density drift offset uniform in
``+-drift_rel_init``. ``reset(options=...)`` fixes ``settings``, ``target_energy`` or
``drift``.

## Episode end
No termination; truncation by the ``TimeLimit`` of ``gym.make`` (50 steps).

## Arguments
See :class:`LPATuningEnv` and :class:`LPATaskConfig`.

## Version history
* v0: initial release.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from pydantic import ConfigDict, Field

from accelrl.envs.stage import StageCore, StageEnv, check_render_mode, merge_config
from accelrl.surrogates.models.ensemble import Surrogate
from accelrl.surrogates.models.io import load_surrogate
from accelrl.surrogates.objective import (
    ObjectiveConfig,
    ObjectiveTerms,
    ObjectiveWeights,
    pick_column,
)

ENV_ID = "accelrl/LPATuning-v0"
#: Default surrogate (dataset name, resolved in ``surrogates/models/``).
DEFAULT_SURROGATE = "lpa_beamloading"
#: Candidate names of the laser-energy input (jitter) and the plasma-density input (drift).
JITTER_INPUTS = ("laser_energy", "laser_a0")
DRIFT_INPUTS = ("plasma_density",)


class LPATaskConfig(ObjectiveWeights):
    """Settings of the LPA tuning task (SI units).

    :param surrogate: Surrogate directory or dataset name.
    :param actuators: Inputs the agent sets (default: all surrogate inputs).
    :param fixed: Values of the inputs not actuated (default: middle of their bounds).
    :param target_energy: ``(low, high)`` range of target energies [eV]; default the 10% to
        90% quantiles of the training energies.
    :param jitter_input: Input with shot-to-shot jitter (default: the laser energy or a0);
        ``""`` disables.
    :param jitter_rel_rms: Relative rms of the jitter per shot.
    :param drift_input: Input with a slow drift (default: plasma density); ``""`` disables.
    :param drift_rel_init: Half-width of the uniform relative drift offset at reset.
    :param drift_rel_step: Relative rms of the random-walk drift per step.
    :param action_mode: ``"delta"`` or ``"direct"``.
    :param delta_fraction: Largest delta action as a fraction of each input's range.
    :param start: ``"standard"`` (middle of the bounds) or ``"random"``.
    :param max_episode_steps: Truncation of the vector environment (``gym.make`` sets its own).

    The objective's weights and uncertainty penalty are the fields of
    :class:`~accelrl.surrogates.objective.ObjectiveWeights`.
    """

    model_config = ConfigDict(extra="forbid")
    surrogate: str = DEFAULT_SURROGATE
    actuators: list[str] | None = None
    fixed: dict[str, float] = Field(default_factory=dict)
    target_energy: tuple[float, float] | None = None
    jitter_input: str | None = None
    jitter_rel_rms: float = Field(default=0.01, ge=0, le=0.2)
    drift_input: str | None = None
    drift_rel_init: float = Field(default=0.02, ge=0, le=0.2)
    drift_rel_step: float = Field(default=0.002, ge=0, le=0.05)
    action_mode: Literal["delta", "direct"] = "delta"
    delta_fraction: float = Field(default=0.1, gt=0, le=1)
    start: Literal["standard", "random"] = "standard"
    max_episode_steps: int = Field(default=50, ge=1)


class LPACore(StageCore):
    """State and dynamics of ``num_envs`` LPA tuning environments (batched, numpy + torch).

    :param config: Task settings.
    :param surrogate: The surrogate (default: loaded from ``config.surrogate``).
    :param num_envs: Batch size ``B``.
    """

    reward_key = "penalised"

    def __init__(
        self, config: LPATaskConfig, surrogate: Surrogate | None = None, num_envs: int = 1
    ) -> None:
        super().__init__(num_envs)
        self.config = c = config
        self.surrogate = surrogate if surrogate is not None else load_surrogate(c.surrogate)
        self.surrogate.eval()
        names = self.surrogate.input_names
        self.actuators = list(c.actuators) if c.actuators is not None else list(names)
        unknown = [n for n in self.actuators if n not in names]
        if unknown:
            raise ValueError(f"actuators {unknown} are not surrogate inputs {names}")
        if not self.actuators:
            raise ValueError("actuators must name at least one surrogate input")
        bad = [n for n in c.fixed if n not in names or n in self.actuators]
        if bad:
            raise ValueError(f"fixed inputs {bad} are unknown or actuated")
        bounds = self.surrogate.bounds
        self.base = bounds.mean(1)
        for n, v in c.fixed.items():
            j = names.index(n)
            if not bounds[j, 0] <= v <= bounds[j, 1]:
                raise ValueError(
                    f"fixed {n} = {v:.6g} is outside the surrogate bounds "
                    f"[{bounds[j, 0]:.6g}, {bounds[j, 1]:.6g}]"
                )
            self.base[j] = v
        self.cols = np.array([names.index(n) for n in self.actuators])
        self.low, self.high = bounds[self.cols, 0], bounds[self.cols, 1]
        self.in_low, self.in_high = bounds[:, 0], bounds[:, 1]
        self.jitter_col = pick_column(
            names, JITTER_INPUTS, "jitter_input", c.jitter_input, required=False
        )
        self.drift_col = pick_column(
            names, DRIFT_INPUTS, "drift_input", c.drift_input, required=False
        )
        self.terms = ObjectiveTerms(
            self.surrogate,
            ObjectiveConfig(target_energy=1.0, **c.weights()),  # target set per environment
        )
        if c.target_energy is None:
            ranges = self.surrogate.provenance.get("output_ranges", {}).get(self.terms.energy)
            if ranges is None:
                raise ValueError("surrogate records no energy range; set target_energy")
            e_lo, e_hi = float(ranges[1]), float(ranges[3])
            e_lo, e_hi = e_lo + 0.05 * (e_hi - e_lo), e_hi - 0.05 * (e_hi - e_lo)
        else:
            e_lo, e_hi = c.target_energy
        if not 0 < e_lo <= e_hi:
            raise ValueError(f"target_energy must satisfy 0 < low <= high, got ({e_lo}, {e_hi})")
        self.target_low, self.target_high = float(e_lo), float(e_hi)
        self._init_state(self.base[self.cols])
        self.target = np.full(num_envs, 0.5 * (e_lo + e_hi))
        self._n_reset = 2 + len(self.actuators)
        self._evaluate(np.arange(num_envs))

    @property
    def actuator_names(self) -> list[str]:
        return self.actuators

    def true_inputs(
        self, settings: np.ndarray, drift: np.ndarray, jitter: np.ndarray
    ) -> np.ndarray:
        """All surrogate inputs ``[B, d]`` the stage sees: settings, jitter and drift applied,
        clipped to the design bounds (the surrogate is not trusted outside them)."""
        return self._stage_inputs(self.cols, settings, drift, jitter)

    def reset(self, idx: np.ndarray, options: dict[str, Any] | None = None) -> None:
        """Reset environments ``idx`` (options: ``settings`` [K], ``target_energy`` [eV],
        ``drift`` (relative))."""
        options = dict(options or {})
        unknown = sorted(set(options) - {"settings", "target_energy", "drift"})
        if unknown:
            raise ValueError(
                f"unknown reset options {unknown}; allowed: settings, target_energy, drift"
            )
        c = self.config
        u = self._uniform(idx, self._n_reset)
        target = self.target_low + u[:, 0] * (self.target_high - self.target_low)
        drift = (2 * u[:, 1] - 1) * c.drift_rel_init if self.drift_col >= 0 else 0 * u[:, 1]
        if c.start == "random":
            settings = self.low + u[:, 2:] * (self.high - self.low)
        else:
            settings = np.tile(self.base[self.cols], (len(idx), 1))
        if "settings" in options:
            s = np.asarray(options["settings"], np.float64)
            if s.shape != (len(self.actuators),) or not np.isfinite(s).all():
                raise ValueError(
                    f"options['settings'] must be {len(self.actuators)} finite values "
                    f"{self.actuators}, got {s}"
                )
            settings = np.tile(np.clip(s, self.low, self.high), (len(idx), 1))
        if "target_energy" in options:
            t = float(options["target_energy"])
            if not (np.isfinite(t) and t > 0):
                raise ValueError(f"options['target_energy'] must be > 0 eV, got {t}")
            target = np.full(len(idx), t)
        if "drift" in options:
            drift = np.full(len(idx), float(options["drift"]))
        self._restart(idx, settings, target, drift)

    @torch.no_grad()
    def _evaluate(self, idx: np.ndarray) -> None:
        x = self.true_inputs(self.settings[idx], self.drift[idx], self.jitter[idx])
        out = self.terms(torch.as_tensor(x), torch.as_tensor(self.target[idx]))
        values = {k: v.numpy() for k, v in out.items()}
        values["inputs"] = x
        self._store(idx, values)

    # ------------------------------------------------------------------ views
    def observation(self) -> dict[str, np.ndarray]:
        last = self.last
        beam = np.stack([last["energy"], last["spread"], last["charge"]], axis=-1)
        return {
            "settings": self.settings.astype(np.float32),
            "beam": beam.astype(np.float32),
            "target": self.target[:, None].astype(np.float32),
        }

    def info(self) -> dict[str, Any]:
        last = self.last
        return {
            "objective": last["objective"].copy(),
            "sigma": last["sigma"].copy(),
            "p_valid": last["p_valid"].copy(),
            "energy_error": last["energy_error"].copy(),
            "ensemble_std": last["std"].copy(),
            "prediction": last["mean"].copy(),
            "inputs": last["inputs"].copy(),
            "laser_jitter": np.asarray(self.jitter, np.float64).copy(),
            "density_drift": self.drift.copy(),
            "step": self.steps.copy(),
        }


def observation_space(core: LPACore) -> spaces.Dict:
    """Observation space of the LPA task (float32, SI)."""
    big = np.float32(np.finfo(np.float32).max)
    return spaces.Dict(
        {
            "settings": spaces.Box(
                core.low.astype(np.float32), core.high.astype(np.float32), dtype=np.float32
            ),
            "beam": spaces.Box(
                low=np.zeros(3, np.float32), high=np.full(3, big, np.float32), dtype=np.float32
            ),
            "target": spaces.Box(
                low=np.float32(core.target_low * (1 - 1e-6)),
                high=np.float32(core.target_high * (1 + 1e-6)),
                shape=(1,),
                dtype=np.float32,
            ),
        }
    )


class LPATuningEnv(StageEnv):
    """LPA stage tuning on a surrogate (see the module documentation).

    :param config: Task settings (:class:`LPATaskConfig` or a mapping of its fields).
    :param surrogate: A loaded surrogate (default: ``config.surrogate``).
    :param render_mode: Only ``None`` (no rendering).
    :param kwargs: Fields of :class:`LPATaskConfig` (override ``config``).
    """

    core: LPACore

    def __init__(
        self,
        config: LPATaskConfig | dict[str, Any] | None = None,
        surrogate: Surrogate | None = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_render_mode(render_mode)
        self.config = merge_config(LPATaskConfig, config, kwargs)
        core = LPACore(self.config, surrogate, 1)
        self._attach(core, observation_space(core))

    def _info(self) -> dict[str, Any]:
        info = {k: v[0] for k, v in self.core.info().items()}
        for k in ("objective", "sigma", "p_valid", "energy_error", "laser_jitter", "density_drift"):
            info[k] = float(info[k])
        info["step"] = int(info["step"])
        info["output_names"] = self.core.surrogate.output_names
        return info
