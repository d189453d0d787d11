"""The laser-plasma accelerator stage shared by the Wake-T and FBPIC adapters.

A Gaussian laser pulse drives a wake in a plasma of uniform longitudinal density with a
parabolic guiding channel; an externally injected witness bunch with a trapezoidal current
profile (linear from the tail current to the head current, Gaussian edges) sits a given
distance behind the laser centroid and is accelerated over the stage. Its beam loading,
set by the current profile and position, decides the final energy spread and emittance
(Ferran Pousa et al., Phys. Rev. Accel. Beams 26, 084601 (2023)).

Every physical parameter is named once in :data:`PARAMETERS`; a dataset spec gives each one
either as a varied input or as a fixed value (SI units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.constants as ct

from accelrl.surrogates.simulators.base import (
    FAILED,
    RunResult,
    RunTimeout,
    Stopwatch,
    describe_error,
    run_directory,
    time_limit,
)

#: Physical parameters of the stage: name -> (unit, description, default or None).
PARAMETERS: dict[str, tuple[str, str, float | None]] = {
    "laser_energy": ("J", "laser pulse energy (sets a0; ignored when laser_a0 is given)", None),
    "laser_a0": ("", "peak normalised vector potential (overrides laser_energy)", None),
    "laser_duration": ("s", "laser duration, FWHM of the intensity", 25e-15),
    "laser_waist": ("m", "laser spot size w0 (1/e^2 intensity radius) at focus", 40e-6),
    "laser_wavelength": ("m", "laser wavelength", 0.8e-6),
    "plasma_density": ("m^-3", "on-axis plasma electron density", None),
    "beam_current_head": ("A", "witness current at the head (front)", None),
    "beam_current_tail": ("A", "witness current at the tail (back)", None),
    "beam_length": ("m", "length of the trapezoidal current profile", None),
    "beam_delay": ("m", "distance from the laser centroid back to the witness head", None),
    "beam_edge_length": ("m", "rms length of the Gaussian edges of the profile", 1e-6),
    "beam_energy": ("eV", "initial mean kinetic energy of the witness", 200e6),
    "beam_energy_spread": ("", "initial relative rms energy spread", 1e-3),
    "beam_emittance_x": ("m rad", "initial normalised emittance, x", 3e-6),
    "beam_emittance_y": ("m rad", "initial normalised emittance, y", 0.5e-6),
    "energy_acceptance": ("", "relative half-width of the energy acceptance", 0.01),
    "min_charge_fraction": ("", "below this surviving charge fraction a run is no_beam", 0.05),
    "intact_charge_fraction": ("", "beam_intact when this charge fraction survives", 0.99),
}

#: Electron rest energy [eV].
MC2_EV = ct.m_e * ct.c**2 / ct.e


def resolve_parameters(
    fixed: Mapping[str, object], inputs: Mapping[str, float]
) -> dict[str, float]:
    """Complete parameter set from fixed values, varied inputs and defaults.

    :raises ValueError: For an unknown name, a name given twice, or a required one missing.
    """
    unknown = sorted(set(fixed) - set(PARAMETERS)) + sorted(set(inputs) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown physical parameters {unknown}; known: {sorted(PARAMETERS)}")
    both = sorted(set(fixed) & set(inputs))
    if both:
        raise ValueError(f"parameters {both} are given both as fixed values and as inputs")
    values: dict[str, float] = {k: v[2] for k, v in PARAMETERS.items() if v[2] is not None}
    values.update({k: float(v) for k, v in fixed.items()})  # type: ignore[arg-type]
    values.update({k: float(v) for k, v in inputs.items()})
    missing = [k for k, v in PARAMETERS.items() if v[2] is None and k not in values]
    if "laser_a0" in values or "laser_energy" in values:
        missing = [k for k in missing if k not in ("laser_a0", "laser_energy")]
    if missing:
        raise ValueError(f"physical parameters {missing} need a fixed value or an input")
    return values


# ---------------------------------------------------------------------------- plasma, laser
def plasma_wavenumber(density: float) -> float:
    """Plasma wavenumber k_p [1/m] of an electron density [m^-3]."""
    return math.sqrt(density * ct.e**2 / (ct.epsilon_0 * ct.m_e * ct.c**2))


def skin_depth(density: float) -> float:
    """Plasma skin depth 1/k_p [m]."""
    return 1.0 / plasma_wavenumber(density)


def laser_a0_from_energy(
    energy: float, duration_fwhm: float, waist: float, wavelength: float
) -> float:
    """Peak a0 of a linearly polarised Gaussian pulse.

    :param energy: Pulse energy [J].
    :param duration_fwhm: FWHM duration of the intensity [s].
    :param waist: Spot size w0 [m] (intensity ``exp(-2 r^2 / w0^2)``).
    :param wavelength: Wavelength [m].
    """
    peak_power = energy / (duration_fwhm * math.sqrt(math.pi / (4.0 * math.log(2.0))))
    peak_intensity = 2.0 * peak_power / (math.pi * waist**2)
    omega = 2.0 * math.pi * ct.c / wavelength
    peak_field = math.sqrt(2.0 * peak_intensity / (ct.epsilon_0 * ct.c))
    return ct.e * peak_field / (ct.m_e * omega * ct.c)


def laser_a0(p: Mapping[str, float]) -> float:
    """Peak a0 of the stage's laser: ``laser_a0`` when given, else from ``laser_energy``
    (:func:`laser_a0_from_energy`).

    :param p: Complete parameters (:func:`resolve_parameters`).
    """
    if "laser_a0" in p:
        return p["laser_a0"]
    return laser_a0_from_energy(
        p["laser_energy"], p["laser_duration"], p["laser_waist"], p["laser_wavelength"]
    )


def channel_coefficient(waist: float, density: float) -> float:
    """Relative parabolic density rise [1/m^2] of a channel that guides a spot size ``waist``:
    ``n(r) = n0 (1 + c r^2)``, ``c = 1 / (pi r_e w0^4 n0)``."""
    r_e = ct.e**2 / (4.0 * math.pi * ct.epsilon_0 * ct.m_e * ct.c**2)
    return 1.0 / (math.pi * r_e * waist**4 * density)


# ---------------------------------------------------------------------------- witness bunch
@dataclass
class Bunch:
    """Macroparticles: positions [m], momenta [m_e c] and weights (electrons per particle).

    ``z`` is the longitudinal position relative to the laser centroid (negative behind).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    ux: np.ndarray
    uy: np.ndarray
    uz: np.ndarray
    w: np.ndarray

    @property
    def charge(self) -> float:
        """Total charge [C] (positive number)."""
        return float(self.w.sum() * ct.e)


