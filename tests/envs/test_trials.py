"""The published ARES-EA trial set (:func:`accelrl.envs.load_trials`) and trial resets.

Reference: desy-ml/rl-vs-bo ``trials.yaml`` (commit fcd68a5, GPL-3.0): 300 trials;
"do nothing" from the standard start settings gives a median MAE of about 700-725 um.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from envs_testlib import START, UPSTREAM_TRIALS_SHA256, make_env

import accelrl.envs as E
from accelrl.physics.beam import INCOMING

#: Trial-file incoming keys in the env's INCOMING order.
FILE_INCOMING = (
    "energy",
    "mu_x",
    "mu_xp",
    "mu_y",
    "mu_yp",
    "sigma_x",
    "sigma_xp",
    "sigma_y",
    "sigma_yp",
    "sigma_s",
    "sigma_p",
)
#: The env's misalignment order and the matching trial-file keys.
MISALIGNMENTS = [
    ("AREAMQZM1.x", "q1_x"),
    ("AREAMQZM1.y", "q1_y"),
    ("AREAMQZM2.x", "q2_x"),
    ("AREAMQZM2.y", "q2_y"),
    ("AREAMQZM3.x", "q3_x"),
    ("AREAMQZM3.y", "q3_y"),
    ("AREABSCR1.x", "screen_x"),
    ("AREABSCR1.y", "screen_y"),
]


@pytest.fixture(scope="module")
def raw_trials() -> dict:
    from accelrl.envs.trials import DEFAULT_TRIALS

    return yaml.safe_load(DEFAULT_TRIALS.read_text())


def test_published_set_has_300_trials(trials):
    assert len(trials) == 300
    assert [t.index for t in trials] == list(range(300))
    # the env's incoming-beam columns correspond one to one to FILE_INCOMING
    assert INCOMING == (
        "energy",
        "mu_x",
        "mu_px",
        "mu_y",
        "mu_py",
        "sigma_x",
        "sigma_px",
        "sigma_y",
        "sigma_py",
        "sigma_tau",
        "sigma_p",
    )


def test_shipped_file_is_the_upstream_file():
    """The shipped trials are desy-ml/rl-vs-bo's ``trials.yaml`` byte for byte (plus the
    provenance comment lines at the top)."""
    import hashlib

    from accelrl.envs.trials import DEFAULT_TRIALS

    lines = DEFAULT_TRIALS.read_text().splitlines(keepends=True)
    data = "".join(line for line in lines if not line.startswith("#"))
    assert hashlib.sha256(data.encode()).hexdigest() == UPSTREAM_TRIALS_SHA256


def test_trials_match_raw_file(trials, raw_trials):
    for trial in (trials[0], trials[27], trials[299]):
        entry = raw_trials[trial.index]
        np.testing.assert_array_equal(trial.incoming, [entry["incoming"][k] for k in FILE_INCOMING])
        np.testing.assert_array_equal(
            trial.target, [entry["target"][k] for k in ("mu_x", "sigma_x", "mu_y", "sigma_y")]
        )
        assert trial.initial == {
            "Q1": entry["initial"]["q1"],
            "Q2": entry["initial"]["q2"],
            "Q3": entry["initial"]["q3"],
            "CV": entry["initial"]["cv"],
            "CH": entry["initial"]["ch"],
        }


def test_first_27_targets_have_a_zero_size(trials):
    """README: trials 0..26 are a grid of targets with sigma_x = 0 or sigma_y = 0."""
    for t in trials[:27]:
        assert t.target[1] == 0.0 or t.target[3] == 0.0
    assert any(t.target[1] > 0 and t.target[3] > 0 for t in trials[27:])


def test_trial_reset_reproduces_hidden_state(trials, raw_trials):
    env = make_env()
    assert env.unwrapped.core.misalignment_names == [name for name, _ in MISALIGNMENTS]
    for index in (0, 13, 150, 299):
        entry = raw_trials[index]
        obs, info = env.reset(seed=index, options={"trial": trials[index]})
        np.testing.assert_array_equal(
            info["incoming"], [entry["incoming"][k] for k in FILE_INCOMING]
        )
        np.testing.assert_array_equal(
            info["misalignments"], [entry["misalignments"][k] for _, k in MISALIGNMENTS]
        )
        target = [entry["target"][k] for k in ("mu_x", "sigma_x", "mu_y", "sigma_y")]
        np.testing.assert_array_equal(info["target"], target)
        np.testing.assert_array_equal(obs["target"], np.float32(target))
        np.testing.assert_array_equal(info["magnets"], START)
        assert info["step"] == 0


def test_trial_reset_independent_of_seed(trials):
    env = make_env()
    _, a = env.reset(seed=1, options={"trial": trials[42]})
    _, b = env.reset(seed=2, options={"trial": trials[42]})
    for key in ("beam", "incoming", "misalignments", "target"):
        np.testing.assert_array_equal(a[key], b[key])


def test_trial_initial_magnets_option(trials):
    env = make_env()
    _, info = env.reset(options={"trial": trials[5], "magnets": "trial"})
    expected = [trials[5].initial[n] for n in ("Q1", "Q2", "CV", "Q3", "CH")]
    np.testing.assert_array_equal(info["magnets"], expected)


def test_do_nothing_median_mae(trials):
    """README: doing nothing from (+10, -10, 0, +10, 0) gives a median MAE ~700-725 um."""
    env = make_env()
    maes = []
    for trial in trials:
        _, info = env.reset(options={"trial": trial})
        np.testing.assert_array_equal(info["magnets"], START)
        maes.append(info["mae"])
    # MAE is mean |beam - target| over (mu_x, sigma_x, mu_y, sigma_y), in metres
    _, info = env.reset(options={"trial": trials[100]})
    assert info["mae"] == pytest.approx(np.mean(np.abs(info["beam"] - info["target"])), rel=1e-12)
    median = np.median(maes)
    assert 690e-6 <= median <= 760e-6, f"median do-nothing MAE {median * 1e6:.1f} um"
    # and a zero action keeps it exactly (the settings do not move)
    _, info = env.reset(options={"trial": trials[0]})
    _, _, _, _, after = env.step(np.zeros(5, dtype=np.float32))
    assert after["mae"] == pytest.approx(info["mae"], rel=1e-12)


# ------------------------------------------------------------------ malformed trial files


def _write_trials(tmp_path, raw_trials, index, mutate) -> str:
    data = {i: raw_trials[i] for i in range(4)} | {
        index: yaml.safe_load(yaml.safe_dump(raw_trials[index]))
    }
    mutate(data[index])
    path = tmp_path / "trials.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda t: t.pop("target"), ["target"]),
        (lambda t: t["target"].pop("sigma_y"), ["sigma_y"]),
        (lambda t: t["incoming"].pop("energy"), ["energy"]),
        (lambda t: t["incoming"].__setitem__("mu_x", "abc"), ["abc"]),
        (lambda t: t["target"].__setitem__("sigma_x", -1e-4), ["target"]),
        (lambda t: t["target"].__setitem__("mu_x", float("nan")), ["target"]),
        (lambda t: t.__setitem__("incoming", [1, 2, 3]), []),
    ],
    ids=["no-target", "no-sigma_y", "no-energy", "text-value", "negative-size", "nan", "list"],
)
def test_malformed_trial_names_trial(tmp_path, raw_trials, mutate, words):
    path = _write_trials(tmp_path, raw_trials, 2, mutate)
    with pytest.raises(ValueError) as info:
        E.load_trials(path)
    msg = str(info.value)
    assert "trial 2" in msg and "trials.yaml" in msg
    for word in words:
        assert word in msg


def test_malformed_trial_file_text(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("0: {incoming: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        E.load_trials(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        E.load_trials(path)
