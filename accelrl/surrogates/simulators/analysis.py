"""Scalar beam parameters of a final particle distribution (the dataset outputs).

All quantities are charge-weighted and in SI units. Energies are kinetic,
``(gamma - 1) m_e c^2`` in eV. Normalised emittances use the momenta in units of m_e c:
``eps_n = sqrt(<x^2><u_x^2> - <x u_x>^2)`` (central moments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.constants as ct

from accelrl.surrogates.simulators.lpa import MC2_EV, Bunch

#: Outputs computed by :func:`beam_outputs`: name -> (unit, description).
OUTPUTS: dict[str, tuple[str, str]] = {
    "charge": ("C", "charge of the surviving witness particles"),
    "charge_fraction": ("", "surviving charge / initial charge"),
    "beam_intact": ("", "1 if at least intact_charge_fraction of the charge survives, else 0"),
    "energy_mean": ("eV", "mean kinetic energy"),
    "energy_median": ("eV", "median kinetic energy"),
    "energy_spread_rms": ("", "relative rms energy spread (std / mean)"),
    "energy_spread_mad": ("", "robust relative spread: 1.4826 MAD / median"),
    "energy_spread_core": ("", "relative rms energy spread of the central 90% of charge in energy"),
    "charge_in_acceptance": ("C", "charge within +-energy_acceptance of the median energy"),
    "emittance_x": ("m rad", "normalised rms emittance, x"),
    "emittance_y": ("m rad", "normalised rms emittance, y"),
    "emittance_x_core": ("m rad", "normalised emittance, x, of the 90% of charge nearest the axis"),
    "emittance_y_core": ("m rad", "normalised emittance, y, of the 90% of charge nearest the axis"),
    "divergence_x": ("rad", "rms divergence u_x / u_z, x"),
    "divergence_y": ("rad", "rms divergence u_y / u_z, y"),
    "size_x": ("m", "rms size, x"),
    "size_y": ("m", "rms size, y"),
    "bunch_length": ("m", "rms length"),
}


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float | np.ndarray) -> np.ndarray:
    """Weighted quantile(s) ``q`` in [0, 1] (linear interpolation of the weighted CDF)."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(q, cdf, v)


def _mean(a: np.ndarray, w: np.ndarray) -> float:
    return float(np.average(a, weights=w))


def _std(a: np.ndarray, w: np.ndarray) -> float:
    m = np.average(a, weights=w)
    return float(math.sqrt(max(np.average((a - m) ** 2, weights=w), 0.0)))


def normalised_emittance(x: np.ndarray, ux: np.ndarray, w: np.ndarray) -> float:
    """Normalised rms emittance [m rad] from position [m] and momentum [m_e c]."""
    xc = x - np.average(x, weights=w)
    uc = ux - np.average(ux, weights=w)
    xx = np.average(xc**2, weights=w)
    uu = np.average(uc**2, weights=w)
    xu = np.average(xc * uc, weights=w)
    return float(math.sqrt(max(xx * uu - xu**2, 0.0)))


def beam_outputs(
    bunch: Bunch, alive: np.ndarray, initial_charge: float, p: Mapping[str, float]
) -> tuple[str, dict[str, float], str]:
    """Status, outputs and message of a final distribution.

    :param bunch: Final macroparticles.
    :param alive: Boolean mask of particles still in the simulation (not lost through a
        boundary, finite coordinates).
    :param initial_charge: Charge at the start [C].
    :param p: Parameters (``energy_acceptance``, ``min_charge_fraction``,
        ``intact_charge_fraction``).
    """
    out = dict.fromkeys(OUTPUTS, float("nan"))
    finite = np.isfinite(bunch.x) & np.isfinite(bunch.y) & np.isfinite(bunch.z)
    finite &= np.isfinite(bunch.ux) & np.isfinite(bunch.uy) & np.isfinite(bunch.uz)
    m = alive & finite & (bunch.w > 0)
    charge = float(bunch.w[m].sum() * ct.e)
    frac = charge / initial_charge if initial_charge > 0 else 0.0
    out["charge"] = charge
    out["charge_fraction"] = frac
    out["beam_intact"] = float(frac >= p["intact_charge_fraction"])
    if frac < p["min_charge_fraction"] or m.sum() < 10:
        return "no_beam", out, f"{100 * frac:.2f}% of the witness charge survives"
    x, y, z = bunch.x[m], bunch.y[m], bunch.z[m]
    ux, uy, uz, w = bunch.ux[m], bunch.uy[m], bunch.uz[m], bunch.w[m]
    gamma = np.sqrt(1.0 + ux**2 + uy**2 + uz**2)
    ek = (gamma - 1.0) * MC2_EV
    mean = _mean(ek, w)
    median = float(weighted_quantile(ek, w, 0.5))
    out["energy_mean"] = mean
    out["energy_median"] = median
    out["energy_spread_rms"] = _std(ek, w) / mean
    mad = float(weighted_quantile(np.abs(ek - median), w, 0.5))
    out["energy_spread_mad"] = 1.4826 * mad / median
    lo, hi = weighted_quantile(ek, w, np.array([0.05, 0.95]))
    core_e = (ek >= lo) & (ek <= hi)
    out["energy_spread_core"] = _std(ek[core_e], w[core_e]) / _mean(ek[core_e], w[core_e])
    acc = np.abs(ek - median) <= p["energy_acceptance"] * median
    out["charge_in_acceptance"] = float(w[acc].sum() * ct.e)
    out["emittance_x"] = normalised_emittance(x, ux, w)
    out["emittance_y"] = normalised_emittance(y, uy, w)
    r2 = (x - weighted_quantile(x, w, 0.5)) ** 2 + (y - weighted_quantile(y, w, 0.5)) ** 2
    core_r = r2 <= weighted_quantile(r2, w, 0.9)
    out["emittance_x_core"] = normalised_emittance(x[core_r], ux[core_r], w[core_r])
    out["emittance_y_core"] = normalised_emittance(y[core_r], uy[core_r], w[core_r])
    out["divergence_x"] = _std(ux / uz, w)
    out["divergence_y"] = _std(uy / uz, w)
    out["size_x"] = _std(x, w)
    out["size_y"] = _std(y, w)
    out["bunch_length"] = _std(z, w)
    message = "" if out["beam_intact"] else f"{100 * (1 - frac):.2f}% of the witness charge lost"
    return "ok", out, message
