"""Read a lattice file into a Cheetah segment, by its suffix, without running code.

========================  ==========================================================
suffix                    reader
========================  ==========================================================
``.json``                 LatticeJSON (``cheetah.Segment.from_lattice_json``)
``.bmad``                 Bmad (``cheetah.Segment.from_bmad``)
``.lte``                  Elegant (``cheetah.Segment.from_elegant``; ``line=`` names
                          the beamline)
========================  ==========================================================

Ocelot lattices are Python modules: reading one would run it. Convert it once, where you
trust the file, with ``cheetah.Segment.from_ocelot(cell).to_lattice_json("line.json")`` and
name the JSON file. An Ocelot ``Monitor`` arrives as a Cheetah ``Marker``
(:func:`~accelrl.physics.lattices.convert.as_screen` turns it into a screen).

>>> from accelrl.physics.lattices import load_lattice
>>> segment = load_lattice("envs/lattices/fodo.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import cheetah
import torch

__all__ = ["LATTICE_SUFFIXES", "LatticeFileError", "load_lattice"]

#: Lattice-file suffixes :func:`load_lattice` reads.
LATTICE_SUFFIXES: tuple[str, ...] = (".json", ".bmad", ".lte")


class LatticeFileError(ValueError):
    """A lattice file that cannot be read; the message names the file and the problem."""


def _check_lattice_json(path: Path) -> None:
    """Refuse a LatticeJSON file that does not describe Cheetah elements, naming the entry."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LatticeFileError(f"{path}: not a LatticeJSON file ({err})") from None
    if not isinstance(data, dict) or not {"root", "elements", "lattices"} <= set(data):
        raise LatticeFileError(f"{path}: LatticeJSON needs the keys root, elements, lattices")
    if data["root"] not in data["lattices"]:
        raise LatticeFileError(f"{path}: root {data['root']!r} is not one of lattices")
    for name, entry in data["elements"].items():
        kind = entry[0] if isinstance(entry, list) and entry else None
        cls = getattr(cheetah, kind, None) if isinstance(kind, str) else None
        if not (isinstance(cls, type) and issubclass(cls, cheetah.Element)):
            raise LatticeFileError(
                f"{path}: element {name!r} has type {kind!r}, not a Cheetah element class"
            )


def load_lattice(
    path: str | Path, line: str | None = None, dtype: torch.dtype = torch.float64
) -> cheetah.Segment:
    """The Cheetah segment of a lattice file (see the module documentation for formats).

    :param path: The file; its suffix selects the reader.
    :param line: Beamline to read from an Elegant file (required there; ignored otherwise).
    :param dtype: Floating-point type of the segment (default float64, what the
        environments evaluate in).
    :raises LatticeFileError: For a missing file, an unknown suffix, an Ocelot module or a
        file the reader rejects, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise LatticeFileError(f"{path}: no such lattice file")
    suffix = path.suffix.lower()
    if suffix == ".py":
        raise LatticeFileError(
            f"{path}: an Ocelot lattice is a Python module and is not run from data; convert "
            "it once with cheetah.Segment.from_ocelot(cell).to_lattice_json('line.json') and "
            "name the .json file"
        )
    if suffix not in LATTICE_SUFFIXES:
        raise LatticeFileError(
            f"{path}: unknown lattice format {suffix!r}; readable: {', '.join(LATTICE_SUFFIXES)}"
        )
    try:
        if suffix == ".json":
            _check_lattice_json(path)
            segment = cheetah.Segment.from_lattice_json(str(path), dtype=dtype)
        elif suffix == ".bmad":
            segment = cheetah.Segment.from_bmad(str(path), dtype=dtype)
        else:
            if not line:
                raise LatticeFileError(f"{path}: an Elegant file needs line= (the beamline name)")
            segment = cheetah.Segment.from_elegant(str(path), line, dtype=dtype)
    except LatticeFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as err:
        raise LatticeFileError(f"{path}: cannot read the lattice: {err}") from None
    return segment
