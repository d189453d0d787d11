"""Element conversions for lattices that arrive from other codes.

An Ocelot ``Monitor`` arrives in Cheetah as a ``Marker``, a Bmad or Elegant monitor as a
``Marker`` or ``BPM``; a tuning task observes a ``Screen`` (its resolution and pixel size
define what the camera sees). :func:`as_screen` makes that screen.

>>> import cheetah, torch
>>> from accelrl.physics.lattices import as_screen
>>> line = cheetah.Segment([cheetah.Drift(length=torch.tensor(1.0)), cheetah.Marker(name="MON")])
>>> screen = as_screen(line, "MON", resolution=(1000, 800), pixel_size=(5e-6, 5e-6))
>>> type(screen.MON).__name__
'Screen'
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import cheetah
import torch

__all__ = ["SCREEN_SOURCES", "as_screen"]

#: Element types :func:`as_screen` converts (a ``Screen`` is returned as it is).
SCREEN_SOURCES: tuple[type, ...] = (cheetah.Marker, cheetah.BPM, cheetah.Screen)


def as_screen(
    segment: cheetah.Segment,
    name: str,
    resolution: Sequence[int],
    pixel_size: Sequence[float],
    binning: int = 1,
) -> cheetah.Segment:
    """A copy of ``segment`` (flattened) whose element ``name`` is a ``cheetah.Screen``.

    A ``Marker`` (an Ocelot ``Monitor``) or ``BPM`` becomes an active, non-blocking screen at
    the same place (a BPM keeps its misalignment); an existing ``Screen`` is kept. The
    segment passed in is not modified.

    :param segment: The lattice.
    :param name: The monitor element.
    :param resolution: Camera ``(width, height)`` [px].
    :param pixel_size: Pixel ``(width, height)`` [m].
    :param binning: Pixel binning (>= 1).
    :raises ValueError: If ``name`` is not in the segment, or is an element of another type
        (naming its type and the types that can become a screen).
    """
    flat = copy.deepcopy(segment.flattened())
    elements = list(flat.elements)
    found = [i for i, e in enumerate(elements) if e.name == name]
    if not found:
        raise ValueError(f"{name!r} is not an element of the segment {segment.name!r}")
    old = elements[found[0]]
    if isinstance(old, cheetah.Screen):
        return flat
    if not isinstance(old, SCREEN_SOURCES):
        kinds = ", ".join(c.__name__ for c in SCREEN_SOURCES)
        raise ValueError(
            f"{name!r} is a {type(old).__name__}; only a monitor ({kinds}) can become a screen"
        )
    if binning < 1 or len(resolution) != 2 or min(resolution) < 1:
        raise ValueError(f"resolution {tuple(resolution)} / binning {binning} must be positive")
    if len(pixel_size) != 2 or not min(pixel_size) > 0:
        raise ValueError(f"pixel_size {tuple(pixel_size)} must be two sizes > 0 m")
    dtype = next((b.dtype for b in flat.buffers() if b.is_floating_point()), torch.float64)
    misalignment = old.misalignment.detach().clone() if isinstance(old, cheetah.BPM) else None
    screen = cheetah.Screen(
        resolution=(int(resolution[0]), int(resolution[1])),
        pixel_size=torch.tensor([float(p) for p in pixel_size], dtype=dtype),
        binning=int(binning),
        misalignment=misalignment,
        is_active=True,
        name=name,
        dtype=dtype,
    )
    for i in found:
        elements[i] = screen
    return cheetah.Segment(elements, name=segment.name)
