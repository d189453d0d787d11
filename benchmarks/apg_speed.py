"""APG training speed: iteration time against batch size, per device, and the shipped recipe.

Measures, in one run, the wall time of one APG iteration (``horizon`` steps of the compiled
ARES-EA beamline through the MLP policy, the backward pass and the Adam step; the
hyperparameters of ``agents/apg.yaml`` otherwise) for several batch sizes, on the CPU (one
torch thread) and on CUDA when a GPU is present (rows noted as skipped otherwise). Each
row is the best of ``--repeats`` blocks of ``--iterations`` iterations after one warm-up
block; ratios are against batch 256 on the CPU of the same run. With ``--recipe`` it also
trains ``agents/apg.yaml`` as shipped (3000 iterations at batch 256) on each device and
reports the wall time and the final loss; the policy's quality is then measured with
``accelrl evaluate`` (not part of this script).

Target (issue 16, on one H200): iteration at batch 4096, horizon 15 <= 10 ms; the shipped
recipe trained in <= 60 s. Ends with one line of JSON.

    python benchmarks/apg_speed.py [--batches 256 1024 4096 16384] [--iterations 3]
                                   [--devices cpu cuda] [--recipe]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from accelrl.agents.training.apg import load_apg_recipe, train_apg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "agents" / "apg.yaml"


def iteration_s(device: str, batch: int, horizon: int, iterations: int, repeats: int) -> float:
    """Best-of-``repeats`` wall time [s] of one iteration at ``batch`` on ``device``."""
    config = load_apg_recipe(RECIPE).config
    config = config.model_copy(update={"batch_size": batch, "horizon": horizon, "device": device})
    train_apg(config.model_copy(update={"iterations": 1}), progress=False)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        result = train_apg(config.model_copy(update={"iterations": iterations}), progress=False)
        best = min(best, result.wall_s / iterations)  # the loss read-back synchronises
    return best


def recipe_wall_s(device: str) -> tuple[float, float]:
    """Wall time [s] and final loss of training the shipped recipe on ``device``."""
    recipe = load_apg_recipe(RECIPE)
    config = recipe.config.model_copy(update={"device": device})
    with tempfile.TemporaryDirectory():
        result = train_apg(config, progress=False)
    return result.wall_s, result.losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=3, help="iterations per block")
    parser.add_argument("--repeats", type=int, default=2, help="timed blocks (best kept)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--recipe", action="store_true", help="also train agents/apg.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    head = ("device", "batch", "iteration [ms]", "rollouts/s", "vs cpu@256")
    print(f"{head[0]:8s} {head[1]:>8s} {head[2]:>15s} {head[3]:>12s} {head[4]:>11s}")
    reference = None
    for device in args.devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            skipped.append(f"{device}: no CUDA GPU on this machine")
            print(f"{device:8s} {'-':>8s} {'skipped: no CUDA GPU':>15s}")
            continue
        rows[device] = {}
        for batch in args.batches:
            t = iteration_s(device, batch, args.horizon, args.iterations, args.repeats)
            rows[device][str(batch)] = t
            per_rollout = t / batch
            if reference is None:
                reference = per_rollout
            print(
                f"{device:8s} {batch:8d} {t * 1e3:15.1f} {batch / t:12.3g} "
                f"{reference / per_rollout:10.1f}x"
            )
    recipe: dict[str, dict[str, float]] = {}
    if args.recipe:
        print()
        print(
            f"shipped recipe ({RECIPE.relative_to(ROOT)}: 3000 iterations, batch 256, horizon 15)"
        )
        for device in rows:
            wall, loss = recipe_wall_s(device)
            recipe[device] = {"wall_s": round(wall, 1), "final_loss": round(loss, 4)}
            print(f"  {device:8s} wall {wall:8.1f} s   final loss {loss:.4f}")
    print()
    print(
        "targets (one H200): iteration at batch 4096, horizon 15 <= 10 ms; recipe <= 60 s"
        + (f"; not measured ({'; '.join(skipped)})" if skipped else "")
    )
    print(
        json.dumps(
            {
                "iteration_ms": {
                    d: {b: round(t * 1e3, 2) for b, t in r.items()} for d, r in rows.items()
                },
                "horizon": args.horizon,
                "recipe": recipe,
                "skipped": skipped,
            }
        )
    )


if __name__ == "__main__":
    main()