def current_profile(z: np.ndarray, p: Mapping[str, float]) -> np.ndarray:
    """Witness current [A] at ``z`` [m] (relative to the laser centroid).

    Linear from ``beam_current_tail`` at ``z_tail`` to ``beam_current_head`` at
    ``z_head = -beam_delay``, with Gaussian edges of rms length ``beam_edge_length``.
    """
    z_head = -p["beam_delay"]
    z_tail = z_head - p["beam_length"]
    i_h, i_t, s = p["beam_current_head"], p["beam_current_tail"], p["beam_edge_length"]
    frac = (z - z_tail) / (z_head - z_tail)
    inside = i_t + (i_h - i_t) * frac
    head = i_h * np.exp(-0.5 * ((z - z_head) / s) ** 2)
    tail = i_t * np.exp(-0.5 * ((z - z_tail) / s) ** 2)
    return np.where(z > z_head, head, np.where(z < z_tail, tail, inside))


def matched_beta(density: float, gamma: float) -> float:
    """Matched beta function [m] in the blowout (ion-column focusing): sqrt(2 gamma) / k_p."""
    return math.sqrt(2.0 * gamma) / plasma_wavenumber(density)


def witness_bunch(p: Mapping[str, float], n_particles: int, seed: int = 0) -> Bunch:
    """Sample the witness bunch: trapezoidal current, matched Gaussian transverse phase space.

    :param p: Complete parameters (:func:`resolve_parameters`).
    :param n_particles: Number of macroparticles (equal weights).
    :param seed: Seed of the sampling (the same seed gives the same bunch).
    """
    rng = np.random.default_rng(seed)
    gamma0 = 1.0 + p["beam_energy"] / MC2_EV
    beta = matched_beta(p["plasma_density"], gamma0)
    z_head = -p["beam_delay"]
    z_tail = z_head - p["beam_length"]
    s = p["beam_edge_length"]
    grid = np.linspace(z_tail - 5 * s, z_head + 5 * s, 4096)
    current = current_profile(grid, p)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (current[1:] + current[:-1]) * np.diff(grid))])
    charge = cdf[-1] / ct.c
    z = np.interp(rng.random(n_particles) * cdf[-1], cdf, grid)
    n = n_particles
    sx = math.sqrt(p["beam_emittance_x"] * beta / gamma0)
    sy = math.sqrt(p["beam_emittance_y"] * beta / gamma0)
    x = rng.normal(0.0, sx, n)
    y = rng.normal(0.0, sy, n)
    ux = rng.normal(0.0, p["beam_emittance_x"] / sx, n)
    uy = rng.normal(0.0, p["beam_emittance_y"] / sy, n)
    gamma = gamma0 * (
        1.0 + p["beam_energy_spread"] * rng.normal(0.0, 1.0, n) * (gamma0 - 1.0) / gamma0
    )
    uz = np.sqrt(np.maximum(gamma**2 - 1.0 - ux**2 - uy**2, 1.0))
    w = np.full(n, charge / ct.e / n)
    return Bunch(x=x, y=y, z=z, ux=ux, uy=uy, uz=uz, w=w)


