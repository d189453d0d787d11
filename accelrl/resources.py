"""The files accelrl ships: task specs, trial sets, recipes, policies, machine configs, models.

The top-level folders of a checkout (``envs/``, ``agents/``, ``deploy/``, ``surrogates/``)
hold the data a user edits or ships; the package carries them as package data under
``accelrl/data/<same name>/`` (links in a checkout, copies in a wheel), so an installed
package needs nothing beside it.

:func:`shipped` names a shipped file; :func:`resolve` turns a path given on the command line
or in Python into a file: the path itself when it exists, else the shipped file of that
name, so ``accelrl deploy run --bundle agents/apg-ares-ea/bundle ...`` works in a checkout
and from any folder after ``pip install accelrl``.

>>> shipped("envs", "ares_ea.yaml").name
'ares_ea.yaml'
>>> resolve("agents/apg-ares-ea") == shipped("agents", "apg-ares-ea")  # doctest: +SKIP
True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA", "KINDS", "resolve", "shipped"]

#: Where the package data lives.
DATA = Path(__file__).resolve().parent / "data"
#: The shipped folders: task specs and trials, recipes and policies, machine configs,
#: datasets and surrogate models.
KINDS: tuple[str, ...] = ("envs", "agents", "deploy", "surrogates")


def shipped(kind: str, *parts: str) -> Path:
    """The shipped file or folder ``kind/parts...`` (it need not exist).

    :param kind: One of :data:`KINDS`.
    :param parts: Path below it, e.g. ``("apg-ares-ea", "bundle")``.
    :raises ValueError: For an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"shipped data is one of {KINDS}, got {kind!r}")
    return DATA.joinpath(kind, *parts)


def resolve(path: str | Path) -> Path:
    """``path`` when it exists; else, for a relative path that starts with a shipped folder's
    name (``agents/...``, ``deploy/...``, ``envs/...``, ``surrogates/...``), the shipped file;
    else ``path`` unchanged (the caller reports it missing).

    :param path: A path as the user gave it.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] not in KINDS:
        return p
    candidate = shipped(p.parts[0], *p.parts[1:])
    return candidate if candidate.exists() else p
