"""The files of a saved tuning session, and the checks a load makes before trusting them.

:meth:`TuningSession.save <accelrl.agents.bo.session.TuningSession.save>` writes into a
folder:

``problem.json``
    The :class:`~accelrl.agents.bo.problem.TuningProblem`: variables with their hard
    bounds and max step (SI units), objective, constraints, observables, initial setting.
``session.json``
    Format version, session config, prior spec (a built-in prior's config, or the class of
    a custom one), fixed prior inputs [SI], the safety state (trust region, last safe
    setting, pause), the read-back [SI], queued route moves [SI] and the diagnostics.
``data.csv``
    One row per ingested result: ``step``, ``setting.*`` [SI], ``result.*``, ``safe``,
    ``feasible``, ``prior_prediction``, ``suggest_s`` [s].
``model.npz``
    The fitted GP hyperparameters per model and the calibrated prior's parameters: plain
    numeric arrays ``t0, t1, ...`` and an ``index`` array of ``(group, model, parameter)``
    strings. Read with ``allow_pickle=False``.
``manifest.json``
    Format name and version, and the sha256 of each of the four files above.

Loading runs no code from these files: they are JSON, CSV and a NumPy archive read without
pickle. :func:`read_session` checks, in this order, and refuses with a
:class:`SessionFileError` naming the file (and the field and value where there is one):

1. the manifest and the sha256 of every file (a changed, truncated or missing file);
2. that every file parses (JSON, CSV cells, arrays);
3. the problem on its own (finite bounds, ``low < high``, initial setting inside);
4. given ``limits`` (a machine config, a tuning problem or ``{name: (low, high)}``), that
   every variable is one of theirs and its bounds and max step lie within theirs;
5. that the read-back, the last safe setting and the queued moves are finite settings
   inside the bounds.

A hash is an integrity check against accidents and naive edits, not a signature: whoever
can rewrite the files can rewrite the manifest too. Step 4 is the safety check -- load a
session against the machine it will drive.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accelrl.agents.bo.problem import ProblemError, TuningProblem
from accelrl.runs import atomic_write, atomic_write_text

__all__ = [
    "FILES",
    "FORMAT",
    "FORMAT_VERSION",
    "SessionFileError",
    "SessionFiles",
    "check_within_limits",
    "data_columns",
    "limits_of",
    "prior_spec",
    "read_session",
    "write_session",
]

#: Format name in ``manifest.json``.
FORMAT = "accelrl-bo-session"
#: Version of the files written by :func:`write_session`.
FORMAT_VERSION = 2
#: The files a session folder holds besides ``manifest.json``, each hashed there.
FILES: tuple[str, ...] = ("problem.json", "session.json", "data.csv", "model.npz")
MANIFEST = "manifest.json"
#: Relative slack of the max-step check (a fraction of a range computed in floating point).
STEP_SLACK = 1e-9


class SessionFileError(ValueError):
    """A saved session that cannot be loaded safely (the message names the file, and the
    field and value where there is one)."""


@dataclass
class SessionFiles:
    """What a session folder holds, parsed and checked.

    :param problem: The tuning problem.
    :param meta: ``session.json``.
    :param rows: ``data.csv``, one dict per row (typed).
    :param states: Fitted GP parameters per model kind.
    :param prior_state: The calibrated prior's parameters (``None`` when not saved).
    """

    problem: TuningProblem
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    states: dict[str, dict[str, torch.Tensor]]
    prior_state: dict[str, torch.Tensor] | None


# ---------------------------------------------------------------------------- writing
def data_columns(problem: TuningProblem) -> list[str]:
    """The columns of ``data.csv`` for ``problem``."""
    outputs = [problem.objective.name, *(c.name for c in problem.constraints), *problem.observables]
    return [
        "step",
        *(f"setting.{n}" for n in problem.names),
        *(f"result.{o}" for o in outputs),
        "safe",
        "feasible",
        "prior_prediction",
        "suggest_s",
    ]


def prior_spec(prior: torch.nn.Module | None) -> dict[str, Any] | None:
    """How ``session.json`` names a prior: a built-in prior's ``config()``, else its class
    (a custom prior is passed to the load again); ``None`` without a prior."""
    if prior is None:
        return None
    describe = getattr(prior, "config", None)
    if callable(describe):
        return describe()
    return {"kind": "custom", "class": f"{type(prior).__module__}.{type(prior).__qualname__}"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns])
    return buf.getvalue()


def _write_npz(
    path: Path,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    prior_state: Mapping[str, torch.Tensor] | None,
) -> None:
    index: list[tuple[str, str, str]] = []
    arrays: dict[str, np.ndarray] = {}

    def add(group: str, model: str, name: str, value: torch.Tensor) -> None:
        arrays[f"t{len(index)}"] = value.detach().cpu().numpy()
        index.append((group, model, name))

    for model, params in states.items():
        for name, value in params.items():
            add("states", model, name, value)
    for name, value in (prior_state or {}).items():
        add("prior", "", name, value)
    table = np.array(index, dtype=str).reshape(len(index), 3)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, index=table, **arrays)

    atomic_write(path, write)


def write_session(
    directory: str | Path,
    problem: Mapping[str, Any],
    meta: Mapping[str, Any],
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    states: Mapping[str, Mapping[str, torch.Tensor]],
    prior_state: Mapping[str, torch.Tensor] | None,
) -> Path:
    """Write the files of a session (see the module documentation) and, last, the manifest
    with their sha256; every file is written atomically.

    :param directory: The session folder (created).
    :param problem: The problem as a JSON-able mapping.
    :param meta: ``session.json`` content (JSON-able).
    :param columns: ``data.csv`` columns; ``rows``: its rows.
    :param states: GP parameters per model kind; ``prior_state``: the calibrated prior's.
    :return: ``directory``.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # a half-written folder never verifies
    atomic_write_text(path / "problem.json", json.dumps(problem, indent=2))
    atomic_write_text(path / "session.json", json.dumps(meta, indent=2, default=str))
    atomic_write_text(path / "data.csv", _csv_text(columns, rows))
    _write_npz(path / "model.npz", states, prior_state)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {name: _sha256(path / name) for name in FILES},
    }
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------- reading
def _json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SessionFileError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SessionFileError(f"{path}: cannot be read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SessionFileError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "the file is truncated or garbled"
        ) from None


