"""The dashboard in real headless Chromium: a deployment run followed live (steps increase,
then an interlock aborts it and the rollback shows), a training run, a tuning session, two
evaluations side by side with the drill-down, the run list, and damaged runs. The screenshots
are the ones in docs/dashboard.md (copied there when ACCELRL_DOCS_SCREENSHOTS is set)."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_testlib import (
    Dashboard,
    controller_run,
    deep_texts,
    field_text,
    open_page,
    retry,
    screenshot,
    wait_field,
    wait_for,
)

from accelrl.runfiles import CsvWriter, ProgressLog, tuning_step_record

#: Set a Bokeh <select> (inside shadow DOM) to a value, as a person picking it would.
SELECT_JS = """
const value = arguments[0];
function walk(root) {
  for (const e of root.querySelectorAll('select')) {
    if ([...e.options].some(o => o.value === value)) { return e; }
  }
  for (const e of root.querySelectorAll('*')) {
    if (e.shadowRoot) { const f = walk(e.shadowRoot); if (f) { return f; } }
  }
  return null;
}
const select = walk(document);
if (!select) { return false; }
select.value = value;
select.dispatchEvent(new Event('input', {bubbles: true}));
select.dispatchEvent(new Event('change', {bubbles: true}));
return true;
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def dashboard(root: Path) -> Iterator[Dashboard]:
    # A slower refresh than the default keeps the browser's work small on a loaded machine.
    server = Dashboard([root], poll_ms=500)
    try:
        yield server
    finally:
        server.stop()


def steps_shown(browser: Any) -> int:
    text = field_text(browser, "steps")
    return int(text) if text and text.isdigit() else -1


def test_deploy_run_live_then_interlock_abort_and_rollback(browser, dashboard, root, shots):
    from accelrl.deploy.controller import StopReason
    from accelrl.deploy.sim import Fault

    run = root / "deploy-ares-ea"
    # Slowed steps (magnets settle in 0.3 s) so that the page can be watched while it runs;
    # a budget it never reaches: the interlock below ends it.
    controller, machine = controller_run(run, max_steps=5000, settle_delay_s=0.3)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=controller.run()))
    thread.start()
    try:
        open_page(browser, dashboard.page("0/deploy-ares-ea"))
        wait_for(lambda: steps_shown(browser) >= 2, 60, "the first steps on the page")
        first = retry(lambda: steps_shown(browser))
        wait_for(lambda: "MODE AUTO" in " ".join(deep_texts(browser, "span")), 60, "the mode")
        # The page follows the run: the count grows without a reload.
        wait_for(lambda: steps_shown(browser) >= first + 3, 60, "the step count to increase")
        assert controller.max_steps > retry(lambda: steps_shown(browser))  # still running
        wait_for(lambda: "No safety events" in (field_text(browser, "banner") or ""), 60,
                 "the all-clear banner")  # fmt: skip
        screenshot(browser, shots, "dashboard-deploy-live.png")
        machine.inject(Fault("interlock"))
        wait_for(lambda: field_text(browser, "abort-reason") == "interlock", 60,
                 "the abort on the page")  # fmt: skip
        wait_for(lambda: field_text(browser, "rollback-state") == "complete", 60,
                 "the completed rollback on the page")  # fmt: skip
        thread.join(60)
        result = outcome["result"]
        assert result.reason is StopReason.abort and result.rollback["complete"]
        wait_for(lambda: field_text(browser, "end-reason") == "abort", 60, "the end record")
        cells = retry(lambda: " ".join(deep_texts(browser, ".slick-cell")))
        assert "ABORT: interlock" in cells and "rollback write 1" in cells
        assert "rollback complete after" in cells
        wait_for(lambda: field_text(browser, "steps") == str(result.steps + 1), 60,
                 "every step (and the abort's) on the page")  # fmt: skip
        screenshot(browser, shots, "dashboard-deploy-abort.png")
    finally:
        if thread.is_alive():
            controller.request_stop()
            thread.join(30)


