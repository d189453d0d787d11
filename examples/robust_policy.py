"""Robust policy, top to bottom: train under a world, export with its history, run the bundle.

1. Train a policy by backpropagating through the differentiable ARES-EA simulation under the
   ``ares-realistic`` world's randomisation (camera readout, magnet errors and hysteresis,
   beam jitter and drift), with the last observations in its input and a hold term. By
   default this starts from the shipped ideal-world policy and runs a few iterations; the
   shipped robust policy (``agents/apg-ares-ea-robust``) is the same recipe run to the end.
2. Export it as a policy bundle: the ONNX graph takes the current observation and the
   history; the manifest says how much (``history``).
3. Run the bundle (numpy + onnxruntime) on a few published trials in the ``ares-realistic``
   world, with the runtime keeping the history, and print the true beam's MAE.

    python examples/robust_policy.py --iterations 5 --out runs/robust
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from accelrl.agents.evaluation.loop import run_trials
from accelrl.agents.export.writer import export_policy
from accelrl.agents.training.apg import APGConfig, train_apg
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.envs import TransverseTuningVectorEnv
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.trials import load_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per evaluation trial")
    parser.add_argument("--out", type=Path, default=Path("runs/robust"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    # 1. training under the world (short: starts from the shipped ideal-world policy)
    config = APGConfig(
        iterations=args.iterations, batch_size=16, horizon=10, learning_rate=5e-4,
        history=4, hold_penalty=0.1, ideal_fraction=0.25, reading_noise=15e-6,
        zero_target_fraction=0.1, init_policy="agents/apg-ares-ea",
    )  # fmt: skip
    result = train_apg(config, out_dir=args.out / "policy", progress=False, world="ares-realistic")
    print(
        f"trained {args.iterations} iterations in {result.wall_s:.1f} s, "
        f"loss {result.losses[-1]:.3f}"
    )

    # 2. the bundle carries the history in its input
    bundle = export_policy(result.policy, args.out / "bundle")
    policy = OnnxPolicy(bundle)
    print(f"bundle: history {policy.manifest.history}, graph input {policy.n_input} values")

    # 3. the bundle in the ares-realistic world on 5 published trials (the runtime keeps
    #    the last observations of each trial and forgets them at the next reset)
    trials = load_trials()[30:35]
    env = TransverseTuningVectorEnv(
        ares_ea_spec(), len(trials), max_episode_steps=args.steps, action_mode="direct",
        terminate_on_target=False, world="ares-realistic",
    )  # fmt: skip
    records = run_trials(env, policy, trials, args.steps, seed=0)
    for r in records:
        print(
            f"trial {r['trial']}: MAE {r['mae'][0] * 1e6:7.1f} um -> best "
            f"{np.min(r['mae']) * 1e6:6.1f} um, final {r['mae'][-1] * 1e6:6.1f} um"
        )


if __name__ == "__main__":
    main()
