"""Output folders and files of long jobs: never overwrite by accident, never half-write.

Every command that writes a folder of results (``accelrl evaluate``, ``accelrl tune``)
calls :func:`prepare_output` first:

* a folder that does not exist, or is empty, is used as it is (``"new"``);
* a folder that holds files is refused with an :class:`OutputFolderError` that names it
  and what it holds, unless
* ``resume=True`` (``"resume"``): the caller continues the job found there, after
  checking that it is the same job (the same configuration), or
* ``force=True`` (``"replace"``): the files the job writes (given as glob patterns, e.g.
  ``"*.png"``) are removed first, so no stale file of an earlier run remains; files the job
  never writes are left alone.

:func:`atomic_write` writes a file through a temporary file in the same folder, flushed to
disk (``fsync``) and renamed over the target: a reader, or a job killed at any moment,
sees the old file or the new one, never part of one.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
>>> prepare_output(out, owned=("*.json",))
'new'
>>> atomic_write_text(out / "a.json", "{}")
>>> prepare_output(out, owned=("*.json",))  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
OutputFolderError: ...
>>> prepare_output(out, force=True, owned=("*.json",)), sorted(out.iterdir())
('replace', [])
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "OutputFolderError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "prepare_output",
]

#: What :func:`prepare_output` decided.
OutputMode = Literal["new", "resume", "replace"]


class OutputFolderError(ValueError):
    """An output folder that cannot be used as asked (the message names it and says why)."""


def _listing(path: Path, limit: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def prepare_output(
    path: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    owned: Sequence[str] = ("*",),
    what: str = "--out",
) -> OutputMode:
    """Check (and with ``force``, clear) an output folder before a job writes into it.

    :param path: The output folder (created when missing, unless resuming).
    :param resume: Continue the job in ``path``; it must hold something to resume.
    :param force: Replace: remove the entries of ``path`` that match ``owned`` first.
    :param owned: Glob patterns of the files and folders the job writes (matched against
        the names directly inside ``path``).
    :param what: How the folder is called in messages (e.g. the option name).
    :return: ``"new"``, ``"resume"`` or ``"replace"``.
    :raises OutputFolderError: For both ``resume`` and ``force``; a path that is a file; a
        folder with files and neither flag; ``resume`` with nothing to resume.
    """
    path = Path(path)
    if resume and force:
        raise OutputFolderError(f"{what} {path}: give --resume or --force, not both")
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{what} {path} is a file, not a folder")
    has_files = path.is_dir() and any(path.iterdir())
    if resume:
        if not has_files:
            raise OutputFolderError(f"{what} {path}: nothing to resume (no earlier run there)")
        return "resume"
    if has_files and not force:
        raise OutputFolderError(
            f"{what} {path} already holds files ({_listing(path)}); pass --resume to continue "
            "that run or --force to replace it"
        )
    path.mkdir(parents=True, exist_ok=True)
    if not has_files:
        return "new"
    for entry in sorted(path.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in owned):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return "replace"


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the platform allows."""
    with contextlib.suppress(OSError):  # e.g. no O_DIRECTORY on this platform
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder,
    which is flushed to disk and renamed over ``path``.

    :param path: The file to write (its folder is created).
    :param write: Writes the whole content to the path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
