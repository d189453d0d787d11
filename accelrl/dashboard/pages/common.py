"""Shared look and building blocks of the pages: HTML snippets, figures, the base class."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from bokeh.models import ColumnDataSource, Div, LayoutDOM
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from accelrl.dashboard.links import page_url

#: Line colours (cycled).
COLOURS: tuple[str, ...] = tuple(Category10_10)
#: Display scale and unit of SI units (knob settings, as in the evaluation report).
DISPLAY_UNITS: dict[str, tuple[float, str]] = {
    "rad": (1e3, "mrad"),
    "m": (1e3, "mm"),
    "1/m^2": (1.0, "1/m²"),
}
#: Badge colours of states.
STATE_COLOURS: dict[str, str] = {
    "running": "#1a7f37",
    "finished": "#57606a",
    "complete": "#57606a",
    "waiting": "#9a6700",
    "partial": "#9a6700",
    "stalled": "#9a6700",
    "interrupted": "#9a6700",
    "rolling back": "#cf222e",
    "aborted": "#cf222e",
    "failed": "#cf222e",
}
#: Badge colours of the deploy modes.
MODE_COLOURS: dict[str, str] = {"shadow": "#0969da", "confirm": "#9a6700", "auto": "#8250df"}
FONT = "font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif;"


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML (run files are data, never markup)."""
    return html.escape(str(value), quote=True)


def display_unit(unit: str) -> tuple[float, str]:
    """Scale and shown unit of an SI unit (``rad`` -> ``(1e3, "mrad")``)."""
    return DISPLAY_UNITS.get(unit, (1.0, unit))


def badge(text: str, colour: str) -> str:
    """A coloured label."""
    return (
        f"<span style='background:{colour};color:white;border-radius:4px;padding:1px 7px;"
        f"font-weight:600;font-size:90%'>{esc(text)}</span>"
    )


def state_badge(state: str) -> str:
    """The badge of a run state (``running``, ``finished``, ...)."""
    return badge(state.upper(), STATE_COLOURS.get(state, "#57606a"))


def field(name: str, value: Any) -> str:
    """A value tagged ``data-field=name`` (what tests and the benchmark read)."""
    return f"<span data-field='{esc(name)}'>{esc(value)}</span>"


def ago(t: float) -> str:
    """``"3.2 s ago"`` for a wall-clock time (``"-"`` when unknown)."""
    if not math.isfinite(t):
        return "-"
    dt = max(time.time() - t, 0.0)
    if dt < 120:
        return f"{dt:.1f} s ago"
    if dt < 7200:
        return f"{dt / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people (``-`` when missing or not finite)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-" if value is None else str(value)
    return f"{v:.{digits}g}" if math.isfinite(v) else "-"


def nav(title: str, subtitle: str = "") -> Div:
    """The top bar: a link back to the run list, the page title and a subtitle."""
    return Div(
        text=(
            f"<div style='{FONT}'><a href='{page_url([])}' style='text-decoration:none'>"
            f"&larr; all runs</a> &nbsp; <b style='font-size:130%'>{esc(title)}</b>"
            f"<div style='color:#57606a'>{esc(subtitle)}</div></div>"
        ),
        sizing_mode="stretch_width",
    )


def message_box(problems: Sequence[str]) -> str:
    """Problems with the run's files, as a yellow box (empty when none)."""
    if not problems:
        return ""
    items = "".join(f"<li>{esc(p)}</li>" for p in problems[-8:])
    more = f"<li>... {len(problems) - 8} earlier</li>" if len(problems) > 8 else ""
    return (
        f"<div data-field='problems' style='{FONT}background:#fff8c5;border:1px solid #d4a72c;"
        f"border-radius:6px;padding:6px 12px'><b>Problems reading this run</b>"
        f"<ul style='margin:4px 0'>{more}{items}</ul></div>"
    )


def banner(text_html: str, level: str) -> str:
    """A full-width coloured box (``ok``, ``warning``, ``error``)."""
    colours = {
        "ok": ("#dafbe1", "#1a7f37"),
        "warning": ("#fff8c5", "#9a6700"),
        "error": ("#ffebe9", "#cf222e"),
    }
    bg, fg = colours[level]
    return (
        f"<div data-field='banner' data-level='{level}' style='{FONT}background:{bg};"
        f"border:2px solid {fg};border-radius:6px;padding:8px 14px;color:#1f2328'>"
        f"{text_html}</div>"
    )


