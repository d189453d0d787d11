"""FBPIC adapter: full electromagnetic quasi-3D (azimuthal modes) particle-in-cell.

The stage of :mod:`accelrl.surrogates.simulators.lpa` in the laboratory frame: a
``fbpic.main.Simulation`` with a moving window at ``c``, spectral (PSATD) solver, plasma
electrons over a uniform ion background, the Gaussian laser initialised in the box
(``add_laser(method="direct")``, focused at the plasma entrance) and the witness bunch
loaded from arrays with its space-charge field. The plasma (with the parabolic guiding
channel, up to ``r_max_plasma_factor`` laser waists) starts just ahead of the box; the run
ends when the witness tail has crossed ``stage_length`` of plasma. On a CUDA GPU
(``use_cuda``: cupy and a device present) FBPIC runs there; otherwise on the CPU with
``pyfftw`` (one thread per worker).

Fidelity settings (``spec.fidelity``; defaults in brackets):

``stage_length`` [m] [1e-3]; ``cells_per_wavelength`` [20] (``dz = lambda0 / n``);
``cells_per_skin_depth`` [6] (``dr``); ``n_modes`` [2]; ``ppc_z``, ``ppc_r``, ``ppc_theta``
[2, 2, 4]; ``n_particles`` [10000]; ``box_behind`` [90e-6] m; ``r_max_factor`` [3.0];
``r_max_plasma_factor`` [2.5]; ``use_cuda`` ["auto"]; ``seed`` [0]; ``label``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.constants as ct

from accelrl.surrogates.simulators.analysis import beam_outputs
from accelrl.surrogates.simulators.base import check_fidelity
from accelrl.surrogates.simulators.lpa import (
    Bunch,
    StageSimulator,
    channel_coefficient,
    laser_a0,
    skin_depth,
    witness_bunch,
)

#: Fidelity settings of the FBPIC adapter and their defaults.
FBPIC_FIDELITY: dict[str, float | int | str | bool] = {
    "stage_length": 1e-3,
    "cells_per_wavelength": 20.0,
    "cells_per_skin_depth": 6.0,
    "n_modes": 2,
    "ppc_z": 2,
    "ppc_r": 2,
    "ppc_theta": 4,
    "n_particles": 10000,
    "box_behind": 90e-6,
    "r_max_factor": 3.0,
    "r_max_plasma_factor": 2.5,
    "use_cuda": "auto",
    "seed": 0,
    "label": "",
}


def _fidelity(fidelity: Mapping[str, Any]) -> dict[str, Any]:
    f = check_fidelity(
        fidelity,
        FBPIC_FIDELITY,
        "FBPIC",
        positive=("stage_length", "cells_per_wavelength", "cells_per_skin_depth", "box_behind"),
        counts=("n_modes", "ppc_z", "ppc_r", "ppc_theta", "n_particles"),
    )
    if str(f["use_cuda"]).lower() not in ("auto", "true", "false"):
        raise ValueError(f"fidelity.use_cuda must be 'auto', true or false, got {f['use_cuda']!r}")
    return f


def cuda_available() -> bool:
    """Whether FBPIC can run on a CUDA GPU here (cupy importable and a device present)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _to_numpy(a: Any) -> np.ndarray:
    return np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)


