"""Beamline backends behind one interface: numpy batches in, transverse readings out.

``"fast"`` is the compiled map (:mod:`accelrl.physics.compiled`); ``"cheetah"`` tracks a
``ParameterBeam`` through Cheetah; ``"cheetah-particles"`` tracks a ``ParticleBeam`` of
``num_particles`` macro-particles (Monte-Carlo noise ~ 1/sqrt(N) on the sizes).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import cheetah
import numpy as np
import torch
from torch import nn

from accelrl.names import Backend
from accelrl.physics.beam import parameter_beam, particle_beam
from accelrl.physics.compiled import BeamMoments, CompiledBeamline, Knob, resolve_inputs
from accelrl.physics.elements import UnsupportedElementError

#: Backend names (:class:`accelrl.names.Backend`).
BACKENDS: tuple[str, ...] = tuple(b.value for b in Backend)


class Beamline(Protocol):
    """What an environment needs from a backend."""

    knobs: list[Knob]
    misaligned: list[str]
    #: Whether readings are random (particle sampling); such backends take a ``seed``.
    stochastic: bool

    def evaluate(
        self,
        knobs: np.ndarray,
        incoming: np.ndarray,
        misalignments: np.ndarray,
        seed: int | None = None,
    ) -> np.ndarray:
        """Transverse reading ``[B, 4]`` ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] of numpy inputs.

        :param seed: Seed of the particle sampling of a stochastic backend (ignored otherwise).
        """
        ...


class CheetahBeamline(nn.Module):
    """Tracks through Cheetah itself, with the inputs and outputs of :class:`CompiledBeamline`.

    Any element Cheetah tracks is allowed (e.g. a ``Cavity``, which the compiled map cannot
    represent); on element types the compiled map does not know, any tensor attribute (a
    cavity's ``voltage`` [V] or ``phase`` [deg]) may be a knob.

    :param segment: The lattice (nested segments are flattened; copied, never modified).
    :param knobs: ``(element, attribute)`` pairs, the columns of the ``knobs`` input (SI).
    :param observe: Element at whose entrance the beam is read (``None``: the end).
    :param misalign: Elements whose misalignment ``(dx, dy)`` [m] is an input; default as
        for :class:`CompiledBeamline`.
    :param num_particles: ``None`` tracks a ``ParameterBeam``; an integer tracks a
        ``ParticleBeam`` with that many particles.
    :param species: Particle species (default: electron, float64).
    :param dtype: Floating-point type of the tracking (default float64).
    """

    def __init__(
        self,
        segment: cheetah.Segment,
        knobs: Sequence[Knob],
        observe: str | None = None,
        misalign: Sequence[str] | None = None,
        num_particles: int | None = None,
        species: cheetah.Species | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if isinstance(segment, CompiledBeamline):  # the former (compiled, segment, n) form
            raise TypeError(
                "CheetahBeamline(segment, knobs, observe=..., misalign=...) takes the segment "
                "first; build it with make_beamline(segment, knobs, observe, 'cheetah')"
            )
        if num_particles is not None and num_particles < 2:
            raise ValueError(f"num_particles must be >= 2, got {num_particles}")
        inputs = resolve_inputs(segment, knobs, observe, misalign, any_attribute=True)
        self.knobs = inputs.knobs
        self.misaligned = inputs.misaligned
        self.observe = observe
        self.species = (
            species if species is not None else cheetah.Species("electron", dtype=torch.float64)
        )
        self.num_particles = num_particles
        self.stochastic = num_particles is not None
        self.register_buffer("default_misalignments", torch.tensor(inputs.defaults, dtype=dtype))
        flat = copy.deepcopy(segment.flattened()).to(dtype)  # e.g. float32 segments -> float64
        if self.observe is not None:
            flat = flat.subcell(end=self.observe, include_end=True)
            observed = flat.elements[-1]
            if isinstance(observed, (cheetah.Screen, cheetah.BPM)):
                observed.is_active = True
                if isinstance(observed, cheetah.Screen):
                    observed.is_blocking = False
                self.register_buffer(
                    "_observed_misalignment", observed.misalignment.detach().clone()
                )
                observed.misalignment = torch.zeros_like(observed.misalignment)
        self.segment = flat

    def _elements(self, name: str) -> list[cheetah.Element]:
        return [e for e in self.segment.elements if e.name == name]

    def forward(
        self,
        knobs: torch.Tensor,
        incoming: torch.Tensor,
        misalignments: torch.Tensor | None = None,
        full: bool = False,
    ) -> torch.Tensor | BeamMoments:
        """Same contract as :meth:`CompiledBeamline.forward`."""
        if misalignments is None:
            misalignments = self.default_misalignments.to(incoming.dtype)
        shape = torch.broadcast_shapes(
            knobs.shape[:-1], incoming.shape[:-1], misalignments.shape[:-1]
        )
        knobs = knobs.expand(*shape, knobs.shape[-1])
        incoming = incoming.expand(*shape, incoming.shape[-1])
        misalignments = misalignments.expand(*shape, misalignments.shape[-1])
        for i, (name, attribute) in enumerate(self.knobs):
            for element in self._elements(name):
                setattr(element, attribute, knobs[..., i])
        last = self.segment.elements[-1] if self.observe is not None else None
        offset = torch.zeros(*shape, 2, dtype=incoming.dtype, device=incoming.device)
        if isinstance(last, (cheetah.Screen, cheetah.BPM)):
            offset = offset + self._observed_misalignment.to(incoming.dtype)
        for i, name in enumerate(self.misaligned):
            if last is not None and name == last.name:
                # Cheetah 0.8's Screen cannot broadcast a vectorised misalignment against a
                # vectorised beam, so the reading offset (mu - misalignment) is applied here.
                offset = misalignments[..., 2 * i : 2 * i + 2]
                continue
            for element in self._elements(name):
                element.misalignment = misalignments[..., 2 * i : 2 * i + 2]
        if self.num_particles is None:
            beam = parameter_beam(incoming, self.species)
        else:
            beam = particle_beam(incoming, self.num_particles, self.species)
        out = self.segment.track(beam)
        if isinstance(last, cheetah.Screen):
            out = last.get_read_beam()
        if full:
            if isinstance(out, cheetah.ParameterBeam):
                mu, cov = out.mu[..., :6], out.cov[..., :6, :6]
            else:
                p = out.particles[..., :6]
                mu = p.mean(dim=-2)
                centred = p - mu.unsqueeze(-2)
                cov = centred.mT @ centred / p.shape[-2]
            mu = mu.expand(*shape, 6).clone()
            mu[..., 0] -= offset[..., 0]
            mu[..., 2] -= offset[..., 1]
            return BeamMoments(mu, cov.expand(*shape, 6, 6))
        reading = [out.mu_x - offset[..., 0], out.sigma_x, out.mu_y - offset[..., 1], out.sigma_y]
        return torch.stack([r.expand(shape) for r in reading], dim=-1)

    def evaluate(
        self,
        knobs: np.ndarray,
        incoming: np.ndarray,
        misalignments: np.ndarray,
        seed: int | None = None,
    ) -> np.ndarray:
        """Transverse reading ``[B, 4]`` [m] of numpy inputs.

        :param seed: Seeds the particle sampling (torch's global generator is left as it was).
        """
        dtype = self.default_misalignments.dtype
        with torch.no_grad(), torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = self(
                torch.tensor(knobs, dtype=dtype),
                torch.tensor(incoming, dtype=dtype),
                torch.tensor(misalignments, dtype=dtype),
            )
        return out.numpy()


def make_beamline(
    segment: cheetah.Segment,
    knobs: Sequence[Knob],
    observe: str | None = None,
    backend: str = "fast",
    num_particles: int = 10_000,
    misalign: Sequence[str] | None = None,
) -> Beamline:
    """Build the beamline of ``backend`` (one of :data:`BACKENDS`).

    Only ``"fast"`` compiles the map; the Cheetah backends track any lattice Cheetah can.

    :param num_particles: Particles per beam for ``"cheetah-particles"``.
    :raises ValueError: For an unknown backend, naming the allowed ones.
    :raises UnsupportedElementError: For ``"fast"`` on a lattice with an element the compiled
        map cannot represent, naming the element and the backends that can.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "fast":
        try:
            return CompiledBeamline(segment, knobs, observe=observe, misalign=misalign)
        except UnsupportedElementError as err:
            raise UnsupportedElementError(
                f"backend='fast' (the compiled map) cannot represent this lattice: {err}"
            ) from None
    particles = num_particles if backend == "cheetah-particles" else None
    return CheetahBeamline(segment, knobs, observe, misalign, particles)
