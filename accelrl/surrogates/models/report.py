"""Validation report of a surrogate on held-out rows: metrics, parity and uncertainty plots.

Per output: R^2 in SI units and in the modelled (log) space, median relative error, the
fraction of held-out values inside the 95% predictive interval (coverage), and the
noise fraction, the share of the target variance that the ensemble attributes to aleatoric
(numerical) noise. An output with R^2 below :data:`R2_POOR` whose noise fraction
is above :data:`NOISE_POOR` and above the epistemic fraction (the ensemble's disagreement, as a
share of the target variance) is flagged ``"noise-limited"`` (the simulator resolves it poorly
at this fidelity: a better model cannot do much better); one whose epistemic fraction
dominates is ``"data-limited"`` (more runs would help); otherwise ``"model-limited"``. Outputs
(numerically) constant on the held-out rows are ``"constant"`` (R^2 undefined).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accelrl.surrogates.models.ensemble import Z95, Surrogate

#: R^2 below which an output is flagged.
R2_POOR = 0.9
#: Noise fraction above which a flagged output is called noise-limited.
NOISE_POOR = 0.1


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination of finite pairs (NaN with fewer than 2)."""
    m = np.isfinite(y) & np.isfinite(pred)
    if m.sum() < 2:
        return float("nan")
    y, pred = y[m], pred[m]
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if not ss_tot > 1e-24 * len(y) * max(float(np.mean(y**2)), 1e-300):
        return float("nan")  # (numerically) constant targets: R^2 undefined
    return float(1.0 - ((y - pred) ** 2).sum() / ss_tot)


