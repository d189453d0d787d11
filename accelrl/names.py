"""Names shared by every layer: environment ids, beam-parameter names, backends and modes.

This module imports nothing heavy, so the torch-free deployment runtime, the CLI and the
simulation all take these constants from one place.

>>> from accelrl.names import ARES_EA_ID, TRANSVERSE
>>> ARES_EA_ID
'accelrl/AresEATransverseTuning-v0'
>>> TRANSVERSE
('mu_x', 'sigma_x', 'mu_y', 'sigma_y')
"""

from __future__ import annotations

from enum import StrEnum

#: Gymnasium id of the ARES experimental-area transverse-tuning task.
ARES_EA_ID = "accelrl/AresEATransverseTuning-v0"
#: Gymnasium id of the laser-plasma-accelerator stage tuned on its surrogate.
LPA_TUNING_ID = "accelrl/LPATuning-v0"
#: Gymnasium id of the plasma stage feeding a compiled spectrometer line.
LPA_HYBRID_ID = "accelrl/LPAHybridBeamline-v0"

#: The transverse beam read on a screen, in the order of readings and targets:
#: ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
TRANSVERSE: tuple[str, ...] = ("mu_x", "sigma_x", "mu_y", "sigma_y")

#: Column order of an incoming-beam row (SI): reference energy [eV], centroid position [m]
#: and angle [rad] in x and y, rms sizes and divergences [m, rad], bunch length [m] and
#: relative energy spread [1].
INCOMING: tuple[str, ...] = (
    "energy",
    "mu_x",
    "mu_px",
    "mu_y",
    "mu_py",
    "sigma_x",
    "sigma_px",
    "sigma_y",
    "sigma_py",
    "sigma_tau",
    "sigma_p",
)


class Backend(StrEnum):
    """Simulation backends of the tuning environments (:mod:`accelrl.physics.backends`)."""

    #: The compiled map (:mod:`accelrl.physics.compiled`).
    fast = "fast"
    #: Cheetah ``ParameterBeam`` tracking.
    cheetah = "cheetah"
    #: Cheetah ``ParticleBeam`` tracking (``num_particles`` macro-particles).
    cheetah_particles = "cheetah-particles"


class Mode(StrEnum):
    """How the machine controller acts on its proposals (:mod:`accelrl.deploy.controller`)."""

    #: Read and log what it would do; never write.
    shadow = "shadow"
    #: Ask the operator before every write.
    confirm = "confirm"
    #: Write every safe proposal.
    auto = "auto"
