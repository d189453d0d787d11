"""Dataset specs refuse meaningless values (NaN, inf, bounds, duplicate names, unknown
simulators, physical parameters or fidelity settings) with the file, the field and the
value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from validation_testlib import (
    ALWAYS_INVALID,
    PROPERTY,
    assert_names,
    corrupt,
    field_name,
    negative_of,
    numeric_leaves,
)

from accelrl.surrogates.spec import DatasetSpec, DatasetSpecError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "dataset.yaml"
SHIPPED = {
    p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "surrogates").glob("*.yaml"))
}


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(DatasetSpecError) as info:
        DatasetSpec.from_dict(data, source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: invalid dataset spec"), message
    return message


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped spec with random valid input bounds, design and fidelity."""
    data = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for item in data["inputs"]:
        low = item["low"] * draw(st.floats(0.5, 2.0))
        item["low"], item["high"] = low, low * draw(st.floats(1.01, 10.0))
    data["design"] = {"n_samples": draw(st.integers(1, 4096)), "seed": draw(st.integers(0, 2**32))}
    data["fidelity"]["stage_length"] = draw(st.floats(1e-5, 0.1))
    data["fidelity"]["n_particles"] = draw(st.integers(1, 10**6))
    return data


@PROPERTY
@given(valid_specs())
def test_random_valid_specs_load(data: dict[str, Any]) -> None:
    assert (
        DatasetSpec.from_dict(data, source=SOURCE).design.n_samples == data["design"]["n_samples"]
    )


@PROPERTY
@given(st.data())
def test_any_corrupted_number_is_refused_naming_its_field(data: st.DataObject) -> None:
    spec = data.draw(valid_specs())
    path = data.draw(st.sampled_from(list(numeric_leaves(spec))))
    value = data.draw(st.sampled_from(ALWAYS_INVALID))
    assert_names(_error(corrupt(spec, path, value)), field_name(path))


@PROPERTY
@given(st.data())
def test_negative_physical_values_are_refused(data: st.DataObject) -> None:
    spec = data.draw(valid_specs())
    section = data.draw(st.sampled_from(["fixed", "fidelity", "inputs"]))
    if section == "inputs":
        i = data.draw(st.integers(0, len(spec["inputs"]) - 1))
        path: tuple[Any, ...] = ("inputs", i, "low")
    else:
        keys = [k for k, v in spec[section].items() if isinstance(v, float) and k != "seed"]
        if section == "fixed":
            keys = [k for k in keys if k != "beam_energy_spread"]
        path = (section, data.draw(st.sampled_from(keys)))
    value = negative_of(
        spec[path[0]][path[1]] if len(path) == 2 else spec["inputs"][path[1]]["low"]
    )
    message = _error(corrupt(spec, path, value))
    assert_names(message, field_name(path) if section != "inputs" else "inputs.")


@PROPERTY
@given(
    st.sampled_from(["fixed", "fidelity", "design", "top"]),
    st.from_regex(r"\A[a-z][a-z_]{2,12}\Z"),
)
def test_unknown_keys_are_refused(where: str, key: str) -> None:
    data = copy.deepcopy(SHIPPED["lpa_beamloading"])
    node = data if where == "top" else data[where]
    if key in node or (where == "fixed" and key in ("laser_a0",)):
        return
    node[key] = 1.0
    assert_names(_error(data), key)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d.update(simulator="osiris"), ["simulator", "osiris"]),
        (
            lambda d: d["fidelity"].update(cells_per_wavelength=20),
            ["unknown Wake-T fidelity", "cells_per_wavelength"],
        ),
        (lambda d: d["fidelity"].update(ppc=2.5), ["fidelity.ppc = 2.5", "integer"]),
        (
            lambda d: d["fidelity"].update(resolution="fine"),
            ["fidelity.resolution = 'fine'", "number"],
        ),
        (lambda d: d["fixed"].update(laser_colour=1.0), ["fixed.laser_colour", "unknown physical"]),
        (
            lambda d: d["fixed"].update(min_charge_fraction=1.5),
            ["fixed.min_charge_fraction = 1.5", "[0, 1]"],
        ),
        (lambda d: d["inputs"][0].update(high=float("inf")), ["inputs.0.high = inf", "finite"]),
        (lambda d: d["inputs"][1].update(low=3e23), ["inputs.1", "must be > low"]),
        (lambda d: d["outputs"].append({"name": "charge", "unit": "C"}), ["repeated", "charge"]),
        (lambda d: d["fixed"].update(plasma_density=2e23), ["plasma_density", "both"]),
    ],
)
def test_named_errors(edit: Any, words: list[str]) -> None:
    data = copy.deepcopy(SHIPPED["lpa_beamloading"])
    edit(data)
    assert_names(_error(data), *words)
