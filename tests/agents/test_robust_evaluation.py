"""Evaluation under worlds, target classes, the RL4AA'25 score and the rl4aa25 protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from accelrl.agents.evaluation import evaluate_many
from accelrl.agents.evaluation.challenge import (
    MAGNET_SCALE,
    challenge_score,
    challenge_steps_to_convergence,
    normalised_magnet_change,
)
from accelrl.agents.evaluation.classes import (
    class_breakdown,
    flagged,
    model_optimum,
    position_class,
    size_class,
    trial_classes,
)
from accelrl.agents.evaluation.protocols import protocol, rl4aa25_trials
from accelrl.envs import Trial, ares_ea_spec, load_trials
from accelrl.names import INCOMING

ROOT = Path(__file__).resolve().parents[2]
POLICY = f"policy:{ROOT / 'agents' / 'apg-ares-ea'}"
FAST = {"executor": "serial", "progress": False, "reachability": False}


def _strip_timing(summary: dict) -> dict:
    for per in summary.values():
        for entry in per.values():
            entry.pop("median_ask_time_ms")
    return summary


# --------------------------------------------------------------------------- worlds
def test_ideal_world_reproduces_the_default_evaluation_single_and_batched():
    """``world="ideal"`` gives the very records of an evaluation without a world, for an
    optimiser stepped alone (Nelder-Mead) and batched ones (do-nothing, the policy)."""
    opts = ["do-nothing", "nelder-mead", POLICY]
    kw = {"limit": 3, "max_steps": 12, **FAST}
    plain = evaluate_many(opts, **kw)
    ideal = evaluate_many(opts, world="ideal", **kw)
    cols = ["mae", "reading_mu_x", *(f"setting_{n}" for n in plain.actuator_names)]
    for col in cols:
        np.testing.assert_array_equal(plain.records[col].to_numpy(), ideal.records[col].to_numpy())
    assert _strip_timing(plain.summary_json()) == _strip_timing(ideal.summary_json())
    assert plain.challenge_scores() == ideal.challenge_scores()
    assert ideal.config["world"]["name"] == "ideal" and ideal.config["world"]["ideal"]
    assert ideal.config["world"]["seed"] == 0


def test_a_world_changes_the_evaluation_and_is_recorded():
    kw = {"limit": 2, "max_steps": 6, "seed": 5, **FAST}
    ideal = evaluate_many(["do-nothing", "nelder-mead"], **kw)
    real = evaluate_many(["do-nothing", "nelder-mead"], world="ares-realistic", **kw)
    w = real.config["world"]
    assert w["name"] == "ares-realistic" and not w["ideal"]
    assert w["seed"] == 5 and w["seed_rule"] == "seed + trial.index"
    assert w["spec"]["camera"] is not None and w["source"].endswith("ares-realistic.yaml")
    # the camera reads the beam differently from the ideal reading
    assert not np.array_equal(
        ideal.records["reading_sigma_x"].to_numpy(), real.records["reading_sigma_x"].to_numpy()
    )
    again = evaluate_many(["do-nothing", "nelder-mead"], world="ares-realistic", **kw)
    np.testing.assert_array_equal(real.records["mae"].to_numpy(), again.records["mae"].to_numpy())


def test_beam_animation_changes_to_the_next_trials_beam():
    """In ``beam-animation`` trial k's incoming beam moves to trial k+1's (the last to the
    first's), as the published scenario does: do-nothing's MAE changes over the episode and
    equals that of an environment reset with ``to_trial`` by hand."""
    from accelrl.envs import TransverseTuningVectorEnv

    trials = load_trials()[40:42]
    r = evaluate_many(["do-nothing"], trials, max_steps=8, world="beam-animation", **FAST)
    _, mae = r.mae_matrix("do-nothing")
    assert np.all(np.abs(mae[:, -1] - mae[:, 0]) > 1e-6)
    env = TransverseTuningVectorEnv(
        ares_ea_spec(),
        1,
        max_episode_steps=8,
        action_mode="direct",
        terminate_on_target=False,
        world="beam-animation",
    )
    _, info = env.reset(seed=[41], options={"trial": [trials[1]], "to_trial": [trials[0]]})
    settings = np.array(info["magnets"])
    for _ in range(8):
        *_, info = env.step(settings)
    np.testing.assert_allclose(info["mae"][0], mae[1, -1], rtol=1e-12)


def test_unknown_world_and_unfit_world_fail_clearly():
    with pytest.raises(ValueError, match="nowhere-world.*neither a shipped world"):
        evaluate_many(["do-nothing"], limit=1, max_steps=2, world="nowhere-world", **FAST)
    # Q3 fails at step 41: beyond an episode of 10 steps
    with pytest.raises(ValueError, match=r"scenarios\.0\.step.*beyond the episode of 10"):
        evaluate_many(["do-nothing"], limit=1, max_steps=10, world="q3-failure", **FAST)


# --------------------------------------------------------------------------- challenge
def test_challenge_score_on_a_hand_computed_case():
    """Two trials, hand-computed with the challenge's formula.

    Trial A: MAE 600 -> 300 -> 100 -> 90 -> 80 um; best-so-far changes 300, 200, 10, 10 um,
    so it converges (all later changes < 40 um) at step 3; final 80 < 600: 3 steps.
    Settings: Q1 +3 (step 1), CV +6.1782e-4 (step 2): 0.1 + 0.1 = 0.2.
    Trial B: MAE 500 -> 400 -> 700 -> 600 -> 550 um: final 550 > initial 500: 150 steps.
    Settings: Q3 -15 (step 1), +15 (step 4): 0.5 + 0.5 = 1.0.
    Medians: final (80 + 550) / 2 = 315 um; steps (3 + 150) / 2 = 76.5; change 0.6.
    Score = 750 * 315e-6 + 0.5 * 76.5 / 150 + 0.5 * 0.6 / 750 = 0.23625 + 0.255 + 0.0004.
    """
    a = np.array([600, 300, 100, 90, 80]) * 1e-6
    b = np.array([500, 400, 700, 600, 550]) * 1e-6
    sa = np.zeros((5, 5))
    sa[1:, 0] = 3.0
    sa[2:, 2] = 6.1782e-4
    sb = np.zeros((5, 5))
    sb[1:4, 3] = -15.0
    assert challenge_steps_to_convergence(a) == 3
    assert normalised_magnet_change(sa) == pytest.approx(0.2, rel=1e-12)
    assert normalised_magnet_change(sb) == pytest.approx(1.0, rel=1e-12)
    s = challenge_score([a, b], [sa, sb])
    assert s.median_final_mae == pytest.approx(315e-6, rel=1e-12)
    assert s.median_steps_to_convergence == 76.5
    assert s.median_magnet_change == pytest.approx(0.6, rel=1e-12)
    assert s.score == pytest.approx(0.23625 + 0.255 + 0.0004, rel=1e-12)
    assert s.n == 2


def test_challenge_steps_to_convergence_edges():
    # nothing changes: step 1 (the challenge's first difference is at index 1)
    assert challenge_steps_to_convergence(np.full(151, 7e-4)) == 1
    # still improving by >= 40 um at the last step: the last index
    assert challenge_steps_to_convergence(np.linspace(1e-3, 0.0, 11)) == 10
    with pytest.raises(ValueError, match="at least two steps"):
        challenge_steps_to_convergence(np.array([1e-3]))
    with pytest.raises(ValueError, match=r"expected \[steps \+ 1, 5\]"):
        normalised_magnet_change(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="no trials"):
        challenge_score([], [])
    assert MAGNET_SCALE == (30.0, 30.0, 6.1782e-3, 30.0, 6.1782e-3)


def test_do_nothing_score_is_its_final_mae_plus_the_convergence_penalty():
    """Do-nothing ends where it started: 150 steps to convergence, no magnet change, so its
    score is 750 x median initial MAE + 0.5."""
    r = evaluate_many(["do-nothing"], protocol="rl4aa25", limit=3, max_steps=4, **FAST)
    s = r.challenge_scores()["do-nothing"]
    _, mae = r.mae_matrix("do-nothing")
    assert s["median_steps_to_convergence"] == 150 and s["median_magnet_change"] == 0
    assert s["score"] == pytest.approx(750 * np.median(mae[:, 0]) + 0.5, rel=1e-12)


# --------------------------------------------------------------------------- classes
def test_target_classes_boundaries():
    assert size_class([0, 0, 0, 1e-4]) == "zero"
    assert size_class([0, 1e-4, 0, 0]) == "zero"
    assert size_class([0, 1e-4, 0, 199e-6]) == "small"
    assert size_class([0, 1e-4, 0, 200e-6]) == "large"
    assert position_class([0.5e-3, 1e-4, -0.5e-3, 1e-4]) == "centred"
    assert position_class([0.5e-3, 1e-4, -0.51e-3, 1e-4]) == "off-centre"
    c = trial_classes(np.zeros((2, 4)), np.array([1e-6, 25e-6]))
    assert list(c["reachable"]) == ["yes", "no"]
    assert "reachable" not in trial_classes(np.zeros((1, 4)))


def test_breakdown_flags_classes_that_end_worse_than_they_started():
    classes = {
        "size": np.array(["zero", "zero", "large"], dtype=object),
        "position": np.array(["centred"] * 3, dtype=object),
    }
    inf = np.inf
    tables = {
        "do-nothing": {
            "initial_mae": np.array([5e-4, 6e-4, 7e-4]),
            "best_mae": np.array([5e-4, 6e-4, 7e-4]),
            "final_mae": np.array([5e-4, 6e-4, 7e-4]),
            "steps_to_target": np.array([inf, inf, inf]),
        },
        "p": {
            "initial_mae": np.array([5e-4, 6e-4, 7e-4]),
            "best_mae": np.array([5e-5, 6e-5, 1e-6]),
            "final_mae": np.array([3e-3, 4e-3, 2e-6]),
            "steps_to_target": np.array([inf, inf, 4.0]),
        },
    }
    b = class_breakdown(tables, classes, {"do-nothing": "do-nothing", "p": "p"})
    zero = b["p"]["size:zero"]
    assert zero["n"] == 2 and zero["flagged"] and zero["worse_than_do_nothing"]
    assert zero["median_final_mae_um"] == pytest.approx(3500.0)
    assert zero["fraction_worse_than_start"] == 1.0
    assert not b["p"]["size:large"]["flagged"]
    assert b["p"]["size:large"]["fraction_reached_target"] == 1.0
    assert "size:small" not in b["p"]  # no trials in the class
    assert not any(e["flagged"] for e in b["do-nothing"].values())
    lines = flagged(b)
    assert lines == [
        "p, size:zero (2 trials): median final MAE 3500 um > median initial 550 um and "
        "> do-nothing's; 2/2 trials worse than their start",
        "p, position:centred (3 trials): median final MAE 3000 um > median initial 600 um "
        "and > do-nothing's; 2/3 trials worse than their start",
    ]


def test_model_optimum_tells_reachable_from_unreachable_targets():
    t = load_trials()[30]
    far = Trial(1, t.incoming, t.misalignments, np.array([0.5, 1e-4, 0.0, 1e-4]))  # 0.5 m off
    opt = model_optimum([t, far])
    assert opt[0] < 20e-6
    assert opt[1] > 0.1


def test_breakdown_of_an_evaluation_is_written(tmp_path):
    r = evaluate_many(
        ["do-nothing"], limit=2, max_steps=3, executor="serial", progress=False, out=tmp_path
    )
    b = json.loads((tmp_path / "breakdown.json").read_text())
    assert set(b["classes"]["do-nothing"]) >= {"size:zero", "position:centred", "reachable:yes"}
    assert b["trials"]["trial"] == [0, 1] and len(b["trials"]["model_optimum_m"]) == 2
    assert b["rl4aa25_score"]["do-nothing"]["n"] == 2
    report = (tmp_path / "report.md").read_text() if (tmp_path / "report.md").exists() else ""
    assert report == ""  # the report is written by the command, not by save()
    loaded = type(r).load(tmp_path)
    assert loaded.breakdown()["trials"] == b["trials"]


# --------------------------------------------------------------------------- protocol
def test_rl4aa25_trials_follow_the_challenge_ranges():
    trials = rl4aa25_trials()
    assert len(trials) == 20
    assert all(np.array_equal(t.target, np.zeros(4)) for t in trials)
    mis = np.array([list(t.misalignments.values()) for t in trials])
    assert mis.shape == (20, 8) and np.abs(mis).max() <= 5e-4 and np.abs(mis).max() > 4e-4
    # the challenge's incoming-beam box (rl4aa25-challenge, generate_trials)
    low = [80e6, -1e-3, -1e-4, -1e-3, -1e-4, 1e-5, 1e-6, 1e-5, 1e-6, 1e-6, 1e-4]
    high = [160e6, 1e-3, 1e-4, 1e-3, 1e-4, 5e-4, 5e-5, 5e-4, 5e-5, 5e-5, 1e-3]
    inc = ares_ea_spec().randomisation.incoming
    assert [inc[k].low for k in INCOMING] == low and [inc[k].high for k in INCOMING] == high
    x = np.array([t.incoming for t in trials])
    assert np.all(x >= low) and np.all(x <= high)
    again = rl4aa25_trials()
    assert all(np.array_equal(a.incoming, b.incoming) for a, b in zip(trials, again, strict=True))
    assert protocol("rl4aa25").max_steps == 150
    with pytest.raises(ValueError, match="unknown protocol 'nope'; known: published, rl4aa25"):
        protocol("nope")
    with pytest.raises(ValueError, match="either trials or protocol"):
        evaluate_many(["do-nothing"], load_trials()[:1], protocol="rl4aa25", **FAST)


# --------------------------------------------------------------------------- command
def _app() -> typer.Typer:
    from accelrl.cli.evaluate import evaluate_command

    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.callback()(lambda: None)
    return app


def test_evaluate_command_world_protocol_and_bad_input(tmp_path):
    runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    base = ["evaluate", "-o", "do-nothing", "--steps", "3", "--executor", "serial"]
    base += ["--no-progress", "--no-reachability"]
    out = tmp_path / "rl4aa25"
    res = runner.invoke(_app(), [*base, "--protocol", "rl4aa25", "--limit", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "RL4AA'25 challenge score" in res.output and "size:zero" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "rl4aa25" and config["world"]["name"] == "ideal"
    assert config["trials"]["n"] == 2
    assert "## By target class" in (out / "report.md").read_text()
    out = tmp_path / "world"
    res = runner.invoke(
        _app(), [*base, "--world", "ares-realistic", "--limit", "1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["world"]["name"] == "ares-realistic"
    assert "world: `ares-realistic`" in (out / "report.md").read_text()
    for bad, words in (
        (["--world", "nowhere-world"], ["nowhere-world", "neither a shipped world"]),
        (["--protocol", "nope"], ["unknown protocol 'nope'", "rl4aa25"]),
    ):
        res = runner.invoke(_app(), [*base, *bad, "--limit", "1", "--out", str(tmp_path / "x")])
        assert res.exit_code == 1, res.output
        assert "error:" in res.output and all(w in res.output for w in words), res.output
        assert "Traceback" not in res.output


def test_in_a_drifting_world_only_worse_than_do_nothing_is_flagged():
    """Do-nothing ends worse than it started when the beam drifts; an optimiser that also
    ends above its start but below do-nothing is not flagged, one above both is."""
    classes = {"size": np.array(["large", "large"], dtype=object)}
    start = np.array([5e-4, 7e-4])
    never = np.array([np.inf, np.inf])
    tables = {
        "do-nothing": {"initial_mae": start, "best_mae": start, "final_mae": 2 * start,
                       "steps_to_target": never},
        "better": {"initial_mae": start, "best_mae": start / 2, "final_mae": 1.5 * start,
                   "steps_to_target": never},
        "worse": {"initial_mae": start, "best_mae": start / 2, "final_mae": 3 * start,
                  "steps_to_target": never},
    }  # fmt: skip
    names = {k: k for k in tables}
    b = class_breakdown(tables, classes, names)
    assert b["do-nothing"]["size:large"]["worse_than_start"]
    assert not b["do-nothing"]["size:large"]["flagged"]
    assert b["better"]["size:large"]["worse_than_start"]
    assert not b["better"]["size:large"]["flagged"]
    assert b["worse"]["size:large"]["flagged"]
    # without do-nothing, the median initial MAE stands in for it
    b = class_breakdown({"better": tables["better"]}, classes, {"better": "better"})
    assert b["better"]["size:large"]["flagged"]
