"""Lattices shipped with accelrl, as Cheetah segments."""

from accelrl.physics.lattices.ares_ea import ARES_EA_KNOBS, ARES_EA_SCREEN, ares_ea_segment

__all__ = ["ARES_EA_KNOBS", "ARES_EA_SCREEN", "ares_ea_segment"]
