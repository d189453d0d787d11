"""Task specs refuse every physically meaningless value with the file, the field and the value.

Property tests: random valid specs (limits, start settings, episode length, failure range,
thresholds, noise) load; one corrupted number (NaN, inf, text, a list, a mapping; a negative
value where only >= 0 means something) or one unknown key is refused with a
:class:`~accelrl.envs.spec.SpecError` naming the field.
"""

from __future__ import annotations

import copy
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

from accelrl.envs.spec import SpecError, TaskSpec, shipped_spec_path

SOURCE = "task.yaml"
BASE: dict[str, Any] = yaml.safe_load(shipped_spec_path("ares_ea").read_text())

#: Fields that must be >= 0 (a negative value is meaningless).
NON_NEGATIVE: list[tuple[str | int, ...]] = [
    ("screen", "reading_noise"),
    ("screen", "pixel_size", 0),
    ("screen", "binning"),
    ("termination", "thresholds", 0),
    ("termination", "thresholds", 3),
    ("termination", "hold"),
    ("max_episode_steps",),
    ("delta_fraction",),
    ("randomisation", "target_mu"),
    ("randomisation", "target_sigma", "low"),
    ("randomisation", "gain_error"),
    ("randomisation", "drift", "mu"),
    ("randomisation", "drift", "mu_p"),
    ("randomisation", "failure", "probability"),
    ("randomisation", "failure", "step", 0),
    ("randomisation", "misalignments", "AREAMQZM2"),
    ("randomisation", "incoming", "energy", "low"),
    ("randomisation", "incoming", "sigma_x", "low"),
]


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """The shipped spec with random valid limits, start, episode, failures and noise."""
    data = copy.deepcopy(BASE)
    for i, act in enumerate(data["actuators"]):
        half = draw(st.floats(1e-4, 1e3))
        low = -half * draw(st.floats(0.1, 1.0))
        act["low"], act["high"] = low, half
        data["start"][i] = draw(st.floats(low, half))
    steps = draw(st.integers(1, 500))
    first = draw(st.integers(1, steps))
    data["max_episode_steps"] = steps
    data["randomisation"]["failure"] = {
        "probability": draw(st.floats(0.0, 1.0)),
        "step": [first, draw(st.integers(first, steps))],
    }
    data["termination"]["hold"] = draw(st.integers(1, steps))
    data["termination"]["thresholds"] = draw(
        st.lists(st.floats(1e-9, 1e-2), min_size=4, max_size=4)
    )
    data["screen"]["reading_noise"] = draw(st.floats(0.0, 1e-4))
    data["randomisation"]["drift"] = {
        "mu": draw(st.floats(0, 1e-5)),
        "mu_p": draw(st.floats(0, 1e-6)),
    }
    low = draw(st.floats(0.0, 1e-3))
    data["randomisation"]["target_sigma"] = {"low": low, "high": low + draw(st.floats(0.0, 1e-3))}
    data["delta_fraction"] = draw(st.floats(1e-3, 1.0))
    return data


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        TaskSpec.from_dict(data, source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: invalid task spec"), message
    return message


@PROPERTY
@given(valid_specs())
def test_random_valid_specs_load(data: dict[str, Any]) -> None:
    spec = TaskSpec.from_dict(data, source=SOURCE)
    assert spec.max_episode_steps == data["max_episode_steps"]


@PROPERTY
@given(st.data())
def test_any_corrupted_number_is_refused_naming_its_field(data: st.DataObject) -> None:
    spec = data.draw(valid_specs())
    path = data.draw(st.sampled_from(list(numeric_leaves(spec))))
    value = data.draw(st.sampled_from(ALWAYS_INVALID))
    assert_names(_error(corrupt(spec, path, value)), field_name(path))


@PROPERTY
@given(st.data())
def test_negative_values_are_refused(data: st.DataObject) -> None:
    spec = data.draw(valid_specs())
    path = data.draw(st.sampled_from(NON_NEGATIVE))
    node = spec
    for key in path[:-1]:
        node = node[key]
    message = _error(corrupt(spec, path, negative_of(node[path[-1]])))
    assert_names(message, field_name(path))


@PROPERTY
@given(
    st.sampled_from(
        [
            (),
            ("screen",),
            ("termination",),
            ("randomisation",),
            ("randomisation", "drift"),
            ("randomisation", "failure"),
            ("actuators", 0),
            ("randomisation", "incoming", "mu_x"),
        ]
    ),
    st.from_regex(r"\A[a-z][a-z_]{2,12}\Z"),
)
def test_unknown_keys_are_refused(where: tuple[str | int, ...], key: str) -> None:
    data = copy.deepcopy(BASE)
    node = data
    for k in where:
        node = node[k]
    if key in node:
        return
    node[key] = 1.0
    assert_names(_error(data), key)


@pytest.mark.parametrize(
    "path, value, words",
    [
        (("termination", "thresholds", 1), float("nan"), ["thresholds.1", "nan", "finite"]),
        (("termination", "thresholds", 0), 0.0, ["thresholds.0", "greater than 0"]),
        (("actuators", 0, "high"), float("inf"), ["actuators.0.high", "inf", "finite"]),
        (("actuators", 2, "low"), float("-inf"), ["actuators.2.low", "-inf"]),
        (("actuators", 1, "low"), float("nan"), ["actuators.1.low", "nan"]),
        (
            ("randomisation", "failure"),
            {"probability": 0.1, "step": [10, 80]},
            ["failure.step", "[10, 80]", "1..50"],
        ),
        (("randomisation", "failure", "step"), [30, 20], ["failure step", "first <= last"]),
        (("termination", "hold"), 51, ["termination.hold", "51", "1..50"]),
        (("randomisation", "target_sigma", "low"), -1e-4, ["target_sigma.low", "-0.0001"]),
        (("randomisation", "drift", "mu"), -1e-6, ["drift.mu", "-1e-06", "greater than or equal"]),
        (("screen", "reading_noise"), float("inf"), ["reading_noise", "inf"]),
        (("reward",), "nonsense", ["reward", "nonsense", "allowed"]),
        (("reward",), [{"term": "icml", "weight": float("nan")}], ["weight", "nan"]),
    ],
)
def test_named_errors(path: tuple[str | int, ...], value: Any, words: list[str]) -> None:
    assert_names(_error(corrupt(BASE, path, value)), *words)


def test_inf_limits_never_reach_the_physics(tmp_path) -> None:
    """+-inf actuator limits used to crash with OverflowError in the numerics; they are
    refused when the spec is read."""
    data = corrupt(BASE, ("actuators", 0, "low"), float("-inf"))
    path = tmp_path / "inf.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="actuators.0.low = -inf"):
        TaskSpec.from_yaml(path)
