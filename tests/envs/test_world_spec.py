"""World specs (:mod:`accelrl.envs.world.spec`): presets, composition, the task spec's
``world:`` key, and errors that name the file, the field and the value."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from envs_testlib import ROOT, spec_dict

import accelrl.envs as E
from accelrl.envs.world import (
    FailureScenario,
    IncomingChange,
    WorldError,
    WorldSpec,
    load_world,
    shipped_worlds,
)

WORLDS = ROOT / "envs" / "worlds"


def test_shipped_presets_and_overlays_load():
    names = shipped_worlds()
    for name in ("ideal", "ares-realistic", "harsh"):
        assert name in names and (WORLDS / f"{name}.yaml").is_file()
    for name in ("beam-animation", "beam-switch", "q3-failure", "steering-change"):
        assert name in names and (WORLDS / "scenarios" / f"{name}.yaml").is_file()
    for name in names:
        world = load_world(name)
        assert world.name == name
        world.check(E.ares_ea_spec())  # every preset fits the ARES-EA task


def test_ideal_is_ideal_and_the_others_are_not():
    assert load_world("ideal").is_ideal
    assert load_world(None).is_ideal
    assert WorldSpec().is_ideal
    for name in ("ares-realistic", "harsh", "q3-failure"):
        assert not load_world(name).is_ideal


def test_every_ares_realistic_value_has_a_source_comment():
    """Each value line of the ares-realistic preset carries a comment (source or estimate),
    or belongs to a block whose comment gives them."""
    lines = (WORLDS / "ares-realistic.yaml").read_text().splitlines()
    camera = lines[lines.index("camera:") + 1 : lines.index("magnets:")]
    values = [ln for ln in camera if ":" in ln and not ln.strip().startswith("#")]
    assert len(values) == 13
    for ln in values:
        assert "#" in ln, f"camera value without a source: {ln.strip()}"
    beam = lines[lines.index("beam:") + 1 :]
    values = [ln for ln in beam if ln.startswith("    ") and ":" in ln and "#" not in ln[:6]]
    assert len(values) == 8
    for ln in values:
        assert "#" in ln, f"beam value without a source: {ln.strip()}"
    text = "\n".join(lines)
    for word in ("[rl-vs-bo]", "[IMX250]", "[task]", "Estimate"):
        assert word in text


def test_composition_preset_plus_overlays():
    world = load_world("ares-realistic+q3-failure+steering-change")
    assert world.name == "ares-realistic+q3-failure+steering-change"
    assert world.camera == load_world("ares-realistic").camera
    kinds = [type(s) for s in world.scenarios]
    assert kinds == [FailureScenario, IncomingChange]
    same = load_world("ares-realistic", scenarios=["q3-failure", "steering-change"])
    assert same.model_dump() == world.model_dump()
    q3 = world.scenarios[0]
    assert (q3.actuator, q3.value, q3.step, q3.probability) == ("Q3", 0.0, (41, 41), 1.0)


def test_base_inheritance_and_relative_paths(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        yaml.safe_dump(
            {
                "base": "ares-realistic",
                "name": "mine",
                "camera": {"binning": 8, "method": "moments"},
                "magnets": {"Q1": {"gain_error": 0.05}},
            }
        )
    )
    world = load_world(tmp_path / "mine.yaml")
    base = load_world("ares-realistic")
    assert world.camera.binning == 8 and world.camera.method == "moments"
    assert world.camera.read_noise == base.camera.read_noise  # merged key by key
    assert world.magnets["Q1"].gain_error == 0.05
    assert world.magnets["Q1"].hysteresis == base.magnets["Q1"].hysteresis
    assert world.magnets["Q2"] == base.magnets["Q2"]
    # a task spec names a world relative to its own file
    data = spec_dict()
    data["world"] = "mine.yaml"
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(data))
    spec = E.TaskSpec.from_yaml(tmp_path / "task.yaml")
    assert spec.world.camera.binning == 8


def test_inheritance_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(WorldError, match="cycle"):
        load_world(tmp_path / "a.yaml")


def test_task_spec_world_key(tmp_path):
    spec = E.ares_ea_spec()
    assert spec.world is not None and spec.world.is_ideal  # envs/ares_ea.yaml: world: ideal
    data = spec_dict()
    data["world"] = "ares-realistic"
    assert E.TaskSpec.from_dict(data).world.camera.method == "ares"
    data["world"] = {"beam": {"jitter": {"mu": 1e-6}}}  # inline
    assert E.TaskSpec.from_dict(data).world.beam.jitter.mu == 1e-6


def _world_error(tmp_path, data: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(WorldError) as info:
        world = load_world(path)
        world.check(E.ares_ea_spec())
    return str(info.value)


@pytest.mark.parametrize(
    "data, field, value",
    [
        ({"camera": {"bogus": 1}}, "camera.bogus", "1"),
        ({"bogus": 1}, "bogus", "1"),
        ({"camera": {"read_noise": -1.0}}, "camera.read_noise", "-1.0"),
        ({"camera": {"background": -5.0}}, "camera.background", "-5.0"),
        ({"camera": {"gain": 0.0}}, "camera.gain", "0.0"),
        ({"camera": {"frames": 4}}, "camera.frames", "4"),
        ({"camera": {"read_noise": float("nan")}}, "camera.read_noise", "nan"),
        ({"camera": {"signal": float("inf")}}, "camera.signal", "inf"),
        ({"beam": {"jitter": {"mu": -1e-6}}}, "beam.jitter.mu", "-1e-06"),
        ({"beam": {"drift": {"sigma": 2.0}}}, "beam.drift.sigma", "2.0"),
        ({"magnets": {"Q1": {"settle": 0.0}}}, "magnets.Q1.settle", "0.0"),
        (
            {"magnets": {"Q1": {"hysteresis": {"width": -0.1}}}},
            "magnets.Q1.hysteresis.width",
            "-0.1",
        ),
        ({"scenarios": [{"kind": "meteor"}]}, "scenarios.0", "meteor"),
        (
            {"scenarios": [{"kind": "incoming_change", "offset": {"nope": 1.0}}]},
            "scenarios.0",
            "nope",
        ),
    ],
)
def test_invalid_values_name_file_field_value(tmp_path, data, field, value):
    msg = _world_error(tmp_path, data)
    assert "bad.yaml" in msg and field in msg and value in msg, msg


@pytest.mark.parametrize(
    "data, field, value, words",
    [
        (
            {"magnets": {"Q1": {"hysteresis": {"width": 150.0}}}},
            "magnets.Q1.hysteresis.width",
            "150.0",
            "range of Q1 (144",
        ),
        (
            {"magnets": {"CV": {"hysteresis": {"width": 0.02}}}},
            "magnets.CV.hysteresis.width",
            "0.02",
            "range of CV",
        ),
        ({"magnets": {"Q9": {"gain_error": 0.01}}}, "magnets.Q9", "Q9", "no such actuator"),
        (
            {"scenarios": [{"kind": "actuator_failure", "actuator": "Q3", "step": [40, 60]}]},
            "scenarios.0.step",
            "[40, 60]",
            "episode of 50 steps",
        ),
        (
            {"scenarios": [{"kind": "incoming_change", "after": 50}]},
            "scenarios.0.after",
            "50",
            "episode of 50 steps",
        ),
        (
            {"scenarios": [{"kind": "actuator_failure", "actuator": "Q3", "value": 100.0}]},
            "scenarios.0.value",
            "100.0",
            "outside the limits of Q3",
        ),
        ({"camera": {"binning": 7}}, "camera.binning", "7", "divide"),
    ],
)
def test_world_task_mismatch_names_file_field_value(tmp_path, data, field, value, words):
    msg = _world_error(tmp_path, data)
    for part in ("bad.yaml", field, value, words):
        assert part in msg, (part, msg)


def test_scenario_steps_fit_the_vector_env_episode():
    """Steps are checked against the episode the environment runs (here 30 < 41)."""
    with pytest.raises(WorldError, match="episode of 30 steps"):
        E.make_vec(E.ARES_EA_ID, num_envs=2, world="q3-failure", max_episode_steps=30)
    E.make_vec(E.ARES_EA_ID, num_envs=2, world="q3-failure", max_episode_steps=45)


def test_task_spec_with_bad_world_names_the_task_file(tmp_path):
    data = spec_dict()
    data["world"] = {"magnets": {"Q1": {"hysteresis": {"width": 200.0}}}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(E.SpecError) as info:
        E.TaskSpec.from_yaml(path)
    msg = str(info.value)
    assert "task.yaml" in msg and "magnets.Q1.hysteresis.width" in msg and "200.0" in msg
    data["world"] = "no-such-world"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(E.SpecError, match="no-such-world"):
        E.TaskSpec.from_yaml(path)


def test_unknown_world_name():
    with pytest.raises(WorldError, match="neither a shipped world"):
        load_world("ares-imaginary")


def test_camera_and_task_reading_noise_conflict():
    data = spec_dict()
    data["screen"]["reading_noise"] = 1e-6
    spec = E.TaskSpec.from_dict(data)
    with pytest.raises(WorldError, match="screen.reading_noise"):
        E.TransverseTuningEnv(spec, world="ares-realistic")


def test_task_spec_failure_names_actuator_and_value():
    data = spec_dict()
    data["randomisation"]["failure"] = {"probability": 1.0, "step": [2, 2], "actuator": "CH"}
    spec = E.TaskSpec.from_dict(data)
    venv = E.TransverseTuningVectorEnv(spec, num_envs=8, action_mode="direct")
    venv.reset(seed=0)
    np.testing.assert_array_equal(venv.core.hidden.fail_index, 4)
    bad = copy.deepcopy(data)
    bad["randomisation"]["failure"]["actuator"] = "QX"
    with pytest.raises(E.SpecError, match="QX"):
        E.TaskSpec.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["randomisation"]["failure"]["value"] = 1.0  # rad: beyond the steerer limits
    with pytest.raises(E.SpecError, match="failure.value"):
        E.TaskSpec.from_dict(bad)
