"""Robustness of every optimiser across worlds: ideal, realistic, harsh and the scenarios.

Runs, under the one evaluation protocol (:mod:`accelrl.agents.evaluation`), the published
300 ARES-EA trials for 150 steps with do-nothing, Nelder-Mead, the model-based tuner, the
gradient tuner and every shipped policy (``agents/*/policy.json``), and BO with the physics
prior on the 30-trial subset of ``benchmarks/bo.py`` (indices 30, 39, ..., 291) for 75 steps
(it costs ~0.2 s a step), in each world: ``ideal``, ``ares-realistic``, ``harsh`` and each
scenario overlay on its own (``beam-animation``, ``beam-switch``, ``q3-failure``,
``steering-change``). Per world and optimiser: median best and final MAE [um], median steps
to 20 um, the fraction of trials reaching 20 um, the median total magnet change (summed
over steps, normalised by (30, 30, 6.1782e-3, 30, 6.1782e-3) as the RL4AA'25 challenge
does), the degradation ratio (median final MAE in the world / in ``ideal``, same trials)
and the RL4AA'25 challenge score (lower is better). Prints a table and ends with one JSON
line ``{world: {optimiser: {...}}}``.

The full run is long (the model-based tuner answers in ~0.2 s; 300 trials x 150 steps x
7 worlds). Run it small with ``--limit`` (N trials spread evenly over the 300, so that the
27 zero-size grid trials at the start do not dominate; BO: ``--bo-limit``, the first N of
its 30), ``--worlds`` and ``--optimisers``:

    python benchmarks/robustness.py --limit 10 --worlds ideal,ares-realistic \\
        --optimisers do-nothing,nelder-mead
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from accelrl.agents.evaluation import evaluate_many  # noqa: E402
from accelrl.envs import load_trials  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: The worlds of the benchmark.
WORLDS = (
    "ideal",
    "ares-realistic",
    "harsh",
    "beam-animation",
    "beam-switch",
    "q3-failure",
    "steering-change",
)
#: BO with the physics prior and its trial subset / step budget (``benchmarks/bo.py``).
BO = "bo:prior=physics"
BO_TRIALS: tuple[int, ...] = tuple(range(30, 292, 9))
BO_STEPS = 75


def shipped_policies() -> list[str]:
    """``policy:PATH`` of every shipped policy (``agents/*/policy.json``)."""
    return [f"policy:{p.parent}" for p in sorted((ROOT / "agents").glob("*/policy.json"))]


def default_optimisers() -> list[str]:
    """The benchmark's optimisers."""
    return ["do-nothing", "nelder-mead", "model-based", "gradient", *shipped_policies(), BO]


def _short(label: str) -> str:
    return f"policy:{Path(label[7:]).name}" if label.startswith("policy:") else label


def _row(summary: dict[str, Any], score: dict[str, Any] | None, steps: int) -> dict[str, Any]:
    s = summary["all"]
    return {
        "trials": s["n_trials"],
        "steps": steps,
        "median_best_mae_um": s["median_best_mae_um"],
        "median_final_mae_um": s["median_final_mae_um"],
        "median_steps_to_20um": s["median_steps_to_target"],
        "fraction_reached_20um": s["fraction_reached_target"],
        "median_magnet_change": None if score is None else score["median_magnet_change"],
        "rl4aa25_score": None if score is None else score["score"],
    }


def spread_trials(limit: int | None) -> list[Any]:
    """The published trials, or ``limit`` of them spread evenly (indices ``round(i *
    299 / (limit - 1))``)."""
    trials = load_trials()
    if limit is None or limit >= len(trials):
        return trials
    if limit < 1:
        raise SystemExit(f"--limit must be >= 1, got {limit}")
    idx = sorted({int(round(i * (len(trials) - 1) / max(limit - 1, 1))) for i in range(limit)})
    return [trials[i] for i in idx]


def run_world(
    world: str,
    optimisers: list[str],
    limit: int | None,
    steps: int,
    bo_limit: int | None,
    workers: int | None,
) -> dict[str, dict[str, Any]]:
    """Rows ``{optimiser: {...}}`` of one world (the ratio is added later)."""
    out: dict[str, dict[str, Any]] = {}
    main = [o for o in optimisers if o != BO]
    if main:
        r = evaluate_many(
            main,
            spread_trials(limit),
            max_steps=steps,
            world=world,
            workers=workers,
            progress=False,
            reachability=False,
        )
        summary, scores = r.summary_json(), r.challenge_scores()
        for label in r.optimisers:
            out[_short(label)] = _row(summary[label], scores[label], steps)
    if BO in optimisers:
        all_trials = load_trials()
        subset = [all_trials[i] for i in BO_TRIALS][: bo_limit or None]
        r = evaluate_many(
            [BO],
            subset,
            max_steps=BO_STEPS,
            world=world,
            workers=workers,
            progress=False,
            reachability=False,
        )
        out[BO] = _row(r.summary_json()[BO], r.challenge_scores()[BO], BO_STEPS)
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--limit", type=int, default=None, help="N of the 300 trials, spread evenly"
    )
    parser.add_argument("--bo-limit", type=int, default=None, help="first N of BO's 30 trials")
    parser.add_argument("--steps", type=int, default=150, help="steps per trial (not BO)")
    parser.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated worlds")
    parser.add_argument(
        "--optimisers", default=None, help="comma-separated optimiser specs (default: all)"
    )
    parser.add_argument("--workers", type=int, default=None, help="process-pool workers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    optimisers = (
        [o.strip() for o in args.optimisers.split(",") if o.strip()]
        if args.optimisers
        else default_optimisers()
    )
    if not worlds or not optimisers:
        raise SystemExit("need at least one world and one optimiser")
    t0 = time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for world in worlds:
        t = time.perf_counter()
        results[world] = run_world(
            world, optimisers, args.limit, args.steps, args.bo_limit, args.workers
        )
        print(f"# {world}: {time.perf_counter() - t:.0f} s", flush=True)
    # degradation ratio: median final MAE in the world / in ideal (same trials and steps)
    ideal = results.get("ideal")
    if ideal is None and any(w != "ideal" for w in worlds):
        ideal = run_world("ideal", optimisers, args.limit, args.steps, args.bo_limit, args.workers)
    for rows in results.values():
        for label, row in rows.items():
            ref = None if ideal is None else ideal.get(label, {}).get("median_final_mae_um")
            fin = row["median_final_mae_um"]
            row["degradation_vs_ideal"] = fin / ref if fin is not None and ref else None
    header = (
        f"{'world':<16} {'optimiser':<24} {'n':>4} {'best um':>9} {'final um':>9} "
        f"{'to 20um':>7} {'reached':>7} {'change':>7} {'x ideal':>8} {'RL4AA25':>8}"
    )
    print(header)
    print("-" * len(header))
    for world, rows in results.items():
        for label, r in rows.items():
            print(
                f"{world:<16} {label:<24} {r['trials']:>4} "
                f"{_fmt(r['median_best_mae_um'], '.2f'):>9} "
                f"{_fmt(r['median_final_mae_um'], '.2f'):>9} "
                f"{_fmt(r['median_steps_to_20um'], 'g'):>7} "
                f"{_fmt(100 * (r['fraction_reached_20um'] or 0), '.0f'):>6}% "
                f"{_fmt(r['median_magnet_change'], '.2f'):>7} "
                f"{_fmt(r['degradation_vs_ideal'], '.2f'):>8} "
                f"{_fmt(r['rl4aa25_score'], '.4f'):>8}"
            )
    bo = (
        f" (BO: {args.bo_limit or len(BO_TRIALS)} of its 30 trials x {BO_STEPS} steps)"
        if BO in optimisers
        else ""
    )
    print(
        f"# {args.limit or 300} trials x {args.steps} steps{bo}, "
        f"{time.perf_counter() - t0:.0f} s; steps to 20um '-': the median trial never got there"
    )
    print(json.dumps(results, allow_nan=False))


if __name__ == "__main__":
    main()
