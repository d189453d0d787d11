"""Operator units on screen: SI values in code, converted only where a person reads them.

Everything accelrl computes is in SI units (m, rad, eV, 1/m^2); tables, plots and terminal
output show beam positions and sizes in mm or um, steerer angles in mrad, energies in MeV.
This module holds the one table of those conversions.

>>> display_unit("rad")
(1000.0, 'mrad')
>>> fmt(6.1782e-3, "rad")
'6.178 mrad'
>>> um(1.5e-5)
'15.0'
"""

from __future__ import annotations

import math

__all__ = ["MM", "UM", "display_unit", "fmt", "um", "INCOMING_DISPLAY"]

#: Metres to millimetres.
MM = 1e3
#: Metres to micrometres.
UM = 1e6

#: SI unit -> (scale, operator unit): a value is shown as ``value * scale`` operator units.
_DISPLAY: dict[str, tuple[float, str]] = {
    "m": (1e3, "mm"),
    "rad": (1e3, "mrad"),
    "eV": (1e-6, "MeV"),
    "1/m^2": (1.0, "1/m^2"),
}

#: Display scale and unit of each incoming-beam moment (:data:`accelrl.names.INCOMING`).
INCOMING_DISPLAY: dict[str, tuple[float, str]] = {
    "energy": (1e-6, "MeV"),
    "mu_x": (1e3, "mm"),
    "mu_px": (1e3, "mrad"),
    "mu_y": (1e3, "mm"),
    "mu_py": (1e3, "mrad"),
    "sigma_x": (1e6, "um"),
    "sigma_px": (1e6, "urad"),
    "sigma_y": (1e6, "um"),
    "sigma_py": (1e6, "urad"),
    "sigma_tau": (1e6, "um"),
    "sigma_p": (1.0, "1 (relative)"),
}


def display_unit(unit: str) -> tuple[float, str]:
    """``(scale, operator unit)`` of an SI unit (unknown units are shown as they are)."""
    return _DISPLAY.get(unit, (1.0, unit or "-"))


def fmt(value: float, unit: str, digits: int = 4) -> str:
    """``value`` (SI, in ``unit``) in operator units with ``digits`` significant digits."""
    scale, label = display_unit(unit)
    v = float(value) * scale
    if not math.isfinite(v):
        return f"{v} {label}"
    return f"{v:.{digits}g} {label}"


def um(value: float | None, digits: int = 1) -> str:
    """A length [m] in um with ``digits`` decimals (``"-"`` for ``None`` or non-finite)."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    return f"{float(value) * UM:.{digits}f}"
