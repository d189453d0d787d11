"""The page of a deploy controller run (``accelrl deploy run``, or the ``run/`` of a BO session
on a machine config): mode, status, every safety event, beam error vs step, each knob against
its limits and max step, and the screen with the target ellipse."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    BoxAnnotation,
    ColumnDataSource,
    DataTable,
    Div,
    HoverTool,
    HTMLTemplateFormatter,
    LayoutDOM,
    Range1d,
    Span,
    TableColumn,
)

from accelrl.dashboard.data.deploy import DeployFollower, Event
from accelrl.dashboard.discovery import RunInfo
from accelrl.dashboard.links import file_url
from accelrl.dashboard.pages.common import (
    COLOURS,
    FONT,
    MODE_COLOURS,
    RunPage,
    badge,
    banner,
    columns,
    display_unit,
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

#: What each mode does, for the header.
MODE_TEXT = {
    "shadow": "reads and logs what it would do; never writes",
    "confirm": "asks the operator before each write",
    "auto": "writes every safe proposal",
}
_SEVERITY_COLOURS = {"info": "#57606a", "warning": "#9a6700", "error": "#cf222e"}


def safety_summary(f: DeployFollower) -> tuple[str, str]:
    """The banner's HTML and level: the abort and the rollback's progress first, then
    clips, else all clear."""
    if f.abort is not None:
        a = f.abort
        text = (
            f"<div style='font-size:125%'><b>ABORT</b> at step {field('abort-step', a['step'])}"
            f": <b>{field('abort-reason', a['reason'])}</b> &mdash; {esc(a['detail'])}</div>"
        )
        n = len(f.rollbacks)
        failed = sum(1 for r in f.rollbacks if not r["ok"])
        rollback = (f.end or {}).get("rollback")
        if isinstance(rollback, dict):
            complete = bool(rollback.get("complete"))
            state = "complete" if complete else "INCOMPLETE"
            text += (
                f"<div>Rollback {field('rollback-state', state)}: {n} ramp writes"
                f"{f', {failed} failed' if failed else ''}"
                f"{'' if rollback.get('verified', True) else ', not all verified'}"
                f"{': ' + esc(rollback['detail']) if rollback.get('detail') else ''}</div>"
            )
        elif f.end is not None:
            text += f"<div>Rollback {field('rollback-state', 'none')}: nothing was written</div>"
        else:
            text += (
                f"<div>Rollback {field('rollback-state', 'in progress')}: ramping the knobs "
                f"back to their initial settings at the max step ({n} writes logged so far)"
                "</div>"
            )
        return text, "error"
    if f.clips:
        last = next((e for e in reversed(f.events) if e.kind == "clip"), None)
        text = f"<b>{field('clips', f.clips)} clips</b> by the safety layer"
        if last is not None:
            text += f"; latest at step {last.step}: {esc(last.text)}"
        return text, "warning"
    refused = sum(1 for e in f.events if e.kind == "refused")
    if refused:
        return f"<b>{refused}</b> writes refused by the operator; no safety events", "warning"
    return "No safety events: no clips, no abort", "ok"


class DeployPage(RunPage):
    """A deploy run, live (see the module documentation).

    :param info: The run.
    :param follower: Its follower.
    """

    def __init__(self, info: RunInfo, follower: DeployFollower) -> None:
        super().__init__([follower])
        self.info = info
        self.f = follower
        self.title = f"deploy {info.label}"

    def signature(self) -> Any:
        f = self.f
        return (tuple(f.knob_names), tuple(f.beam_names), f.start is not None)

    # ------------------------------------------------------------------ build
    def build(self) -> list[LayoutDOM]:
        f = self.f
        self.cursor = 0
        self.n_events = -1
        self.seen_version = -1
        self.plots_pending = True
        self.shown_screen: Any = None
        self.header = Div(sizing_mode="stretch_width")
        self.banner = Div(sizing_mode="stretch_width")
        self.messages = Div(sizing_mode="stretch_width")
        self.knob_table = Div(sizing_mode="stretch_width")
        self.knobs = f.knob_names
        self.beams = f.beam_names
        self.bounds = self._bounds()
        plotted = self._keys() + [f"pos_{k}" for k in self.knobs]
        self.steps = ColumnDataSource({k: np.array([], dtype=float) for k in plotted})
        self.marks = ColumnDataSource({"x": [], "pos": [], "colour": [], "marker": []})
        self.n_marks = (-1, -1)
        self.event_source = ColumnDataSource(
            {"step": [], "time": [], "kind": [], "text": [], "colour": []}
        )
        err, mae = self._error_figures()
        knobs, frac = self._knob_figures(err)
        screen = self._screen_figure()
        table = DataTable(
            source=self.event_source,
            columns=[
                TableColumn(field="step", title="step", width=50),
                TableColumn(field="time", title="time", width=80),
                TableColumn(field="kind", title="event", width=80),
                TableColumn(
                    field="text",
                    title="what happened",
                    width=700,
                    formatter=HTMLTemplateFormatter(
                        template="<span style='color:<%= colour %>'><%- value %></span>"
                    ),
                ),
            ],
            height=220,
            sizing_mode="stretch_width",
            index_position=None,
        )
        events_title = Div(text=f"<b style='{FONT}'>Safety and run events (newest first)</b>")
        # Separate roots: a browser lays out each root on its own, so the numbers and the
        # banner (updated every refresh) never make it redraw the plots.
        self.layout = [
            column(
                nav(f"deploy run {self.info.label}", str(self.info.path)),
                self.header,
                self.banner,
                self.messages,
                sizing_mode="stretch_width",
            ),
            column(
                row(
                    column(err, mae, sizing_mode="stretch_width"),
                    column(screen, self.screen_note),
                    sizing_mode="stretch_width",
                ),
                row(knobs, frac, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            column(self.knob_table, events_title, table, sizing_mode="stretch_width"),
        ]
        return self.layout

    def _bounds(self) -> dict[str, tuple[float, float, float, str, float]]:
        """Knob -> ``(low, high, max_step, unit shown, display scale)``."""
        out = {}
        for k in self.knobs:
            lim = self.f.limits.get(k, {})
            scale, unit = display_unit(str(lim.get("unit", "")))
            low, high = float(lim.get("low", math.nan)), float(lim.get("high", math.nan))
            out[k] = (low, high, float(lim.get("max_step", math.nan)), unit, scale)
        return out

    def _keys(self) -> list[str]:
        keys = ["step", "mae_um", *(f"err_{n}" for n in self.beams)]
        for k in self.knobs:
            keys += [f"knob_{k}", f"safe_{k}", f"frac_{k}"]
        return keys

    def _error_figures(self) -> tuple[Any, Any]:
        thresholds = [t for t in self.f.thresholds_um if math.isfinite(t)]
        err = make_figure("beam − target (band: target reached)", "step", "error [µm]",
                          height=280)  # fmt: skip
        if thresholds:
            t = max(thresholds)
            err.add_layout(BoxAnnotation(bottom=-t, top=t, fill_color="#1a7f37", fill_alpha=0.12))
        err.add_layout(Span(location=0, dimension="width", line_color="#8c959f", line_width=1))
        for i, name in enumerate(self.beams):
            colour = COLOURS[i % 10]
            err.line("step", f"err_{name}", source=self.steps, color=colour, legend_label=name,
                     line_width=2)  # fmt: skip
        err.add_tools(HoverTool(tooltips=[("step", "@step")] + [
            (n, f"@err_{n}{{0.0}} µm") for n in self.beams]))  # fmt: skip
        finish_legend(err)
        mae = make_figure("MAE to target", "step", "MAE [µm]", log_y=True, height=240,
                          x_range=err.x_range)  # fmt: skip
        if thresholds:
            mae.add_layout(BoxAnnotation(top=min(thresholds), fill_color="#1a7f37",
                                         fill_alpha=0.12))  # fmt: skip
        mae.line("step", "mae_um", source=self.steps, color="black", line_width=2)
        return err, mae

    def _knob_figures(self, err: Any) -> tuple[Any, Any]:
        knobs = make_figure("knob settings between their limits (0 = low, 1 = high limit; "
                            "circles: clipped, triangles: rollback)", "step",
                            "(setting − low) / (high − low)", height=300,
                            x_range=err.x_range)  # fmt: skip
        knobs.y_range = Range1d(-0.08, 1.08)
        for v in (0.0, 1.0):
            knobs.add_layout(Span(location=v, dimension="width", line_color="#cf222e",
                                  line_dash="dashed", line_width=1.5))  # fmt: skip
        tips = [("step", "@step")]
        for i, k in enumerate(self.knobs):
            colour = COLOURS[i % 10]
            knobs.line("step", f"pos_{k}", source=self.steps, color=colour, line_width=2,
                       legend_label=k)  # fmt: skip
            unit = self.bounds[k][3]
            tips.append((k, f"@{{knob_{k}}}{{0.000}} → @{{safe_{k}}}{{0.000}} {unit}"))
        # Clips and rollback writes: one renderer for all knobs (a browser draws each renderer).
        knobs.scatter("x", "pos", source=self.marks, marker="marker", size=10,
                      fill_color="colour", fill_alpha=0.35, line_color="#cf222e")  # fmt: skip
        knobs.add_tools(HoverTool(tooltips=tips, renderers=knobs.renderers[: len(self.knobs)]))
        finish_legend(knobs)
        frac = make_figure("proposed change / max step (1 = the limit)", "step",
                           "|Δ| / max step", height=300, x_range=err.x_range)  # fmt: skip
        frac.add_layout(Span(location=1.0, dimension="width", line_color="#cf222e",
                             line_dash="dashed", line_width=1.5))  # fmt: skip
        for i, k in enumerate(self.knobs):
            frac.line("step", f"frac_{k}", source=self.steps, color=COLOURS[i % 10],
                      legend_label=k, line_width=2)  # fmt: skip
        finish_legend(frac)
        return knobs, frac

    def _screen_figure(self) -> Any:
        self.screen_source = ColumnDataSource({"url": [], "x": [], "y": [], "w": [], "h": []})
        self.ellipses = ColumnDataSource(
            {"x": [], "y": [], "w": [], "h": [], "colour": [], "label": []}
        )
        screen = make_figure("screen (latest step)", "x [mm]", "y [mm]", height=330, width=380,
                             match_aspect=True)  # fmt: skip
        screen.background_fill_color = "#0d1117"
        screen.image_url(url="url", x="x", y="y", w="w", h="h", anchor="top_left",
                         source=self.screen_source)  # fmt: skip
        screen.ellipse(x="x", y="y", width="w", height="h", source=self.ellipses, fill_alpha=0,
                       line_color="colour", line_width=2, legend_field="label")  # fmt: skip
        screen.scatter(x="x", y="y", source=self.ellipses, marker="cross", size=10,
                       color="colour")  # fmt: skip
        screen.legend.location = "top_left"
        screen.legend.label_text_font_size = "8pt"
        screen.legend.background_fill_alpha = 0.5
        self.screen_fig = screen
        self.screen_note = Div(width=380)
        return screen

    # ------------------------------------------------------------------ refresh
    def refresh(self) -> None:
        f = self.f
        new = f.version != self.seen_version
        self.seen_version = f.version
        self.plots_pending = self.plots_pending or new
        if self.plots_pending and self.plots_due(now=f.end is not None or f.abort is not None):
            self.plots_pending = False
            self._plots()
            html = self._knob_table()
            if self.knob_table.text != html:
                self.knob_table.text = html
        if not (new or self.text_due()):
            return  # nothing new: no work (the state is re-checked every few seconds)
        if len(f.events) != self.n_events:
            self.n_events = len(f.events)
            self._events(f.events)
        for div, html in (
            (self.header, self._header()),
            (self.banner, banner(*safety_summary(f))),
            (self.messages, message_box(f.problems)),
        ):
            if div.text != html:
                div.text = html

    def _plots(self) -> None:
        f = self.f
        rows = f.rows[self.cursor :]
        if rows:
            data = columns(rows, self._keys())
            for k in self.knobs:
                low, high, _, _, scale = self.bounds[k]
                span = high - low if high > low else math.nan
                data[f"pos_{k}"] = (data[f"knob_{k}"] - low) / span
                for key in (f"knob_{k}", f"safe_{k}"):
                    data[key] = data[key] * scale
            stream(self.steps, data)
            self.cursor = len(f.rows)
        if (f.clips, len(f.rollbacks)) != self.n_marks:
            self.n_marks = (f.clips, len(f.rollbacks))
            self.marks.data = self._marks()
        self._screen()

    def _marks(self) -> dict[str, list[Any]]:
        """Clipped proposals (circles) and rollback writes (triangles), as positions
        between the limits."""
        f = self.f
        out: dict[str, list[Any]] = {"x": [], "pos": [], "colour": [], "marker": []}
        for i, k in enumerate(self.knobs):
            low, high, _, _, _ = self.bounds[k]
            if not high > low:
                continue
            for r in f.rows:
                v = r.get(f"clip_{k}", math.nan)
                if math.isfinite(v):
                    out["x"].append(r["step"])
                    out["pos"].append((v - low) / (high - low))
                    out["colour"].append("#cf222e")
                    out["marker"].append("circle")
            for x, r in zip(f.rollback_positions(), f.rollbacks, strict=True):
                v = r.get(f"set_{k}", math.nan)
                if math.isfinite(v):
                    out["x"].append(x)
                    out["pos"].append((v - low) / (high - low))
                    out["colour"].append(COLOURS[i % 10])
                    out["marker"].append("triangle")
        return out

    def _knob_table(self) -> str:
        """Each knob now: readback, proposal, limits, max step, the last proposal's size."""
        f = self.f
        if not f.rows or not self.knobs:
            return ""
        last = f.rows[-1]
        proposal = next((r for r in reversed(f.rows) if math.isfinite(r.get(
            f"safe_{self.knobs[0]}", math.nan))), last)  # fmt: skip
        cells = ["<tr><th align='left'>knob</th><th>readback</th><th>safe proposal</th>"
                 "<th>low limit</th><th>high limit</th><th>max step</th>"
                 "<th>proposed |Δ| / max step</th><th>unit</th></tr>"]  # fmt: skip
        for k in self.knobs:
            low, high, max_step, unit, scale = self.bounds[k]
            frac = proposal.get(f"frac_{k}", math.nan)
            hot = "color:#cf222e;font-weight:600" if math.isfinite(frac) and frac > 0.999 else ""
            cells.append(
                f"<tr><td><b>{esc(k)}</b></td>"
                + "".join(
                    f"<td align='right'>{fmt(v * scale, 5)}</td>"
                    for v in (
                        last.get(f"knob_{k}", math.nan),
                        proposal.get(f"safe_{k}", math.nan),
                        low,
                        high,
                        max_step,
                    )
                )  # fmt: skip
                + f"<td align='right' style='{hot}'>{fmt(frac, 3)}</td>"
                f"<td>{esc(unit)}</td></tr>"
            )
        return (f"<table data-field='knob-table' style='{FONT}border-collapse:collapse'>"
                f"{''.join(cells)}</table>")  # fmt: skip

    def _header(self) -> str:
        f = self.f
        start = f.start or {}
        mode = f.mode
        last = f.rows[-1]["step"] if f.rows else "-"
        mae = f.rows[-1]["mae_um"] if f.rows else math.nan
        budget = start.get("max_steps", "?")
        end = f.end or {}
        when = (
            time.strftime("%H:%M:%S", time.localtime(f.last_record_time))
            if math.isfinite(f.last_record_time)
            else "-"
        )
        parts = [
            state_badge(f.status),
            badge(f"MODE {mode.upper()}", MODE_COLOURS.get(mode, "#57606a")),
            f"<span style='color:#57606a'>{esc(MODE_TEXT.get(mode, ''))}</span>",
        ]
        facts = [
            ("machine", f"{start.get('machine', '?')} ({start.get('transport', '?')})"),
            ("source", f"{start.get('source', '?')} {start.get('bundle', '')}"),
        ]
        values = (
            f"steps {field('steps', len(f.rows))} (last step {field('last-step', last)}, "
            f"budget {esc(budget)}) &middot; writes {field('writes', f.writes)} &middot; "
            f"clips {field('clip-count', f.clips)} &middot; MAE {field('mae', fmt(mae, 3))} µm "
            f"&middot; last record at {esc(when)}"
        )
        if end:
            values += f" &middot; ended: <b>{field('end-reason', end.get('reason', '?'))}</b>"
        fact_html = " &middot; ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in facts)
        return (
            f"<div style='{FONT}'><div style='font-size:115%'>{' '.join(parts)}</div>"
            f"<div>{fact_html}</div><div>{values}</div></div>"
        )

    def _events(self, events: list[Event]) -> None:
        shown = list(reversed(events))[:500]
        self.event_source.data = {
            "step": [str(e.step) if e.step >= 0 else "" for e in shown],
            "time": [
                time.strftime("%H:%M:%S", time.localtime(e.time)) if math.isfinite(e.time) else ""
                for e in shown
            ],
            "kind": [e.kind for e in shown],
            "text": [e.text for e in shown],
            "colour": [_SEVERITY_COLOURS.get(e.severity, "#57606a") for e in shown],
        }

    def _screen(self) -> None:
        f = self.f
        step = f.last_step or {}
        key = (id(step), f.screen.get("file") if f.screen else None)
        if key == self.shown_screen:
            return
        self.shown_screen = key
        obs = step.get("observation") if isinstance(step.get("observation"), dict) else {}
        target = step.get("target") if isinstance(step.get("target"), dict) else {}
        if not target:
            target = (f.start or {}).get("target") or {}
        ell: dict[str, list[Any]] = {k: [] for k in ("x", "y", "w", "h", "colour", "label")}
        for values, colour, label in (
            (target, "#ff5050", "target"),
            (obs, "#ffffff", "beam (measured)"),
        ):
            try:
                mx, sx, my, sy = (float(values[n]) for n in ("mu_x", "sigma_x", "mu_y", "sigma_y"))
            except (KeyError, TypeError, ValueError):
                continue
            if not all(math.isfinite(v) for v in (mx, sx, my, sy)):
                continue
            ell["x"].append(mx * 1e3)
            ell["y"].append(my * 1e3)
            ell["w"].append(max(2 * sx * 1e3, 1e-3))
            ell["h"].append(max(2 * sy * 1e3, 1e-3))
            ell["colour"].append(colour)
            ell["label"].append(label)
        self.ellipses.data = ell
        screen = f.screen
        extent = screen.get("extent_m") if screen else None
        if (
            screen
            and isinstance(extent, list)
            and len(extent) == 4
            and all(isinstance(v, (int, float)) for v in extent)
        ):
            x0, x1, y0, y1 = (float(v) * 1e3 for v in extent)
            url = file_url(self.info.id, str(screen["file"]))
            self.screen_source.data = {
                "url": [url],
                "x": [x0],
                "y": [y1],
                "w": [x1 - x0],
                "h": [y1 - y0],
            }
            self.screen_fig.x_range.update(start=x0, end=x1)
            self.screen_fig.y_range.update(start=y0, end=y1)
            self.screen_note.text = (
                f"<span style='{FONT}color:#57606a'>camera frame of step {esc(screen['step'])}"
                "; ellipses: 1 σ of the measured beam and of the target</span>"
            )
        else:
            self.screen_source.data = {"url": [], "x": [], "y": [], "w": [], "h": []}
            self.screen_note.text = (
                f"<span style='{FONT}color:#57606a'>no camera frame in this run: the measured "
                "beam and the target as 1 σ ellipses</span>"
            )
