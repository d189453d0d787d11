"""The ARES-EA comparison table on the 300 published trials (150 steps), in one run.

Runs every optimiser under the one evaluation protocol (:mod:`accelrl.agents.evaluation`)
and prints, per optimiser: median best MAE, median final MAE, median steps to target and
to convergence (all trials and the subset with both target sizes > 0), and the training
wall time of trained policies (from their provenance). Published (Kaiser et al., Sci. Rep.
2024, same trials): RL-trained optimiser 4.4 um / 7 steps; BO 45 um / 32; Nelder-Mead
266 um / 29; random search 465 um / 33. Ends with one line of JSON.

    python benchmarks/ares_ea_table.py [--optimiser SPEC ...] [--limit N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from accelrl.agents.evaluation import evaluate_many  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [
    "do-nothing",
    "random",
    "nelder-mead",
    "extremum-seeking",
    "gradient",
    "model-based",
    f"policy:{ROOT / 'agents' / 'apg-ares-ea'}",
]
PUBLISHED = {
    "RL-trained optimiser (TD3), published": (4.4, 7),
    "Bayesian optimisation (EI), published": (45.0, 32),
    "Nelder-Mead, published": (266.0, 29),
    "random search, published": (465.0, 33),
}


def train_wall_s(spec: str) -> float | None:
    """Training wall time [s] recorded in a policy's provenance, if ``spec`` is a policy."""
    if not spec.startswith("policy:"):
        return None
    meta = Path(spec.split(":", 1)[1]) / "policy.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("provenance", {}).get("train_wall_s")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "never" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimiser", action="append", help="spec (repeatable)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--limit", type=int, default=None, help="first N trials only")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ares_ea_table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = args.optimiser or DEFAULT
    labels = {Path(s.split(":", 1)[1]).name if s.startswith("policy:") else s: s for s in specs}
    result = evaluate_many(
        labels, max_steps=args.steps, limit=args.limit, workers=args.workers, seed=args.seed
    )
    result.save(args.out)
    summary = result.summary_json()
    head = (
        f"{'optimiser':22s} {'subset':9s} {'best MAE':>9s} {'final MAE':>10s} "
        f"{'to target':>9s} {'converged':>9s} {'ask ms':>7s} {'train s':>8s}"
    )
    n = summary[next(iter(labels))]["all"]["n_trials"]
    scope = "all 300 published trials" if args.limit is None else f"the first {n} of 300 trials"
    print(f"ARES-EA, {scope} (--limit {args.limit}), {args.steps} steps, seed {args.seed}")
    print(head)
    print("-" * len(head))
    out: dict = {}
    for label, spec in labels.items():
        wall = train_wall_s(spec)
        out[label] = {**summary[label], "train_wall_s": wall}
        for subset in ("all", "sigma_pos"):
            s = summary[label][subset]
            print(
                f"{label:22s} {subset:9s} {_fmt(s['median_best_mae_um']):>9s} "
                f"{_fmt(s['median_final_mae_um']):>10s} {_fmt(s['median_steps_to_target'], 0):>9s} "
                f"{_fmt(s['median_steps_to_convergence'], 0):>9s} "
                f"{_fmt(s['median_ask_time_ms'], 2):>7s} "
                f"{'' if wall is None else f'{wall:.0f}':>8s}"
            )
    print(
        f"(MAE in um; steps to target: best-so-far MAE < 20 um; all = {scope}, "
        "sigma_pos = those with both target sizes > 0)"
    )
    for name, (mae, steps) in PUBLISHED.items():
        print(f"  {name}: {mae} um, {steps} steps to converge")
    print(f"records, report: {args.out}")
    print(json.dumps({**out, "_trials": {"n": n, "limit": args.limit, "steps": args.steps}}))


if __name__ == "__main__":
    main()
