"""The ``accelrl`` command (:mod:`accelrl.cli`), through typer's ``CliRunner``.

Every command is run in-process with small trial counts and short episodes; error cases must
exit non-zero with a message that names the problem and no traceback.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from accelrl import cli
from accelrl.envs import ARES_EA_ID, load_trials
from accelrl.physics import BACKENDS

# A wide terminal, so that rich wraps no message we look for.
runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


def flat(text: str) -> str:
    """``text`` with rich's panel borders removed and whitespace collapsed."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.output


def failed(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert not result.exception or isinstance(result.exception, SystemExit), repr(result.exception)
    return flat(result.output)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trials():
    return load_trials()


@pytest.fixture(scope="module")
def small_trials(tmp_path_factory) -> Path:
    """The first 8 published trials as a trial file (parsing the 300 takes ~1 s each time)."""
    import yaml

    from accelrl.envs.trials import DEFAULT_TRIALS

    data = yaml.safe_load(DEFAULT_TRIALS.read_text())
    path = tmp_path_factory.mktemp("trials") / "first8.yaml"
    path.write_text(yaml.safe_dump({i: data[i] for i in range(8)}))
    return path


# --------------------------------------------------------------------------- app
def test_app_is_typer_and_help_lists_commands():
    import typer

    assert isinstance(cli.app, typer.Typer)
    out = ok(invoke("--help"))
    for command in ("envs", "rollout", "render", "demo"):
        assert command in out


def test_backend_choices_are_the_physics_backends():
    assert tuple(b.value for b in cli.Backend) == BACKENDS


# --------------------------------------------------------------------------- envs
def test_envs_list():
    out = ok(invoke("envs", "list"))
    assert ARES_EA_ID in out
    assert "5" in out and "50" in out  # actuators, default TimeLimit


def test_envs_show():
    out = flat(ok(invoke("envs", "show", ARES_EA_ID)))
    for needle in (
        "Action space: Box(5)",
        "AREAMQZM1.k1",
        "[-7.2, 7.2]",  # delta mode, 1/m^2
        "[-72, 72]",  # direct mode
        "[-6.178, 6.178]",  # steerers in mrad
        "Observation space",
        "magnets",
        "target",
        "Screen AREABSCR1",
        "2448 x 2040 px",
        "3.549 x 2.5 um",
        "8.687 x 5.101 mm",
        "misalignment AREAMQZM1",
        "400",
        "target sigma_x, sigma_y",
        "drift: off",
        "actuator failure: off",
        "mu_x 20 um",
        "Reward(icml*1.0)",
    ):
        assert needle in out, needle


def test_envs_show_unknown_id():
    out = failed(invoke("envs", "show", "accelrl/NoSuchEnv-v0"))
    assert "unknown environment" in out and ARES_EA_ID in out


# --------------------------------------------------------------------------- rollout
def test_rollout_do_nothing_table_and_csv(tmp_path):
    path = tmp_path / "sub" / "results.csv"
    out = ok(invoke("rollout", ARES_EA_ID, "--limit", 30, "--steps", 3, "--out", path))
    assert "do-nothing" in out and "median" in out and "sized" in out
    rows = read_csv(path)
    assert [int(r["trial"]) for r in rows] == list(range(30))
    initial = np.array([float(r["initial_mae_m"]) for r in rows])
    final = np.array([float(r["final_mae_m"]) for r in rows])
    best = np.array([float(r["best_mae_m"]) for r in rows])
    # SI units (metres), and doing nothing changes nothing.
    assert np.all((final > 1e-6) & (final < 1e-1))
    np.testing.assert_allclose(final, initial, rtol=1e-9)
    assert np.all(best <= np.minimum(initial, final))


def test_rollout_do_nothing_published_median(trials):
    """Doing nothing on the 300 published trials: median MAE ~724 um (steps do not matter)."""
    res = cli.rollout(ARES_EA_ID, trials, "do-nothing", steps=2)
    assert res.final_mae.shape == (300,)
    assert np.median(res.final_mae) == pytest.approx(724.5e-6, abs=1e-6)
    assert 0 < res.sized.sum() < 300


def test_rollout_random_seeded_and_independent_of_limit(tmp_path, small_trials):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    common = (ARES_EA_ID, "--policy", "random", "--steps", 8, "--seed", 3, "--trials", small_trials)
    ok(invoke("rollout", *common, "--limit", 4, "--out", a))
    ok(invoke("rollout", *common, "--limit", 4, "--out", b))
    ok(invoke("rollout", *common, "--limit", 6, "--out", c))
    ra, rb, rc = read_csv(a), read_csv(b), read_csv(c)
    assert ra == rb
    assert ra == rc[:4]  # a trial's result does not depend on the other trials
    assert {r["policy"] for r in ra} == {"random"}
    # the random policy moves the beam
    assert any(r["final_mae_m"] != r["initial_mae_m"] for r in ra)


def test_rollout_and_render_are_the_evaluation_protocol(trials):
    """rollout and render run their trials through the evaluation protocol: the same
    numbers as ``evaluate`` with the baseline's optimiser spec."""
    from accelrl.agents.evaluation import evaluate

    steps, seed = 6, 5
    res = cli.rollout(ARES_EA_ID, trials[:5], "random", steps=steps, seed=seed)
    ref = evaluate(
        "random-steps", trials[:5], max_steps=steps, seed=seed, executor="serial",
        progress=False, chunk_size=5,
    ).trial_table("random-steps")  # fmt: skip
    np.testing.assert_array_equal(res.final_mae, ref["final_mae"])
    np.testing.assert_array_equal(res.best_mae, ref["best_mae"])
    t = trials[3]
    rendered = cli.render_trial(ARES_EA_ID, t, "random", steps, seed=seed)
    single = evaluate(
        "random-steps", [t], max_steps=steps, seed=seed, executor="serial", progress=False
    ).trial_table("random-steps")
    assert rendered.mae_after == single["final_mae"][0]
    # a trial's result does not depend on the batch it runs in (to float rounding)
    assert rendered.mae_after == pytest.approx(res.final_mae[3], rel=1e-12)


def test_rollout_cheetah_backend_agrees_with_fast(tmp_path, small_trials):
    fast, cheetah = tmp_path / "fast.csv", tmp_path / "cheetah.csv"
    args = (ARES_EA_ID, "--policy", "random", "--limit", 2, "--steps", 2, "--trials", small_trials)
    ok(invoke("rollout", *args, "--out", fast))
    ok(invoke("rollout", *args, "--backend", "cheetah", "--out", cheetah))
    for f, c in zip(read_csv(fast), read_csv(cheetah), strict=True):
        assert float(c["final_mae_m"]) == pytest.approx(float(f["final_mae_m"]), rel=1e-6)


def test_rollout_custom_trials_file(tmp_path, small_trials):
    import yaml

    data = yaml.safe_load(small_trials.read_text())
    two = tmp_path / "trials.yaml"
    two.write_text(yaml.safe_dump({7: data[7], 5: data[5]}))
    path = tmp_path / "out.csv"
    ok(invoke("rollout", ARES_EA_ID, "--trials", two, "--steps", 2, "--out", path))
    assert [int(r["trial"]) for r in read_csv(path)] == [5, 7]


def test_rollout_errors(tmp_path):
    out = failed(invoke("rollout", "NoSuchEnv-v0", "--limit", 1))
    assert "unknown environment" in out
    out = failed(invoke("rollout", ARES_EA_ID, "--policy", "greedy"))
    assert "greedy" in out and "do-nothing" in out and "random" in out
    out = failed(invoke("rollout", ARES_EA_ID, "--trials", tmp_path / "missing.yaml"))
    assert "missing.yaml" in out and "does not exist" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("0: {incoming: {energy: 1.0}}\n")
    out = failed(invoke("rollout", ARES_EA_ID, "--trials", bad))
    assert "bad.yaml" in out and "malformed" in out
    out = failed(invoke("rollout", ARES_EA_ID, "--steps", 0))
    assert "--steps" in out
    out = failed(invoke("rollout", ARES_EA_ID, "--backend", "ocelot"))
    assert "ocelot" in out


# --------------------------------------------------------------------------- render
def test_render_png(tmp_path):
    path = tmp_path / "plots" / "beam.png"
    out = ok(invoke("render", ARES_EA_ID, "--trial", 2, "--out", path, "--steps", 3))
    assert str(path) in out and "MAE" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[1] > 2 * image.shape[0] * 0.8  # two panels side by side


def test_render_random_policy(tmp_path, small_trials):
    path = tmp_path / "beam.png"
    args = ("--steps", 3, "--policy", "random", "--trials", small_trials)
    ok(invoke("render", ARES_EA_ID, "--out", path, *args))
    assert path.stat().st_size > 1000


def test_render_trial_images_differ_after_random_steps(trials):
    r = cli.render_trial(ARES_EA_ID, trials[2], "random", steps=3)
    assert r.before.dtype == np.uint8 and r.before.ndim == 3
    assert not np.array_equal(r.before, r.after)
    same = cli.render_trial(ARES_EA_ID, trials[2], "do-nothing", steps=3)
    np.testing.assert_array_equal(same.before, same.after)


def test_render_errors(tmp_path):
    out = failed(invoke("render", ARES_EA_ID, "--trial", 300, "--out", tmp_path / "b.png"))
    assert "out of range" in out and "300 trials" in out
    out = failed(invoke("render", "NoSuchEnv-v0", "--out", tmp_path / "b.png"))
    assert "unknown environment" in out
    out = failed(invoke("render", ARES_EA_ID, "--out", tmp_path / "b.jpg"))
    assert ".png" in out
    out = failed(invoke("render", ARES_EA_ID, "--policy", "bo", "--out", tmp_path / "b.png"))
    assert "bo" in out
    assert not (tmp_path / "b.png").exists()


# --------------------------------------------------------------------------- demo
def test_demo(tmp_path):
    out_dir = tmp_path / "demo_out"
    out = ok(invoke("demo", "--iterations", 3, "--steps", 3, "--out-dir", out_dir))
    assert "do-nothing" in out and "random" in out and "demo-policy" in out and "300" in out
    assert "724.5" in out  # do-nothing median best MAE [um] on the published trials
    assert (out_dir / "policy" / "policy.pt").is_file()
    assert (out_dir / "evaluation" / "summary.json").is_file()
    assert (out_dir / "evaluation" / "mae_vs_step.png").read_bytes()[:4] == b"\x89PNG"
