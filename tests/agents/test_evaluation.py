"""The evaluation protocol (:mod:`accelrl.agents.evaluation`), report and ``evaluate`` command.

Dummy optimisers live here (module level, so a process pool can pickle them); none of the
real optimisers is used. Episodes are short and trial counts small, except for the published
do-nothing check on all 300 trials.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import typer
from proc_testlib import children, default_signals, kill, left_alive
from typer.testing import CliRunner

from accelrl.agents.evaluation import (
    BEAM_KEYS,
    EvaluationResult,
    evaluate,
    evaluate_many,
    trial_seed,
)
from accelrl.agents.registry import OptimiserFactory
from accelrl.envs import TransverseTuningEnv, ares_ea_spec, load_trials
from accelrl.protocol import Observation, Problem

ACTUATORS = ["Q1", "Q2", "CV", "Q3", "CH"]
LOW = np.array([-72.0, -72.0, -6.1782e-3, -72.0, -6.1782e-3])
HIGH = -LOW
START = np.array([10.0, -10.0, 0.0, 10.0, 0.0])
SUMMARY_KEYS = {
    "median_best_mae_um",
    "median_final_mae_um",
    "median_steps_to_target",
    "median_steps_to_convergence",
}


# --------------------------------------------------------------------------- dummy optimisers
class DoNothing:
    """Keeps the current settings."""

    name = "do-nothing"

    def reset(self, problem: Problem) -> None:
        pass

    def ask(self, observation: Observation) -> np.ndarray:
        return observation.magnets


class RandomSearch:
    """Uniform settings within the limits, seeded per trial from ``Problem.seed``."""

    name = "random"

    def reset(self, problem: Problem) -> None:
        self.rng = np.random.default_rng(problem.seed)
        self.low, self.high = problem.low, problem.high

    def ask(self, observation: Observation) -> np.ndarray:
        return self.rng.uniform(self.low, self.high)


class FixedSequence:
    """Adds ``deltas[k]`` to the start settings at step k (cyclic); may leave the limits."""

    name = "fixed"

    def __init__(self, deltas: list[list[float]] | None = None) -> None:
        self.deltas = np.array(deltas or [[1.0, -1.0, 1e-4, 0.5, -1e-4]])

    def reset(self, problem: Problem) -> None:
        self.settings = problem.start.copy()
        self.k = 0

    def ask(self, observation: Observation) -> np.ndarray:
        self.settings = self.settings + self.deltas[self.k % len(self.deltas)]
        self.k += 1
        return self.settings


@functools.cache
def _published_trials() -> dict:
    return {t.index: t for t in load_trials()}


class InitialOracle:
    """Cheats: reads the trial file (index = Problem.seed - base seed 0) and sets the trial's
    stored initial settings at once."""

    name = "oracle"

    def __init__(self) -> None:
        self.trials = _published_trials()

    def reset(self, problem: Problem) -> None:
        trial = self.trials[problem.seed]
        self.settings = np.array([trial.initial[n] for n in problem.actuator_names])

    def ask(self, observation: Observation) -> np.ndarray:
        return self.settings


class NaNAtStep3(DoNothing):
    name = "nan-at-3"

    def ask(self, observation: Observation) -> np.ndarray:
        if observation.step == 2:  # the answer applied at step 3
            return np.full(5, np.nan)
        return observation.magnets


class RaisesOnOddTrials(DoNothing):
    name = "raises"

    def reset(self, problem: Problem) -> None:
        self.odd = problem.seed % 2 == 1

    def ask(self, observation: Observation) -> np.ndarray:
        if self.odd and observation.step == 1:
            raise RuntimeError("boom")
        return observation.magnets


class WrongShape(DoNothing):
    name = "wrong-shape"

    def ask(self, observation: Observation) -> np.ndarray:
        return np.zeros(3)


class Recorder(DoNothing):
    """Keeps what it was given (serial runs only)."""

    name = "recorder"
    problems: list[Problem] = []
    observations: list[Observation] = []

    def reset(self, problem: Problem) -> None:
        Recorder.problems.append(problem)

    def ask(self, observation: Observation) -> np.ndarray:
        Recorder.observations.append(observation)
        return observation.magnets + np.array([0.5, -0.5, 1e-5, 0.5, -1e-5])


@pytest.fixture(scope="module")
def trials():
    return load_trials()


def _timing_free(table):
    return table.drop_columns([c for c in table.column_names if "time" in c or c == "wall_s"])


def assert_tables_equal(a, b):
    """Same schema and exactly the same values (NaN equal to NaN)."""
    assert a.schema.equals(b.schema), (a.schema, b.schema)
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x = a[name].to_numpy(zero_copy_only=False)
        y = b[name].to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(x, y, err_msg=name)


# --------------------------------------------------------------------------- records
def test_records_complete_and_consistent(trials):
    steps = 12
    result = evaluate(
        FixedSequence, trials[25:30], max_steps=steps, executor="serial", progress=True
    )
    rec = result.records
    assert rec.num_rows == 5 * (steps + 1)
    expected = ["optimiser", "trial", "step", *[f"setting_{a}" for a in ACTUATORS]]
    expected += [f"{w}_{p}" for w in ("beam", "reading", "target") for p in BEAM_KEYS]
    expected += ["mae", "reward", "on_screen", "clipped", "ask_time_s"]
    assert rec.column_names == expected
    assert rec.schema.field("mae").metadata == {b"unit": b"m"}
    assert rec.schema.field("setting_CV").metadata == {b"unit": b"rad"}
    assert set(rec["optimiser"].to_pylist()) == {"fixed"}
    for t in trials[25:30]:
        ep = result.episode("fixed", t.index)
        np.testing.assert_array_equal(ep["step"], np.arange(steps + 1))
        np.testing.assert_allclose(ep["setting_Q1"][:3], [10.0, 11.0, 12.0])
        for i, p in enumerate(BEAM_KEYS):
            np.testing.assert_array_equal(ep[f"target_{p}"], t.target[i])
        beam = np.stack([ep[f"beam_{p}"] for p in BEAM_KEYS], axis=1)
        np.testing.assert_allclose(ep["mae"], np.abs(beam - t.target).mean(axis=1), rtol=1e-12)
        assert math.isnan(ep["reward"][0]) and np.isfinite(ep["reward"][1:]).all()
        assert math.isnan(ep["ask_time_s"][0]) and (ep["ask_time_s"][1:] >= 0).all()
        assert not ep["clipped"].any()
    m = result.trial_table("fixed")
    np.testing.assert_array_equal(m["trial"], [t.index for t in trials[25:30]])
    np.testing.assert_array_equal(m["seed"], [trial_seed(0, t.index) for t in trials[25:30]])
    np.testing.assert_array_equal(m["sigma_pos"], [False, False, True, True, True])
    assert not m["failed"].any() and (m["steps"] == steps).all()


def test_matches_a_direct_environment_rollout(trials):
    """The cheating oracle's records equal a plain env reset to the trial's initial settings."""
    subset = trials[40:43]
    result = evaluate(InitialOracle, subset, max_steps=3, executor="serial", progress=False)
    env = TransverseTuningEnv(ares_ea_spec(), terminate_on_target=False)
    for t in subset:
        _, info = env.reset(seed=t.index, options={"trial": t, "magnets": "trial"})
        ep = result.episode("oracle", t.index)
        for i, a in enumerate(ACTUATORS):
            assert ep[f"setting_{a}"][1] == info["magnets"][i]
        for i, p in enumerate(BEAM_KEYS):
            assert ep[f"beam_{p}"][-1] == info["beam"][i]
            assert ep[f"reading_{p}"][-1] == info["reading"][i]
        assert ep["mae"][-1] == info["mae"]
        assert result.trial_table("oracle")["best_mae"][subset.index(t)] == min(ep["mae"])


def test_problem_and_observations(trials):
    Recorder.problems.clear()
    Recorder.observations.clear()
    subset = trials[100:102]
    result = evaluate(Recorder, subset, max_steps=4, seed=7, executor="serial", progress=False)
    assert len(Recorder.problems) == 2 and len(Recorder.observations) == 8
    for t, p in zip(subset, Recorder.problems, strict=True):
        assert p.actuator_names == tuple(ACTUATORS)
        np.testing.assert_array_equal(p.low, LOW)
        np.testing.assert_array_equal(p.high, HIGH)
        np.testing.assert_array_equal(p.start, START)
        np.testing.assert_array_equal(p.target, t.target)
        np.testing.assert_allclose(p.max_delta, 0.1 * HIGH)
        assert p.max_steps == 4 and p.seed == 7 + t.index
    ep = result.episode("recorder", subset[0].index)
    for k, obs in enumerate(Recorder.observations[:4]):
        assert obs.step == k
        assert obs.beam.dtype == np.float64
        np.testing.assert_array_equal(obs.beam, [ep[f"reading_{p}"][k] for p in BEAM_KEYS])
        np.testing.assert_array_equal(obs.magnets, [ep[f"setting_{a}"][k] for a in ACTUATORS])
        np.testing.assert_array_equal(obs.target, subset[0].target)


def test_settings_are_clipped_to_the_limits(trials):
    result = evaluate(
        lambda: FixedSequence([[30.0, -30.0, 3e-3, 0.0, 0.0]]),
        trials[:1],
        max_steps=4,
        executor="serial",
        progress=False,
    )
    ep = result.episode("fixed", 0)
    np.testing.assert_allclose(ep["setting_Q1"], [10, 40, 70, 72, 72])
    np.testing.assert_allclose(ep["setting_CV"], [0, 3e-3, 6e-3, 6.1782e-3, 6.1782e-3])
    np.testing.assert_array_equal(ep["clipped"], [False, False, False, True, True])


# --------------------------------------------------------------------------- failures
def test_nan_fails_the_trial_not_the_run(trials):
    result = evaluate_many(
        [NaNAtStep3, DoNothing], trials[:3], max_steps=10, executor="serial", progress=False
    )
    m = result.trial_table("nan-at-3")
    assert m["failed"].all()
    for err in m["error"]:
        assert "ask() at step 3 returned non-finite settings" in err and "Q1=nan" in err
    assert (m["steps"] == 2).all()
    rec = result.records.filter(pc.equal(result.records["optimiser"], "nan-at-3"))
    assert rec.num_rows == 3 * 3  # steps 0..2 of each trial
    _, mae = result.mae_matrix("nan-at-3")
    assert mae.shape == (3, 11) and np.isfinite(mae).all()  # carried forward
    assert not result.trial_table("do-nothing")["failed"].any()
    summary = result.summary_json()
    assert summary["nan-at-3"]["all"]["n_failed"] == 3
    assert summary["do-nothing"]["all"]["n_failed"] == 0


def test_exceptions_and_wrong_shapes_fail_their_trials(trials):
    result = evaluate_many(
        [RaisesOnOddTrials, WrongShape], trials[:4], max_steps=5, executor="serial", progress=False
    )
    m = result.trial_table("raises")
    np.testing.assert_array_equal(m["failed"], [False, True, False, True])
    assert m["error"][1].startswith("ask() at step 2 raised RuntimeError: boom (at ")
    assert m["error"][0] == ""
    err = result.trial_table("wrong-shape")["error"][0]
    assert "settings of shape (3,), expected (5,)" in err


def test_invalid_arguments(trials):
    with pytest.raises(ValueError, match="max_steps"):
        evaluate(DoNothing, trials[:1], max_steps=0, executor="serial")
    with pytest.raises(ValueError, match="seed"):
        evaluate(DoNothing, trials[:1], seed=-1, executor="serial")
    with pytest.raises(ValueError, match="backend"):
        evaluate(DoNothing, trials[:1], backend="bogus", executor="serial")
    with pytest.raises(ValueError, match="executor"):
        evaluate(DoNothing, trials[:1], executor="threads")
    with pytest.raises(ValueError, match="unique"):
        evaluate(DoNothing, [trials[0], trials[0]], executor="serial")
    with pytest.raises(ValueError, match="dask_address"):
        evaluate(DoNothing, trials[:1], executor="serial", dask_address="tcp://x:1")
    with pytest.raises(TypeError, match="no reset"):
        evaluate(object, trials[:1], executor="serial")
    with pytest.raises(TypeError, match="pickle"):
        evaluate(lambda: DoNothing(), trials[:1], max_steps=1, executor="process", workers=1)


# --------------------------------------------------------------------------- executors
def test_process_pool_and_thread_executor_equal_serial(trials):
    subset = trials[::37]  # 9 trials, sigma = 0 grid trials among them
    kw = dict(max_steps=15, seed=3, progress=False, chunk_size=2)
    serial = evaluate_many([RandomSearch, DoNothing], subset, executor="serial", **kw)
    pool = evaluate_many([RandomSearch, DoNothing], subset, executor="process", workers=2, **kw)
    with cf.ThreadPoolExecutor(2) as ex:
        threads = evaluate_many([RandomSearch, DoNothing], subset, executor=ex, **kw)
    assert pool.config["executor"] == "process" and pool.config["workers"] == 2
    for other in (pool, threads):
        assert_tables_equal(_timing_free(other.records), _timing_free(serial.records))
        assert_tables_equal(_timing_free(other.trials), _timing_free(serial.trials))
        assert other.summary_json().keys() == serial.summary_json().keys()
        for label in serial.optimisers:
            for subset_name in ("all", "sigma_pos"):
                a = dict(other.summary_json()[label][subset_name])
                b = dict(serial.summary_json()[label][subset_name])
                a.pop("median_ask_time_ms"), b.pop("median_ask_time_ms")
                assert a == b


def test_a_trial_does_not_depend_on_the_others(trials):
    kw = dict(max_steps=10, seed=5, executor="serial", progress=False)
    alone = evaluate(RandomSearch, [trials[150]], **kw)
    among = evaluate(RandomSearch, trials[148:153], **kw)
    a = _timing_free(alone.records)
    b = _timing_free(among.records.filter(pc.equal(among.records["trial"], 150)))
    assert_tables_equal(a, b)


def test_dask_missing_names_the_extra(monkeypatch, trials):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(ImportError, match=r"accelrl\[cluster\]"):
        evaluate(DoNothing, trials[:1], max_steps=1, executor="dask", progress=False)


def test_dask_local_cluster_equals_serial(trials):
    distributed = pytest.importorskip("distributed")
    subset = trials[200:204]
    kw = dict(max_steps=8, seed=1, progress=False, chunk_size=1)
    serial = evaluate(RandomSearch, subset, executor="serial", **kw)
    # In-process workers, so that this test module's optimisers are importable there.
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        via_dask = evaluate(RandomSearch, subset, dask_address=cluster.scheduler_address, **kw)
    assert via_dask.config["executor"] == "dask"
    assert_tables_equal(_timing_free(via_dask.records), _timing_free(serial.records))


# --------------------------------------------------------------------------- specs
def test_spec_strings_resolve_through_the_registry(trials):
    from accelrl.agents.tuners.baselines import DoNothing as RegisteredDoNothing

    result = evaluate_many(
        ["random", "do-nothing"], trials[:2], max_steps=3, executor="serial", progress=False
    )
    assert result.optimisers == ["random", "do-nothing"]
    assert result.config["optimisers"][0] == {"label": "random", "spec": "random", "name": "random"}
    with pytest.raises(ValueError, match="unknown optimiser 'bogus'"):
        evaluate("bogus", trials[:1], executor="serial")
    assert isinstance(OptimiserFactory("do-nothing")(), RegisteredDoNothing)


def test_labels_are_unique(trials):
    result = evaluate_many(
        {"a": DoNothing, "b": DoNothing}, trials[:1], max_steps=1, executor="serial", progress=False
    )
    assert result.optimisers == ["a", "b"]
    result = evaluate_many(
        [DoNothing, DoNothing], trials[:1], max_steps=1, executor="serial", progress=False
    )
    assert result.optimisers == ["do-nothing", "do-nothing#2"]


# --------------------------------------------------------------------------- files
def test_save_load_and_summary_json(tmp_path, trials):
    result = evaluate_many(
        [RandomSearch, NaNAtStep3], trials[20:32], max_steps=6, executor="serial", progress=False
    )
    out = result.save(tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"random", "nan-at-3"}
    for per_optimiser in summary.values():
        assert set(per_optimiser) == {"all", "sigma_pos"}
        for entry in per_optimiser.values():
            assert SUMMARY_KEYS <= set(entry)
    assert summary["random"]["all"]["n_trials"] == 12
    assert summary["random"]["sigma_pos"]["n_trials"] == 5  # trials 27..31
    assert summary["random"]["all"]["median_steps_to_target"] is None  # never within 6 steps
    assert summary["random"]["all"]["fraction_reached_target"] == 0.0
    best = np.median(result.trial_table("random")["best_mae"]) * 1e6
    assert summary["random"]["all"]["median_best_mae_um"] == pytest.approx(best)

    config = json.loads((out / "config.json").read_text())
    for key in ("seed", "max_steps", "backend", "trials", "versions", "git", "wall_s"):
        assert key in config
    assert {"accelrl", "torch", "numpy", "cheetah-accelerator", "gymnasium"} <= set(
        config["versions"]
    )
    meta = pq.read_schema(out / "records.parquet").metadata
    assert json.loads(meta[b"accelrl.config"]) == config
    csv_lines = (out / "trial_metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 2 * 12

    loaded = EvaluationResult.load(out)
    assert_tables_equal(loaded.records, result.records)
    assert loaded.summary_json() == result.summary_json()
    assert loaded.trial_table("nan-at-3")["error"][0] == result.trial_table("nan-at-3")["error"][0]


def test_report_files(tmp_path, trials):
    from accelrl.agents.evaluation.report import example_trials, write_report

    result = evaluate_many(
        [RandomSearch, NaNAtStep3], trials[25:31], max_steps=8, executor="serial", progress=False
    )
    chosen = example_trials(result, 3)
    assert len(chosen) == 3 and all(t in (27, 28, 29, 30) for t, _ in chosen)  # sigma > 0 only
    path = write_report(result, tmp_path, n_examples=1)
    text = path.read_text()
    assert path.name == "report.md"
    assert "| random | all | 6 |" in text and "|  | sigma > 0 | 4 |" in text
    assert "## Failed trials" in text and "non-finite settings" in text
    assert "## Published reference" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "mae_vs_step.png" in pngs and "mae_distributions.png" in pngs
    assert len([p for p in pngs if p.startswith("episode_trial")]) == 1
    for p in pngs:
        assert f"({p})" in text
        assert (tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- published check
def test_do_nothing_on_the_300_published_trials():
    """Doing nothing from the standard start: median best MAE 700-725 um (published)."""
    result = evaluate(DoNothing, None, executor="process", progress=False)
    assert result.config["max_steps"] == 150 and result.records.num_rows == 300 * 151
    assert result.config["trials"]["default"] and result.config["trials"]["sha256"]
    s = result.summary_json()["do-nothing"]
    assert 690 <= s["all"]["median_best_mae_um"] <= 760
    assert s["all"]["median_best_mae_um"] == s["all"]["median_final_mae_um"]
    assert s["all"]["median_steps_to_convergence"] == 0
    assert s["all"]["median_steps_to_target"] is None
    assert s["sigma_pos"]["n_trials"] == 273


# --------------------------------------------------------------------------- command
def test_evaluate_command(tmp_path):
    from accelrl.cli.evaluate import evaluate_command

    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.callback()(lambda: None)
    runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "-o",
        "do-nothing",
        "--optimiser",
        "random",
        "--out",
        str(out),
        "--steps",
        "4",
        "--limit",
        "30",
        "--executor",
        "serial",
        "--no-progress",
        "--example",
        "28",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "do-nothing" in res.output and "random" in res.output and "sigma > 0" in res.output
    for name in (
        "records.parquet",
        "config.json",
        "trial_metrics.csv",
        "summary.json",
        "report.md",
        "mae_vs_step.png",
        "mae_distributions.png",
        "episode_trial28.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"do-nothing", "random"}
    assert summary["random"]["all"]["n_trials"] == 30
    config = json.loads((out / "config.json").read_text())
    assert config["trials"]["limit"] == 30 and config["trials"]["default"]

    res = runner.invoke(
        app,
        [
            "evaluate",
            "-o",
            "bogus",
            "--out",
            str(out),
            "--limit",
            "1",
            "--executor",
            "serial",
            "--no-progress",
        ],
    )
    assert res.exit_code == 1
    assert "error:" in res.output and "bogus" in res.output
    assert "Traceback" not in res.output


def test_cli_module_imports_no_torch():
    import subprocess

    code = (
        "import sys, accelrl.cli.evaluate as m; "
        "assert callable(m.evaluate_command); "
        "print(sorted(k for k in ('torch', 'cheetah') if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- nothing lost
class StopsAtReset(RandomSearch):
    """Random search that raises KeyboardInterrupt (like Ctrl-C) at its ``stop_at``-th
    reset of the process (never when ``stop_at`` is None); otherwise exactly RandomSearch."""

    name = "random"
    resets = 0
    stop_at: int | None = None

    def reset(self, problem: Problem) -> None:
        StopsAtReset.resets += 1
        if StopsAtReset.stop_at is not None and StopsAtReset.resets >= StopsAtReset.stop_at:
            raise KeyboardInterrupt
        super().reset(problem)


def test_an_interrupt_keeps_finished_trials_and_resume_completes_identically(tmp_path, trials):
    from accelrl.agents.evaluation.runner import EvaluationInterrupted

    kwargs = dict(
        trials=trials[20:28], max_steps=4, executor="serial", progress=False, chunk_size=2
    )
    optimisers = {"random": StopsAtReset, "nan": NaNAtStep3}
    StopsAtReset.resets, StopsAtReset.stop_at = 0, None
    full = evaluate_many(optimisers, out=tmp_path / "full", **kwargs)
    StopsAtReset.resets, StopsAtReset.stop_at = 0, 5  # chunks 0 and 1 of 4 finish
    with pytest.raises(EvaluationInterrupted) as caught:
        evaluate_many(optimisers, out=tmp_path / "run", **kwargs)
    partial = EvaluationResult.load(tmp_path / "run")
    assert caught.value.result is not None and not caught.value.result.complete
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["status"] == "partial" and config["trials_done"] == {"random": 4, "nan": 0}
    assert partial.trial_table("random")["trial"].tolist() == [20, 21, 22, 23]
    first = pc.and_(
        pc.is_in(full.records["trial"], pa.array([20, 21, 22, 23], pa.int32())),
        pc.equal(full.records["optimiser"], "random"),
    )
    assert_tables_equal(_timing_free(partial.records), _timing_free(full.records.filter(first)))
    assert (
        json.loads((tmp_path / "run" / "summary.json").read_text())["random"]["all"]["n_trials"]
        == 4
    )

    StopsAtReset.resets, StopsAtReset.stop_at = 0, None
    resumed = evaluate_many(optimisers, out=tmp_path / "run", resume=True, **kwargs)
    assert StopsAtReset.resets == 4  # only the missing trials ran (optimiser "random")
    assert resumed.complete and resumed.config["chunks_resumed"] == 2
    assert_tables_equal(_timing_free(resumed.records), _timing_free(full.records))
    assert_tables_equal(_timing_free(resumed.trials), _timing_free(full.trials))
    loaded = EvaluationResult.load(tmp_path / "run")
    assert_tables_equal(_timing_free(loaded.records), _timing_free(full.records))

    def untimed(summary: dict) -> dict:
        return {
            label: {s: {k: v for k, v in e.items() if "time" not in k} for s, e in per.items()}
            for label, per in summary.items()
        }

    assert untimed(loaded.summary_json()) == untimed(full.summary_json())

    with pytest.raises(ValueError, match=r"differs from this one.*max_steps: 4 there, 5 now"):
        evaluate_many(optimisers, out=tmp_path / "run", resume=True, **{**kwargs, "max_steps": 5})
    with pytest.raises(ValueError, match=r"already holds files .* --resume .* --force"):
        evaluate_many(optimisers, out=tmp_path / "run", **kwargs)


def _evaluate_app() -> typer.Typer:
    from accelrl.cli.evaluate import evaluate_command

    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.callback()(lambda: None)
    return app


def test_existing_out_is_refused_and_force_removes_the_old_figures(tmp_path):
    runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "-o",
        "do-nothing",
        "--out",
        str(out),
        "--steps",
        "3",
        "--limit",
        "4",
        "--executor",
        "serial",
        "--no-progress",
        "--example",
        "2",
    ]
    assert runner.invoke(_evaluate_app(), args).exit_code == 0
    assert (out / "episode_trial2.png").is_file()
    before = (out / "records.parquet").read_bytes()
    res = runner.invoke(_evaluate_app(), args[:-2])
    assert res.exit_code == 1
    assert "already holds files" in res.output and "--force" in " ".join(res.output.split())
    assert (out / "records.parquet").read_bytes() == before  # untouched
    res = runner.invoke(_evaluate_app(), [*args[:-2], "--example", "1", "--force"])
    assert res.exit_code == 0, res.output
    assert not (out / "episode_trial2.png").exists() and (out / "episode_trial1.png").is_file()
    res = runner.invoke(_evaluate_app(), [*args[:-2], "--resume", "--force"])
    assert res.exit_code == 1 and "not both" in res.output
    res = runner.invoke(
        _evaluate_app(),
        ["evaluate", "-o", "random", "--out", str(out), "--steps", "3", "--limit", "4", "--resume"],
    )
    assert res.exit_code == 1 and "cannot be resumed" in " ".join(res.output.split())


#: Runs ``accelrl`` with one more optimiser, "slow-random": random search that sleeps
#: $ASK_S seconds per answer.
_SLOW_CLI = """
import os, sys, time
from accelrl.agents import registry
from accelrl.agents.tuners.baselines import RandomSearch