class FBPICSimulator(StageSimulator):
    """The LPA stage in FBPIC (quasi-3D spectral PIC, laboratory frame).

    Arguments as for :class:`~accelrl.surrogates.simulators.lpa.StageSimulator`; the
    fidelity settings are those of the module docstring.
    """

    name = "fbpic"
    distribution = "fbpic"
    run_prefix = "accelrl-fbpic-"
    fidelity_settings = staticmethod(_fidelity)

    @property
    def use_cuda(self) -> bool:
        """Whether runs use the GPU (``fidelity.use_cuda``; ``"auto"``: when available)."""
        flag = str(self.fidelity["use_cuda"]).lower()
        return cuda_available() if flag == "auto" else flag == "true"

    def grid(self, p: Mapping[str, float]) -> dict[str, float | int]:
        """Box, grid and step count for parameters ``p``."""
        f = self.fidelity
        ahead = 4.0 * ct.c * p["laser_duration"]
        zmin, zmax = -float(f["box_behind"]), ahead
        dz = p["laser_wavelength"] / float(f["cells_per_wavelength"])
        r_max = float(f["r_max_factor"]) * p["laser_waist"]
        dr = skin_depth(p["plasma_density"]) / float(f["cells_per_skin_depth"])
        nz = int(math.ceil((zmax - zmin) / dz))
        nr = max(int(math.ceil(r_max / dr)), 8)
        dt = (zmax - zmin) / nz / ct.c
        # the witness tail must cross the whole plasma, which starts at zmax
        tail = p["beam_delay"] + p["beam_length"] + 3.0 * p["beam_edge_length"]
        travel = zmax + tail + float(f["stage_length"])
        return {
            "zmin": zmin,
            "zmax": zmax,
            "nz": nz,
            "r_max": r_max,
            "nr": nr,
            "dt": dt,
            "n_steps": int(math.ceil(travel / (ct.c * dt))),
            "plasma_start": zmax,
            "r_max_plasma": float(f["r_max_plasma_factor"]) * p["laser_waist"],
        }

    def _simulate(self, p: Mapping[str, float]) -> tuple[str, dict[str, float], str]:
        if not hasattr(np, "row_stack"):
            # numba-cuda (FBPIC's GPU backend) registers an overload of np.row_stack, which
            # NumPy 2.5 removed; it is an alias of np.vstack
            np.row_stack = np.vstack  # type: ignore[attr-defined]
        from fbpic.lpa_utils.bunch import add_particle_bunch_from_arrays
        from fbpic.lpa_utils.laser import add_laser
        from fbpic.main import Simulation

        f = self.fidelity
        g = self.grid(p)
        a0 = laser_a0(p)
        n0 = p["plasma_density"]
        pc = channel_coefficient(p["laser_waist"], n0)
        z0p, z1p = g["plasma_start"], g["plasma_start"] + float(f["stage_length"])

        def dens_func(z: np.ndarray, r: np.ndarray) -> np.ndarray:
            inside = (z >= z0p) & (z <= z1p)
            return np.where(inside, 1.0 + pc * r**2, 0.0)

        sim = Simulation(
            g["nz"],
            g["zmax"],
            g["nr"],
            g["r_max"],
            int(f["n_modes"]),
            g["dt"],
            zmin=g["zmin"],
            n_order=-1,
            use_cuda=self.use_cuda,
            boundaries={"z": "open", "r": "reflective"},
            particle_shape="cubic",
            verbose_level=0,
        )
        sim.add_new_species(
            q=-ct.e,
            m=ct.m_e,
            n=n0,
            dens_func=dens_func,
            p_nz=int(f["ppc_z"]),
            p_nr=int(f["ppc_r"]),
            p_nt=int(f["ppc_theta"]),
            p_zmin=z0p,
            p_zmax=z1p,
            p_rmax=g["r_max_plasma"],
        )
        b = witness_bunch(p, int(f["n_particles"]), seed=int(f["seed"]))
        initial_charge = b.charge
        bunch = add_particle_bunch_from_arrays(
            sim, -ct.e, ct.m_e, b.x, b.y, b.z, b.ux, b.uy, b.uz, b.w.copy()
        )
        ctau = ct.c * p["laser_duration"] / math.sqrt(2.0 * math.log(2.0))
        add_laser(
            sim,
            a0,
            p["laser_waist"],
            ctau,
            0.0,
            zf=z0p,
            lambda0=p["laser_wavelength"],
            method="direct",
        )
        sim.set_moving_window(v=ct.c)
        sim.step(g["n_steps"], show_progress=False)
        final = Bunch(
            x=_to_numpy(bunch.x),
            y=_to_numpy(bunch.y),
            z=_to_numpy(bunch.z),
            ux=_to_numpy(bunch.ux),
            uy=_to_numpy(bunch.uy),
            uz=_to_numpy(bunch.uz),
            w=_to_numpy(bunch.w),
        )
        alive = np.hypot(final.x, final.y) < g["r_max"]
        return beam_outputs(final, alive, initial_charge, p)
