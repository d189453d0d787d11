"""Lattices and tracking: Cheetah segments in, fast batched differentiable maps out."""

from accelrl.physics.backends import BACKENDS, Beamline, CheetahBeamline, make_beamline
from accelrl.physics.beam import INCOMING, PHASE_SPACE, TRANSVERSE, parameter_beam, particle_beam
from accelrl.physics.compiled import BeamMoments, CompiledBeamline, compile
from accelrl.physics.devices import DeviceError, resolve_device
from accelrl.physics.elements import SUPPORTED, UnsupportedElementError
from accelrl.physics.lattices import (
    ARES_EA_KNOBS,
    ARES_EA_SCREEN,
    LatticeFileError,
    ares_ea_segment,
    as_screen,
    load_lattice,
)

__all__ = [
    "ARES_EA_KNOBS",
    "ARES_EA_SCREEN",
    "BACKENDS",
    "BeamMoments",
    "Beamline",
    "CheetahBeamline",
    "CompiledBeamline",
    "DeviceError",
    "INCOMING",
    "LatticeFileError",
    "PHASE_SPACE",
    "SUPPORTED",
    "TRANSVERSE",
    "UnsupportedElementError",
    "as_screen",
    "ares_ea_segment",
    "compile",
    "load_lattice",
    "make_beamline",
    "parameter_beam",
    "resolve_device",
    "particle_beam",
]