def evaluate(model: Surrogate, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Held-out metrics per output (see the module documentation).

    :param x: ``[n, d]`` inputs (SI).
    :param y: ``[n, k]`` true outputs (SI, NaN where unavailable), columns
        ``model.output_names``.
    :return: ``{"outputs": {name: {...}}, "n": n}``.
    """
    with torch.no_grad():
        xt = torch.as_tensor(np.array(x, np.float64), dtype=torch.float64)
        mean, std, _ = model(xt)
        mu, alea, epi = model.predict_standardised(xt)
    mean, std = mean.double().numpy(), std.double().numpy()
    mu, alea, epi = mu.double().numpy(), alea.double().numpy(), epi.double().numpy()
    out: dict[str, Any] = {}
    for j, info in enumerate(model.outputs):
        yj = y[:, j]
        m = np.isfinite(yj)
        if info.transform == "log":
            m &= yj > 0
        if m.sum() < 2:
            out[info.name] = {"n": int(m.sum())}
            continue
        t = np.log(yj[m]) if info.transform == "log" else yj[m]
        zt = (t - info.loc) / info.scale
        s = np.sqrt(alea[m, j] + epi[m, j])
        inside = np.abs(zt - mu[m, j]) <= Z95 * s
        rel = np.abs(mean[m, j] - yj[m]) / np.maximum(np.abs(yj[m]), 1e-300)
        r2 = r2_score(yj[m], mean[m, j])
        var_z = float(np.var(zt))
        varies = var_z > 1e-12
        noise = float(np.mean(alea[m, j]) / var_z) if varies else float("nan")
        epistemic = float(np.mean(epi[m, j]) / var_z) if varies else float("nan")
        flag = "ok"
        if not varies:
            flag = "constant"
        elif not (r2 >= R2_POOR):
            if noise > NOISE_POOR and noise >= epistemic:
                flag = "noise-limited"
            elif epistemic > noise:
                flag = "data-limited"
            else:
                flag = "model-limited"
        out[info.name] = {
            "n": int(m.sum()),
            "unit": info.unit,
            "transform": info.transform,
            "r2": r2,
            "r2_modelled": r2_score(zt, mu[m, j]),
            "median_rel_error": float(np.median(rel)),
            "coverage95": float(inside.mean()),
            "noise_fraction": noise,
            "epistemic_fraction": epistemic,
            "flag": flag,
        }
    return {"n": int(len(x)), "outputs": out}


def fidelity_check(
    low: Any, high: Any, outputs: list[str], transforms: dict[str, str] | None = None
) -> dict[str, Any]:
    """How well the simulator resolves each output: the same design points run at two
    fidelities (tables with a ``sample`` column; rows ``ok`` in both).

    Per output: the rms difference between the fidelities (of the log for log outputs,
    relative to the mean otherwise) and the rms variation across the design at the low
    fidelity, and ``noise_ratio`` = (difference / variation)^2. A ratio near or above 1 means the
    quantity changes with resolution as much as it changes across the design: the simulator
    does not resolve it at the low fidelity.
    """
    transforms = transforms or {}
    lo = low.set_index("sample")
    hi = high.set_index("sample")
    common = lo.index.intersection(hi.index)
    both = common[
        (lo.loc[common, "status"] == "ok").to_numpy()
        & (hi.loc[common, "status"] == "ok").to_numpy()
    ]
    out: dict[str, Any] = {"n_pairs": int(len(both)), "outputs": {}}
    ok_lo = lo[lo["status"] == "ok"]
    for name in outputs:
        if name not in lo.columns or name not in hi.columns or len(both) < 3:
            continue
        a = lo.loc[both, name].to_numpy(np.float64)
        b = hi.loc[both, name].to_numpy(np.float64)
        design = ok_lo[name].to_numpy(np.float64)
        if transforms.get(name) == "log" and (a > 0).all() and (b > 0).all():
            d = np.log(b / a)
            spread = np.nanstd(np.log(design[design > 0]))
        else:
            scale = np.nanmean(np.abs(design)) or 1.0
            d = (b - a) / scale
            spread = np.nanstd(design) / scale
        diff = float(np.sqrt(np.nanmean(d**2)))
        out["outputs"][name] = {
            "rms_fidelity_difference": diff,
            "rms_design_variation": float(spread),
            "noise_ratio": float((diff / spread) ** 2) if spread > 0 else float("nan"),
        }
    return out


def classifier_metrics(model: Surrogate, x: np.ndarray, ok: np.ndarray) -> dict[str, Any]:
    """Accuracy and Brier score of the validity classifier on labelled rows."""
    if len(x) == 0:
        return {"n": 0}
    with torch.no_grad():
        p = model.p_valid(torch.as_tensor(np.array(x, np.float64))).numpy()
    return {
        "n": int(len(x)),
        "n_invalid": int((~ok).sum()),
        "accuracy": float(((p > 0.5) == ok).mean()),
        "brier": float(((p - ok) ** 2).mean()),
        "trained": bool(model.has_classifier),
    }


def classifier_section(c: dict[str, Any]) -> list[str]:
    """Markdown lines that read the validity-classifier metrics (:func:`classifier_metrics`)."""
    if not c.get("n"):
        return ["Validity classifier: no labelled test rows to check it on.", ""]
    trained = c.get("trained", False)
    lines = [
        "Validity classifier (predicts whether the simulation gives a valid result at a "
        "design point; `p_valid > 0.5` counts as valid):",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| trained | {'yes' if trained else 'no (every point taken as valid)'} |",
        f"| test rows | {c['n']} ({c.get('n_invalid', 0)} invalid) |",
        f"| accuracy | {100 * c['accuracy']:.1f} % |",
        f"| Brier score (0 best, 0.25 = a coin) | {c['brier']:.3f} |",
        "",
    ]
    return lines


def _grid(k: int) -> tuple[int, int]:
    cols = min(4, k)
    return (k + cols - 1) // cols, cols


def _readable_ticks(ax: Any) -> None:
    """At most four labelled ticks per axis (log axes: no labels on minor ticks, which
    matplotlib otherwise adds on short log ranges and which then overlap)."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=4))
            axis.set_minor_formatter(NullFormatter())
        else:
            axis.set_major_locator(MaxNLocator(4))
    ax.tick_params(axis="x", labelrotation=30)


def plot_parity(model: Surrogate, x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Parity plot (prediction vs Wake-T, 95% error bars) per output, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = model.predict(x, check_bounds=False)
    rows, cols = _grid(len(model.outputs))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.6 * rows), squeeze=False)
    for j, info in enumerate(model.outputs):
        ax = axes[j // cols][j % cols]
        m = np.isfinite(y[:, j])
        yy, pm = y[m, j], pred["mean"][m, j]
        lo, hi = pred["low95"][m, j], pred["high95"][m, j]
        err = np.vstack([np.maximum(pm - lo, 0), np.maximum(hi - pm, 0)])
        ax.errorbar(yy, pm, yerr=err, fmt="o", ms=2.5, lw=0.6, alpha=0.6, color="tab:blue")
        if m.any():
            a, b = float(min(yy.min(), pm.min())), float(max(yy.max(), pm.max()))
            ax.plot([a, b], [a, b], "k--", lw=0.8)
        if info.transform == "log" and m.any() and (yy > 0).all():
            ax.set_xscale("log")
            ax.set_yscale("log")
        _readable_ticks(ax)
        r2 = r2_score(yy, pm)
        ax.set_title(f"{info.name}  R²={r2:.3f}", fontsize=9)
        ax.set_xlabel(f"simulation [{info.unit}]", fontsize=8)
        ax.set_ylabel(f"surrogate [{info.unit}]", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(len(model.outputs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_uncertainty(model: Surrogate, x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Predicted standard deviation vs absolute error (modelled space), binned RMSE per
    predicted-sigma bin against the ideal ``rmse = sigma`` line, per output; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        mu, alea, epi = model.predict_standardised(torch.as_tensor(np.array(x, np.float64)))
    mu, s = mu.double().numpy(), np.sqrt((alea + epi).double().numpy())
    rows, cols = _grid(len(model.outputs))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.4 * rows), squeeze=False)
    for j, info in enumerate(model.outputs):
        ax = axes[j // cols][j % cols]
        yj = y[:, j]
        m = np.isfinite(yj) & ((yj > 0) if info.transform == "log" else True)
        if m.sum() < 2:
            ax.axis("off")
            continue
        t = np.log(yj[m]) if info.transform == "log" else yj[m]
        err = np.abs((t - info.loc) / info.scale - mu[m, j])
        sj = s[m, j]
        ax.scatter(sj, err, s=4, alpha=0.5, color="tab:blue", label="|error|")
        edges = np.quantile(sj, np.linspace(0, 1, 7))
        centres, rmse = [], []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            sel = (sj >= a) & (sj <= b)
            if sel.sum() >= 3:
                centres.append(float(np.sqrt(np.mean(sj[sel] ** 2))))
                rmse.append(float(np.sqrt(np.mean(err[sel] ** 2))))
        ax.plot(centres, rmse, "o-", color="tab:red", ms=4, label="binned RMSE")
        lim = float(max(sj.max(), err.max()))
        ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="RMSE = σ")
        ax.set_title(f"{info.name} ({info.transform})", fontsize=9)
        ax.set_xlabel("predicted σ (standardised)", fontsize=8)
        ax.set_ylabel("|error| (standardised)", fontsize=8)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7)
    for j in range(len(model.outputs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(metrics: dict[str, Any]) -> str:
    """The per-output metrics as a Markdown table."""
    lines = [
        "| output | unit | transform | R² | R² (modelled) | median rel. err. | 95% coverage "
        "| noise fraction | epistemic fraction | flag |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["outputs"].items():
        if "r2" not in m:
            lines.append(f"| {name} | | | n={m['n']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {m['unit']} | {m['transform']} | {m['r2']:.3f} | {m['r2_modelled']:.3f} "
            f"| {m['median_rel_error']:.3g} | {m['coverage95']:.3f} | {m['noise_fraction']:.3f} "
            f"| {m['epistemic_fraction']:.3f} | {m['flag']} |"
        )
    return "\n".join(lines)


def write_report(
    model: Surrogate,
    x_test: np.ndarray,
    y_test: np.ndarray,
    out_dir: str | Path,
    classifier: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, ``parity.png`` and ``uncertainty.png``.

    :return: The metrics written to ``report.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(model, x_test, y_test)
    if classifier is not None:
        metrics["classifier"] = classifier
    metrics.update(extra or {})
    (out / "report.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    plot_parity(model, x_test, y_test, out / "parity.png")
    plot_uncertainty(model, x_test, y_test, out / "uncertainty.png")
    flagged = [n for n, m in metrics["outputs"].items() if m.get("flag", "ok") != "ok"]
    text = [
        f"# Surrogate validation: {model.provenance.get('dataset', '?')}",
        "",
        f"Held-out test rows: {metrics['n']} (never used for training, early stopping or "
        "calibration).",
        "",
        markdown_table(metrics),
        "",
    ]
    if flagged:
        text += [
            f"Flagged outputs (R² < {R2_POOR:.2f}): "
            + ", ".join(f"{n} ({metrics['outputs'][n]['flag']})" for n in flagged)
            + ". `noise-limited`: the ensemble attributes most of the held-out variance to "
            "numerical noise of the simulation at this resolution (scatter that no smooth "
            "function of the inputs follows) rather than to a trend it "
            "misses; use the predicted σ. `data-limited`: the members disagree (more runs "
            "needed).",
            "",
        ]
    fid = metrics.get("fidelity_check")
    if fid and fid.get("outputs"):
        text += [
            f"Resolution check ({fid['n_pairs']} design points re-run at "
            f"`{fid.get('high', '?')}` vs `{fid.get('low', '?')}`): rms difference between the "
            "fidelities against the rms variation across the design (log space for log "
            "outputs); ratio² ≳ 0.3 means the simulator does not resolve the output at the "
            "training fidelity.",
            "",
            "| output | rms fidelity difference | rms design variation | ratio² |",
            "|---|---|---|---|",
        ]
        for name, f in fid["outputs"].items():
            text.append(
                f"| {name} | {f['rms_fidelity_difference']:.4f} | "
                f"{f['rms_design_variation']:.4f} | {f['noise_ratio']:.3f} |"
            )
        text.append("")
    if classifier:
        text += classifier_section(classifier)
    text += ["![parity](parity.png)", "", "![uncertainty](uncertainty.png)", ""]
    (out / "report.md").write_text("\n".join(text))
    return metrics
