"""Your own lattice end to end: lattice files, task registration, backends, randomisation.

The shipped second task (``envs/fodo_task.yaml`` with ``envs/lattices/fodo.json``): a 3.0 m
line D0 0.3, QF 0.2, D1 0.5, QD 0.2, D2 0.4, HCOR 0.05, D3 0.1, VCOR 0.05, D4 1.2, monitor
MON (a ``Marker`` in the LatticeJSON, made a 1000 x 800 px screen of 5 um pixels by the task).
"""

from __future__ import annotations

import json
from pathlib import Path

import cheetah
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import accelrl.envs as E
from accelrl.envs.spec import SpecError
from accelrl.physics import UnsupportedElementError, as_screen, load_lattice, make_beamline
from accelrl.physics.lattices import LatticeFileError

ROOT = Path(__file__).resolve().parents[2]
FODO_TASK = ROOT / "envs" / "fodo_task.yaml"
FODO_JSON = ROOT / "envs" / "lattices" / "fodo.json"
FODO_ID = "accelrl/FODOTransverseTuning-v0"
F64 = torch.float64


def t(value: float | list[float]) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


def cavity_line() -> cheetah.Segment:
    """Drift, 1 m cavity (10 MV), quadrupole, drift, screen: the compiled map has no cavity."""
    return cheetah.Segment(
        [
            cheetah.Drift(length=t(0.5), name="D0", dtype=F64),
            cheetah.Cavity(
                length=t(1.0),
                voltage=t(10e6),
                phase=t(0.0),
                frequency=t(1.3e9),
                name="CAV",
                dtype=F64,
            ),  # fmt: skip
            cheetah.Quadrupole(length=t(0.1), k1=t(0.0), name="Q", dtype=F64),
            cheetah.HorizontalCorrector(length=t(0.02), angle=t(0.0), name="HC", dtype=F64),
            cheetah.Drift(length=t(1.0), name="D1", dtype=F64),
            cheetah.Screen(
                resolution=(1000, 800), pixel_size=t([5e-6, 5e-6]), name="SCR", dtype=F64
            ),
        ],
        name="cavity_line",
    )


KNOBS = [("Q", "k1", -20.0, 20.0), ("HC", "angle", -1e-3, 1e-3)]
INCOMING = [50e6, 1e-4, 1e-5, -1e-4, 0.0, 1e-4, 1e-5, 1e-4, 1e-5, 1e-5, 1e-4]


# --------------------------------------------------------------------------- backends
def test_fast_backend_names_the_element_and_the_backends_that_can():
    with pytest.raises(UnsupportedElementError) as info:
        E.make_tuning_env(cavity_line(), knobs=KNOBS, screen="SCR")
    message = str(info.value)
    for word in ("backend='fast'", "CAV", "Cavity", "'cheetah'", "'cheetah-particles'"):
        assert word in message


@pytest.mark.parametrize("backend", ["cheetah", "cheetah-particles"])
def test_cheetah_backends_track_a_cavity(backend):
    env = E.make_tuning_env(
        cavity_line(), knobs=KNOBS, screen="SCR", backend=backend, num_particles=200
    )
    check_env(env.unwrapped)


def test_cheetah_backend_agrees_with_cheetah_tracking_through_a_cavity():
    """The env's reading is Cheetah's own ParameterBeam tracking (to 1e-12 relative)."""
    env = E.make_tuning_env(
        cavity_line(), knobs=KNOBS, screen="SCR", backend="cheetah", action_mode="direct",
        misalignments={}, start=[0.0, 0.0],
    )  # fmt: skip
    env.reset(options={"incoming": INCOMING})
    *_, info = env.step(np.float32([8.0, 3e-4]))
    line = cavity_line()
    line.Q.k1 = t(8.0)
    line.HC.angle = t(float(np.float32(3e-4)))
    line.SCR.is_active = True
    names = ["energy", "mu_x", "mu_px", "mu_y", "mu_py", "sigma_x", "sigma_px", "sigma_y"]
    names += ["sigma_py", "sigma_tau", "sigma_p"]
    beam = cheetah.ParameterBeam.from_parameters(
        **{n: t(v) for n, v in zip(names, INCOMING, strict=True)},
        species=cheetah.Species("electron", dtype=F64), dtype=F64,
    )  # fmt: skip
    line.track(beam)
    read = line.SCR.get_read_beam()
    expected = [float(v) for v in (read.mu_x, read.sigma_x, read.mu_y, read.sigma_y)]
    np.testing.assert_allclose(info["beam"], expected, rtol=1e-12, atol=1e-18)
    # the cavity accelerates: 10 MV on crest gives ~60 MeV, so the beam shrinks vs a drift
    assert float(read.energy) == pytest.approx(60e6, rel=0.01)


