"""Dataset specs and the on-disk table: validation errors, round trip, loading by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from accelrl.surrogates.dataset import (
    DatasetError,
    load_dataset,
    rows_to_table,
    table_schema,
    write_meta,
    write_table,
)
from accelrl.surrogates.spec import DatasetSpec, DatasetSpecError, load_spec


def test_valid_spec(spec_file: Path) -> None:
    spec = load_spec(spec_file)
    assert spec.input_names == ["plasma_density", "beam_current_head"]
    assert spec.output_names == ["charge", "energy_median"]
    np.testing.assert_array_equal(spec.bounds, [[1.5e23, 2.5e23], [1e3, 1e4]])
    assert spec.inputs[1].scale == "log"
    assert spec.fidelity_label == "resolution=0.5;stage_length=0.001"


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        (lambda d: d["inputs"][0].update(low=3e23), "inputs.0", "must be > low"),
        (lambda d: d["inputs"][1].update(low=0.0), "inputs.1", "needs low > 0"),
        (lambda d: d["inputs"][0].update(scale="cubic"), "inputs.0.scale", "'linear' or 'log'"),
        (lambda d: d["outputs"].append({"name": "charge", "unit": "C"}), "", "repeated"),
        (
            lambda d: d["outputs"].append({"name": "status", "unit": ""}),
            "outputs.2.name",
            "reserved",
        ),
        (lambda d: d["inputs"][0].update(name="2x"), "inputs.0.name", "identifier"),
        (lambda d: d.update(simulator="osiris"), "simulator", "'wake-t' or 'fbpic'"),
        (lambda d: d["design"].update(n_samples=0), "design.n_samples", "greater than 0"),
        (lambda d: d.pop("design"), "design", "Field required"),
        (lambda d: d.update(inputs=[]), "inputs", "at least 1"),
        (lambda d: d.update(colour="red"), "colour", "Extra inputs"),
    ],
)
def test_spec_errors_name_field_and_problem(
    spec_dict: dict[str, Any], edit: Any, field: str, fragment: str
) -> None:
    edit(spec_dict)
    with pytest.raises(DatasetSpecError) as err:
        DatasetSpec.from_dict(spec_dict, source="bad.yaml")
    text = str(err.value)
    assert text.startswith("bad.yaml: invalid dataset spec")
    assert field in text and fragment in text


def test_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetSpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(DatasetSpecError, match="mapping"):
        load_spec(bad)


def test_unknown_physical_parameter_fails_early(spec_dict: dict[str, Any]) -> None:
    from accelrl.surrogates.simulators import make_simulator

    spec_dict["fixed"]["laser_colour"] = 1.0
    with pytest.raises(ValueError, match="laser_colour"):
        make_simulator(spec_dict)
    spec_dict["fixed"].pop("laser_colour")
    spec_dict["fixed"].pop("beam_delay")
    with pytest.raises(ValueError, match="beam_delay"):
        make_simulator(spec_dict)
    spec_dict["fixed"]["beam_delay"] = 5e-5
    spec_dict["fidelity"]["grid_colour"] = 1
    with pytest.raises(ValueError, match="grid_colour"):
        make_simulator(spec_dict)


def _rows() -> list[dict[str, Any]]:
    return [
        {"sample": 2, "plasma_density": 2e23, "beam_current_head": 2e3, "charge": 1e-10,
         "energy_median": 1e9, "status": "ok", "message": "", "fidelity": "f",
         "simulator": "wake-t", "wall_time_s": 1.0},
        {"sample": 0, "plasma_density": 1.6e23, "beam_current_head": 5e3, "status": "failed",
         "message": "boom", "fidelity": "f", "simulator": "wake-t", "wall_time_s": 0.1},
        {"sample": 1, "plasma_density": 2.4e23, "beam_current_head": 9e3, "charge": 0.0,
         "status": "no_beam", "message": "lost", "fidelity": "f", "simulator": "wake-t",
         "wall_time_s": 2.0},
    ]  # fmt: skip


def test_table_round_trip_and_load_by_name(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(spec_file)
    table = rows_to_table(spec, _rows())
    assert table.schema == table_schema(spec)
    path = spec_file.with_suffix(".parquet")
    write_table(table, path)
    schema = pq.read_schema(path)
    assert str(schema.field("sample").type) == "int64"
    assert str(schema.field("charge").type) == "double"
    assert str(schema.field("status").type) == "string"
    monkeypatch.chdir(tmp_path)  # a name is searched in ./surrogates
    ds = load_dataset("tiny")
    assert ds.table["sample"].tolist() == [0, 1, 2]
    assert np.isnan(ds.table.loc[0, "charge"])  # missing output -> NaN
    assert ds.ok()["sample"].tolist() == [2]
    assert ds.status_counts() == {"ok": 1, "no_beam": 1, "failed": 1}
    assert ds.input_names == spec.input_names and ds.output_names == spec.output_names
    assert ds.bounds.shape == (2, 2)
    x, y = ds.arrays()
    assert x.shape == (1, 2) and y.shape == (1, 2)
    assert load_dataset(path).meta == {}
    write_meta(
        {"spec": spec.to_dict(), "note": np.float64(1.5)}, spec_file.with_suffix(".meta.json")
    )
    spec_file.unlink()  # the sidecar holds the spec
    assert load_dataset(path).meta["note"] == 1.5


def test_load_errors(spec_file: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("no-such-dataset")
    spec = load_spec(spec_file)
    path = spec_file.with_suffix(".parquet")
    frame = pd.DataFrame(_rows()).drop(columns=["charge"])
    frame.to_parquet(path)
    with pytest.raises(DatasetError, match="missing columns"):
        load_dataset(path)
    rows = _rows()
    rows[0]["status"] = "fine"
    write_table(rows_to_table(spec, rows), path)
    with pytest.raises(DatasetError, match="unknown status"):
        load_dataset(path)


def test_shipped_specs_are_valid() -> None:
    from accelrl.surrogates.simulators import make_simulator

    folder = Path(__file__).resolve().parents[2] / "surrogates"
    specs = sorted(folder.glob("*.yaml"))
    assert specs, "no dataset specs shipped in surrogates/"
    for path in specs:
        spec = load_spec(path)
        assert yaml.safe_load(path.read_text())["name"] == spec.name
        make_simulator(spec)  # physical parameters and fidelity settings known
