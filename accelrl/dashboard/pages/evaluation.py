"""The page of one or more evaluations: the comparative report, interactive.

* the summary table (medians and IQRs per optimiser, all trials or the ``sigma > 0`` subset);
* MAE (or best MAE so far) vs step: median line and IQR band per optimiser;
* distributions of the final and best MAE per optimiser: box (quartiles, whiskers 5-95 %)
  and every trial as a point; clicking a point opens that trial below;
* the per-trial drill-down: for each optimiser, the beam against the target, the magnets
  against their limits, and the screen before and after (1 sigma ellipses).

Several evaluations are shown side by side (``/?run=A&run=B``): every optimiser of every
run is one series.

Its size (~550 lines) is one page class: the figures, data sources and controls made by
:meth:`EvaluationPage.build` are shared by the callbacks (subset, curve, tapped point, trial)
that redraw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FactorRange,
    HoverTool,
    LayoutDOM,
    RadioButtonGroup,
    Range1d,
    Select,
    Span,
    TableColumn,
    TapTool,
)
from bokeh.transform import jitter

from accelrl.dashboard.data.evaluation import BEAM, FLOOR_UM, EvaluationFollower, fmt_um
from accelrl.dashboard.discovery import RunInfo
from accelrl.dashboard.pages.common import (
    COLOURS,
    FONT,
    RunPage,
    esc,
    field,
    finish_legend,
    fmt,
    make_figure,
    message_box,
    nav,
    state_badge,
)

TARGET_UM = 20.0
SUBSETS = ("all", "sigma_pos")
CURVES = ("mae", "best")


@dataclass(frozen=True)
class Series:
    """One optimiser of one evaluation.

    :param name: Its label on the page.
    :param run: Index of its evaluation.
    :param optimiser: Its label in that evaluation.
    :param colour: Its colour.
    """

    name: str
    run: int
    optimiser: str
    colour: str


def _iqr(values: Any) -> str:
    if isinstance(values, list) and len(values) == 2:
        lo, hi = fmt_um(values[0]), fmt_um(values[1])
        return lo if lo == hi else f"{lo}-{hi}"
    return "-"


def _steps(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "never"
    return f"{v:.0f}" if math.isfinite(v) and v.is_integer() else fmt(v, 3)


class EvaluationPage(RunPage):
    """One or more evaluations (see the module documentation).

    :param infos: The evaluations.
    :param followers: Their followers, in the same order.
    """

    def __init__(self, infos: list[RunInfo], followers: list[EvaluationFollower]) -> None:
        super().__init__(followers)
        self.infos, self.fs = infos, followers
        self.title = (
            f"evaluation {infos[0].label}"
            if len(infos) == 1
            else f"{len(infos)} evaluations side by side"
        )
        self.subset = "all"
        self.curve = "mae"
        self.trial: int | None = None

    def signature(self) -> Any:
        return tuple((tuple(f.optimisers), f.status) for f in self.fs)

    def _series(self) -> list[Series]:
        out = []
        for i, (info, f) in enumerate(zip(self.infos, self.fs, strict=True)):
            for opt in f.optimisers:
                if opt not in f.curves:
                    continue
                name = opt if len(self.infos) == 1 else f"{info.label}: {opt}"
                out.append(Series(name, i, opt, COLOURS[len(out) % 10]))
        return out

    # ------------------------------------------------------------------ build
    def build(self) -> LayoutDOM:
        self.series = self._series()
        self.header = Div(text=self._header(), sizing_mode="stretch_width")
        self.messages = Div(sizing_mode="stretch_width")
        title = (
            f"evaluation {self.infos[0].label}"
            if len(self.infos) == 1
            else "evaluations side by side: " + ", ".join(i.label for i in self.infos)
        )
        top = [nav(title, " | ".join(str(i.path) for i in self.infos)), self.header, self.messages]
        if not self.series:
            top.append(
                Div(
                    text=f"<p style='{FONT}'>No records readable yet: an evaluation "
                    "writes its files at its end; this page shows it when they "
                    "are complete.</p>"
                )
            )
            self.layout = column(*top, sizing_mode="stretch_width")
            return self.layout
        subset = RadioButtonGroup(
            labels=["all trials", "σ > 0 (sized targets)"], active=SUBSETS.index(self.subset)
        )
        curve = RadioButtonGroup(labels=["MAE", "best MAE so far"], active=CURVES.index(self.curve))
        subset.on_change("active", lambda a, o, n: self._controls(subset=SUBSETS[n]))
        curve.on_change("active", lambda a, o, n: self._controls(curve=CURVES[n]))
        self.table_source = ColumnDataSource({})
        table = DataTable(
            source=self.table_source,
            columns=[
                TableColumn(field=k, title=t, width=w)
                for k, t, w in (
                    ("series", "optimiser", 260),
                    ("n", "trials", 50),
                    ("best", "best MAE [µm]", 90),
                    ("best_iqr", "best IQR", 110),
                    ("final", "final MAE [µm]", 90),
                    ("final_iqr", "final IQR", 110),
                    ("to_target", "steps to target", 90),
                    ("to_conv", "steps to conv.", 90),
                    ("reached", "reached 20 µm", 90),
                    ("failed", "failed", 50),
                )
            ],
            height=min(60 + 28 * len(self.series), 320),
            sizing_mode="stretch_width",
            index_position=None,
        )
        # MAE vs step.
        self.band_sources = {s.name: ColumnDataSource({}) for s in self.series}
        self.mae_fig = make_figure("", "step", "MAE to target [µm]", log_y=True, height=380)
        for s in self.series:
            src = self.band_sources[s.name]
            self.mae_fig.varea(
                "step", "q25", "q75", source=src, color=s.colour, alpha=0.18, legend_label=s.name
            )
            self.mae_fig.line(
                "step", "median", source=src, color=s.colour, line_width=2.5, legend_label=s.name
            )
        self.mae_fig.add_layout(
            Span(location=TARGET_UM, dimension="width", line_color="#57606a", line_dash="dashed")
        )
        self.mae_fig.add_tools(
            HoverTool(
                tooltips=[
                    ("step", "@step"),
                    ("median", "@median"),
                    ("25 %", "@q25"),
                    ("75 %", "@q75"),
                ]
            )
        )
        finish_legend(self.mae_fig)
        # Distributions.
        names = [s.name for s in self.series]
        self.point_sources: dict[str, ColumnDataSource] = {}
        self.box_sources: dict[str, ColumnDataSource] = {}
        dist = []
        for key, label in (("final", "final MAE"), ("best", "best MAE")):
            p = make_figure(
                f"{label} per trial (box: quartiles, whiskers 5-95 %; click a trial)",
                "",
                f"{label} [µm]",
                log_y=True,
                height=360,
                x_range=FactorRange(*names),
            )
            box = ColumnDataSource({})
            points = ColumnDataSource({})
            p.segment("series", "p05", "series", "p95", source=box, color="black")
            p.vbar(
                x="series",
                bottom="q25",
                top="q75",
                width=0.6,
                source=box,
                fill_color="colour",
                fill_alpha=0.25,
                line_color="black",
            )
            p.scatter(
                "series", "median", source=box, marker="dash", size=40, color="black", line_width=3
            )
            r = p.scatter(
                jitter("series", width=0.5, range=p.x_range),
                "value",
                source=points,
                color="colour",
                size=6,
                alpha=0.7,
                marker="marker",
                nonselection_alpha=0.25,
                selection_color="#cf222e",
            )
            p.add_tools(
                HoverTool(
                    renderers=[r],
                    tooltips=[
                        ("trial", "@trial"),
                        (label, "@value µm"),
                        ("target σ > 0", "@sigma_pos"),
                    ],
                )
            )
            p.add_tools(TapTool(renderers=[r]))
            p.add_layout(
                Span(
                    location=TARGET_UM, dimension="width", line_color="#57606a", line_dash="dashed"
                )
            )
            p.xaxis.major_label_orientation = 0.3 if len(names) > 3 else 0
            points.selected.on_change("indices", self._tapped(points))
            self.point_sources[key], self.box_sources[key] = points, box
            dist.append(p)
        # Drill-down.
        trials = sorted(
            {int(t) for s in self.series for t in self.fs[s.run].curves[s.optimiser].trials}
        )
        if self.trial not in trials:
            self.trial = trials[0] if trials else None
        self.trial_select = Select(
            title="trial", value=str(self.trial), options=[str(t) for t in trials], width=140
        )
        self.trial_select.on_change("value", lambda a, o, n: self._drill(int(n)))
        self.drill = column(sizing_mode="stretch_width")
        self._controls()
        self._drill(self.trial)
        self.layout = [
            column(*top, sizing_mode="stretch_width"),
            column(
                row(
                    Div(text=f"<b style='{FONT}'>trials:</b>"),
                    subset,
                    Div(text=f"<b style='{FONT}'>curve:</b>"),
                    curve,
                ),
                table,
                self.mae_fig,
                row(*dist, sizing_mode="stretch_width"),
                Div(
                    text=f"<b style='{FONT};font-size:120%'>Per-trial drill-down</b> "
                    f"<span style='{FONT}color:#57606a'>(pick a trial, or click one above)</span>"
                ),
                self.trial_select,
                self.drill,
                sizing_mode="stretch_width",
            ),
        ]
        return self.layout

    def _tapped(self, source: ColumnDataSource) -> Any:
        def callback(attr: str, old: list[int], new: list[int]) -> None:
            if new:
                trial = int(source.data["trial"][new[0]])
                self.trial_select.value = str(trial)

        return callback

    # ------------------------------------------------------------------ controls
    def _controls(self, subset: str | None = None, curve: str | None = None) -> None:
        self.subset = subset or self.subset
        self.curve = curve or self.curve
        for s in self.series:
            c = self.fs[s.run].curves[s.optimiser]
            self.band_sources[s.name].data = c.band(self.curve, self.subset)
        which = "MAE" if self.curve == "mae" else "best MAE so far"
        text = "all trials" if self.subset == "all" else "trials with target σ > 0"
        self.mae_fig.title.text = (
            f"{which} vs step: median (line) and 25-75 % (band), {text}"
            f" (< {FLOOR_UM:g} µm drawn at {FLOOR_UM:g})"
        )
        self._table()
        self._distributions()

    def _table(self) -> None:
        cols: dict[str, list[Any]] = {
            k: []
            for k in (
                "series",
                "n",
                "best",
                "best_iqr",
                "final",
                "final_iqr",
                "to_target",
                "to_conv",
                "reached",
                "failed",
            )
        }
        for s in self.series:
            summary = (self.fs[s.run].docs.get("summary") or {}).get(s.optimiser, {})
            e = summary.get(self.subset, {}) if isinstance(summary, dict) else {}
            cols["series"].append(s.name)
            cols["n"].append(str(e.get("n_trials", "-")))
            cols["best"].append(fmt_um(e.get("median_best_mae_um")))
            cols["best_iqr"].append(_iqr(e.get("iqr_best_mae_um")))
            cols["final"].append(fmt_um(e.get("median_final_mae_um")))
            cols["final_iqr"].append(_iqr(e.get("iqr_final_mae_um")))
            cols["to_target"].append(_steps(e.get("median_steps_to_target")))
            cols["to_conv"].append(_steps(e.get("median_steps_to_convergence")))
            reached = e.get("fraction_reached_target")
            cols["reached"].append("-" if reached is None else f"{100 * float(reached):.0f} %")
            cols["failed"].append(str(e.get("n_failed", "-")))
        self.table_source.data = cols

    def _distributions(self) -> None:
        for key in ("final", "best"):
            box: dict[str, list[Any]] = {
                k: [] for k in ("series", "p05", "q25", "median", "q75", "p95", "colour")
            }
            pts: dict[str, list[Any]] = {
                k: [] for k in ("series", "value", "trial", "sigma_pos", "colour", "marker")
            }
            for s in self.series:
                c = self.fs[s.run].curves[s.optimiser]
                values = (c.mae_um[:, -1] if key == "final" else c.best_um[:, -1]).copy()
                mask = c.sigma_pos if self.subset == "sigma_pos" else np.ones_like(c.sigma_pos)
                values = np.clip(values[mask], FLOOR_UM, None)
                trials, sig = c.trials[mask], c.sigma_pos[mask]
                finite = values[np.isfinite(values)]
                if finite.size:
                    q = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
                    box["series"].append(s.name)
                    for k, v in zip(("p05", "q25", "median", "q75", "p95"), q, strict=True):
                        box[k].append(float(v))
                    box["colour"].append(s.colour)
                pts["series"] += [s.name] * len(values)
                pts["value"] += values.tolist()
                pts["trial"] += [int(t) for t in trials]
                pts["sigma_pos"] += [bool(v) for v in sig]
                pts["colour"] += [s.colour if v else "#57606a" for v in sig]
                pts["marker"] += ["circle" if v else "x" for v in sig]
            self.box_sources[key].data = box
            self.point_sources[key].selected.indices = []
            self.point_sources[key].data = pts

    # ------------------------------------------------------------------ drill-down
    def _drill(self, trial: int | None) -> None:
        self.trial = trial
        children: list[Any] = []
        if trial is None:
            self.drill.children = [Div(text="no trials")]
            return
        for s in self.series:
            f = self.fs[s.run]
            ep = f.episode(s.optimiser, trial)
            if ep is None:
                children.append(
                    Div(
                        text=f"<span style='{FONT}'>{esc(s.name)}: no records "
                        f"of trial {trial}</span>"
                    )
                )
                continue
            children.append(self._episode_row(s, f, trial, ep))
        self.drill.children = children

    def _episode_row(
        self, s: Series, f: EvaluationFollower, trial: int, ep: dict[str, np.ndarray]
    ) -> Any:
        steps = ep["step"].astype(float)
        mae = ep["mae"] * 1e6
        metrics = next(
            (r for r in f.trial_rows(s.optimiser) if int(r.get("trial", -1)) == trial), {}
        )
        failed = metrics.get("error") or ""
        title = (
            f"<b>{esc(s.name)}</b>, trial {trial}: MAE {fmt_um(mae[0])} → {fmt_um(mae[-1])} µm "
            f"(best {fmt_um(np.nanmin(mae))})"
            + (f" <b style='color:#cf222e'>FAILED</b>: {esc(failed)}" if failed else "")
        )
        beam = make_figure("beam (dashed: target)", "step", "true beam [mm]", height=260)
        src = ColumnDataSource(
            {
                "step": steps,
                **{f"beam_{p}": ep[f"beam_{p}"] * 1e3 for p in BEAM if f"beam_{p}" in ep},
            }
        )
        for i, p in enumerate(BEAM):
            if f"beam_{p}" not in ep:
                continue
            beam.line(
                "step", f"beam_{p}", source=src, color=COLOURS[i], line_width=2, legend_label=p
            )
            if f"target_{p}" in ep:
                beam.add_layout(
                    Span(
                        location=float(ep[f"target_{p}"][0]) * 1e3,
                        dimension="width",
                        line_color=COLOURS[i],
                        line_dash="dashed",
                    )
                )
        finish_legend(beam)
        mag = make_figure(
            "magnets (fraction of their range)",
            "step",
            "setting / range",
            height=260,
            x_range=beam.x_range,
        )
        mag.y_range = Range1d(-0.05, 1.05)
        msrc: dict[str, Any] = {"step": steps}
        for a in f.actuators:
            key = f"setting_{a['name']}"
            if key not in ep:
                continue
            low, high = float(a.get("low", math.nan)), float(a.get("high", math.nan))
            msrc[a["name"]] = (ep[key] - low) / (high - low) if high > low else ep[key] * np.nan
            msrc[f"{a['name']}_si"] = ep[key]
        msource = ColumnDataSource(msrc)
        for i, a in enumerate(f.actuators):
            if a["name"] in msrc:
                mag.line(
                    "step",
                    a["name"],
                    source=msource,
                    color=COLOURS[(i + 4) % 10],
                    line_width=2,
                    legend_label=a["name"],
                )
        mag.add_tools(
            HoverTool(
                tooltips=[("step", "@step")]
                + [
                    (a["name"], f"@{{{a['name']}_si}} {a.get('unit', '')}")
                    for a in f.actuators
                    if a["name"] in msrc
                ]
            )
        )
        finish_legend(mag)
        screens = [self._screen(f, ep, 0, "before"), self._screen(f, ep, -1, "after")]
        return column(
            Div(text=f"<div data-field='episode' style='{FONT}'>{title}</div>"),
            row(beam, mag, *screens, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _screen(
        self, f: EvaluationFollower, ep: dict[str, np.ndarray], index: int, when: str
    ) -> Any:
        half = f.half_extent_m or (5e-3, 5e-3)
        hx, hy = half[0] * 1e3, half[1] * 1e3
        on = bool(ep["on_screen"][index]) if "on_screen" in ep else True
        step = int(ep["step"][index])
        p = make_figure(
            f"screen {when} (step {step})" + ("" if on else ", beam off screen"),
            "x [mm]",
            "y [mm]",
            height=260,
            width=300,
            x_range=Range1d(-hx, hx),
            y_range=Range1d(-hy, hy),
        )
        p.background_fill_color = "#0d1117"
        data: dict[str, list[Any]] = {k: [] for k in ("x", "y", "w", "h", "colour")}
        for prefix, colour in (("target", "#ff5050"), ("reading", "#ffffff")):
            if prefix == "reading" and not on:
                continue
            try:
                mx, sx, my, sy = (float(ep[f"{prefix}_{q}"][index]) for q in BEAM)
            except KeyError:
                continue
            data["x"].append(mx * 1e3)
            data["y"].append(my * 1e3)
            data["w"].append(max(2 * sx * 1e3, 0.01))
            data["h"].append(max(2 * sy * 1e3, 0.01))
            data["colour"].append(colour)
        source = ColumnDataSource(data)
        p.ellipse(
            "x",
            "y",
            width="w",
            height="h",
            source=source,
            fill_alpha=0,
            line_color="colour",
            line_width=2,
        )
        p.scatter("x", "y", source=source, marker="cross", size=10, color="colour")
        return p

    # ------------------------------------------------------------------ refresh
    def refresh(self) -> None:
        problems = []
        for info, f in zip(self.infos, self.fs, strict=True):
            problems += [f"{info.label}: {p}" for p in f.problems]
        html = message_box(problems)
        if html != self.messages.text:
            self.messages.text = html

    def _header(self) -> str:
        lines = []
        for info, f in zip(self.infos, self.fs, strict=True):
            cfg = f.config
            trials = cfg.get("trials") or {}
            lines.append(
                f"<div>{state_badge(f.status)} <b>{esc(info.label)}</b>: "
                f"{field('trials', trials.get('n', '?'))} trials, {esc(cfg.get('max_steps', '?'))}"
                f" steps, {esc(cfg.get('env_id', '?'))}, backend {esc(cfg.get('backend', '?'))}, "
                f"optimisers {esc(', '.join(f.optimisers) or '-')}; started "
                f"{esc(cfg.get('started_utc', '?'))}, {fmt(cfg.get('wall_s'), 3)} s</div>"
            )
        return f"<div style='{FONT}'>{''.join(lines)}</div>"