def test_cavity_voltage_is_a_knob_of_the_cheetah_backend():
    bl = make_beamline(cavity_line(), [("CAV", "voltage")], "SCR", "cheetah", misalign=[])
    inc = np.tile(INCOMING, (2, 1))
    # (Cheetah 0.8.4 answers NaN for a zero voltage inside a batch with non-zero ones)
    out = bl.evaluate(np.array([[5e6], [20e6]]), inc, np.zeros((2, 0)))
    # more energy, smaller divergence, smaller size downstream
    assert out[1, 1] < out[0, 1]


# --------------------------------------------------------------------------- randomisation
def test_randomisation_sets_the_incoming_beam_ranges():
    fodo = as_screen(load_lattice(FODO_JSON), "MON", (1000, 800), (5e-6, 5e-6))
    env = E.make_tuning_env(
        fodo, knobs=[("QF", "k1", -30.0, 30.0)], screen="MON",
        randomisation={"incoming": {"energy": (1.0e9, 1.2e9)}, "target_mu": 5e-4},
    )  # fmt: skip
    energies, targets = [], []
    for seed in range(40):
        _, info = env.reset(seed=seed)
        energies.append(info["incoming"][0])
        targets.append(info["target"][[0, 2]])
    assert min(energies) >= 1.0e9 and max(energies) <= 1.2e9
    assert np.abs(targets).max() <= 5e-4
    r = env.unwrapped.task.randomisation
    for key, (low, high) in E.DEFAULT_INCOMING.items():  # the rest: the documented defaults
        if key != "energy":
            assert (r.incoming[key].low, r.incoming[key].high) == (low, high)


@pytest.mark.parametrize(
    "randomisation, words",
    [
        ({"incoming": {"enrgy": (1e9, 2e9)}}, ["enrgy", "unknown moment"]),
        ({"incoming": {"energy": (2e9, 1e9)}}, ["energy", "high"]),
        ({"incoming": {"energy": (-1.0, 1e9)}}, ["energy", "> 0"]),
        ({"incoming": {"energy": 1e9}}, ["energy", "(low, high)"]),
        ({"target_mu": float("nan")}, ["target_mu"]),
        ({"bogus": 1.0}, ["bogus"]),
    ],
    ids=["unknown", "order", "negative", "scalar", "nan", "field"],
)
def test_invalid_randomisation(randomisation, words):
    fodo = as_screen(load_lattice(FODO_JSON), "MON", (1000, 800), (5e-6, 5e-6))
    with pytest.raises(ValueError) as info:
        E.make_tuning_env(
            fodo, knobs=[("QF", "k1", -1.0, 1.0)], screen="MON", randomisation=randomisation
        )
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- lattices, screens
def test_lattice_json_round_trip_matches_the_file():
    segment = load_lattice(FODO_JSON)
    data = json.loads(FODO_JSON.read_text())
    assert [e.name for e in segment.flattened().elements] == data["lattices"]["fodo"]
    assert float(sum(e.length for e in segment.flattened().elements)) == pytest.approx(3.0)
    assert segment.QF.k1.dtype == F64


def test_marker_screen():
    segment = load_lattice(FODO_JSON)
    assert isinstance(segment.MON, cheetah.Marker)
    with pytest.raises(ValueError, match=r"Marker.*Ocelot Monitor.*as_screen"):
        E.make_tuning_env(segment, knobs=[("QF", "k1", -1.0, 1.0)], screen="MON")
    screen = as_screen(segment, "MON", (1000, 800), (5e-6, 5e-6))
    assert isinstance(screen.MON, cheetah.Screen) and isinstance(segment.MON, cheetah.Marker)
    assert tuple(screen.MON.resolution) == (1000, 800)
    with pytest.raises(ValueError, match=r"'QF' is a Quadrupole; only a monitor"):
        as_screen(segment, "QF", (1000, 800), (5e-6, 5e-6))
    with pytest.raises(ValueError, match="NOPE"):
        as_screen(segment, "NOPE", (1000, 800), (5e-6, 5e-6))


