"""Lattices shipped with accelrl, lattice files, and element conversions, as Cheetah segments."""

from accelrl.physics.lattices.ares_ea import ARES_EA_KNOBS, ARES_EA_SCREEN, ares_ea_segment
from accelrl.physics.lattices.convert import SCREEN_SOURCES, as_screen
from accelrl.physics.lattices.files import LATTICE_SUFFIXES, LatticeFileError, load_lattice

__all__ = [
    "ARES_EA_KNOBS",
    "ARES_EA_SCREEN",
    "LATTICE_SUFFIXES",
    "LatticeFileError",
    "SCREEN_SOURCES",
    "as_screen",
    "ares_ea_segment",
    "load_lattice",
]
