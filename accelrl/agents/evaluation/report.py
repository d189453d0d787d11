"""Markdown report and plots of an evaluation (the edge where metres become micrometres).

:func:`write_report` writes into a directory:

* ``report.md``: the run's configuration, the summary table (median and IQR per optimiser,
  all trials and the ``sigma_pos`` subset), failures, the published reference numbers and
  the figures below;
* ``mae_vs_step.png``: MAE and best-so-far MAE against step, median line and IQR band per
  optimiser, log scale in um;
* ``mae_distributions.png``: final and best MAE per optimiser (box plots with every trial
  as a point; trials whose target asks for a zero size in grey);
* ``episode_trial<K>.png``: example trials, one row per optimiser: beam parameters against
  the target, magnet settings, and the screen before and after.

>>> from accelrl.agents.evaluation.report import write_report
>>> write_report(result, "runs/eval")  # doctest: +SKIP

Its size (~640 lines): the tables, the three kinds of figure and the Markdown that embeds them
make one report and share its micrometre formatting, colours and target line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from accelrl.agents.evaluation.metrics import SUBSETS, TARGET_MAE, best_so_far
from accelrl.names import ARES_EA_ID

if TYPE_CHECKING:
    from accelrl.agents.evaluation import EvaluationResult

UM = 1e6
MM = 1e3
#: Published results on the 300 ARES-EA trials (150 steps, simulation): median best MAE [um]
#: and median steps to convergence (Kaiser, Xu, Eichler et al., Sci. Rep. 14, 2024).
PUBLISHED: tuple[tuple[str, float, int], ...] = (
    ("RL-trained optimiser (TD3)", 4.4, 7),
    ("Bayesian optimisation (EI)", 45.0, 32),
    ("Nelder-Mead", 266.0, 29),
    ("random search", 465.0, 33),
)
BEAM = ("mu_x", "sigma_x", "mu_y", "sigma_y")
#: Smallest MAE drawn on log axes [um]: far below a screen pixel (~3 um); a simulation can
#: reach sub-nanometre errors that no measurement resolves.
FLOOR_UM = 0.1
_SUBSET_TEXT = {"all": "all", "sigma_pos": "sigma > 0"}
#: Display scale and unit of an SI unit.
_DISPLAY = {"rad": (1e3, "mrad"), "m": (1e3, "mm"), "1/m^2": (1.0, "1/m²")}


# --------------------------------------------------------------------------- table
def _fmt_mae(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}" if value >= 1000 else f"{value:.1f}"


def _fmt_steps(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "never"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _range(lo: str, hi: str) -> str:
    return lo if lo == hi else f"{lo}-{hi}"


def summary_rows(result: EvaluationResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (MAE in um; ``never``: the quantile trial did
    not reach the target within the episode)."""
    header = [
        "optimiser",
        "trials",
        "n",
        "best MAE [um]",
        "best IQR",
        "final MAE [um]",
        "final IQR",
        "steps to target",
        "target IQR",
        "reached",
        "steps to conv.",
        "conv. IQR",
        "failed",
        "ask [ms]",
    ]
    rows = []
    summary = result.summary_json()
    for label in result.optimisers:
        for subset in SUBSETS:
            s = summary[label][subset]
            b, f = s["iqr_best_mae_um"], s["iqr_final_mae_um"]
            t, c = s["iqr_steps_to_target"], s["iqr_steps_to_convergence"]
            reached = s["fraction_reached_target"]
            ask = s["median_ask_time_ms"]
            rows.append(
                [
                    label if subset == "all" else "",
                    _SUBSET_TEXT[subset],
                    str(s["n_trials"]),
                    _fmt_mae(s["median_best_mae_um"]),
                    _range(_fmt_mae(b[0]), _fmt_mae(b[1])),
                    _fmt_mae(s["median_final_mae_um"]),
                    _range(_fmt_mae(f[0]), _fmt_mae(f[1])),
                    _fmt_steps(s["median_steps_to_target"]),
                    _range(_fmt_steps(t[0]), _fmt_steps(t[1])),
                    "-" if reached is None else f"{100 * reached:.0f}%",
                    _fmt_steps(s["median_steps_to_convergence"]),
                    _range(_fmt_steps(c[0]), _fmt_steps(c[1])),
                    str(s["n_failed"]),
                    "-" if ask is None else "<0.01" if ask < 0.01 else f"{ask:.3g}",
                ]
            )
    return header, rows


