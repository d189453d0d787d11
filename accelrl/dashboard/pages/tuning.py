"""The page of a BO tuning session: the objective (current and best) vs step, the variables'
trajectories, the prior's calibration (its prediction against the observation, and the
correlation that decides whether it is used) and its fallback state, and the session's
diagnostics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    Div,
    HoverTool,
    LayoutDOM,
    Range1d,
    Slope,
    Span,
)

from accelrl.dashboard.data.store import RunStore
from accelrl.dashboard.data.tuning import TuningFollower
from accelrl.dashboard.discovery import RunInfo
from accelrl.dashboard.links import page_url
from accelrl.dashboard.pages.common import (
    COLOURS,
    FONT,
    RunPage,
    banner,
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


def prior_state(diag: dict[str, Any]) -> tuple[str, str]:
    """The banner's HTML and level: is the physics prior used, has it fallen back, is the
    session paused or returning to a safe setting."""
    parts = []
    level = "ok"
    if not diag:
        return "No diagnostics yet (they come with the first step).", "warning"
    r = diag.get("prior_correlation")
    threshold = diag.get("correlation_threshold")
    weight = diag.get("prior_weight")
    if not diag.get("has_prior", True):
        parts.append(f"Prior: {field('prior-state', 'none')} (constant mean)")
    elif diag.get("prior_fallback"):
        level = "warning"
        parts.append(
            f"Prior: <b>{field('prior-state', 'FALLBACK')}</b> to a constant mean: its "
            f"predictions correlate {fmt(r, 2)} with the measurements (threshold "
            f"{fmt(threshold, 2)})"
        )
    elif diag.get("uses_prior"):
        parts.append(
            f"Prior: {field('prior-state', 'in use')} (correlation {fmt(r, 2)} &ge; "
            f"{fmt(threshold, 2)}, weight {fmt(weight, 2)})"
        )
    else:
        parts.append(f"Prior: {field('prior-state', 'not used')}")
    parts.append(f"trust region {fmt(diag.get('trust_length'), 3)} of the max step")
    parts.append(f"last suggestion: {esc(diag.get('mode') or '-')}")
    if diag.get("paused"):
        level = "error"
        parts.append(f"<b>PAUSED</b>: {esc(diag.get('reason', ''))}")
    elif diag.get("returning"):
        level = "error"
        parts.append(f"<b>returning to the last safe setting</b>: {esc(diag.get('reason', ''))}")
    return " &middot; ".join(parts), level


class TuningPage(RunPage):
    """A tuning session, live (see the module documentation).

    :param info: The session.
    :param follower: Its follower.
    :param store: The dashboard's runs (to link a session's controller run).
    """

    def __init__(self, info: RunInfo, follower: TuningFollower, store: RunStore) -> None:
        super().__init__([follower])
        self.info, self.f, self.store = info, follower, store
        self.title = f"tuning {info.label}"

    def signature(self) -> Any:
        return (tuple(str(v["name"]) for v in self.f.variables), self.f.live)

    def _keys(self) -> list[str]:
        keys = [
            "step",
            "objective",
            "best",
            "observed_model",
            "prior_prediction",
            "prior_correlation",
            "prior_weight",
        ]
        for v in self.f.variables:
            keys += [f"set_{v['name']}", f"norm_{v['name']}"]
        return keys

    def build(self) -> list[LayoutDOM]:
        f = self.f
        self.cursor = 0
        self.seen_version = -1
        self.plots_pending = True
        self.names = [str(v["name"]) for v in f.variables]
        self.source = ColumnDataSource({k: np.array([], dtype=float) for k in self._keys()})
        self.unsafe = ColumnDataSource({"step": [], "objective": []})
        self.header = Div(sizing_mode="stretch_width")
        self.banner = Div(sizing_mode="stretch_width")
        self.messages = Div(sizing_mode="stretch_width")
        _, unit = f.scale
        name = str(f.objective.get("name", "objective"))
        label = f"{name} [{unit}]" if unit else name
        obj = make_figure(f"{name}: current and best so far", "step", label, log_y=True, height=300)
        obj.line("step", "objective", source=self.source, color=COLOURS[0], legend_label="current")
        obj.scatter(
            "step",
            "objective",
            source=self.source,
            color=COLOURS[0],
            size=5,
            legend_label="current",
        )
        obj.step(
            "step",
            "best",
            source=self.source,
            color="black",
            line_width=2,
            mode="after",
            legend_label="best (safe, feasible)",
        )
        obj.scatter(
            "step",
            "objective",
            source=self.unsafe,
            marker="x",
            color="#cf222e",
            size=10,
            legend_label="unsafe / infeasible",
        )
        obj.add_tools(
            HoverTool(tooltips=[("step", "@step"), ("current", "@objective"), ("best", "@best")])
        )
        finish_legend(obj)
        knobs = make_figure(
            "variables (fraction of their range: 0 = low, 1 = high limit)",
            "step",
            "setting / range",
            height=300,
            x_range=obj.x_range,
        )
        knobs.y_range = Range1d(-0.05, 1.05)
        for i, n in enumerate(self.names):
            knobs.line(
                "step",
                f"norm_{n}",
                source=self.source,
                color=COLOURS[i % 10],
                legend_label=n,
                line_width=2,
            )
        knobs.add_tools(
            HoverTool(tooltips=[("step", "@step")] + [(n, f"@{{set_{n}}}") for n in self.names])
        )
        finish_legend(knobs)
        calib = make_figure(
            "prior calibration: predicted vs measured",
            "measured (ln " + name + ")",
            "prior prediction",
            height=300,
        )
        calib.scatter(
            "observed_model",
            "prior_prediction",
            source=self.source,
            size=7,
            color=COLOURS[1],
            alpha=0.7,
        )
        calib.add_layout(Slope(gradient=1, y_intercept=0, line_color="#8c959f", line_dash="dashed"))
        calib.add_tools(
            HoverTool(
                tooltips=[
                    ("step", "@step"),
                    ("measured", "@observed_model"),
                    ("predicted", "@prior_prediction"),
                ]
            )
        )
        self.calib = calib
        corr = make_figure(
            "prior: correlation with the measurements (used above the line)",
            "step",
            "correlation",
            height=300,
            x_range=obj.x_range,
        )
        corr.y_range = Range1d(-1.05, 1.05)
        threshold = f.diagnostics.get("correlation_threshold")
        if isinstance(threshold, (int, float)):
            corr.add_layout(
                Span(
                    location=float(threshold),
                    dimension="width",
                    line_color="#cf222e",
                    line_dash="dashed",
                )
            )
        corr.line(
            "step",
            "prior_correlation",
            source=self.source,
            color=COLOURS[2],
            line_width=2,
            legend_label="correlation",
        )
        corr.line(
            "step",
            "prior_weight",
            source=self.source,
            color=COLOURS[3],
            line_width=2,
            line_dash="dotted",
            legend_label="prior weight",
        )
        finish_legend(corr)
        table = Div(sizing_mode="stretch_width")
        self.diag_table = table
        plots = [
            row(obj, knobs, sizing_mode="stretch_width"),
            row(
                calib,
                corr
                if f.live
                else Div(
                    text=f"<span style='{FONT}color:#57606a'>The prior's correlation per "
                    "step is in the live progress file; this saved session has only its "
                    "final diagnostics (table below).</span>",
                    width=400,
                ),
                sizing_mode="stretch_width",
            ),
        ]
        self.layout = [
            column(
                nav(f"tuning session {self.info.label}", str(self.info.path)),
                self.header,
                self.banner,
                self.messages,
                sizing_mode="stretch_width",
            ),
            column(*plots, sizing_mode="stretch_width"),
            column(
                Div(text=f"<b style='{FONT}'>Session diagnostics</b>"),
                table,
                sizing_mode="stretch_width",
            ),  # fmt: skip
        ]
        self.shown_diag: Any = None
        return self.layout

    def refresh(self) -> None:
        f = self.f
        new = f.version != self.seen_version
        self.seen_version = f.version
        self.plots_pending = self.plots_pending or new
        rows = []
        if self.plots_pending and self.plots_due(now=f.status != "running"):
            self.plots_pending = False
            rows = f.rows[self.cursor :]
        if rows:
            stream(self.source, columns(rows, self._keys()))
            bad = [r for r in rows if not r["safe"]]
            if bad:
                stream(self.unsafe, columns(bad, ["step", "objective"]))
            self.cursor = len(f.rows)
        if not (new or self.text_due()):
            return
        self.header.text = self._header()
        text, level = prior_state(f.diagnostics)
        html = banner(text, level)
        if html != self.banner.text:
            self.banner.text = html
        problems = message_box(f.problems)
        if problems != self.messages.text:
            self.messages.text = problems
        if f.diagnostics != self.shown_diag:
            self.shown_diag = dict(f.diagnostics)
            keys, values = [], []
            for k, v in f.diagnostics.items():
                if k == "calibration" and isinstance(v, dict):
                    for part, vals in v.items():
                        keys.append(f"calibration.{part}")
                        values.append(
                            ", ".join(fmt(x, 4) for x in vals)
                            if isinstance(vals, list)
                            else str(vals)
                        )
                    continue
                if k == "best" and isinstance(v, dict):
                    keys.append("best.objective")
                    values.append(fmt(v.get("objective"), 5))
                    setting = v.get("setting")
                    if isinstance(setting, dict):
                        keys.append("best.setting")
                        values.append(", ".join(f"{n} {fmt(x, 5)}" for n, x in setting.items()))
                    continue
                keys.append(k)
                values.append(fmt(v, 5) if isinstance(v, float) else str(v))
            rows_html = "".join(
                f"<tr><td style='padding:1px 16px 1px 0'>{esc(k)}</td><td>{esc(v)}</td></tr>"
                for k, v in zip(keys, values, strict=True)
            )
            self.diag_table.text = (
                f"<table data-field='diagnostics' style='{FONT}border-collapse:collapse'>"
                f"{rows_html}</table>"
            )

    def _header(self) -> str:
        f = self.f
        start = f.start or {}
        summary = f.docs.get("summary") or {}
        session = f.docs.get("session") or {}
        config = session.get("config") or {}
        scale, unit = f.scale
        total = start.get("steps", summary.get("steps", "?"))
        current = f.rows[-1]["objective"] if f.rows else math.nan
        best = min((r["best"] for r in f.rows if math.isfinite(r["best"])), default=math.nan)
        facts = [
            ("machine", start.get("machine", summary.get("machine", "?"))),
            ("prior", start.get("prior", summary.get("prior", "?"))),
            (
                "acquisition",
                start.get(
                    "acquisition", summary.get("acquisition", config.get("acquisition", "?"))
                ),
            ),
        ]
        link = ""
        run = f.deploy_run
        if run is not None:
            run_id = f"{self.info.id}/run" if self.info.label != "." else f"{self.info.root}/run"
            link = (
                f" &middot; <a href='{esc(page_url([run_id]))}'>the controller run "
                "(safety events, knobs against limits)</a>"
            )
        return (
            f"<div style='{FONT}'><div style='font-size:115%'>{state_badge(f.status)}</div>"
            f"<div>{' &middot; '.join(f'{esc(k)} <b>{esc(v)}</b>' for k, v in facts)}</div>"
            f"<div>observations {field('steps', len(f.rows))} (budget {esc(total)} steps) "
            f"&middot; current "
            f"{field('current', fmt(current, 3))} {unit} &middot; best "
            f"{field('best', fmt(best, 3))} {unit}{link}</div></div>"
        )
