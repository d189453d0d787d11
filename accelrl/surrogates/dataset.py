"""Simulation datasets on disk: a parquet scalar table, a JSON sidecar and the spec.

A shipped dataset ``NAME`` lives in the top-level ``surrogates/`` folder (a new one is
generated into ``runs/surrogates/`` unless another folder is given) as

``NAME.yaml``
    The :class:`~accelrl.surrogates.spec.DatasetSpec` it was generated from.
``NAME.parquet``
    One row per run: ``sample`` (int64, index in the design), one float64 column per input
    (SI), one float64 column per output (SI; NaN where not available), ``status`` (``"ok"``,
    ``"no_beam"`` or ``"failed"``), ``message``, ``fidelity`` (label), ``simulator`` and
    ``wall_time_s`` (float64).
``NAME.meta.json``
    Inputs (bounds, units, scale), outputs (units), simulator name and version, fixed
    parameters, fidelity, seed, wall-time statistics, generation command, CPU count, start
    and end timestamps, and the full spec (so a table and its sidecar are self-contained).
    A generation resumes a table only when this spec equals its own (see
    :mod:`accelrl.surrogates.generate`); a table without it is never resumed.

Tables and sidecars are written atomically (temporary file, ``fsync``, rename).

>>> from accelrl.surrogates.dataset import load_dataset
>>> ds = load_dataset("lpa_beamloading")  # doctest: +SKIP
>>> X = ds.ok()[ds.input_names].to_numpy()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from accelrl.runs import atomic_write
from accelrl.surrogates.spec import DatasetSpec

#: Values of the ``status`` column.
STATUSES: tuple[str, ...] = ("ok", "no_beam", "failed")
#: Environment variable naming the default dataset folder.
DATA_DIR_ENV = "ACCELRL_SURROGATES_DIR"


class DatasetError(ValueError):
    """A dataset that cannot be found or does not match its spec."""


# ---------------------------------------------------------------------------- locations
def default_data_dirs() -> list[Path]:
    """Folders searched for a dataset given by name, in order.

    ``$ACCELRL_SURROGATES_DIR``, ``./surrogates`` and the ``surrogates/`` accelrl ships
    (:func:`accelrl.resources.shipped`).
    """
    from accelrl.resources import shipped

    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs.append(Path.cwd() / "surrogates")
    dirs.append(shipped("surrogates"))
    return dirs


def dataset_paths(table_path: str | Path) -> dict[str, Path]:
    """The three files of the dataset whose table is ``table_path`` (``.parquet``)."""
    table_path = Path(table_path)
    stem = table_path.name.removesuffix(".parquet")
    return {
        "table": table_path,
        "meta": table_path.with_name(f"{stem}.meta.json"),
        "spec": table_path.with_name(f"{stem}.yaml"),
    }


def resolve_table_path(path_or_name: str | Path) -> Path:
    """The parquet file of a dataset given by path (``.parquet``, ``.meta.json``, ``.yaml``)
    or by name (searched in :func:`default_data_dirs`).

    :raises DatasetError: If no table is found.
    """
    p = Path(path_or_name)
    name = p.name
    for suffix in (".meta.json", ".parquet", ".yaml", ".yml"):
        if name.endswith(suffix):
            candidate = p.with_name(name.removesuffix(suffix) + ".parquet")
            if candidate.exists():
                return candidate
            raise DatasetError(f"{path_or_name}: no dataset table {candidate}")
    if p.exists() and p.is_dir():
        raise DatasetError(f"{path_or_name}: is a folder; give a dataset name or a .parquet file")
    tried = []
    if len(p.parts) > 1:
        candidate = p.with_name(name + ".parquet")
        if candidate.exists():
            return candidate
        tried.append(candidate)
    for d in default_data_dirs():
        candidate = d / f"{name}.parquet"
        if candidate.exists():
            return candidate
        tried.append(candidate)
    raise DatasetError(
        f"dataset {str(path_or_name)!r} not found; tried " + ", ".join(str(t) for t in tried)
    )


# ---------------------------------------------------------------------------- table schema
def table_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the table of ``spec`` (column order: sample, inputs, outputs, labels)."""
    fields = [pa.field("sample", pa.int64())]
    fields += [pa.field(n, pa.float64()) for n in spec.input_names]
    fields += [pa.field(n, pa.float64()) for n in spec.output_names]
    fields += [
        pa.field("status", pa.string()),
        pa.field("message", pa.string()),
        pa.field("fidelity", pa.string()),
        pa.field("simulator", pa.string()),
        pa.field("wall_time_s", pa.float64()),
    ]
    return pa.schema(fields)