def test_training_run_learning_curve_and_evaluation_live(browser, dashboard, root, shots):
    run = root / "apg-train"
    stop, go, half = threading.Event(), threading.Event(), threading.Event()

    def train() -> None:
        with ProgressLog(run, "apg", iterations=120, batch_size=256, horizon=15) as log:
            go.wait(120)  # iterations start once the page shows the run
            for i in range(120):
                if i == 60:
                    half.wait(120)  # and go on once the page has shown the first half
                if stop.is_set():
                    return
                log.iteration(iteration=i, loss=-6.0 - 6.0 * (1 - 0.97**i) + 0.05 * (i % 3),
                              learning_rate=1e-3 * (0.5 + 0.5 * (1 - i / 120)),
                              grad_norm=1.0 / (1 + 0.05 * i))  # fmt: skip
                if i % 20 == 19:
                    best = 400.0 * 0.7 ** (i / 20)
                    log.evaluation({"median_best_mae_um": best, "median_final_mae_um": 1.6 * best,
                                    "iqr_best_mae_um": [0.5 * best, 2.0 * best],
                                    "fraction_on_target": min(1.0, i / 150), "n_trials": 30,
                                    "steps": 50}, iteration=i)  # fmt: skip
                time.sleep(0.06)

    thread = threading.Thread(target=train)
    thread.start()
    try:
        open_page(browser, dashboard.page("0/apg-train"))
        assert wait_field(browser, "done", timeout=60) == "0"
        go.set()
        # The page shows the run half-way, while it trains (the writer waits for it there).
        wait_for(lambda: field_text(browser, "done") == "60", 120, "60 iterations on the page")
        wait_field(browser, "eval-best", timeout=60)
        half.set()
        thread.join(60)
        wait_for(lambda: "FINISHED" in " ".join(deep_texts(browser, "span")), 60, "finished")
        wait_for(lambda: field_text(browser, "done") == "120", 60, "all 120 iterations")
        screenshot(browser, shots, "dashboard-training.png")
    finally:
        stop.set()
        go.set()
        half.set()
        thread.join(30)


def test_sb3_run_follows_the_logger_rewrite(browser, dashboard, root):
    run = root / "sb3-train"
    (run / "logs").mkdir(parents=True)
    progress = run / "logs" / "progress.csv"
    progress.write_text("time/total_timesteps,rollout/ep_rew_mean\n100,-30.0\n")
    with CsvWriter(run / "episodes.csv", ["timesteps", "return", "length"]) as episodes:
        episodes.write([100, -31.0, 50])
        open_page(browser, dashboard.page("0/sb3-train"))
        wait_for(lambda: field_text(browser, "done") == "100", 60, "100 timesteps")
        # SB3 rewrites its CSV with a wider header when a new key is logged.
        progress.write_text(
            "time/total_timesteps,rollout/ep_rew_mean,train/actor_loss\n100,-30.0,\n200,-20.0,0.5\n"
        )
        episodes.write([200, -19.0, 50])
        wait_for(lambda: field_text(browser, "done") == "200", 60, "200 timesteps")


def test_tuning_session_live(browser, dashboard, root, shots):
    variables = [
        {"name": n, "low": lo, "high": hi, "max_step": 0.1 * hi, "unit": u}
        for n, lo, hi, u in (
            ("Q1", -72, 72, "1/m^2"),
            ("Q2", -72, 72, "1/m^2"),
            ("CV", -6.2e-3, 6.2e-3, "rad"),
            ("Q3", -72, 72, "1/m^2"),
            ("CH", -6.2e-3, 6.2e-3, "rad"),
        )  # fmt: skip
    ]
    run = root / "tune-ares-ea"
    with ProgressLog(run, "tuning", machine="sim:ares-ea", variables=variables, steps=12,
                     prior="physics", acquisition="logei",
                     objective={"name": "mae", "minimise": True, "log": True, "floor": 1e-9},
                     ) as log:  # fmt: skip
        open_page(browser, dashboard.page("0/tune-ares-ea"))
        wait_field(browser, "steps", timeout=60)
        best = 1e9
        for step in range(12):
            mae = 3.5e-4 * 0.75**step * (1.3 if step % 4 == 3 else 1.0)
            best = min(best, mae)
            row = {"step": step, "prior_prediction": math.log(mae) + 0.2,
                   "result.mae": mae, "result.on_screen": 1.0, "safe": True, "feasible": True,
                   "suggest_s": 0.08,
                   **{f"setting.{v['name']}": v["high"] * (0.1 + 0.08 * i)
                      * math.sin(step / 3 + i) for i, v in enumerate(variables)}}  # fmt: skip
            diag = {"best": {"objective": best}, "has_prior": True, "uses_prior": step >= 3,
                    "prior_fallback": False, "prior_correlation": None if step < 3 else 0.9,
                    "correlation_threshold": 0.5, "prior_weight": None if step < 3 else 0.8,
                    "trust_length": 1.0, "paused": False, "returning": False, "reason": "",
                    "mode": "bo" if step else "measure-read-back"}  # fmt: skip
            log.step(tuning_step_record(row, diag))
            time.sleep(0.05)
        wait_for(lambda: field_text(browser, "steps") == "12", 60, "12 observations")
        wait_for(lambda: field_text(browser, "prior-state") == "in use", 60, "the prior in use")
    wait_for(lambda: "FINISHED" in " ".join(deep_texts(browser, "span")), 60, "finished")
    screenshot(browser, shots, "dashboard-tuning.png")


