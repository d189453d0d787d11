"""A policy that averages its setting changes over noisy readings, run from its bundle.

The shipped ``agents/apg-ares-ea-averaged`` is the ideal-world policy with ``averaging`` in
its ``policy.json`` and bundle manifest (:mod:`accelrl.averaging`: the change of an actuator
is divided by a count that grows each time the policy reverses that actuator's direction,
and falls back to 1 when one direction's proposals add up to a real move). This example
runs both bundles, the plain ``agents/apg-ares-ea`` and the averaged one, on published
trials with 10 um Gaussian reading noise on every read beam parameter, and prints the true
beam's MAE: the plain policy turns the noise into setting changes, the averaged one does not.

    python examples/averaging.py --trials 12 --steps 100
"""

from __future__ import annotations

import argparse

import numpy as np

from accelrl.agents.evaluation.loop import run_trials
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.envs import TransverseTuningVectorEnv
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.trials import load_trials
from accelrl.resources import resolve

#: Gaussian reading noise on every read beam parameter [m].
NOISE = 10e-6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="every 25th published trial")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    spec = ares_ea_spec()
    spec = spec.model_copy(
        update={"screen": spec.screen.model_copy(update={"reading_noise": NOISE})}
    )
    trials = load_trials()[::25][: args.trials]
    print(f"{len(trials)} published trials, {args.steps} steps, {NOISE * 1e6:.0f} um reading noise")
    for name in ("apg-ares-ea", "apg-ares-ea-averaged"):
        policy = OnnxPolicy(resolve(f"agents/{name}/bundle"))
        env = TransverseTuningVectorEnv(
            spec, len(trials), max_episode_steps=args.steps, action_mode="direct",
            terminate_on_target=False,
        )  # fmt: skip
        records = run_trials(env, policy, trials, args.steps, seed=0)
        best = np.median([r["mae"].min() for r in records]) * 1e6
        final = np.median([r["mae"][-10:].mean() for r in records]) * 1e6
        print(
            f"{name:22s} averaging {policy.averager.spec}: median best MAE {best:5.2f} um, "
            f"median final MAE (last 10 steps) {final:5.2f} um"
        )


if __name__ == "__main__":
    main()
