"""Incoming-beam parameterisation shared by every backend.

An incoming beam is a row of :data:`INCOMING` moments in SI units: reference energy [eV],
centroid position [m] and angle [rad] in x and y, and the uncorrelated rms sizes
``sigma_x, sigma_px, sigma_y, sigma_py`` [m, rad], bunch length ``sigma_tau`` [m] and
relative energy spread ``sigma_p`` [1]. This is the Gaussian beam of
``cheetah.ParameterBeam.from_parameters`` with all correlations zero.
"""

from __future__ import annotations

import cheetah
import torch

from accelrl.names import INCOMING, TRANSVERSE

__all__ = ["INCOMING", "PHASE_SPACE", "TRANSVERSE", "parameter_beam", "particle_beam"]

#: Phase-space coordinates of the full moments (Cheetah order).
PHASE_SPACE: tuple[str, ...] = ("x", "px", "y", "py", "tau", "p")


def _columns(incoming: torch.Tensor) -> dict[str, torch.Tensor]:
    if incoming.shape[-1] != len(INCOMING):
        raise ValueError(
            f"incoming beam must have {len(INCOMING)} columns {INCOMING}, got shape "
            f"{tuple(incoming.shape)}"
        )
    return {name: incoming[..., i] for i, name in enumerate(INCOMING)}


def parameter_beam(
    incoming: torch.Tensor, species: cheetah.Species | None = None
) -> cheetah.ParameterBeam:
    """Cheetah ``ParameterBeam`` (vectorised over the leading dimensions) of ``incoming``."""
    return cheetah.ParameterBeam.from_parameters(
        **_columns(incoming), species=species, dtype=incoming.dtype, device=incoming.device
    )


def particle_beam(
    incoming: torch.Tensor, num_particles: int, species: cheetah.Species | None = None
) -> cheetah.ParticleBeam:
    """Cheetah ``ParticleBeam`` of ``num_particles`` Gaussian macro-particles per beam.

    Sampling uses torch's global generator: seed it with ``torch.manual_seed`` for
    reproducible particle clouds.
    """
    return cheetah.ParticleBeam.from_parameters(
        num_particles=num_particles,
        **_columns(incoming),
        species=species,
        dtype=incoming.dtype,
        device=incoming.device,
    )
