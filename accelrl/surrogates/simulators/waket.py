"""Wake-T adapter: quasi-static 2D r-z kinetic plasma model with laser-envelope evolution.

The stage of :mod:`accelrl.surrogates.simulators.lpa` is simulated with Wake-T's
``PlasmaStage(wakefield_model="quasistatic_2d")`` (Baxevanis-Stupakov gridless kinetic
model; the laser envelope evolves in the plasma response), the witness bunch is a
:class:`wake_t.ParticleBunch` tracked with the Boris pusher, and the outputs come from its
final distribution (:mod:`accelrl.surrogates.simulators.analysis`).

Fidelity settings (``spec.fidelity``; defaults in brackets):

``stage_length`` [m]
    Length of the plasma plateau (no ramps) [0.03].
``resolution`` [1.0]
    Grid factor: ``dr = skin_depth / (20 resolution)``, ``dxi = c tau / (40 resolution)``
    (``resolution=1`` is the resolution of the optimas Wake-T/FBPIC study).
``ppc`` [4]
    Plasma macroparticles per radial cell.
``n_particles`` [10000]
    Witness macroparticles.
``box_behind`` [90e-6]
    Box length behind the laser centroid [m]; the box reaches ``4 c tau`` ahead of it.
``r_max_factor`` [4.0], ``r_max_plasma_factor`` [2.5]
    Box radius and plasma column radius in units of the laser waist.
``dz_fields_factor`` [2.0]
    Wake update interval in box lengths.
``max_gamma`` [25.0]
    Quasi-static limit of the plasma particle Lorentz factor.
``seed`` [0]
    Seed of the witness macroparticle sampling.

A witness particle counts as lost when it leaves the box (longitudinally behind
``xi_min``, or radially beyond the box radius): the fields there are zero in Wake-T.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.constants as ct

from accelrl.surrogates.simulators.analysis import beam_outputs
from accelrl.surrogates.simulators.base import FAILED, check_fidelity
from accelrl.surrogates.simulators.lpa import (
    Bunch,
    StageSimulator,
    channel_coefficient,
    laser_a0,
    skin_depth,
    witness_bunch,
)

#: Fidelity settings of the Wake-T adapter and their defaults.
WAKET_FIDELITY: dict[str, float | int | str] = {
    "stage_length": 0.03,
    "resolution": 1.0,
    "ppc": 4,
    "n_particles": 10000,
    "box_behind": 90e-6,
    "r_max_factor": 4.0,
    "r_max_plasma_factor": 2.5,
    "dz_fields_factor": 2.0,
    "max_gamma": 25.0,
    "seed": 0,
    "label": "",
}


def _fidelity(fidelity: Mapping[str, Any]) -> dict[str, Any]:
    return check_fidelity(
        fidelity,
        WAKET_FIDELITY,
        "Wake-T",
        positive=("stage_length", "resolution", "box_behind", "r_max_factor", "dz_fields_factor"),
        counts=("ppc", "n_particles"),
    )


class WakeTSimulator(StageSimulator):
    """The LPA stage in Wake-T (quasi-static 2D r-z, laser envelope).

    Arguments as for :class:`~accelrl.surrogates.simulators.lpa.StageSimulator`; the
    fidelity settings are those of the module docstring.

    >>> sim = WakeTSimulator(fixed={...}, fidelity={"stage_length": 0.01})  # doctest: +SKIP
    >>> sim.run({"plasma_density": 2e23, ...}).outputs["energy_median"]  # doctest: +SKIP
    """

    name = "wake-t"
    distribution = "wake-t"
    run_prefix = "accelrl-waket-"
    fail_late_runs = True
    fidelity_settings = staticmethod(_fidelity)

    # ------------------------------------------------------------------ simulation
    def grid(self, params: Mapping[str, float]) -> dict[str, float | int]:
        """Box and grid of the stage for ``params`` (see module docstring)."""
        f = self.fidelity
        tau = params["laser_duration"]
        w0 = params["laser_waist"]
        res = float(f["resolution"])
        ahead = 4.0 * ct.c * tau
        l_box = ahead + float(f["box_behind"])
        r_max = float(f["r_max_factor"]) * w0
        dr = skin_depth(params["plasma_density"]) / (20.0 * res)
        dxi = ct.c * tau / (40.0 * res)
        return {
            "xi_min": ahead - l_box,
            "xi_max": ahead,
            "r_max": r_max,
            "r_max_plasma": float(f["r_max_plasma_factor"]) * w0,
            "n_r": max(int(round(r_max / dr)), 8),
            "n_xi": max(int(round(l_box / dxi)), 16),
            "dz_fields": float(f["dz_fields_factor"]) * l_box,
        }

    def _simulate(self, p: Mapping[str, float]) -> tuple[str, dict[str, float], str]:
        import wake_t

        f = self.fidelity
        a0 = laser_a0(p)
        g = self.grid(p)
        b = witness_bunch(p, int(f["n_particles"]), seed=int(f["seed"]))
        initial_charge = b.charge
        bunch = wake_t.ParticleBunch(
            w=b.w.copy(), x=b.x, y=b.y, xi=b.z, px=b.ux, py=b.uy, pz=b.uz, name="witness"
        )
        laser = wake_t.GaussianPulse(
            xi_c=0.0,
            a_0=a0,
            w_0=p["laser_waist"],
            tau=p["laser_duration"],
            z_foc=0.0,
            l_0=p["laser_wavelength"],
        )
        length = float(f["stage_length"])
        n0 = p["plasma_density"]

        with warnings.catch_warnings():
            # Wake-T 0.9 marks parabolic_coefficient deprecated in favour of a density
            # function of (z, r); it gives the same channel and is what generated the datasets
            warnings.filterwarnings("ignore", "The 'parabolic_coefficient'", DeprecationWarning)
            stage = wake_t.PlasmaStage(
                length,
                density=float(n0),
                wakefield_model="quasistatic_2d",
                n_out=1,
                laser=laser,
                laser_evolution=True,
                r_max=g["r_max"],
                r_max_plasma=g["r_max_plasma"],
                xi_min=g["xi_min"],
                xi_max=g["xi_max"],
                n_r=g["n_r"],
                n_xi=g["n_xi"],
                dz_fields=g["dz_fields"],
                ppc=int(f["ppc"]),
                parabolic_coefficient=channel_coefficient(p["laser_waist"], n0),
                max_gamma=float(f["max_gamma"]),
                field_diags=[],
            )
        stage.track(bunch, opmd_diag=False, show_progress_bar=False)
        final = Bunch(
            x=np.asarray(bunch.x),
            y=np.asarray(bunch.y),
            z=np.asarray(bunch.xi),
            ux=np.asarray(bunch.px),
            uy=np.asarray(bunch.py),
            uz=np.asarray(bunch.pz),
            w=np.asarray(bunch.w),
        )
        r = np.hypot(final.x, final.y)
        alive = (final.z > g["xi_min"]) & (final.z < g["xi_max"]) & (r < g["r_max"])
        status, outputs, message = beam_outputs(final, alive, initial_charge, p)
        if not math.isfinite(outputs["charge"]):
            return FAILED, outputs, "non-finite charge"
        return status, outputs, message