def class_rows(breakdown: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-class table: optimiser, class, trials, median initial /
    best / final MAE [um], reached, worse than start, flag (``WORSE`` when flagged)."""
    header = [
        "optimiser",
        "class",
        "trials",
        "initial MAE",
        "best MAE",
        "final MAE",
        "reached",
        "ended worse",
        "flag",
    ]
    rows = []
    for label, per in breakdown["classes"].items():
        for key, e in per.items():
            rows.append(
                [
                    label,
                    key,
                    str(e["n"]),
                    f"{e['median_initial_mae_um']:.1f}",
                    f"{e['median_best_mae_um']:.2f}",
                    f"{e['median_final_mae_um']:.2f}",
                    f"{100 * e['fraction_reached_target']:.0f}%",
                    f"{100 * e['fraction_worse_than_start']:.0f}%",
                    "WORSE" if e["flagged"] else "",
                ]
            )
    return header, rows


def score_rows(breakdown: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the RL4AA'25 score table (one row per optimiser)."""
    header = ["optimiser", "score", "median final MAE [um]", "median steps", "median change"]
    rows = []
    for label, s in breakdown["rl4aa25_score"].items():
        if s is None:
            rows.append([label, "n/a", "", "", ""])
            continue
        rows.append(
            [
                label,
                f"{s['score']:.4f}",
                f"{s['median_final_mae'] * 1e6:.2f}",
                f"{s['median_steps_to_convergence']:g}",
                f"{s['median_magnet_change']:.3f}",
            ]
        )
    return header, rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    right = [i >= 2 for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _q(values: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.nanquantile(values, q, axis=axis)


def _target_line(ax: Any, left: bool) -> None:
    """The 20 um target as a dashed line, labelled at the left (below) or right (above)."""
    ax.axhline(TARGET_MAE * UM, color="0.3", ls="--", lw=1)
    ax.text(
        0.01 if left else 0.99,
        TARGET_MAE * UM,
        "target 20 um" if left else "target 20 um ",
        transform=ax.get_yaxis_transform(),
        ha="left" if left else "right",
        va="top" if left else "bottom",
        fontsize=9,
        color="0.3",
    )


def plot_mae_vs_step(result: EvaluationResult, path: str | Path, subset: str = "all") -> Path:
    """MAE and best-so-far MAE [um] against step: median and IQR band per optimiser."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, layout="constrained")
    colours = _colours(len(result.optimisers))
    n = 0
    for label, colour in zip(result.optimisers, colours, strict=True):
        indices, mae = result.mae_matrix(label)
        if subset == "sigma_pos":
            mask = result.trial_table(label)["sigma_pos"].astype(bool)
            mae = mae[mask]
        n = mae.shape[0]
        best = np.vstack([best_so_far(row) for row in mae])
        steps = np.arange(mae.shape[1])
        for ax, values in zip(axes, (mae, best), strict=True):
            um = np.clip(values * UM, FLOOR_UM, None)
            ax.fill_between(steps, _q(um, 0.25), _q(um, 0.75), color=colour, alpha=0.2, lw=0)
            ax.plot(steps, _q(um, 0.5), color=colour, lw=2, label=label)
    for ax, title in zip(axes, ("MAE", "best MAE so far"), strict=True):
        _target_line(ax, left=True)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        ax.set_xlim(0, int(result.config["max_steps"]))
    axes[0].set_ylabel(f"MAE to target [um] (< {FLOOR_UM:g} um drawn at {FLOOR_UM:g})")
    fig.suptitle(
        f"MAE of the true beam vs step: median (line) and 25-75% (band), "
        f"{n} trials ({_SUBSET_TEXT[subset]})"
    )
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=min(len(result.optimisers), 6),
        fontsize=9,
        frameon=False,
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tick_label(label: str, width: int = 18) -> str:
    """``label`` broken into lines of at most ``width`` characters after ``/``, ``:`` or
    spaces (a policy path stays readable under its box, and never runs into the
    next one); a part longer than ``width`` is kept whole.

    >>> tick_label("policy:runs/fodo-apg/policy", 12)
    'policy:runs/\nfodo-apg/\npolicy'
    """
    parts, current = [], ""
    for piece in re.split(r"(?<=[/: ])", label):
        if current and len(current) + len(piece) > width:
            parts.append(current)
            current = ""
        current += piece
    parts.append(current)
    return "\n".join(p.strip() for p in parts if p.strip())


def plot_mae_distributions(result: EvaluationResult, path: str | Path) -> Path:
    """Final and best MAE per optimiser [um]: box plots plus every trial as a point."""
    plt = _pyplot()
    labels = result.optimisers
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(max(8.0, 2.2 + 1.6 * len(labels)) * 1.6 / 1.3, 5.2),
        sharey=True,
        layout="constrained",
    )
    colours = _colours(len(labels))
    rng = np.random.default_rng(0)
    for ax, key, title in zip(
        axes, ("final_mae", "best_mae"), ("final MAE", "best MAE"), strict=True
    ):
        data, grey = [], []
        for i, label in enumerate(labels):
            t = result.trial_table(label)
            values = np.clip(t[key] * UM, FLOOR_UM, None)
            data.append(values)
            pos = t["sigma_pos"].astype(bool)
            x = i + 1 + rng.uniform(-0.18, 0.18, values.size)
            ax.scatter(x[pos], values[pos], s=6, color=colours[i], alpha=0.5, lw=0)
            grey.append(
                ax.scatter(x[~pos], values[~pos], s=14, color="0.3", alpha=0.8, lw=0.8, marker="x")
            )
        ax.boxplot(
            data, widths=0.55, showfliers=False, medianprops={"color": "k", "lw": 2}, whis=(5, 95)
        )
        many = len(labels) > 6
        ax.set_xticks(
            range(1, len(labels) + 1),
            [tick_label(label, 14 if many else 18) for label in labels],
            rotation=30 if many else 0,
            ha="right" if many else "center",
            fontsize=8 if len(labels) > 3 else 9,
        )
        _target_line(ax, left=False)
        ax.set_yscale("log")
        ax.set_title(f"{title} per trial (box: quartiles, whiskers: 5-95%)")
        ax.grid(True, axis="y", which="major", alpha=0.3)
        if grey and grey[0].get_offsets().size:
            ax.legend(
                [grey[0]],
                ["target size 0 (trials excluded from sigma > 0)"],
                loc="upper right",
                fontsize=8,
            )
    axes[0].set_ylabel(f"MAE to target [um] (< {FLOOR_UM:g} um drawn at {FLOOR_UM:g})")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _display(unit: str) -> tuple[float, str]:
    return _DISPLAY.get(unit, (1.0, unit))


def plot_episode(
    result: EvaluationResult,
    trial: int,
    path: str | Path,
    optimisers: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One trial, one row per optimiser: beam vs target [mm], magnets, screen before/after."""
    from accelrl.envs.render import screen_image

    plt = _pyplot()
    labels = list(optimisers or result.optimisers)
    half = tuple(result.config["screen"]["half_extent_m"])
    actuators = result.config["actuators"]
    fig, axes = plt.subplots(
        len(labels),
        4,
        figsize=(17, 3.3 * len(labels) + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.35, 1.35, 1, 1]},
        layout="constrained",
    )
    beam_colours = _colours(4)
    extent = (-half[0] * MM, half[0] * MM, -half[1] * MM, half[1] * MM)
    # The beam panel shows the screen's range; off-screen steps are shaded.
    y_lim = 1.08 * max(half) * MM
    units = list(dict.fromkeys(a["unit"] for a in actuators))
    act_colours = [beam_colours[0]] if not actuators else _colours(4 + len(actuators))[4:]
    handles: list[Any] = []
    any_off = False
    for r, (row, label) in enumerate(zip(axes, labels, strict=True)):
        ep = result.episode(label, trial)
        steps = ep["step"]
        ax = row[0]
        off = ~ep["on_screen"].astype(bool)
        if off.any():
            any_off = True
            ax.fill_between(steps, -y_lim, y_lim, where=off, step="mid", color="0.85", lw=0)
        for i, p in enumerate(BEAM):
            (h,) = ax.plot(steps, ep[f"beam_{p}"] * MM, color=beam_colours[i], lw=1.6, label=p)
            ax.axhline(ep[f"target_{p}"][0] * MM, color=beam_colours[i], ls="--", lw=1)
            if r == 0:
                handles.append(h)
        ax.set_ylim(-y_lim, y_lim)
        ax.set_ylabel("true beam [mm]")
        ax.grid(True, alpha=0.3)
        mae = ep["mae"] * UM
        table = result.trial_table(label)
        err = table["error"][table["trial"] == trial]
        note = f"  FAILED: {err[0][:60]}" if err.size and err[0] else ""
        ax.set_title(
            f"{label}: MAE {_fmt_mae(mae[0])} -> {_fmt_mae(mae[-1])} um "
            f"(best {_fmt_mae(float(np.nanmin(mae)))}){note}",
            fontsize=10,
            loc="left",
            fontweight="bold",
        )
        # Magnets against their limits: first unit on the left axis (solid), second on the
        # right axis (dotted), e.g. quadrupoles [1/m^2] and steerers [mrad].
        ax = row[1]
        axes_by_unit = {units[0]: ax} if units else {}
        if len(units) > 1:
            axes_by_unit[units[1]] = ax.twinx()
        for i, a in enumerate(actuators):
            uax = axes_by_unit.get(a["unit"], ax)
            scale, _ = _display(a["unit"])
            ls = ":" if len(units) > 1 and a["unit"] == units[1] else "-"
            (h,) = uax.plot(
                steps,
                ep[f"setting_{a['name']}"] * scale,
                color=act_colours[i],
                lw=1.6,
                ls=ls,
                label=a["name"],
            )
            if r == 0:
                handles.append(h)
        for unit, uax in axes_by_unit.items():
            scale, shown = _display(unit)
            members = [a for a in actuators if a["unit"] == unit]
            lo = min(a["low"] for a in members) * scale
            hi = max(a["high"] for a in members) * scale
            pad = 0.05 * (hi - lo)
            uax.set_ylim(lo - pad, hi + pad)
            uax.set_ylabel(f"{'/'.join(a['name'] for a in members)} [{shown}]")
        # No title here: the row's title (left panel) runs on over this panel.
        ax.grid(True, alpha=0.3)
        for ax, s, name in ((row[2], 0, "before"), (row[3], -1, "after")):
            reading = np.array([ep[f"reading_{p}"][s] for p in BEAM])
            target = np.array([ep[f"target_{p}"][s] for p in BEAM])
            on = bool(ep["on_screen"][s])
            image = screen_image(reading, target, half, on_screen=on)
            ax.imshow(image, extent=extent, aspect="equal", interpolation="nearest")
            ax.set_xlabel("x [mm]")
            ax.set_ylabel("y [mm]")
            ax.set_title(
                f"screen {name} (step {int(steps[s])})" + ("" if on else ", beam off screen"),
                fontsize=10,
                loc="left",
            )
    for ax in axes[-1, :2]:
        ax.set_xlabel("step")
    if any_off:
        from matplotlib.patches import Patch

        handles.append(Patch(color="0.85", label="beam off screen"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=len(handles),
        fontsize=9,
        title="beam: solid = true beam, dashed = target; magnets (axis range = limits): solid = "
        "left axis, dotted = right axis; screen: red ellipse = target (1 sigma)",
        title_fontsize=9,
        frameon=False,
    )
    fig.suptitle(title or f"trial {trial}", fontsize=12)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def example_trials(result: EvaluationResult, n: int = 3) -> list[tuple[int, str]]:
    """``n`` trials to show, with why: the trials at the 10th, 50th and 90th percentile
    (for ``n = 3``) of the first optimiser's final MAE among the ``sigma_pos`` trials."""
    label = result.optimisers[0]
    t = result.trial_table(label)
    mask = t["sigma_pos"].astype(bool)
    if not mask.any():
        mask = np.ones_like(mask)
    idx, final = t["trial"][mask], t["final_mae"][mask]
    order = np.argsort(final, kind="stable")
    qs = np.linspace(0.1, 0.9, n) if n > 1 else np.array([0.5])
    out: list[tuple[int, str]] = []
    for q in qs:
        k = int(order[min(int(round(q * (len(order) - 1))), len(order) - 1)])
        trial = int(idx[k])
        if trial not in [o[0] for o in out]:
            out.append((trial, f"{100 * q:.0f}th percentile of {label}'s final MAE"))
    return out


# --------------------------------------------------------------------------- report
def markdown_report(result: EvaluationResult, figures: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown report; ``figures`` are ``(file name, caption)`` pairs to embed."""
    c = result.config
    lines = [f"# Evaluation: {', '.join(result.optimisers)}", ""]
    trials = c["trials"]
    if str(trials["source"]).startswith("sampled"):
        source = f"the task's randomisation ({trials['source']})"
    elif trials.get("default"):
        source = "the published ARES-EA set"
    else:
        source = f"`{trials['source']}`"
    lines += [
        f"- task: `{c['env_id']}`, backend `{c['backend']}`, {c['max_steps']} steps per trial, "
        f"seed {c['seed']} (trial seed = {c['trial_seed']})",
        f"- world: `{c.get('world', {}).get('name', 'ideal')}`"
        + (f" (`{c['world']['source']}`)" if c.get("world") else ""),
        f"- trials: {trials['n']} from {source}"
        + (f" (first {trials['limit']})" if trials.get("limit") else "")
        + (f", sha256 `{trials['sha256'][:12]}`" if trials.get("sha256") else ""),
        "- optimisers: "
        + "; ".join(
            f"`{o['label']}` (name `{o['name']}`, spec `{o['spec']}`)" for o in c["optimisers"]
        ),
        f"- executor: {c['executor']} ({c['workers']} workers, {c['chunk_size']} trials per "
        f"task), wall time {c['wall_s']:.1f} s, started {c['started_utc']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in c["versions"].items() if v),
        f"- git: {c['git'].get('commit') or 'n/a'}"
        + (" (uncommitted changes)" if c["git"].get("dirty") else ""),
        "",
        "## Summary",
        "",
        "Median and interquartile range (25th-75th percentile) per optimiser, over all trials "
        "and over the trials whose target sizes are both > 0 (`sigma > 0`). MAE: mean absolute "
        "error of the true beam (mu_x, sigma_x, mu_y, sigma_y) to the target, in um. Best MAE: "
        "smallest in the episode, the start included. Steps to target: first step with the "
        "best-so-far MAE < 20 um; a trial that never gets there counts as later than any step, "
        "so a quantile reads `never` when fewer trials than the quantile reached it; `reached`: "
        "share of trials that did. Steps to convergence: first step after which the "
        "best-so-far MAE changes by less than 20 um. A failed trial (the optimiser raised or "
        "answered NaN) is counted with the steps it ran. ask: median wall time of one answer.",
        "",
        _markdown_table(*summary_rows(result)),
        "",
    ]
    breakdown = result.breakdown()
    lines += [
        "## By target class",
        "",
        "Every trial is in one class of each grouping (`docs/evaluation.md`): size `zero` (a "
        "target size is 0), `small` (both > 0, the larger < 200 um), `large`; position "
        "`centred` (|mu_x|, |mu_y| <= 0.5 mm) or `off-centre`; `reachable` `yes` when the "
        "model-based solve with the trial's true hidden state gets below 20 um. Medians per "
        "class, MAE in um; `ended worse`: share of trials whose final MAE is above their "
        "initial MAE. `WORSE`: the median final MAE is above the median initial MAE and "
        "above do-nothing's (the median initial MAE when do-nothing was not run).",
        "",
        _markdown_table(*class_rows(breakdown)),
        "",
    ]
    if breakdown["flagged"]:
        lines += ["**Classes that end worse than they started (and than do-nothing):**", ""]
        lines += [f"- {line}" for line in breakdown["flagged"]] + [""]
    else:
        lines += ["No optimiser ends worse than it started in any class (medians).", ""]
    lines += [
        "## RL4AA'25 challenge score",
        "",
        "Lower is better: 3 x 250 x median final MAE [m] + 0.5 x median steps to "
        "convergence at 40 um / 150 (150 where the final MAE is not below the initial) + "
        "0.5 x median sum of magnet changes normalised by (30, 30, 6.1782e-3, 30, "
        "6.1782e-3) / (5 x 150); the challenge's constants, comparable to its scores for "
        "150-step ARES-EA episodes only.",
        "",
        _markdown_table(*score_rows(breakdown)),
        "",
    ]
    failures = []
    for label in result.optimisers:
        t = result.trial_table(label)
        for trial, err in zip(t["trial"], t["error"], strict=True):
            if err:
                failures.append(f"- `{label}`, trial {int(trial)}: {err}")
    if failures:
        lines += ["## Failed trials", "", *failures[:20]]
        if len(failures) > 20:
            lines.append(f"- ... and {len(failures) - 20} more (see `trial_metrics.csv`)")
        lines.append("")
    if c["env_id"] == ARES_EA_ID:
        lines += [
            "## Published reference",
            "",
            "Kaiser, Xu, Eichler et al., Sci. Rep. 14 (2024), simulation, the same 300 trials, "
            "150 steps (not run here). Doing nothing from the standard start gives a median "
            "MAE of about 700-725 um.",
            "",
            _markdown_table(
                ["method", "trials", "median best MAE [um]", "median steps to convergence"],
                [[m, "all", f"{b:g}", str(s)] for m, b, s in PUBLISHED],
            ),
            "",
        ]
    if figures:
        lines += ["## Figures", ""]
        for name, caption in figures:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def write_report(
    result: EvaluationResult,
    directory: str | Path,
    examples: Sequence[int] | None = None,
    n_examples: int = 3,
    max_episode_rows: int = 6,
) -> Path:
    """Write ``report.md`` and its PNGs into ``directory``; return the report's path.

    :param examples: Trial indices of the example episodes (default: :func:`example_trials`).
    :param n_examples: Number of example episodes chosen when ``examples`` is not given.
    :param max_episode_rows: Optimisers shown per example figure (the first ones).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    figures = [
        (
            plot_mae_vs_step(result, d / "mae_vs_step.png").name,
            "MAE vs step, median and IQR band per optimiser (all trials)",
        ),
        (
            plot_mae_distributions(result, d / "mae_distributions.png").name,
            "Final and best MAE per trial and optimiser",
        ),
    ]
    chosen = (
        [(int(t), "chosen") for t in examples]
        if examples is not None
        else example_trials(result, n_examples)
    )
    labels = result.optimisers[:max_episode_rows]
    for trial, why in chosen:
        target = result.episode(labels[0], trial)
        t = [target[f"target_{p}"][0] * MM for p in ("mu_x", "sigma_x", "mu_y", "sigma_y")]
        title = (
            f"trial {trial} ({why}); target mu_x {t[0]:.3f}, sigma_x {t[1]:.3f}, "
            f"mu_y {t[2]:.3f}, sigma_y {t[3]:.3f} mm"
        )
        name = plot_episode(result, trial, d / f"episode_trial{trial}.png", labels, title).name
        figures.append((name, f"Example episode: {title}"))
    path = d / "report.md"
    path.write_text(markdown_report(result, figures))
    return path
