"""Task specs (:mod:`accelrl.envs.spec`): the shipped ARES-EA spec and validation errors.

Every invalid spec must raise :class:`accelrl.envs.SpecError` (a ``ValueError``) whose message
names the offending field and value (DESIGN.md: "an invalid value fails with a message naming
the field, the value and the allowed range").
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from envs_testlib import LIMITS, SPEC_YAML, START, spec_dict

import accelrl.envs as E
from accelrl.envs.spec import shipped_spec_path


def test_shipped_spec_is_the_top_level_yaml():
    assert yaml.safe_load(shipped_spec_path("ares_ea").read_text()) == yaml.safe_load(
        SPEC_YAML.read_text()
    )


def test_ares_ea_spec_values():
    spec = E.TaskSpec.from_yaml(SPEC_YAML)
    assert spec.id == E.ARES_EA_ID
    assert [a.name for a in spec.actuators] == ["Q1", "Q2", "CV", "Q3", "CH"]
    assert [a.element for a in spec.actuators] == [
        "AREAMQZM1",
        "AREAMQZM2",
        "AREAMCVM1",
        "AREAMQZM3",
        "AREAMCHM1",
    ]
    np.testing.assert_array_equal([a.high for a in spec.actuators], LIMITS)
    np.testing.assert_array_equal([a.low for a in spec.actuators], -LIMITS)
    np.testing.assert_array_equal(spec.start, START)
    assert spec.delta_fraction == 0.1
    assert spec.screen.element == "AREABSCR1"
    hx, hy = spec.screen.half_extent
    assert hx == pytest.approx(4.3437e-3, rel=1e-4)
    assert hy == pytest.approx(2.5503e-3, rel=1e-4)
    assert spec.termination.thresholds == (2e-5, 2e-5, 2e-5, 2e-5)


def _write(tmp_path, data) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _spec_error(tmp_path, data) -> str:
    with pytest.raises(E.SpecError) as info:
        E.TaskSpec.from_yaml(_write(tmp_path, data))
    return str(info.value)


def test_copy_of_shipped_spec_loads(tmp_path):
    spec = E.TaskSpec.from_yaml(_write(tmp_path, spec_dict()))
    assert spec == E.TaskSpec.from_yaml(SPEC_YAML)


def test_negative_sigma_low(tmp_path):
    data = spec_dict()
    data["randomisation"]["incoming"]["sigma_x"]["low"] = -1.0e-5
    msg = _spec_error(tmp_path, data)
    assert "sigma_x" in msg and "-1e-05" in msg


def test_start_outside_limits(tmp_path):
    data = spec_dict()
    data["start"][3] = 100.0
    msg = _spec_error(tmp_path, data)
    assert "start" in msg and "100.0" in msg and "Q3" in msg


def test_start_wrong_length(tmp_path):
    data = spec_dict()
    data["start"] = data["start"][:4]
    msg = _spec_error(tmp_path, data)
    assert "start" in msg and "4" in msg


@pytest.mark.parametrize(
    "where",
    [(), ("screen",), ("randomisation",), ("termination",)],
    ids=["top", "screen", "randomisation", "termination"],
)
def test_unknown_key(tmp_path, where):
    data = spec_dict()
    node = data
    for key in where:
        node = node[key]
    node["bogus_field"] = 1
    msg = _spec_error(tmp_path, data)
    assert "bogus_field" in msg


def test_malformed_yaml_text(tmp_path):
    text = SPEC_YAML.read_text().replace("max_episode_steps: 50", "max_episode_steps: [50")
    msg = _spec_error(tmp_path, text)
    assert "YAML" in msg and "spec.yaml" in msg


def test_yaml_not_a_mapping(tmp_path):
    msg = _spec_error(tmp_path, "- just\n- a list\n")
    assert "mapping" in msg


def test_actuator_high_below_low(tmp_path):
    data = spec_dict()
    data["actuators"][1]["high"] = -80.0
    msg = _spec_error(tmp_path, data)
    assert "actuators.1" in msg and "Q2" in msg and "-80.0" in msg


def test_randomisation_range_high_below_low(tmp_path):
    data = spec_dict()
    data["randomisation"]["incoming"]["energy"] = {"low": 160.0e6, "high": 80.0e6}
    msg = _spec_error(tmp_path, data)
    assert "energy" in msg and "80000000.0" in msg


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("screen", "reading_noise"), -1e-6, "reading_noise"),
        (("screen", "binning"), 0, "binning"),
        (("screen", "pixel_size"), [0.0, 2.5e-6], "pixel_size"),
        (("randomisation", "misalignments", "AREAMQZM2"), -4e-4, "AREAMQZM2"),
        (("randomisation", "failure", "probability"), 1.5, "probability"),
        (("randomisation", "gain_error"), 1.0, "gain_error"),
        (("delta_fraction",), 0.0, "delta_fraction"),
        (("max_episode_steps",), 0, "max_episode_steps"),
    ],
)
def test_out_of_range_fields(tmp_path, path, value, field):
    data = spec_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    msg = _spec_error(tmp_path, data)
    assert field in msg and repr(value).replace("'", "") in msg.replace("'", "")


def test_missing_incoming_moment(tmp_path):
    data = spec_dict()
    del data["randomisation"]["incoming"]["mu_py"]
    msg = _spec_error(tmp_path, data)
    assert "mu_py" in msg


def test_duplicate_actuator_names(tmp_path):
    data = spec_dict()
    data["actuators"][1]["name"] = "Q1"
    msg = _spec_error(tmp_path, data)
    assert "unique" in msg and "Q1" in msg


def test_spec_error_is_value_error():
    assert issubclass(E.SpecError, ValueError)
    with pytest.raises(ValueError):
        E.TaskSpec.from_dict({"id": "x"})


def test_env_from_spec_path(tmp_path):
    data = spec_dict()
    data["start"] = [1.0, 2.0, 1e-3, 3.0, -1e-3]
    env = E.TransverseTuningEnv(str(_write(tmp_path, data)))
    _, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["magnets"], [1.0, 2.0, 1e-3, 3.0, -1e-3])
