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

from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field

from accelrl.envs import rng
from accelrl.surrogates.models.ensemble import Surrogate
from accelrl.surrogates.models.io import load_surrogate
from accelrl.surrogates.objective import ObjectiveConfig, ObjectiveTerms

ENV_ID = "accelrl/LPATuning-v0"
#: Default surrogate (dataset name, resolved in ``surrogates/models/``).
DEFAULT_SURROGATE = "lpa_beamloading"
#: Candidate names of the laser-energy input (jitter) and the plasma-density input (drift).
JITTER_INPUTS = ("laser_energy", "laser_a0")
DRIFT_INPUTS = ("plasma_density",)


class LPATaskConfig(BaseModel):
    """Settings of the LPA tuning task (SI units).

    :param surrogate: Surrogate directory or dataset name.
    :param actuators: Inputs the agent sets (default: all surrogate inputs).
    :param fixed: Values of the inputs not actuated (default: middle of their bounds).
    :param target_energy: ``(low, high)`` range of target energies [eV]; default the 10% to
        90% quantiles of the training energies.
    :param weight_energy: Objective weight of the relative energy error.
    :param weight_spread: Objective weight of the relative energy spread.
    :param weight_charge: Objective weight of the charge in units of ``charge_ref``.
    :param charge_ref: Charge scale [C] (default: geometric mean of the training charge).
    :param k_sigma: Uncertainty penalty in standard deviations (0: plain ensemble mean).
    :param uncertainty: ``"epistemic"`` or ``"total"`` standard deviation in the penalty.
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
    """

    model_config = ConfigDict(extra="forbid")
    surrogate: str = DEFAULT_SURROGATE
    actuators: list[str] | None = None
    fixed: dict[str, float] = Field(default_factory=dict)
    target_energy: tuple[float, float] | None = None
    weight_energy: float = Field(default=1.0, ge=0)
    weight_spread: float = Field(default=1.0, ge=0)
    weight_charge: float = Field(default=0.01, ge=0)
    charge_ref: float | None = Field(default=None, gt=0)
    k_sigma: float = Field(default=1.0, ge=0)
    uncertainty: Literal["epistemic", "total"] = "epistemic"
    jitter_input: str | None = None
    jitter_rel_rms: float = Field(default=0.01, ge=0, le=0.2)
    drift_input: str | None = None
    drift_rel_init: float = Field(default=0.02, ge=0, le=0.2)
    drift_rel_step: float = Field(default=0.002, ge=0, le=0.05)
    action_mode: Literal["delta", "direct"] = "delta"
    delta_fraction: float = Field(default=0.1, gt=0, le=1)
    start: Literal["standard", "random"] = "standard"
    max_episode_steps: int = Field(default=50, ge=1)


def _pick(names: Sequence[str], given: str | None, candidates: Sequence[str], what: str) -> int:
    """Column of the jitter/drift input: ``given`` (``""``: none -> -1) or the first candidate."""
    if given == "":
        return -1
    if given is not None:
        if given not in names:
            raise ValueError(f"{what}={given!r} is not a surrogate input {list(names)}")
        return list(names).index(given)
    for c in candidates:
        if c in names:
            return list(names).index(c)
    return -1


