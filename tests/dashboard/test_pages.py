"""Pages without a browser: the evaluation page's controls and click-to-drill, the deploy
page's screen frame and banner (run text is escaped), and the app's handling of broken
pages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bokeh.document import Document

from accelrl.dashboard.app import PageHost, WaitingPage
from accelrl.dashboard.data import DeployFollower, EvaluationFollower, RunStore
from accelrl.dashboard.discovery import RunInfo, RunKind
from accelrl.dashboard.pages.common import Page
from accelrl.dashboard.pages.deploy import DeployPage, safety_summary
from accelrl.dashboard.pages.evaluation import EvaluationPage
from accelrl.runfiles import save_screen_frame

BEAM = ("mu_x", "sigma_x", "mu_y", "sigma_y")


def evaluation_folder(path: Path, optimisers=("a", "b"), trials=(3, 7, 9), steps=4) -> Path:
    """A small evaluation folder in the format of ``EvaluationResult.save``."""
    path.mkdir(parents=True)
    rows: dict[str, list] = {k: [] for k in ("optimiser", "trial", "step", "mae", "on_screen")}
    for p in ("beam", "reading", "target"):
        for b in BEAM:
            rows[f"{p}_{b}"] = []
    rows["setting_Q1"] = []
    for o, opt in enumerate(optimisers):
        for t in trials:
            for s in range(steps + 1):
                rows["optimiser"].append(opt)
                rows["trial"].append(t)
                rows["step"].append(s)
                rows["mae"].append(1e-4 * (1 + t) / (1 + s * (o + 1)))
                rows["on_screen"].append(True)
                for p in ("beam", "reading", "target"):
                    for i, b in enumerate(BEAM):
                        sized = 0.0 if (t == 3 and b.startswith("sigma")) else 1e-4
                        rows[f"{p}_{b}"].append(sized if p == "target" else 1e-4 * (i + 1))
                rows["setting_Q1"].append(float(s))
    pq.write_table(pa.table(rows), path / "records.parquet")
    config = {"optimisers": [{"label": o} for o in optimisers], "max_steps": steps,
              "trials": {"n": len(trials)}, "screen": {"half_extent_m": [4e-3, 3e-3]},
              "actuators": [{"name": "Q1", "unit": "1/m^2", "low": -72, "high": 72}]}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    summary = {
        o: {"all": {"n_trials": len(trials), "median_best_mae_um": 12.0}} for o in optimisers
    }
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "trial_metrics.csv").write_text(
        "optimiser,trial,error\n" + "".join(f"{o},{t},\n" for o in optimisers for t in trials)
    )
    return path


def test_evaluation_page_controls_and_click_to_drill(tmp_path: Path):
    info = RunInfo("0/ev", 0, evaluation_folder(tmp_path / "ev"), RunKind.evaluation)
    follower = EvaluationFollower(info.path)
    follower.poll(force=True)
    page = EvaluationPage([info], [follower])
    doc = Document()
    for root in page.build():
        doc.add_root(root)
    page.refresh()
    assert [s.name for s in page.series] == ["a", "b"]
    assert page.table_source.data["best"] == ["12.0", "12.0"]
    median_all = list(page.band_sources["b"].data["median"])
    page._controls(subset="sigma_pos")  # trial 3 has zero target sizes
    assert list(page.band_sources["b"].data["median"]) != median_all
    assert len(page.point_sources["final"].data["trial"]) == 4  # 2 trials x 2 optimisers
    page._controls(subset="all", curve="best")
    points = page.point_sources["best"]
    index = points.data["trial"].index(9)
    points.selected.indices = [index]  # a click on trial 9
    assert page.trial_select.value == "9"
    titles = [child.children[0].text for child in page.drill.children]
    assert len(titles) == 2 and all("trial 9" in t for t in titles)


def test_deploy_page_screen_frame_and_escaped_text(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    frame = save_screen_frame(run, 0, [[0, 255]], [-2e-3, 2e-3, -1e-3, 1e-3])
    limits = {"Q1": {"low": -1, "high": 1, "max_step": 0.1, "unit": "1/m^2"}}
    start = {"type": "start", "mode": "auto", "machine": "<b>m</b>", "knob_names": ["Q1"],
             "limits": limits}  # fmt: skip
    step = {"type": "step", "step": 0, "knobs": {"Q1": 0.0}, "error": {"mu_x": 1e-5},
            "observation": {"mu_x": 0.0, "sigma_x": 1e-4, "mu_y": 0.0, "sigma_y": 1e-4},
            "target": {"mu_x": 0.0, "sigma_x": 2e-4, "mu_y": 0.0, "sigma_y": 2e-4},
            "safe_setpoints": {"Q1": 0.1}, "decision": "abort", "screen": frame,
            "abort": {"reason": "interlock", "detail": "<script>alert(1)</script>"}}  # fmt: skip
    (run / "run.jsonl").write_text(json.dumps(start) + "\n" + json.dumps(step) + "\n")
    info = RunInfo("0/run", 0, run, RunKind.deploy)
    follower = DeployFollower(run)
    follower.poll(force=True)
    page = DeployPage(info, follower)
    doc = Document()
    for root in page.build():
        doc.add_root(root)
    page.refresh()
    assert page.screen_source.data["url"] == ["/files/0/run/screens/step_000000.png"]
    assert page.screen_source.data["w"] == [pytest.approx(4.0)]  # mm
    assert page.ellipses.data["label"] == ["target", "beam (measured)"]
    assert page.ellipses.data["w"] == [pytest.approx(0.4), pytest.approx(0.2)]
    html, level = safety_summary(follower)
    assert level == "error" and "in progress" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>m</b>" not in page.header.text
    np.testing.assert_allclose(page.steps.data["frac_Q1"], [1.0])


class _Exploding(Page):
    def build(self):
        raise RuntimeError("cannot draw <this>")

    def refresh(self) -> None:
        return None


def test_a_failing_page_is_reported_and_retried(tmp_path: Path):
    doc = Document()
    made = []

    def make() -> Page:
        made.append(1)
        return _Exploding()

    host = PageHost(doc, make)
    text = " ".join(getattr(r, "text", "") for r in doc.roots)
    assert "could not be drawn" in text and "&lt;this&gt;" in text
    host._last = -1e9
    host.tick()
    assert len(made) == 2  # tried again


def test_waiting_page_becomes_the_run(tmp_path: Path):
    store = RunStore([tmp_path], rescan_s=0.0)
    page = WaitingPage(store, ["0/later"], "no run yet")
    assert not page.ready()
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "run.jsonl").write_text("")
    assert page.ready()
