"""BO on ARES-EA with a constant mean, the calibrated physics prior and a wrong prior.

Runs, in one process pool (one torch thread per worker), 30 fixed trials of the published
set (indices 30, 39, ..., 291; the published evaluation set) for 75 steps each under
the evaluation protocol (:mod:`accelrl.agents.evaluation`: direct settings, standard start,
``seed + trial.index``), with three priors of :class:`accelrl.agents.bo.BOOptimiser`:

* ``constant``: constant-mean GP (LogEI), the published BO's model;
* ``physics``: the compiled ARES-EA beamline with the design beam, calibrated jointly with
  the GP hyperparameters;
* ``wrong``: the same beamline with sign-flipped quadrupoles (must fall back).

Prints median best MAE [um], median steps to convergence (best-so-far within 20 um of its
final value) and median ``suggest()`` wall time [s] (and CPU time of the calling thread,
which a shared machine's load does not inflate), then one line of JSON. Published BO
(constant mean, EI, 150 steps, all 300 trials): 45 um, 32 steps.

    python benchmarks/bo.py [--workers 2] [--steps 75] [--limit N] [--out DIR]
                            [--variants constant,physics,wrong]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

#: Trial indices of the benchmark: 30, 39, ..., 291 (30 trials).
TRIALS: tuple[int, ...] = tuple(range(30, 292, 9))
#: Label -> BOOptimiser arguments.
VARIANTS: dict[str, dict[str, Any]] = {
    "constant": {"prior": "none"},
    "physics": {"prior": "physics"},
    "wrong": {"prior": "wrong"},
}
PUBLISHED_BO = (45.0, 32)


def run_trial(variant: str, index: int, steps: int) -> dict[str, Any]:
    """One trial of one variant under the evaluation protocol (worker side)."""
    from accelrl.agents.bo import BOOptimiser
    from accelrl.agents.evaluation import run_trials
    from accelrl.agents.evaluation.loop import evaluation_env
    from accelrl.agents.evaluation.metrics import trial_metrics
    from accelrl.envs import load_trials

    trial = load_trials()[index]
    env = evaluation_env("accelrl/AresEATransverseTuning-v0", "fast", 1, steps)
    optimiser = BOOptimiser(**VARIANTS[variant])
    suggest_s: list[float] = []
    suggest_cpu_s: list[float] = []
    fallback: list[bool] = []

    def diagnose(_trial: int, _step: int, _info: Any) -> None:
        diag = optimiser.session.diagnostics()
        if diag["mode"] == "bo":
            suggest_s.append(diag["suggest_s"])
            suggest_cpu_s.append(diag["suggest_cpu_s"])
        fallback.append(bool(diag["prior_fallback"]))

    (record,) = run_trials(env, optimiser, [trial], steps, seed=0, on_step=diagnose)
    if record["error"] is not None:
        raise RuntimeError(f"{variant} trial {index}: {record['error']}")
    mae = np.asarray(record["mae"], dtype=np.float64)
    m = trial_metrics(mae)
    return {
        "variant": variant,
        "trial": index,
        "best_mae": m.best_mae,
        "final_mae": m.final_mae,
        "steps_to_convergence": m.steps_to_convergence,
        "suggest_s": suggest_s,
        "suggest_cpu_s": suggest_cpu_s,
        "fallback_final": fallback[-1] if fallback else False,
        "fallback_any": any(fallback),
        "mae": mae.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--limit", type=int, default=None, help="first N of the 30 trials")
    parser.add_argument("--out", type=Path, default=None, help="write per-trial JSON here")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {list(VARIANTS)}",
    )
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from accelrl.execution import one_thread
    from accelrl.progress import progress_bar

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    trials = TRIALS[: args.limit] if args.limit else TRIALS
    jobs = [(v, t) for t in trials for v in variants]
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=args.workers, initializer=one_thread) as pool:
        futures = [pool.submit(run_trial, v, t, args.steps) for v, t in jobs]
        with progress_bar(middle=["trials"]) as bar:
            task = bar.add_task("BO trials", total=len(jobs))
            for fut in cf.as_completed(futures):
                r = fut.result()
                results.append(r)
                bar.advance(task)
                if not sys.stderr.isatty():  # a log file: one line per finished trial
                    print(
                        f"[{len(results)}/{len(jobs)} {time.perf_counter() - t0:.0f} s] "
                        f"{r['variant']} trial {r['trial']}: best "
                        f"{r['best_mae'] * 1e6:.1f} um, converged at step "
                        f"{r['steps_to_convergence']}",
                        file=sys.stderr,
                        flush=True,
                    )
    wall = time.perf_counter() - t0

    summary: dict[str, dict[str, float]] = {}
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        summary[v] = {
            "median_best_mae_um": float(np.median([r["best_mae"] for r in rs]) * 1e6),
            "median_steps_to_convergence": float(
                np.median([r["steps_to_convergence"] for r in rs])
            ),
            "median_suggest_s": float(np.median(np.concatenate([r["suggest_s"] for r in rs]))),
            "median_suggest_cpu_s": float(
                np.median(np.concatenate([r["suggest_cpu_s"] for r in rs]))
            ),
            "median_final_mae_um": float(np.median([r["final_mae"] for r in rs]) * 1e6),
            "fallback_trials": int(sum(r["fallback_final"] for r in rs)),
            "trials": len(rs),
        }
    table = Table(
        title=f"ARES-EA BO: {len(trials)} trials x {args.steps} steps ({wall:.0f} s, "
        f"{args.workers} workers, 1 torch thread each)"
    )
    for col in (
        "prior",
        "median best MAE [um]",
        "median steps to conv.",
        "median suggest() wall [s]",
        "median suggest() CPU [s]",
        "median final MAE [um]",
        "fallback (trials)",
    ):
        table.add_column(col, justify="left" if col == "prior" else "right")
    for v, s in summary.items():
        table.add_row(
            v,
            f"{s['median_best_mae_um']:.1f}",
            f"{s['median_steps_to_convergence']:.0f}",
            f"{s['median_suggest_s']:.3f}",
            f"{s['median_suggest_cpu_s']:.3f}",
            f"{s['median_final_mae_um']:.1f}",
            f"{s['fallback_trials']}/{s['trials']}",
        )
    table.add_row(
        "published BO (EI, 150 steps, 300 trials)",
        f"{PUBLISHED_BO[0]:.0f}",
        f"{PUBLISHED_BO[1]}",
        "",
        "",
        "",
        "",
    )
    Console().print(table)
    if "wrong" in summary and "constant" in summary:
        report_wrong_vs_constant(results, summary, args.steps)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bo_trials.json").write_text(json.dumps(results))
    keys = ("median_best_mae_um", "median_steps_to_convergence", "median_suggest_s")
    print(json.dumps({v: {k: round(s[k], 4) for k in keys} for v, s in summary.items()}))


def report_wrong_vs_constant(
    results: list[dict[str, Any]], summary: dict[str, dict[str, float]], steps: int
) -> None:
    """Print the median ratio of wrong-prior to constant-mean best MAE per trial."""
    worse = [
        r_w["best_mae"] / r_c["best_mae"]
        for r_w in results
        if r_w["variant"] == "wrong"
        for r_c in results
        if r_c["variant"] == "constant" and r_c["trial"] == r_w["trial"]
    ]
    print(
        f"wrong / constant best MAE at step {steps}: median ratio "
        f"{np.median(worse):.2f}, medians {summary['wrong']['median_best_mae_um']:.1f} vs "
        f"{summary['constant']['median_best_mae_um']:.1f} um"
    )


if __name__ == "__main__":
    main()
