"""IOC (virtual accelerator) configs refuse a trial outside the trial set, initial knobs
outside the machine's knob limits, negative rates and times and NaN noise, with the file,
the field and the value, before the IOC starts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from validation_testlib import (
    ALWAYS_INVALID,
    PROPERTY,
    assert_names,
    corrupt,
    field_name,
    numeric_leaves,
)

from accelrl.deploy.virtual.config import VirtualConfigError, load_virtual_config

ROOT = Path(__file__).resolve().parents[1]
MACHINE = ROOT / "deploy" / "virtual_ares_ea_machine.yaml"
#: Each example reads the IOC and machine configs from files: fewer examples than elsewhere.
IOC_PROPERTY = settings(PROPERTY, max_examples=60)
BASE: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "virtual_ares_ea.yaml").read_text())
BASE["machine"] = str(MACHINE)
LIMITS = {k["name"]: (k["low"], k["high"]) for k in yaml.safe_load(MACHINE.read_text())["knobs"]}

#: Rates and times that must be > 0 or >= 0.
NON_NEGATIVE = [
    ("magnets", "settle_time_s"),
    ("magnets", "update_rate_hz"),
    ("screen", "frame_rate_hz"),
    ("screen", "reading_noise"),
    ("heartbeat_period_s",),
    ("beam_loss_level",),
    ("faults", "disconnect_s"),
    ("faults", "beam_loss_level"),
    ("trial",),
]


def _error(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "ioc.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VirtualConfigError) as info:
        load_virtual_config(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


@PROPERTY
@given(st.data())
def test_any_corrupted_number_is_refused_naming_its_field(tmp_path, data) -> None:
    path = data.draw(st.sampled_from(list(numeric_leaves(BASE))))
    value = data.draw(st.sampled_from(ALWAYS_INVALID))
    assert_names(_error(tmp_path, corrupt(BASE, path, value)), field_name(path))


@PROPERTY
@given(st.sampled_from(NON_NEGATIVE), st.floats(-1e6, -1e-9))
def test_negative_rates_and_times_are_refused(tmp_path, path, value) -> None:
    value = int(value) - 1 if path == ("trial",) else value
    assert_names(_error(tmp_path, corrupt(BASE, path, value)), field_name(path))


@IOC_PROPERTY
@given(st.integers(300, 10**9))
def test_trials_outside_the_set_are_refused(tmp_path, trial) -> None:
    message = _error(tmp_path, corrupt(BASE, ("trial",), trial))
    assert_names(message, f"trial = {trial}", "300 trials (0..299)")


@IOC_PROPERTY
@given(st.sampled_from(sorted(LIMITS)), st.floats(1.0001, 1e3), st.sampled_from([-1, 1]))
def test_initial_knobs_outside_the_limits_are_refused(tmp_path, knob, factor, sign) -> None:
    low, high = LIMITS[knob]
    value = (high if sign > 0 else low) * factor
    data = copy.deepcopy(BASE) | {"initial_knobs": {knob: value}}
    message = _error(tmp_path, data)
    assert_names(message, f"initial_knobs.{knob} = {value}", f"[{low}, {high}]")


@IOC_PROPERTY
@given(st.sampled_from(sorted(LIMITS)), st.floats(0.0, 1.0))
def test_initial_knobs_inside_the_limits_load(tmp_path, knob, u) -> None:
    low, high = LIMITS[knob]
    data = copy.deepcopy(BASE) | {"initial_knobs": {knob: low + u * (high - low)}}
    path = tmp_path / "ioc.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_virtual_config(path).config.initial_knobs[knob] == data["initial_knobs"][knob]


def test_trial_settings_past_the_limits_are_refused(tmp_path) -> None:
    trials = yaml.load(
        (ROOT / "envs" / "ares_ea_trials_300.yaml").read_text(), Loader=yaml.CSafeLoader
    )
    trial = copy.deepcopy(trials[5])
    trial["initial"]["q2"] = 99.0  # past DRVH (72)
    path = tmp_path / "trials.yaml"
    path.write_text(yaml.safe_dump({0: trial}))
    data = copy.deepcopy(BASE) | {"trials_file": str(path), "trial": 0, "initial_knobs": "trial"}
    message = _error(tmp_path, data)
    assert_names(message, "initial_knobs ('trial': trial 0).Q2 = 99.0", "[-72.0, 72.0]")


def test_a_broken_trials_file_is_reported(tmp_path) -> None:
    path = tmp_path / "trials.yaml"
    path.write_text("0: {incoming: {energy: .nan}}\n")
    message = _error(tmp_path, copy.deepcopy(BASE) | {"trials_file": str(path)})
    assert_names(message, "trials_file", "trial 0", "incoming.energy = nan")