def _verify_manifest(path: Path) -> None:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        legacy = (path / "model.pt").is_file()
        raise SessionFileError(
            f"{manifest_path}: missing; "
            + (
                "this session was saved in format 1 (model.pt is a pickle, unverified files), "
                "which is no longer loaded: save it again with this version"
                if legacy
                else "not a saved tuning session, or one whose save did not finish"
            )
        )
    manifest = _json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SessionFileError(f"{manifest_path}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise SessionFileError(
            f"{manifest_path}: format_version = {version!r}, this version reads {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise SessionFileError(f"{manifest_path}: files must map file names to sha256")
    missing = [name for name in FILES if name not in files]
    if missing:
        raise SessionFileError(f"{manifest_path}: no sha256 of {missing}")
    for name in FILES:
        file = path / name
        if not file.is_file():
            raise SessionFileError(f"{file}: missing (listed in {MANIFEST})")
        digest = _sha256(file)
        if digest != files[name]:
            raise SessionFileError(
                f"{file}: sha256 {digest[:16]}... differs from {MANIFEST} "
                f"({str(files[name])[:16]}...): the file was changed or damaged after the "
                "session was saved; refused"
            )


def _problem(path: Path) -> TuningProblem:
    data = _json(path)
    if not isinstance(data, dict):
        raise SessionFileError(f"{path}: expected a mapping, got {type(data).__name__}")
    try:
        return TuningProblem.create(data)
    except ProblemError as err:
        raise SessionFileError(f"{path}: {err}") from None


def _cell(path: Path, line: int, key: str, value: str) -> Any:
    if key == "step":
        try:
            return int(value)
        except ValueError:
            pass
    elif key in ("safe", "feasible"):
        if value in ("True", "False"):
            return value == "True"
    else:
        try:
            return float(value)
        except ValueError:
            pass
    raise SessionFileError(f"{path}: line {line}, column {key} = {value!r} is not valid")


def _rows(path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SessionFileError(f"{path}: cannot be read ({err})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != list(columns):
        raise SessionFileError(f"{path}: columns {header} differ from those of the problem")
    rows = []
    for line, cells in enumerate(reader, start=2):
        if len(cells) != len(columns):
            raise SessionFileError(f"{path}: line {line} has {len(cells)} cells, expected "
                                   f"{len(columns)}")  # fmt: skip
        rows.append({k: _cell(path, line, k, v) for k, v in zip(columns, cells, strict=True)})
    return rows


def _tensors(
    path: Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            index = npz["index"]
            arrays = [npz[f"t{i}"] for i in range(len(index))]
    except (OSError, ValueError, KeyError) as err:
        raise SessionFileError(f"{path}: not a readable array archive ({err})") from None
    if index.ndim != 2 or index.shape[1] != 3:
        raise SessionFileError(f"{path}: index has shape {index.shape}, expected (n, 3)")
    states: dict[str, dict[str, torch.Tensor]] = {}
    prior: dict[str, torch.Tensor] = {}
    for (group, model, name), array in zip(index.tolist(), arrays, strict=True):
        if array.dtype.kind not in "fiub":
            raise SessionFileError(f"{path}: {group}/{model}/{name} has dtype {array.dtype}")
        tensor = torch.from_numpy(np.array(array))
        if group == "states":
            states.setdefault(model, {})[name] = tensor
        elif group == "prior":
            prior[name] = tensor
        else:
            raise SessionFileError(f"{path}: unknown group {group!r}")
    return states, (prior or None)


def _setting(path: Path, field: str, value: Any, problem: TuningProblem) -> None:
    """A finite setting ``[d]`` inside the problem's bounds, or refuse naming ``field``."""
    try:
        x = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise SessionFileError(f"{path}: {field} = {value!r} is not a setting") from None
    if x.shape != (len(problem.names),):
        raise SessionFileError(
            f"{path}: {field} has {x.size} values, the problem {len(problem.names)}"
        )
    for name, v, lo, hi in zip(problem.names, x, problem.low, problem.high, strict=True):
        if not (math.isfinite(v) and lo <= v <= hi):
            raise SessionFileError(
                f"{path}: {field}.{name} = {v} is outside the bounds [{lo}, {hi}]"
            )


def _check_state(path: Path, meta: Any, problem: TuningProblem) -> None:
    if not isinstance(meta, dict):
        raise SessionFileError(f"{path}: expected a mapping, got {type(meta).__name__}")
    for key in ("config", "prior", "safety", "readback", "pending", "diagnostics"):
        if key not in meta:
            raise SessionFileError(f"{path}: no field {key!r}")
    _setting(path, "readback", meta["readback"], problem)
    safety = meta["safety"]
    if not isinstance(safety, dict):
        raise SessionFileError(f"{path}: safety must be a mapping")
    if safety.get("last_safe") is not None:
        _setting(path, "safety.last_safe", safety["last_safe"], problem)
    if not isinstance(meta["pending"], list):
        raise SessionFileError(f"{path}: pending must be a list of settings")
    for i, move in enumerate(meta["pending"]):
        _setting(path, f"pending[{i}]", move, problem)


# ---------------------------------------------------------------------------- limits
Limits = Any  # a machine config, a TuningProblem or Mapping[str, (low, high[, max_step])]


def limits_of(limits: Limits) -> dict[str, tuple[float, float, float]]:
    """``{name: (low, high, max_step)}`` [SI] of a machine config (its ``knobs``), a
    :class:`~accelrl.agents.bo.problem.TuningProblem` (its ``variables``) or a mapping
    ``name -> (low, high)`` or ``(low, high, max_step)``; ``max_step`` is ``inf`` where none.

    :raises TypeError: For anything else.
    """
    items = getattr(limits, "knobs", None) or getattr(limits, "variables", None)
    if items is not None:
        out = {}
        for item in items:
            step = getattr(item, "max_step", None)
            out[str(item.name)] = (
                float(item.low),
                float(item.high),
                math.inf if step is None else float(step),
            )
        return out
    if isinstance(limits, Mapping):
        out = {}
        for name, value in limits.items():
            values = [float(v) for v in value]
            if len(values) not in (2, 3):
                raise TypeError(f"limits[{name!r}] must be (low, high[, max_step]), got {value}")
            out[str(name)] = (values[0], values[1], values[2] if len(values) == 3 else math.inf)
        return out
    raise TypeError(
        "limits must be a machine config, a TuningProblem or a mapping name -> (low, high), "
        f"got {type(limits).__name__}"
    )


def check_within_limits(problem: TuningProblem, limits: Limits, source: str = "session") -> None:
    """Refuse a problem whose variables are not knobs of ``limits`` or whose bounds or max
    step reach beyond them (see :func:`limits_of` for what ``limits`` may be).

    :param source: Names the problem in the message (e.g. its file).
    :raises SessionFileError: Naming the variable, the field, the value and the limit.
    """
    allowed = limits_of(limits)
    for v in problem.variables:
        if v.name not in allowed:
            raise SessionFileError(
                f"{source}: variable {v.name!r} is not among the limits' knobs {sorted(allowed)}"
            )
        low, high, step = allowed[v.name]
        if v.low < low:
            raise SessionFileError(
                f"{source}: variables.{v.name}.low = {v.low} is below the limit {low}; refused"
            )
        if v.high > high:
            raise SessionFileError(
                f"{source}: variables.{v.name}.high = {v.high} is above the limit {high}; refused"
            )
        mine = math.inf if v.max_step is None else v.max_step
        if mine > step * (1.0 + STEP_SLACK):
            raise SessionFileError(
                f"{source}: variables.{v.name}.max_step = {v.max_step} is above the limit "
                f"{step}; refused"
            )


def read_session(directory: str | Path, limits: Limits | None = None) -> SessionFiles:
    """Read and check a session folder (see the module documentation for the checks).

    :param directory: The folder :func:`write_session` wrote.
    :param limits: What the session's bounds must lie within (``None``: only the problem's
        own consistency is checked).
    :raises SessionFileError: For the first check that fails.
    """
    path = Path(directory)
    if not path.is_dir():
        raise SessionFileError(f"{path}: no such session folder")
    _verify_manifest(path)
    problem = _problem(path / "problem.json")
    if limits is not None:
        check_within_limits(problem, limits, str(path / "problem.json"))
    meta = _json(path / "session.json")
    _check_state(path / "session.json", meta, problem)
    rows = _rows(path / "data.csv", data_columns(problem))
    states, prior_state = _tensors(path / "model.npz")
    return SessionFiles(problem, meta, rows, states, prior_state)
