"""The start page: every run under the dashboard's folders by kind, with links, refreshed as
runs appear; evaluations can be picked to compare side by side."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from bokeh.layouts import column
from bokeh.models import CheckboxGroup, Div, LayoutDOM

from accelrl.dashboard.data.base import STALL_S
from accelrl.dashboard.data.store import RunStore
from accelrl.dashboard.discovery import KIND_ORDER, RunInfo, RunKind
from accelrl.dashboard.links import page_url
from accelrl.dashboard.pages.common import FONT, Page, ago, esc, state_badge
from accelrl.runfiles import PROGRESS_FILE

#: The file whose modification time tells a run's last activity, per kind.
ACTIVITY_FILES: dict[RunKind, tuple[str, ...]] = {
    RunKind.deploy: ("run.jsonl", "summary.json"),
    RunKind.tuning: ("progress.jsonl", "data.csv", "session.json"),
    RunKind.training: ("progress.jsonl", "logs/progress.csv", "episodes.csv", "train_summary.json"),
    RunKind.evaluation: ("records.parquet", "summary.json", "trial_metrics.csv"),
}
_KIND_TITLES = {
    RunKind.deploy: "Deployment and machine runs",
    RunKind.tuning: "Tuning sessions (BO)",
    RunKind.training: "Training runs",
    RunKind.evaluation: "Evaluations",
}


#: Files whose presence tells that a run has ended, per kind.
END_FILES: dict[RunKind, tuple[str, ...]] = {
    RunKind.deploy: ("summary.json",),
    RunKind.tuning: ("summary.json",),
    RunKind.training: ("train_summary.json",),
    RunKind.evaluation: ("summary.json", "records.parquet"),
}


def _ended_progress(path: Path) -> bool:
    """Whether a progress file's last line is an ``end`` record (reads its last 4 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - 4096, 0))
            tail = f.read()
    except OSError:
        return False
    lines = [line for line in tail.split(b"\n") if line.strip()]
    if not lines:
        return False
    try:
        last = json.loads(lines[-1])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(last, dict) and last.get("type") == "end"


def quick_status(info: RunInfo, activity: float) -> str:
    """``finished``, ``running`` or ``stalled`` from the run's files alone (no parsing of
    its records): cheap enough for the run list."""
    if any((info.path / name).is_file() for name in END_FILES[info.kind]):
        return "finished"
    if info.kind in (RunKind.tuning, RunKind.training) and _ended_progress(
        info.path / PROGRESS_FILE
    ):
        return "finished"
    if info.kind is RunKind.evaluation:
        return "partial"
    if math.isfinite(activity) and time.time() - activity < STALL_S:
        return "running"
    return "stalled"


def last_activity(info: RunInfo) -> float:
    """Newest modification time of the run's files [s since the epoch] (NaN: none)."""
    times = []
    for name in ACTIVITY_FILES[info.kind]:
        try:
            times.append(os.stat(info.path / name).st_mtime)
        except OSError:
            continue
    return max(times) if times else math.nan


class IndexPage(Page):
    """The list of runs (see the module documentation).

    :param store: The dashboard's runs.
    """

    title = "accelrl dashboard"
    interval_s = 2.0

    def __init__(self, store: RunStore) -> None:
        super().__init__()
        self.store = store
        self.evaluations: list[str] = []

    def build(self) -> LayoutDOM:
        roots = ", ".join(str(r) for r in self.store.roots)
        self.head = Div(
            text=(
                f"<div style='{FONT}'><b style='font-size:140%'>accelrl dashboard</b>"
                f"<div style='color:#57606a'>runs under {esc(roots)} (read-only; the list "
                "follows new runs as they appear)</div></div>"
            ),
            sizing_mode="stretch_width",
        )
        self.table = Div(sizing_mode="stretch_width")
        self.compare_title = Div(text=f"<b style='{FONT}'>Compare evaluations side by side</b>")
        self.picker = CheckboxGroup(labels=[], active=[])
        self.picker.on_change("active", lambda attr, old, new: self._compare_link())
        self.compare = Div()
        self.layout = column(
            self.head,
            self.table,
            self.compare_title,
            self.picker,
            self.compare,
            sizing_mode="stretch_width",
        )
        return self.layout

    def refresh(self) -> None:
        runs = self.store.runs()
        rows = [(r, last_activity(r)) for r in runs]
        html = self._table(rows)
        if html != self.table.text:
            self.table.text = html
        evaluations = [r.id for r in runs if r.kind is RunKind.evaluation]
        if evaluations != self.evaluations:
            chosen = {self.evaluations[i] for i in self.picker.active if i < len(self.evaluations)}
            self.evaluations = evaluations
            self.picker.labels = [r.split("/", 1)[1] for r in evaluations]
            self.picker.active = [i for i, r in enumerate(evaluations) if r in chosen]
            self._compare_link()

    def _compare_link(self) -> None:
        chosen = [self.evaluations[i] for i in self.picker.active if i < len(self.evaluations)]
        if not self.evaluations:
            self.compare.text = f"<span style='{FONT}color:#57606a'>no evaluations yet</span>"
        elif not chosen:
            self.compare.text = f"<span style='{FONT}color:#57606a'>pick evaluations above</span>"
        else:
            self.compare.text = (
                f"<a data-field='compare' style='{FONT}' href='{esc(page_url(chosen))}'>"
                f"compare {len(chosen)} evaluation{'s' if len(chosen) > 1 else ''}</a>"
            )

    def _table(self, rows: list[tuple[RunInfo, float]]) -> str:
        if not rows:
            return (
                f"<p style='{FONT}'>No runs found yet (deploy runs, tuning sessions, training "
                "runs, evaluations); this page shows them as they appear.</p>"
            )
        html = [f"<div style='{FONT}'>"]
        for kind in KIND_ORDER:
            group = [(r, t) for r, t in rows if r.kind is kind]
            if not group:
                continue
            html.append(f"<h3 style='margin:10px 0 4px'>{_KIND_TITLES[kind]} ({len(group)})</h3>")
            html.append("<table style='border-collapse:collapse'>")
            for r, t in sorted(group, key=lambda x: -x[1] if math.isfinite(x[1]) else 0):
                detail = f" ({esc(r.detail)})" if r.detail else ""
                html.append(
                    f"<tr><td style='padding:2px 8px 2px 0'>{state_badge(quick_status(r, t))}</td>"
                    f"<td style='padding:2px 12px 2px 0'><a data-run='{esc(r.id)}' "
                    f"href='{esc(page_url([r.id]))}'>{esc(r.label)}</a>{detail}</td>"
                    f"<td style='color:#57606a;padding:2px 12px'>root {r.root}</td>"
                    f"<td style='color:#57606a'>changed {esc(ago(t))}</td></tr>"
                )
            html.append("</table>")
        html.append("</div>")
        return "".join(html)
