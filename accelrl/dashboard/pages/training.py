"""The page of a training run: progress, the learning curve (APG loss per iteration; SB3's
logged curves and training episodes) and the held-out evaluation, as they are written."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, LayoutDOM, Span

from accelrl.dashboard.data.training import EVAL_KEYS, SB3_CURVES, TrainingFollower
from accelrl.dashboard.discovery import RunInfo
from accelrl.dashboard.pages.common import (
    COLOURS,
    FONT,
    RunPage,
    columns,
    esc,
    field,
    finish_legend,
    fmt,
    make_figure,
    message_box,
    nav,
    state_badge,
    stream,
)

#: The on-target line of the evaluation plots [um] (benchmarks' 20 um).
TARGET_UM = 20.0
_ITERATION_KEYS = ("iteration", "loss", "learning_rate", "grad_norm")


class TrainingPage(RunPage):
    """A training run, live (see the module documentation).

    :param info: The run.
    :param follower: Its follower.
    """

    def __init__(self, info: RunInfo, follower: TrainingFollower) -> None:
        super().__init__([follower])
        self.info, self.f = info, follower
        self.title = f"training {info.label}"

    def _sb3_keys(self) -> list[str]:
        present = set(self.f.sb3_rows[0]) if self.f.sb3_rows else set()
        return [k for k, _ in SB3_CURVES if k in present]

    def signature(self) -> Any:
        f = self.f
        return (
            f.trainer,
            tuple(self._sb3_keys()),
            bool(f.iterations),
            bool(f.evaluations),
            bool(f.episodes),
        )

    def build(self) -> list[LayoutDOM]:
        f = self.f
        self.cursors = {"iterations": 0, "evaluations": 0, "sb3": 0, "episodes": 0}
        self.seen_version = -1
        self.plots_pending = True
        self.header = Div(sizing_mode="stretch_width")
        self.messages = Div(sizing_mode="stretch_width")
        x_label = "iteration" if f.x_key == "iteration" else "timesteps"
        plots: list[Any] = []
        self.iter_source = ColumnDataSource({k: np.array([]) for k in _ITERATION_KEYS})
        self.eval_source = ColumnDataSource({k: np.array([]) for k in ("x", *EVAL_KEYS)})
        self.sb3_keys = self._sb3_keys()
        self.sb3_source = ColumnDataSource(
            {k: np.array([]) for k in ("time/total_timesteps", *self.sb3_keys)}
        )
        self.episode_source = ColumnDataSource({k: np.array([]) for k in ("timesteps", "return")})
        if f.iterations:
            loss = make_figure("training loss", "iteration", "loss", height=300)
            loss.line(
                "iteration", "loss", source=self.iter_source, color=COLOURS[0], line_width=1.5
            )
            loss.add_tools(HoverTool(tooltips=[("iteration", "@iteration"), ("loss", "@loss")]))
            lr = make_figure(
                "learning rate and gradient norm",
                "iteration",
                "value",
                height=300,
                x_range=loss.x_range,
                log_y=True,
            )
            lr.line(
                "iteration",
                "learning_rate",
                source=self.iter_source,
                color=COLOURS[1],
                legend_label="learning rate",
            )
            lr.line(
                "iteration",
                "grad_norm",
                source=self.iter_source,
                color=COLOURS[2],
                legend_label="gradient norm",
                alpha=0.6,
            )
            finish_legend(lr)
            plots.append(row(loss, lr, sizing_mode="stretch_width"))
        sb3_figs = []
        for i, key in enumerate(self.sb3_keys):
            title = dict(SB3_CURVES)[key]
            p = make_figure(f"{title} ({key})", "timesteps", title, height=250)
            p.line(
                "time/total_timesteps",
                key,
                source=self.sb3_source,
                color=COLOURS[i % 10],
                line_width=2,
            )
            p.scatter(
                "time/total_timesteps", key, source=self.sb3_source, color=COLOURS[i % 10], size=3
            )
            if key == "rollout/ep_rew_mean" and f.episodes:
                p.scatter(
                    "timesteps",
                    "return",
                    source=self.episode_source,
                    color="#8c959f",
                    alpha=0.25,
                    size=3,
                    legend_label="episodes",
                )
                finish_legend(p)
            sb3_figs.append(p)
        if f.episodes and "rollout/ep_rew_mean" not in self.sb3_keys:
            p = make_figure("training episodes", "timesteps", "episode return", height=250)
            p.scatter(
                "timesteps",
                "return",
                source=self.episode_source,
                color=COLOURS[0],
                alpha=0.3,
                size=3,
            )
            sb3_figs.append(p)
        for i in range(0, len(sb3_figs), 2):
            plots.append(row(*sb3_figs[i : i + 2], sizing_mode="stretch_width"))
        ev = make_figure(
            "held-out evaluation: median MAE (band: IQR of the best MAE)",
            x_label,
            "MAE [µm]",
            log_y=True,
            height=300,
        )
        ev.varea(
            "x",
            "iqr_low_um",
            "iqr_high_um",
            source=self.eval_source,
            color=COLOURS[0],
            alpha=0.2,
            legend_label="best MAE, 25-75 %",
        )
        ev.line(
            "x",
            "median_best_mae_um",
            source=self.eval_source,
            color=COLOURS[0],
            line_width=2,
            legend_label="median best MAE",
        )
        ev.scatter("x", "median_best_mae_um", source=self.eval_source, color=COLOURS[0], size=6)
        ev.line(
            "x",
            "median_final_mae_um",
            source=self.eval_source,
            color=COLOURS[1],
            line_width=2,
            line_dash="dashed",
            legend_label="median final MAE",
        )
        ev.add_layout(
            Span(location=TARGET_UM, dimension="width", line_color="#57606a", line_dash="dotted")
        )
        ev.add_tools(
            HoverTool(
                tooltips=[
                    (x_label, "@x"),
                    ("median best", "@median_best_mae_um"),
                    ("median final", "@median_final_mae_um"),
                    ("on target", "@fraction_on_target"),
                ]
            )
        )
        finish_legend(ev)
        if not f.evaluations:
            ev_note = Div(
                text=f"<span style='{FONT}color:#57606a'>No held-out evaluation written yet.</span>"
            )
            plots.append(column(ev_note, ev, sizing_mode="stretch_width"))
        else:
            plots.append(ev)
        if not plots or not (f.iterations or self.sb3_keys or f.episodes):
            plots.insert(
                0,
                Div(
                    text=f"<span style='{FONT}color:#57606a'>No learning curve "
                    "written yet (progress.jsonl iterations, or SB3's "
                    "logs/progress.csv).</span>"
                ),
            )
        self.layout = [
            column(
                nav(f"training run {self.info.label}", str(self.info.path)),
                self.header,
                self.messages,
                sizing_mode="stretch_width",
            ),
            column(*plots, sizing_mode="stretch_width"),
        ]
        return self.layout

    def refresh(self) -> None:
        f = self.f
        new = f.version != self.seen_version
        self.seen_version = f.version
        self.plots_pending = self.plots_pending or new
        if self.plots_pending and self.plots_due(now=f.status != "running"):
            self.plots_pending = False
            self._plots()
        if not (new or self.text_due()):
            return
        html = self._header()
        if html != self.header.text:
            self.header.text = html
        problems = message_box(f.problems)
        if problems != self.messages.text:
            self.messages.text = problems

    def _plots(self) -> None:
        f = self.f
        c = self.cursors
        stream(self.iter_source, columns(f.iterations[c["iterations"] :], _ITERATION_KEYS))
        c["iterations"] = len(f.iterations)
        stream(self.eval_source, columns(f.evaluations[c["evaluations"] :], ("x", *EVAL_KEYS)))
        c["evaluations"] = len(f.evaluations)
        stream(
            self.sb3_source,
            columns(f.sb3_rows[c["sb3"] :], ("time/total_timesteps", *self.sb3_keys)),
        )
        c["sb3"] = len(f.sb3_rows)
        stream(self.episode_source, columns(f.episodes[c["episodes"] :], ("timesteps", "return")))
        c["episodes"] = len(f.episodes)

    def _header(self) -> str:
        f = self.f
        start = f.start or {}
        summary = f.summary or {}
        done, total = f.done, f.total
        unit = "iterations" if f.x_key == "iteration" else "timesteps"
        progress = f"{field('done', fmt(done, 8))} {unit}"
        if math.isfinite(total) and total > 0 and math.isfinite(done):
            pct = min(100.0, 100.0 * done / total)
            progress += (
                f" of {fmt(total, 8)} ({pct:.0f} %)"
                f"<div style='background:#eaeef2;width:320px;height:8px;border-radius:4px'>"
                f"<div style='background:#1a7f37;width:{pct * 3.2:.0f}px;height:8px;"
                "border-radius:4px'></div></div>"
            )
        algorithm = start.get("algorithm", summary.get("algorithm", f.trainer))
        last = ""
        if f.iterations:
            last = f" &middot; last loss {field('loss', fmt(f.iterations[-1]['loss'], 4))}"
        if f.evaluations:
            e = f.evaluations[-1]
            last += (
                f" &middot; latest evaluation: median best MAE "
                f"{field('eval-best', fmt(e['median_best_mae_um'], 3))} µm, on target "
                f"{fmt(e['fraction_on_target'], 2)}"
            )
        end = ""
        if f.end is not None and f.end.get("error"):
            end = f"<div style='color:#cf222e'>failed: {esc(f.end['error'])}</div>"
        return (
            f"<div style='{FONT}'><div style='font-size:115%'>{state_badge(f.status)} "
            f"<b>{esc(str(algorithm).upper())}</b> ({esc(f.trainer)})</div>"
            f"<div>{progress}{last}</div>{end}</div>"
        )
