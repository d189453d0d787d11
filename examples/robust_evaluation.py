"""Evaluate optimisers in an imperfect world, per target class, with the RL4AA'25 score.

Runs do-nothing and Nelder-Mead on a few of the RL4AA'25 protocol's trials (target 0,
misalignments up to 500 um) in the ``ideal`` world and in ``ares-realistic`` (camera,
magnet errors, jitter and drift), then prints, per world, each optimiser's median final
MAE, its results per target class (flagging classes that end worse than they started)
and its RL4AA'25 challenge score (lower is better). The same from the command line:

    accelrl evaluate -o do-nothing -o nelder-mead --protocol rl4aa25 \\
        --world ares-realistic --out runs/rl4aa25-realistic

    python examples/robust_evaluation.py [--trials 4] [--steps 40]
"""

from __future__ import annotations

import argparse

from accelrl.agents.evaluation import evaluate_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials of the protocol")
    parser.add_argument("--steps", type=int, default=40, help="steps per trial")
    args = parser.parse_args()

    for world in ("ideal", "ares-realistic"):
        result = evaluate_many(
            ["do-nothing", "nelder-mead"],
            protocol="rl4aa25",  # 20 trials drawn with the challenge's ranges
            limit=args.trials,
            max_steps=args.steps,
            world=world,
            executor="serial",
            progress=False,
        )
        summary = result.summary_json()
        breakdown = result.breakdown()
        print(f"== world {result.config['world']['name']} (seed {result.config['world']['seed']})")
        for label in result.optimisers:
            score = breakdown["rl4aa25_score"][label]
            final = summary[label]["all"]["median_final_mae_um"]
            print(f"{label:12s} median final MAE {final:8.1f} um, RL4AA'25 score "
                  f"{score['score']:.4f}")  # fmt: skip
            for cls, e in breakdown["classes"][label].items():
                flag = "  <- ends worse than it started" if e["flagged"] else ""
                print(f"    {cls:20s} n={e['n']:2d} final {e['median_final_mae_um']:8.1f} um{flag}")
    print("done: per-class results and RL4AA'25 scores in both worlds")


if __name__ == "__main__":
    main()