def make_figure(
    title: str,
    x_label: str,
    y_label: str,
    *,
    log_y: bool = False,
    height: int = 260,
    width: int | None = None,
    **kwargs: Any,
) -> Any:
    """A figure in the dashboard's style (pan, zoom, reset, save, hover; legend hides)."""
    options: dict[str, Any] = {
        "title": title,
        "height": height,
        "tools": "pan,wheel_zoom,box_zoom,reset,save",
        "toolbar_location": "right",
        "y_axis_type": "log" if log_y else "linear",
        **kwargs,
    }
    if width is None:
        options["sizing_mode"] = "stretch_width"
    else:
        options["width"] = width
    p = figure(**options)
    p.xaxis.axis_label = x_label
    p.yaxis.axis_label = y_label
    p.title.text_font_size = "11pt"
    return p


def finish_legend(p: Any) -> None:
    """Legend in the top right, click to hide a line (when the figure has one)."""
    if p.legend:
        p.legend.click_policy = "hide"
        p.legend.location = "top_right"
        p.legend.label_text_font_size = "8pt"
        p.legend.background_fill_alpha = 0.6


def columns(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Column arrays (float) of ``keys`` from row dicts (NaN where missing)."""
    out: dict[str, np.ndarray] = {}
    for key in keys:
        values = np.empty(len(rows), dtype=float)
        for i, r in enumerate(rows):
            v = r.get(key)
            try:
                values[i] = float(v) if v is not None else math.nan
            except (TypeError, ValueError):
                values[i] = math.nan
        out[key] = values
    return out


class Page:
    """A page: a Bokeh layout plus :meth:`update`, called periodically by the app.

    Subclasses build :attr:`layout` in :meth:`build` and refresh it in :meth:`refresh`;
    :meth:`signature` describes the layout's structure (e.g. the knob names): when it
    changes, or the follower starts over, the app builds the page again.
    """

    title = "accelrl dashboard"
    #: Least time between two refreshes [s] (0: every tick of the app).
    interval_s = 0.0

    def __init__(self) -> None:
        self.layout: LayoutDOM | list[LayoutDOM] | None = None

    def poll(self) -> None:
        """Read new data (followers); default nothing."""

    def generation(self) -> Any:
        """Changes when the data started over (default: never)."""
        return None

    def signature(self) -> Any:
        """What the layout's structure depends on (default: nothing)."""
        return None

    def build(self) -> LayoutDOM | list[LayoutDOM]:
        """Create the layout (and its data sources) from what is known now: one layout, or
        several document roots (a browser lays out each root on its own: text that changes
        often goes in a root without plots, so that it never makes the plots redraw)."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Bring the layout up to date (called periodically)."""
        raise NotImplementedError


def stream(source: ColumnDataSource, data: Mapping[str, np.ndarray]) -> None:
    """Append ``data`` to ``source`` (nothing when empty)."""
    if data and len(next(iter(data.values()))):
        source.stream(dict(data))


#: Least time between two redraws of a page's plots [s]; its numbers and banners follow
#: every refresh (a browser redraws a plot in tens of milliseconds, more without a GPU).
PLOT_INTERVAL_S = 1.0


class RunPage(Page):
    """A page that shows runs through their followers.

    :param followers: The followers it reads (polled before each refresh).
    """

    def __init__(self, followers: Sequence[Any]) -> None:
        super().__init__()
        self.followers = list(followers)
        self._last_plot = -math.inf
        self._last_text = -math.inf

    def text_due(self, every_s: float = 5.0) -> bool:
        """Whether to rebuild the texts although no data arrived (states that change with
        time alone, such as "stalled"), at most every ``every_s``."""
        t = time.monotonic()
        if t - self._last_text >= every_s:
            self._last_text = t
            return True
        return False

    def plots_due(self, now: bool = False) -> bool:
        """Whether to redraw the plots (at most every :data:`PLOT_INTERVAL_S`, or ``now``)."""
        t = time.monotonic()
        if now or t - self._last_plot >= PLOT_INTERVAL_S:
            self._last_plot = t
            return True
        return False

    def poll(self) -> None:
        for f in self.followers:
            f.poll()

    def generation(self) -> Any:
        return tuple(f.generation for f in self.followers)