def test_evaluations_side_by_side_with_drill_down(browser, dashboard, root, shots):
    pytest.importorskip("torch")
    from accelrl.agents.evaluation import evaluate_many
    from accelrl.envs import load_trials

    trials = [load_trials()[i] for i in (30, 31, 41, 60)]
    for name, optimisers in (
        ("eval-policy", {"policy": "policy:agents/apg-ares-ea", "do-nothing": "do-nothing"}),
        ("eval-random", {"random": "random"}),
    ):
        result = evaluate_many(optimisers, trials=trials, max_steps=15, executor="serial",
                               progress=False)  # fmt: skip
        result.save(root / name)
    open_page(browser, dashboard.page("0/eval-policy", "0/eval-random"))
    wait_for(lambda: len(deep_texts(browser, "[data-field='episode']")) == 3, 60,
             "one episode row per optimiser")  # fmt: skip
    cells = retry(lambda: " ".join(deep_texts(browser, ".slick-cell")))
    for series in ("eval-policy: policy", "eval-policy: do-nothing", "eval-random: random"):
        assert series in cells
    assert all(
        "trial 30" in t for t in retry(lambda: deep_texts(browser, "[data-field='episode']"))
    )
    screenshot(browser, shots, "dashboard-evaluation.png")
    assert retry(lambda: browser.execute_script(SELECT_JS, "41"))
    wait_for(lambda: all("trial 41" in t for t in deep_texts(browser, "[data-field='episode']")),
             60, "the drill-down of trial 41")  # fmt: skip


def test_run_list_and_damaged_runs(browser, dashboard, root, shots):
    corrupt = root / "deploy-corrupt"
    corrupt.mkdir()
    start = {"type": "start", "mode": "shadow", "knob_names": ["Q1"], "limits": {
        "Q1": {"low": -1, "high": 1, "max_step": 0.1, "unit": "1/m^2"}}}  # fmt: skip
    step = {"type": "step", "step": 0, "knobs": {"Q1": 0.0}, "error": {"mu_x": 1e-4},
            "safe_setpoints": {"Q1": 0.05}, "decision": "shadow"}  # fmt: skip
    (corrupt / "run.jsonl").write_text(
        json.dumps(start) + "\n{this is not json\n" + json.dumps(step) + "\n"
    )
    open_page(browser, dashboard.page("0/deploy-corrupt"))
    wait_for(lambda: "not JSON" in (field_text(browser, "problems") or ""), 60,
             "the corrupt line reported")  # fmt: skip
    wait_for(lambda: field_text(browser, "steps") == "1", 60, "the one good step")
    shutil.rmtree(corrupt)
    wait_for(lambda: "is gone" in (field_text(browser, "problems") or ""), 60,
             "the deleted folder reported")  # fmt: skip
    half = root / "eval-half"
    half.mkdir()
    (half / "config.json").write_text('{"optimisers": [{"label": "x"}], "max_st')
    (half / "records.parquet").write_bytes(b"PAR1 half written")
    open_page(browser, dashboard.page("0/eval-half"))
    wait_for(lambda: "records.parquet" in (field_text(browser, "problems") or ""), 60,
             "the half-written evaluation reported")  # fmt: skip
    open_page(browser, dashboard.page("0/not-yet"))
    wait_field(browser, "waiting", timeout=60)
    (root / "not-yet").mkdir()
    (root / "not-yet" / "run.jsonl").write_text(json.dumps(start) + "\n")
    wait_for(lambda: field_text(browser, "steps") == "0", 60, "the run once it appears")
    open_page(browser, dashboard.url)
    wait_for(lambda: len(deep_texts(browser, "a[data-run]")) >= 5, 60, "the run list")
    links = retry(lambda: deep_texts(browser, "a[data-run]"))
    for name in ("deploy-ares-ea", "apg-train", "tune-ares-ea", "eval-policy", "not-yet"):
        assert name in links
    screenshot(browser, shots, "dashboard-index.png")