class LPACore:
    """State and dynamics of ``num_envs`` LPA tuning environments (batched, numpy + torch).

    :param config: Task settings.
    :param surrogate: The surrogate (default: loaded from ``config.surrogate``).
    :param num_envs: Batch size ``B``.
    """

    def __init__(
        self, config: LPATaskConfig, surrogate: Surrogate | None = None, num_envs: int = 1
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
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
        self.jitter_col = _pick(names, c.jitter_input, JITTER_INPUTS, "jitter_input")
        self.drift_col = _pick(names, c.drift_input, DRIFT_INPUTS, "drift_input")
        self.terms = ObjectiveTerms(
            self.surrogate,
            ObjectiveConfig(
                target_energy=1.0,  # replaced per environment
                weight_energy=c.weight_energy,
                weight_spread=c.weight_spread,
                weight_charge=c.weight_charge,
                charge_ref=c.charge_ref,
                k_sigma=c.k_sigma,
                uncertainty=c.uncertainty,
            ),
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
        step = c.delta_fraction * (self.high - self.low)
        self.action_low, self.action_high = (
            (-step, step) if c.action_mode == "delta" else (self.low.copy(), self.high.copy())
        )
        B, K = num_envs, len(self.actuators)
        self.num_envs = B
        self.keys = np.array([rng.key_from_seed(None) for _ in range(B)], dtype=np.uint64)
        self.counters = np.zeros(B, dtype=np.uint64)
        self.settings = np.tile(self.base[self.cols], (B, 1))
        self.target = np.full(B, 0.5 * (e_lo + e_hi))
        self.drift = np.zeros(B)
        self.jitter = np.zeros(B)
        self.steps = np.zeros(B, dtype=np.int64)
        self.last: dict[str, np.ndarray] = {}
        self._n_reset = 2 + K
        self._evaluate(np.arange(B))

    # ------------------------------------------------------------------ random streams
    def seed(self, idx: np.ndarray, seeds: Sequence[int | None]) -> None:
        """Re-key the random streams of environments ``idx``."""
        self.keys[idx] = np.array([rng.key_from_seed(s) for s in seeds], dtype=np.uint64)
        self.counters[idx] = 0

    def _uniform(self, idx: np.ndarray, n: int) -> np.ndarray:
        u = rng.uniform(self.keys[idx], self.counters[idx], n)
        self.counters[idx] += np.uint64(1)
        return u

    def _normal(self, idx: np.ndarray, n: int) -> np.ndarray:
        z = rng.normal(self.keys[idx], self.counters[idx], n)
        self.counters[idx] += np.uint64(1)
        return z

    # ------------------------------------------------------------------ dynamics
    def true_inputs(
        self, settings: np.ndarray, drift: np.ndarray, jitter: np.ndarray
    ) -> np.ndarray:
        """All surrogate inputs ``[B, d]`` the stage sees: settings, jitter and drift applied,
        clipped to the design bounds (the surrogate is not trusted outside them)."""
        x = np.tile(self.base, (len(settings), 1))
        x[:, self.cols] = settings
        if self.jitter_col >= 0:
            x[:, self.jitter_col] *= 1.0 + jitter
        if self.drift_col >= 0:
            x[:, self.drift_col] *= 1.0 + drift
        return np.clip(x, self.in_low, self.in_high)

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
        self.settings[idx] = settings
        self.target[idx] = target
        self.drift[idx] = drift
        self.jitter[idx] = 0.0
        self.steps[idx] = 0
        self._evaluate(idx)

    def validate_actions(self, actions: Any) -> np.ndarray:
        """``[B, K]`` float64 actions, clipped to the action box.

        :raises ValueError: For a wrong shape or NaN/inf values, naming the actuators.
        """
        a = np.asarray(actions, dtype=np.float64)
        shape = (self.num_envs, len(self.actuators))
        if a.shape != shape:
            raise ValueError(f"actions must have shape {shape}, got {a.shape}")
        bad = ~np.isfinite(a)
        if bad.any():
            cols = sorted({self.actuators[j] for j in np.nonzero(bad)[1]})
            raise ValueError(f"actions hold NaN or inf for {cols}")
        return np.clip(a, self.action_low, self.action_high)

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Advance all environments by validated actions ``[B, K]``; returns rewards ``[B]``."""
        c = self.config
        all_ = np.arange(self.num_envs)
        if c.action_mode == "delta":
            settings = self.settings + actions
        else:
            settings = actions
        self.settings = np.clip(settings, self.low, self.high)
        z = self._normal(all_, 2)
        self.jitter = c.jitter_rel_rms * z[:, 0] if self.jitter_col >= 0 else 0 * z[:, 0]
        if self.drift_col >= 0:
            self.drift = np.clip(self.drift + c.drift_rel_step * z[:, 1], -0.2, 0.2)
        self.steps += 1
        self._evaluate(all_)
        return self.last["penalised"].copy()

    @torch.no_grad()
    def _evaluate(self, idx: np.ndarray) -> None:
        x = self.true_inputs(self.settings[idx], self.drift[idx], self.jitter[idx])
        out = self.terms(torch.as_tensor(x), torch.as_tensor(self.target[idx]))
        values = {k: v.numpy() for k, v in out.items()}
        values["inputs"] = x
        if not self.last:  # first call (constructor): all environments
            self.last = {k: np.array(v) for k, v in values.items()}
            return
        for k, v in values.items():
            self.last[k][idx] = v

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


def _config(config: LPATaskConfig | dict[str, Any] | None, kwargs: dict[str, Any]) -> LPATaskConfig:
    if isinstance(config, LPATaskConfig):
        data = config.model_dump()
    else:
        data = dict(config or {})
    data.update(kwargs)
    return LPATaskConfig.model_validate(data)


class LPATuningEnv(gym.Env):
    """LPA stage tuning on a surrogate (see the module documentation).

    :param config: Task settings (:class:`LPATaskConfig` or a mapping of its fields).
    :param surrogate: A loaded surrogate (default: ``config.surrogate``).
    :param render_mode: Only ``None`` (no rendering).
    :param kwargs: Fields of :class:`LPATaskConfig` (override ``config``).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: LPATaskConfig | dict[str, Any] | None = None,
        surrogate: Surrogate | None = None,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if render_mode is not None:
            raise ValueError(f"render_mode must be None, got {render_mode!r}")
        self.config = _config(config, kwargs)
        self.core = LPACore(self.config, surrogate, 1)
        self.observation_space = observation_space(self.core)
        self.action_space = spaces.Box(
            self.core.action_low.astype(np.float32),
            self.core.action_high.astype(np.float32),
            dtype=np.float32,
        )
        self._all = np.array([0])
        self.core.reset(self._all)

    @property
    def actuator_names(self) -> list[str]:
        return list(self.core.actuators)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.core.seed(self._all, [seed])
        self.core.reset(self._all, options)
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        reward = self.core.step(self.core.validate_actions(a.reshape(1, -1)))
        return self._obs(), float(reward[0]), False, False, self._info()

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.core.observation().items()}

    def _info(self) -> dict[str, Any]:
        info = {k: v[0] for k, v in self.core.info().items()}
        for k in ("objective", "sigma", "p_valid", "energy_error", "laser_jitter", "density_drift"):
            info[k] = float(info[k])
        info["step"] = int(info["step"])
        info["output_names"] = self.core.surrogate.output_names
        return info


def vector_entry_point(num_envs: int = 1, **kwargs: Any) -> Any:
    """Gymnasium's ``vector_entry_point`` for ``accelrl/LPATuning-v0``."""
    from accelrl.envs.lpa_vector import LPATuningVectorEnv

    kwargs.pop("env_id", None)
    return LPATuningVectorEnv(num_envs=num_envs, **kwargs)
