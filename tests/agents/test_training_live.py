"""The live files of Stable-Baselines3 training runs (``progress.jsonl``, ``episodes.csv``):
written as the run goes, ended however it ends, readable after a kill; TensorBoard only
through its extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import accelrl.agents.training.sb3 as sb3
from accelrl.agents.training.recipes import Recipe
from accelrl.dashboard.data.training import TrainingFollower
from accelrl.runfiles import PROGRESS_FILE, CsvTail, read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def tiny(**changes) -> Recipe:
    """PPO on 4 environments, 32-step rollouts, evaluated every 128 timesteps on 3 trials."""
    data = {
        "algorithm": "ppo",
        "num_envs": 4,
        "total_timesteps": 384,
        "seed": 5,
        "hyperparameters": {"n_steps": 32, "batch_size": 64, "n_epochs": 1,
                            "net_arch": {"actor": [8], "critic": [8]}},
        "evaluation": {"every": 128, "trials": "0:300:100", "steps": 10},
    }  # fmt: skip
    data.update(changes)
    return Recipe.from_dict(data)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _episodes(path: Path) -> list[dict]:
    chunk = CsvTail(path).read()
    assert chunk.errors == []
    return chunk.items


def test_a_run_writes_start_evaluations_episodes_and_end(tmp_path: Path) -> None:
    run = sb3.train(tiny(), tmp_path, progress=False)
    records, errors = read_jsonl(tmp_path / PROGRESS_FILE)
    assert errors == []
    start, end = records[0], records[-1]
    assert start["type"] == "start" and start["kind"] == "sb3"
    assert (start["algorithm"], start["total_timesteps"], start["num_envs"]) == ("ppo", 384, 4)
    assert start["evaluation_every"] == 128 and start["evaluation_trials"] == 3
    evaluations = [r for r in records if r["type"] == "evaluation"]
    saved = json.loads((tmp_path / "evaluations.json").read_text())
    assert [e["timesteps"] for e in evaluations] == [e["timesteps"] for e in saved]
    assert len(evaluations) >= 3 and evaluations[-1]["timesteps"] == run.timesteps
    for key in ("median_best_mae_um", "iqr_best_mae_um", "fraction_reached_target", "n_trials"):
        assert evaluations[-1][key] == pytest.approx(saved[-1][key]), key
    assert end["type"] == "end" and end["status"] == "completed"
    assert end["timesteps"] == run.timesteps
    assert end["median_best_mae_um"] == pytest.approx(run.final_eval["median_best_mae_um"])
    episodes = _episodes(tmp_path / "episodes.csv")
    assert len(episodes) > 0 and list(episodes[0]) == ["timesteps", "return", "length"]
    assert all(e["length"] > 0 for e in episodes)
    assert [e["timesteps"] for e in episodes] == sorted(e["timesteps"] for e in episodes)
    # the dashboard reads the run as finished, with its evaluations
    follower = TrainingFollower(tmp_path)
    follower.poll(force=True)
    assert follower.status == "finished" and follower.trainer == "sb3"
    assert len(follower.evaluations) == len(evaluations) and follower.done == run.timesteps
    assert follower.evaluations[-1]["fraction_on_target"] == pytest.approx(
        saved[-1]["fraction_reached_target"]
    )
    # a second run into the same folder is refused before anything is written
    with pytest.raises(FileExistsError, match="progress.jsonl, episodes.csv"):
        sb3.train(tiny(), tmp_path, progress=False)


def test_records_are_in_the_files_while_the_run_goes_on(tmp_path, monkeypatch) -> None:
    """At each periodic evaluation, the earlier evaluations and the episodes so far are
    already in the files (read as the dashboard reads them)."""
    seen: list[tuple[int, int]] = []
    real = sb3.evaluate_policy

    def watching(*args, **kwargs):
        records, errors = read_jsonl(tmp_path / PROGRESS_FILE)
        assert errors == []
        seen.append((sum(r["type"] == "evaluation" for r in records),
                     len(_episodes(tmp_path / "episodes.csv"))))  # fmt: skip
        return real(*args, **kwargs)

    monkeypatch.setattr(sb3, "evaluate_policy", watching)
    sb3.train(tiny(), tmp_path, progress=False)
    assert [evaluations for evaluations, _ in seen] == list(range(len(seen)))
    assert seen[1][1] > 0 and seen[-1][1] >= seen[1][1]  # episodes written as they end


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt, "interrupted"), (ValueError, "failed")]
)
def test_the_end_record_says_how_the_run_ended(tmp_path, monkeypatch, error, status) -> None:
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error("stopped here")
        return real(*args, **kwargs)

    real = sb3.evaluate_policy
    monkeypatch.setattr(sb3, "evaluate_policy", failing)
    with pytest.raises(error):
        sb3.train(tiny(), tmp_path, progress=False)
    records, errors = read_jsonl(tmp_path / PROGRESS_FILE)
    assert errors == [] and records[-1]["type"] == "end" and records[-1]["status"] == status
    assert records[-1]["timesteps"] >= 256
    assert sum(r["type"] == "evaluation" for r in records) == 1
    if status == "failed":
        assert records[-1]["error"] == "ValueError: stopped here"
    assert len(_episodes(tmp_path / "episodes.csv")) > 0


def test_a_killed_run_leaves_readable_files(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(tiny(total_timesteps=200_000).to_dict()))
    out = tmp_path / "run"
    code = (
        "from accelrl.agents.training.sb3 import train\n"
        f"train({str(recipe)!r}, {str(out)!r}, progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240  # an upper bound for a loaded machine
        evaluations = 0
        while evaluations < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if (out / PROGRESS_FILE).exists():
                records = read_jsonl(out / PROGRESS_FILE)[0]
                evaluations = sum(r["type"] == "evaluation" for r in records)
        assert evaluations >= 2, proc.stderr.read().decode() if proc.poll() is not None else "slow"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()
    records, errors = read_jsonl(out / PROGRESS_FILE)
    assert errors == [] and records[0]["kind"] == "sb3" and records[-1]["type"] != "end"
    assert len(_episodes(out / "episodes.csv")) > 0
    follower = TrainingFollower(out)
    follower.poll(force=True)
    assert len(follower.evaluations) >= 2 and follower.status in ("running", "stalled")
    assert follower.done >= 256


def test_tensorboard_without_its_extra_fails_before_anything_is_written(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(RuntimeError, match=r"pip install 'accelrl\[tensorboard\]'"):
        sb3.train(tiny(tensorboard=True), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