class SlowRandom(RandomSearch):
    name = "slow-random"
    def ask(self, observation):
        time.sleep(float(os.environ.get("ASK_S", "0")))
        return super().ask(observation)

registry.OPTIMISERS["slow-random"] = SlowRandom
from accelrl.cli import app
app(sys.argv[1:], prog_name="accelrl")
"""


class SlowRandom(RandomSearch):
    """Random search registered as "slow-random" (in the subprocess it sleeps per answer)."""

    name = "slow-random"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("signum", "executor"), [(2, "process"), (15, "serial")])
def test_a_signal_keeps_finished_trials_and_resume_matches(tmp_path, monkeypatch, signum, executor):
    """Ctrl-C (SIGINT) or SIGTERM to a real ``accelrl evaluate``: the finished trials are
    written as a partial result, no worker is left, and --resume completes the run as an
    uninterrupted one would."""
    import os
    import subprocess
    import time

    from accelrl.agents import registry

    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    out = tmp_path / "eval"
    args = ["evaluate", "-o", "slow-random", "--out", str(out), "--steps", "3", "--limit", "24",
            "--executor", executor, "--workers", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "ASK_S": "0.05", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=default_signals)  # fmt: skip
    deadline = time.monotonic() + 300
    while len(list((out / "parts").glob("*.trials.parquet"))) < 2:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no chunk finished"
        time.sleep(0.05)
    workers = children(proc.pid)
    try:
        proc.send_signal(signum)
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 128 + signum, output
        assert "interrupted" in output and "--resume" in output, output
        config = json.loads((out / "config.json").read_text())
        assert config["status"] == "partial"
        assert 2 <= config["trials_done"]["slow-random"] < 24
        assert EvaluationResult.load(out).trials.num_rows == config["trials_done"]["slow-random"]
        assert left_alive(workers) == [], "worker processes left behind"
    finally:
        kill(workers)  # whatever a failure left

    monkeypatch.setitem(registry.OPTIMISERS, "slow-random", SlowRandom)
    common = dict(max_steps=3, limit=24, executor="serial", progress=False)
    if executor == "process":  # the command (which also writes the report)
        resume = [*args[:-5], "--executor", "serial", "--no-progress", "--resume"]
        res = CliRunner().invoke(_evaluate_app(), resume)
        assert res.exit_code == 0, res.output
    else:  # the library
        evaluate_many(["slow-random"], None, out=out, resume=True, **common)
    resumed = EvaluationResult.load(out)
    assert (
        resumed.complete
        and resumed.config["chunks_resumed"] == config["trials_done"]["slow-random"]
    )
    reference = evaluate_many(["slow-random"], None, **common)
    assert_tables_equal(_timing_free(resumed.records), _timing_free(reference.records))
    assert_tables_equal(_timing_free(resumed.trials), _timing_free(reference.trials))
