"""Followers: a real controller run with an abort and its rollback, tuning, training and
evaluation folders, and damaged runs (corrupt lines, deleted folders, half-written files)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from dashboard_testlib import controller_run

from accelrl.dashboard.data import (
    DeployFollower,
    EvaluationFollower,
    TrainingFollower,
    TuningFollower,
)
from accelrl.runfiles import CsvWriter, ProgressLog, save_screen_frame, tuning_step_record


def test_deploy_follower_reads_a_real_run_with_abort_and_rollback(tmp_path: Path):
    from accelrl.deploy.sim import Fault

    run = tmp_path / "run"
    controller, _ = controller_run(run, faults=[Fault("interlock", after_puts=3)])
    follower = DeployFollower(run)
    follower.poll(force=True)
    assert follower.status == "waiting" and follower.rows == []
    result = controller.run()
    assert result.abort_reason is not None and result.rollback["complete"]
    follower.poll(force=True)
    assert follower.status == "aborted"
    assert follower.mode == "auto" and follower.knob_names == ["Q1", "Q2", "CV", "Q3", "CH"]
    assert [r["step"] for r in follower.rows] == list(range(len(follower.rows)))
    assert follower.abort["reason"] == "interlock"
    assert follower.writes == result.writes >= 1
    assert len(follower.rollbacks) == result.rollback["writes"] >= 1
    assert all(r["ok"] for r in follower.rollbacks)
    kinds = [e.kind for e in follower.events]
    assert kinds[0] == "start" and "abort" in kinds and kinds.count("rollback") >= 2
    assert "rollback complete" in follower.events[-1].text
    first = follower.rows[0]
    assert 0 < first["frac_Q1"] <= 1.0 + 1e-9  # a proposal within the max step
    assert first["mae_um"] > 1  # um
    xs = follower.rollback_positions()
    assert all(follower.abort["step"] < x < follower.abort["step"] + 1 for x in xs)


def test_deploy_follower_reads_incrementally_and_survives_damage(tmp_path: Path):
    run = tmp_path / "run"
    controller, _ = controller_run(run, max_steps=4)
    controller.run()
    lines = (run / "run.jsonl").read_text().splitlines(keepends=True)
    live = tmp_path / "live"
    live.mkdir()
    follower = DeployFollower(live)
    follower.poll(force=True)
    with (live / "run.jsonl").open("w") as f:
        f.write(lines[0] + lines[1])
        f.write(lines[2][:40])  # a step being written
        f.flush()
        follower.poll(force=True)
        assert len(follower.rows) == 1 and follower.status == "running"
        f.write(lines[2][40:] + "{corrupt\n" + "".join(lines[3:]))
        f.flush()
        follower.poll(force=True)
    assert [r["step"] for r in follower.rows] == [0, 1, 2, 3]  # the budget: 4 steps
    assert any("line 4: not JSON" in p for p in follower.problems)
    assert follower.status == "finished"
    generation = follower.generation
    (live / "run.jsonl").write_text(lines[0])  # replaced by a shorter file
    follower.poll(force=True)
    assert follower.generation == generation + 1 and follower.rows == []
    shutil.rmtree(live)
    follower.poll(force=True)
    assert any("is gone" in p for p in follower.problems)


def test_deploy_follower_keeps_the_latest_screen_frame(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    frame = save_screen_frame(run, 0, [[0, 255], [255, 0]], [-1e-3, 1e-3, -1e-3, 1e-3])
    record = {"type": "step", "step": 0, "observation": {}, "knobs": {}, "error": {},
              "decision": "shadow", "screen": frame}  # fmt: skip
    (run / "run.jsonl").write_text(json.dumps(record) + "\n")
    follower = DeployFollower(run)
    follower.poll(force=True)
    assert follower.screen == {**frame, "step": 0}


def test_tuning_follower_live_and_saved(tmp_path: Path):
    variables = [{"name": "Q1", "low": -72.0, "high": 72.0, "max_step": 7.2, "unit": "1/m^2"}]
    with ProgressLog(tmp_path / "t", "tuning", variables=variables, steps=3, prior="physics",
                     objective={"name": "mae", "minimise": True, "log": True,
                                "floor": 1e-9}) as log:  # fmt: skip
        follower = TuningFollower(tmp_path / "t")
        for step, (mae, safe) in enumerate([(3e-4, True), (5e-4, False), (1e-4, True)]):
            row = {"step": step, "setting.Q1": 10.0 + step, "result.mae": mae,
                   "result.on_screen": 1.0, "safe": safe, "feasible": safe,
                   "prior_prediction": -8.0, "suggest_s": 0.01}  # fmt: skip
            diag = {"uses_prior": True, "prior_fallback": step == 2, "prior_correlation": 0.3,
                    "correlation_threshold": 0.5, "best": {"objective": mae}}  # fmt: skip
            log.step(tuning_step_record(row, diag))
            follower.poll(force=True)
            assert follower.status == "running" and len(follower.rows) == step + 1
    follower.poll(force=True)
    assert follower.status == "finished"
    assert [r["best"] for r in follower.rows] == pytest.approx([300.0, 300.0, 100.0])
    assert [r["safe"] for r in follower.rows] == [True, False, True]
    assert follower.rows[0]["norm_Q1"] == pytest.approx(82 / 144)
    assert follower.diagnostics["prior_fallback"] is True
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "problem.json").write_text(json.dumps({"variables": variables}))
    (saved / "data.csv").write_text(
        "step,setting.Q1,result.mae,safe,feasible,prior_prediction\n"
        "0,10.0,0.0003,True,True,-8.1\n1,11.0,0.0002,True,True,-8.5\n"
    )
    (saved / "session.json").write_text(json.dumps({"diagnostics": {"uses_prior": False}}))
    follower = TuningFollower(saved)
    follower.poll(force=True)
    assert follower.status == "finished" and not follower.live
    assert [r["objective"] for r in follower.rows] == pytest.approx([300.0, 200.0])
    assert follower.rows[1]["observed_model"] == pytest.approx(-8.517193191416238)


def test_training_follower_apg_progress_and_sb3_files(tmp_path: Path):
    with ProgressLog(tmp_path / "apg", "apg", iterations=10) as log:
        follower = TrainingFollower(tmp_path / "apg")
        for i in range(5):
            log.iteration(iteration=i, loss=-i, learning_rate=1e-3)
        log.evaluation({"median_best_mae_um": 30.0, "iqr_best_mae_um": [10.0, 50.0]},
                       iteration=4)  # fmt: skip
        follower.poll(force=True)
        assert follower.status == "running" and follower.trainer == "apg"
        assert follower.done == 5 and follower.total == 10
        assert follower.evaluations[0]["x"] == 4 and follower.evaluations[0]["iqr_high_um"] == 50
    follower.poll(force=True)
    assert follower.status == "finished"
    sb3 = tmp_path / "sb3"
    with CsvWriter(sb3 / "episodes.csv", ["timesteps", "return", "length"]) as w:
        w.write([50, -3.0, 50])
    (sb3 / "logs").mkdir()
    (sb3 / "logs" / "progress.csv").write_text(
        "time/total_timesteps,rollout/ep_rew_mean\n100,-3.0\n200,-2.0\n"
    )
    (sb3 / "evaluations.json").write_text(
        json.dumps([{"timesteps": 200, "median_best_mae_um": 40.0, "iqr_best_mae_um": [1, 2]}])
    )
    follower = TrainingFollower(sb3)
    follower.poll(force=True)
    assert follower.trainer == "sb3" and follower.done == 200
    assert follower.episodes == [{"timesteps": 50.0, "return": -3.0, "length": 50.0}]
    assert follower.evaluations[0]["median_best_mae_um"] == 40.0
    assert follower.status == "running"
    (sb3 / "train_summary.json").write_text("{}")
    follower.poll(force=True)
    assert follower.status == "finished"


def test_evaluation_follower_half_written_then_complete(tmp_path: Path):
    pytest.importorskip("torch")
    from accelrl.agents.evaluation import evaluate_many
    from accelrl.envs import load_trials

    trials = [load_trials()[i] for i in (0, 30, 31)]
    result = evaluate_many({"do-nothing": "do-nothing", "random": "random"}, trials=trials,
                           max_steps=5, executor="serial", progress=False)  # fmt: skip
    full = tmp_path / "full"
    result.save(full)
    half = tmp_path / "half"
    half.mkdir()
    for name in ("config.json", "summary.json"):
        shutil.copy(full / name, half / name)
    data = (full / "records.parquet").read_bytes()
    (half / "records.parquet").write_bytes(data[: len(data) // 2])
    follower = EvaluationFollower(half)
    follower.poll(force=True)
    assert follower.status == "partial" and follower.curves == {}
    assert any("records.parquet" in p for p in follower.problems)
    time.sleep(0.01)
    shutil.copy(full / "records.parquet", half / "records.parquet")
    shutil.copy(full / "trial_metrics.csv", half / "trial_metrics.csv")
    follower.poll(force=True)
    assert follower.status == "complete"
    assert follower.optimisers == ["do-nothing", "random"]
    curves = follower.curves["random"]
    assert curves.mae_um.shape == (3, 6) and list(curves.trials) == [0, 30, 31]
    assert list(curves.sigma_pos) == [False, True, True]
    band = curves.band("best", "sigma_pos")
    assert (band["q25"] <= band["median"]).all() and (band["median"] <= band["q75"]).all()
    assert (curves.best_um <= curves.mae_um + 1e-9).all()
    episode = follower.episode("random", 30)
    assert list(episode["step"]) == list(range(6))
    assert follower.episode("random", 99) is None
    assert follower.trial_rows("do-nothing")[0]["trial"] == 0