def rows_to_table(spec: DatasetSpec, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """An Arrow table with the schema of ``spec`` from row mappings, sorted by ``sample``.

    Missing output values become NaN; missing labels become empty strings.
    """
    schema = table_schema(spec)
    rows = sorted(rows, key=lambda r: int(r["sample"]))
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    for r in rows:
        for f in schema:
            v = r.get(f.name)
            if pa.types.is_floating(f.type):
                v = np.nan if v is None else float(v)
            elif pa.types.is_integer(f.type):
                v = int(v)
            else:
                v = "" if v is None else str(v)
            cols[f.name].append(v)
    return pa.table(cols, schema=schema)


def frame_to_table(spec: DatasetSpec, frame: pd.DataFrame) -> pa.Table:
    """An Arrow table with the schema of ``spec`` from a DataFrame (extra columns dropped)."""
    return rows_to_table(spec, frame.to_dict(orient="records"))


def check_table(spec: DatasetSpec, frame: pd.DataFrame, source: str = "table") -> None:
    """Check that ``frame`` has the columns of ``spec`` and only known status values.

    :raises DatasetError: Naming the missing columns or the bad values.
    """
    expected = table_schema(spec).names
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise DatasetError(f"{source}: missing columns {missing} (spec {spec.name!r})")
    bad = sorted(set(frame["status"].astype(str)) - set(STATUSES))
    if bad:
        raise DatasetError(f"{source}: unknown status values {bad}; allowed: {list(STATUSES)}")
    if frame["sample"].duplicated().any():
        dup = frame.loc[frame["sample"].duplicated(), "sample"].tolist()[:5]
        raise DatasetError(f"{source}: duplicated sample indices, e.g. {dup}")


# ---------------------------------------------------------------------------- writing
def write_table(table: pa.Table, path: str | Path) -> None:
    """Write ``table`` to ``path`` (parquet) atomically and flushed to disk: a reader, or a
    generation killed at any moment, sees the old file or the new one."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_meta(meta: Mapping[str, Any], path: str | Path) -> None:
    """Write the sidecar ``meta`` to ``path`` (JSON) atomically."""
    text = json.dumps(meta, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_table(path: str | Path) -> pd.DataFrame:
    """The table at ``path`` as a DataFrame (numeric columns float64, ``sample`` int64)."""
    return pq.read_table(path).to_pandas()


# ---------------------------------------------------------------------------- dataset
@dataclass
class Dataset:
    """A loaded dataset.

    :param spec: The spec it was generated from.
    :param table: One row per run (see module docstring), sorted by ``sample``.
    :param meta: The sidecar (``{}`` if there is none).
    :param path: The parquet file it was read from (``None`` if built in memory).
    """

    spec: DatasetSpec
    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        """Dataset name."""
        return self.spec.name

    @property
    def input_names(self) -> list[str]:
        """Input column names, in spec order."""
        return self.spec.input_names

    @property
    def output_names(self) -> list[str]:
        """Output column names, in spec order."""
        return self.spec.output_names

    @property
    def bounds(self) -> np.ndarray:
        """Input bounds, shape ``[d, 2]`` (low, high), SI."""
        return self.spec.bounds

    @property
    def units(self) -> dict[str, str]:
        """Unit of every input and output column."""
        return {v.name: v.unit for v in [*self.spec.inputs, *self.spec.outputs]}

    def ok(self) -> pd.DataFrame:
        """Rows with ``status == "ok"``."""
        return self.table[self.table["status"] == "ok"]

    def status_counts(self) -> dict[str, int]:
        """Number of rows per status (every status listed, zeros included)."""
        counts = self.table["status"].value_counts()
        return {s: int(counts.get(s, 0)) for s in STATUSES}

    def arrays(
        self, outputs: list[str] | None = None, status: str | None = "ok"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inputs ``X [n, d]`` and outputs ``Y [n, k]`` (float64, SI) of the selected rows.

        :param outputs: Output columns (default: all).
        :param status: Keep rows with this status (``None``: all rows).
        """
        df = self.table if status is None else self.table[self.table["status"] == status]
        cols = self.output_names if outputs is None else list(outputs)
        unknown = [c for c in cols if c not in self.output_names]
        if unknown:
            raise DatasetError(f"unknown outputs {unknown}; available: {self.output_names}")
        return (
            df[self.input_names].to_numpy(np.float64),
            df[cols].to_numpy(np.float64),
        )


def load_dataset(path_or_name: str | Path) -> Dataset:
    """Load a dataset by name (``"lpa_beamloading"``) or path (``.parquet``, ``.meta.json``,
    ``.yaml``).

    The spec is read from the sidecar (``meta["spec"]``) or, without one, from ``NAME.yaml``
    beside the table.

    :raises DatasetError: If the table is missing or does not match the spec.
    """
    table_path = resolve_table_path(path_or_name)
    paths = dataset_paths(table_path)
    meta: dict[str, Any] = {}
    if paths["meta"].exists():
        meta = json.loads(paths["meta"].read_text())
    if "spec" in meta:
        spec = DatasetSpec.from_dict(meta["spec"], source=str(paths["meta"]))
    elif paths["spec"].exists():
        spec = DatasetSpec.from_yaml(paths["spec"])
    else:
        raise DatasetError(f"{table_path}: no spec in {paths['meta']} and no {paths['spec']}")
    frame = read_table(table_path)
    check_table(spec, frame, source=str(table_path))
    frame = frame.sort_values("sample").reset_index(drop=True)
    return Dataset(spec=spec, table=frame, meta=meta, path=table_path)