def test_real_sb3_training_live(browser, dashboard, root, shots, monkeypatch):
    """A real (tiny) PPO run writes its live files; the page shows the timesteps and the first
    held-out evaluation while it trains, then the finished run."""
    pytest.importorskip("stable_baselines3")
    import accelrl.agents.training.sb3 as sb3
    from accelrl.agents.training.recipes import Recipe

    recipe = Recipe.from_dict({
        "algorithm": "ppo", "num_envs": 4, "total_timesteps": 768, "seed": 1,
        "hyperparameters": {"n_steps": 32, "batch_size": 64, "n_epochs": 1,
                            "net_arch": {"actor": [8], "critic": [8]}},
        "evaluation": {"every": 256, "trials": "0:300:100", "steps": 10},
    })  # fmt: skip
    paused, go = threading.Event(), threading.Event()
    real = sb3.evaluate_policy
    calls: list[int] = []

    def gated(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # hold the run at its second evaluation until the page is checked
            paused.set()
            go.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(sb3, "evaluate_policy", gated)
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = sb3.train(recipe, root / "sb3-live", progress=False)
        except BaseException as err:  # reported by the test below
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    try:
        open_page(browser, dashboard.page("0/sb3-live"))
        wait_for(paused.is_set, 240, "the run at its second evaluation")
        wait_for(lambda: field_text(browser, "eval-best") not in (None, "", "-"), 60,
                 "the first evaluation on the page")  # fmt: skip
        wait_for(lambda: "RUNNING" in " ".join(deep_texts(browser, "span")), 60, "running")
        done = float(retry(lambda: field_text(browser, "done")) or 0)
        assert 256 <= done < 768
        go.set()
        thread.join(240)
        assert "error" not in outcome, outcome.get("error")
        wait_for(lambda: "FINISHED" in " ".join(deep_texts(browser, "span")), 60, "finished")
        wait_for(lambda: field_text(browser, "done") == "768", 60, "all 768 timesteps")
        screenshot(browser, shots, "dashboard-training-sb3.png")
    finally:
        go.set()
        thread.join(240)


def test_real_tuning_session_live(browser, dashboard, root, shots):
    """A real BO session (physics prior) on the simulated ARES-EA writes a step record per
    observation; the page shows the steps as they come and the prior's state."""
    pytest.importorskip("botorch")
    from accelrl.agents.bo.live import SessionProgress
    from accelrl.agents.bo.optimiser import BOOptimiser
    from accelrl.agents.evaluation import evaluate
    from accelrl.envs import load_trials

    run = root / "tune-real"
    progress = SessionProgress(run, machine="sim:ares-ea", trial=30, prior="physics",
                               acquisition="logei", steps=8)  # fmt: skip
    paused, go = threading.Event(), threading.Event()

    def observe(session: Any) -> None:
        progress.update(session)
        if len(session.rows) == 3:  # hold after three observations until the page shows them
            paused.set()
            go.wait(120)

    optimiser = BOOptimiser(prior="physics", budget_s=0.03, observer=observe)
    outcome: dict[str, Any] = {}

    def tune() -> None:
        try:
            with progress:
                evaluate(lambda: optimiser, [load_trials()[30]], max_steps=8, executor="serial",
                         progress=False, label="bo")  # fmt: skip
        except BaseException as err:  # reported by the test below
            outcome["error"] = err

    thread = threading.Thread(target=tune)
    thread.start()
    try:
        open_page(browser, dashboard.page("0/tune-real"))
        wait_for(paused.is_set, 240, "three observations")
        wait_for(lambda: field_text(browser, "steps") == "3", 60, "3 observations on the page")
        assert retry(lambda: field_text(browser, "prior-state")) in ("in use", "not used",
                                                                     "FALLBACK")  # fmt: skip
        best = float(retry(lambda: field_text(browser, "best")) or "nan")
        assert 0 < best < 400  # um: below the start (358 um on trial 30)
        go.set()
        thread.join(240)
        assert "error" not in outcome, outcome.get("error")
        wait_for(lambda: field_text(browser, "steps") == "8", 60, "all 8 observations")
        wait_for(lambda: "FINISHED" in " ".join(deep_texts(browser, "span")), 60, "finished")
    finally:
        go.set()
        thread.join(240)
