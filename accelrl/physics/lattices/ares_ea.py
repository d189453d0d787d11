"""The ARES Experimental Area (DESY) from AREASOLA1 to the screen AREABSCR1.

Built from the public element list of the ARES linac's experimental area as used in the
transverse-tuning studies (Kaiser et al., ICML 2022; Sci. Rep. 14, 2024): three
quadrupoles, a vertical and a horizontal steering magnet and a screen, 2.04604 m in total.
"""

from __future__ import annotations

import cheetah
import torch

#: The five actuators of the tuning task, in action order ``[Q1, Q2, CV, Q3, CH]``.
ARES_EA_KNOBS: tuple[tuple[str, str], ...] = (
    ("AREAMQZM1", "k1"),
    ("AREAMQZM2", "k1"),
    ("AREAMCVM1", "angle"),
    ("AREAMQZM3", "k1"),
    ("AREAMCHM1", "angle"),
)

#: Name of the diagnostic screen.
ARES_EA_SCREEN = "AREABSCR1"


def ares_ea_segment(
    resolution: tuple[int, int] = (2448, 2040),
    pixel_size: tuple[float, float] = (3.5488e-6, 2.5003e-6),
    binning: int = 1,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> cheetah.Segment:
    """ARES-EA as a Cheetah ``Segment`` (all magnets off, screen active).

    :param resolution: Camera resolution ``(width, height)`` [px].
    :param pixel_size: Pixel size ``(width, height)`` [m].
    :param binning: Camera binning.
    :param dtype: Floating-point type of the element tensors.
    :param device: Device of the element tensors.
    :return: The segment ``AREASOLA1 -> AREABSCR1``, 2.04604 m long.
    """
    kw = {"dtype": dtype, "device": device}

    def t(value: float) -> torch.Tensor:
        return torch.tensor(value, **kw)

    return cheetah.Segment(
        [
            cheetah.Marker(name="AREASOLA1"),
            cheetah.Drift(length=t(0.17504), name="Drift_AREASOLA1", **kw),
            cheetah.Quadrupole(length=t(0.122), name="AREAMQZM1", **kw),
            cheetah.Drift(length=t(0.428), name="Drift_AREAMQZM1", **kw),
            cheetah.Quadrupole(length=t(0.122), name="AREAMQZM2", **kw),
            cheetah.Drift(length=t(0.204), name="Drift_AREAMQZM2", **kw),
            cheetah.VerticalCorrector(length=t(0.02), name="AREAMCVM1", **kw),
            cheetah.Drift(length=t(0.204), name="Drift_AREAMCVM1", **kw),
            cheetah.Quadrupole(length=t(0.122), name="AREAMQZM3", **kw),
            cheetah.Drift(length=t(0.179), name="Drift_AREAMQZM3", **kw),
            cheetah.HorizontalCorrector(length=t(0.02), name="AREAMCHM1", **kw),
            cheetah.Drift(length=t(0.45), name="Drift_AREAMCHM1", **kw),
            cheetah.Screen(
                resolution=resolution,
                pixel_size=torch.tensor(pixel_size, **kw),
                binning=binning,
                is_active=True,
                name=ARES_EA_SCREEN,
                **kw,
            ),
        ],
        name="ARES_EA",
    )