def test_lattice_file_errors(tmp_path):
    with pytest.raises(LatticeFileError, match="no such lattice file"):
        load_lattice(tmp_path / "missing.json")
    (tmp_path / "line.py").write_text("raise SystemExit('never run')\n")
    with pytest.raises(LatticeFileError, match="Python module.*to_lattice_json"):
        load_lattice(tmp_path / "line.py")
    (tmp_path / "line.mad8").write_text("")
    with pytest.raises(LatticeFileError, match="unknown lattice format"):
        load_lattice(tmp_path / "line.mad8")
    bad = json.loads(FODO_JSON.read_text())
    bad["elements"]["QF"][0] = "load_cheetah_model"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LatticeFileError, match="'QF'.*not a Cheetah element class"):
        load_lattice(tmp_path / "bad.json")


# --------------------------------------------------------------------------- registration
def test_register_task_yaml_gym_make_and_make_vec():
    env_id = E.register_task(FODO_TASK)
    assert env_id == FODO_ID
    env = gym.make(env_id)
    assert env.spec.max_episode_steps == 50
    check_env(env.unwrapped)
    _, single = env.reset(seed=3)
    for venv in (
        E.make_vec(env_id, 2),
        E.make_vec(str(FODO_TASK), 2),
        E.make_vec(E.TaskSpec.from_yaml(FODO_TASK), 2),
        gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point"),
    ):
        assert isinstance(venv, E.TransverseTuningVectorEnv)
        _, info = venv.reset(seed=3)
        np.testing.assert_allclose(info["beam"][0], single["beam"], rtol=1e-12, atol=1e-15)


def test_register_task_with_a_segment_and_make_vec_of_an_env():
    fodo = as_screen(load_lattice(FODO_JSON), "MON", (1000, 800), (5e-6, 5e-6))
    env = E.make_tuning_env(
        fodo, knobs=[("QF", "k1", -30.0, 30.0), ("HCOR", "angle", -2e-3, 2e-3)], screen="MON",
        env_id="mylab/Fodo-v0", max_episode_steps=7, action_mode="direct",
    )  # fmt: skip
    venv = E.make_vec(env, 3)
    assert venv.max_episode_steps == 7 and venv.core.action_mode == "direct"
    _, info = venv.reset(seed=5)
    _, single = env.reset(seed=6)
    np.testing.assert_allclose(info["beam"][1], single["beam"], rtol=1e-12, atol=1e-15)
    assert E.register_task(env.unwrapped.task, fodo) == "mylab/Fodo-v0"
    made = gym.make("mylab/Fodo-v0")
    assert made.spec.max_episode_steps == 7
    assert isinstance(E.make_vec("mylab/Fodo-v0", 2), E.TransverseTuningVectorEnv)


def test_register_task_refuses_shipped_ids_and_bad_lattices(tmp_path):
    with pytest.raises(ValueError, match="shipped task"):
        E.register_task(E.TASKS[E.ARES_EA_ID]())
    text = FODO_TASK.read_text().replace("lattices/fodo.json", "lattices/nope.json")
    (tmp_path / "task.yaml").write_text(text)
    with pytest.raises(SpecError, match=r"lattice: 'lattices/nope.json': no such file"):
        E.register_task(tmp_path / "task.yaml")
    text = FODO_TASK.read_text().replace("lattices/fodo.json", str(FODO_JSON))
    text = text.replace("element: MON", "element: QD")
    (tmp_path / "task.yaml").write_text(text.replace("QD: 1.0e-4\n    MON: 1.0e-4", "QD: 1e-4"))
    with pytest.raises(ValueError, match=r"screen.element 'QD' is a Quadrupole"):
        E.register_task(tmp_path / "task.yaml")


def test_make_vec_unknown_names_the_ways():
    with pytest.raises(ValueError, match=r"unknown environment 'nope/X-v0'.*task YAML"):
        E.make_vec("nope/X-v0", 2)


def test_sample_trials_are_reproducible_and_in_range():
    a, b = E.sample_trials(FODO_TASK, 5, seed=2), E.sample_trials(FODO_TASK, 5, seed=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.incoming, y.incoming)
        assert x.misalignments == y.misalignments
    energies = [tr.incoming[0] for tr in a]
    assert min(energies) >= 45e6 and max(energies) <= 55e6
    assert set(a[0].misalignments) == {"QF.x", "QF.y", "QD.x", "QD.y", "MON.x", "MON.y"}