# ---------------------------------------------------------------------------- adapters
class StageSimulator:
    """What the adapters of the stage share: parameters, fidelity, inputs and a safe ``run``.

    A subclass names its code (:attr:`name`, :attr:`distribution`), checks its fidelity
    settings (:meth:`fidelity_settings`) and simulates one complete parameter set
    (:meth:`_simulate`).

    :param fixed: Fixed physical parameters (names of :data:`PARAMETERS`, SI).
    :param fidelity: Numerical settings (see the adapter's module docstring).
    :param input_names: Names of the varied inputs (checked against the parameters).
    :param timeout_s: Wall-time limit of one run [s] (``None``: none).
    """

    #: Simulator name (``"wake-t"``, ``"fbpic"``).
    name: str
    #: Distribution whose installed version is :attr:`version`.
    distribution: str
    #: Prefix of the temporary run folder.
    run_prefix: str = "accelrl-sim-"
    #: Whether a run that outlasted ``timeout_s`` without being interrupted (the time limit
    #: only acts in a process's main thread) counts as failed.
    fail_late_runs: bool = False

    def __init__(
        self,
        fixed: Mapping[str, Any] | None = None,
        fidelity: Mapping[str, Any] | None = None,
        input_names: list[str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.fixed = dict(fixed or {})
        self.fidelity = self.fidelity_settings(fidelity or {})
        self.input_names = list(input_names) if input_names is not None else None
        self.timeout_s = timeout_s
        if self.input_names is not None:
            resolve_parameters(self.fixed, dict.fromkeys(self.input_names, 1.0))

    @staticmethod
    def fidelity_settings(fidelity: Mapping[str, Any]) -> dict[str, Any]:
        """Fidelity settings completed with their defaults.

        :raises ValueError: For an unknown setting or a value out of range.
        """
        raise NotImplementedError

    @property
    def version(self) -> str:
        """Installed version of the code (:attr:`distribution`)."""
        from importlib.metadata import version

        return version(self.distribution)

    def run(self, inputs: Mapping[str, float]) -> RunResult:
        """Simulate one setting; never raises for a failed run (``status="failed"``).

        :param inputs: Values of the varied inputs (SI).
        :raises ValueError: When an input of ``input_names`` is missing.
        """
        clock = Stopwatch()
        if self.input_names is not None:
            missing = sorted(set(self.input_names) - set(inputs))
            if missing:
                raise ValueError(f"missing inputs {missing}")
            inputs = {k: inputs[k] for k in self.input_names}
        params = resolve_parameters(self.fixed, inputs)
        try:
            with run_directory(self.run_prefix), time_limit(self.timeout_s):
                status, outputs, message = self._simulate(params)
        except RunTimeout as err:
            return RunResult(FAILED, {}, f"timeout: {err}", clock.elapsed)
        except Exception as err:  # a failed simulation is a labelled row, not a crash
            return RunResult(FAILED, {}, describe_error(err), clock.elapsed)
        late = self.timeout_s is not None and clock.elapsed > self.timeout_s
        if self.fail_late_runs and late:
            return RunResult(FAILED, {}, f"timeout: took {clock.elapsed:.1f} s", clock.elapsed)
        return RunResult(status, outputs, message, clock.elapsed)

    def _simulate(self, p: Mapping[str, float]) -> tuple[str, dict[str, float], str]:
        """``(status, outputs, message)`` of one run with complete parameters ``p``."""
        raise NotImplementedError
