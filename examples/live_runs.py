"""Runs that can be watched while they run: what each writes, and the dashboard on them.

Read top to bottom: a short Stable-Baselines3 training run (its ``progress.jsonl`` and
``episodes.csv`` grow as it trains), then the shipped policy bundle deployed on the simulated
ARES-EA with one printed line per step (the controller's ``on_record`` callback) and its
fsync'ed ``run.jsonl``; then the command that opens ``accelrl dashboard`` on both. Start the
dashboard first in another terminal to watch them live. Runs in about a minute on one core.

    python examples/live_runs.py [--out runs/live] [--timesteps 768]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from accelrl.agents.training.recipes import Recipe
from accelrl.agents.training.sb3 import train
from accelrl.cli.steplines import StepLines
from accelrl.deploy.config import load_machine_config
from accelrl.deploy.controller import Controller
from accelrl.deploy.plant import Plant
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import SafetyLayer
from accelrl.deploy.sim import SimMachine
from accelrl.resources import resolve
from accelrl.runfiles import read_jsonl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=Path("runs/live"))
parser.add_argument("--timesteps", type=int, default=768)
args = parser.parse_args()
torch.set_num_threads(1)

# 1. A training run: PPO on 4 environments, evaluated every 256 timesteps on 3 held-out
#    trials. While it trains, progress.jsonl holds the start record and each evaluation as
#    soon as it is done, episodes.csv one row per finished episode, logs/progress.csv the
#    SB3 logger's dumps (and TensorBoard events with `tensorboard: true` and the extra).
recipe = Recipe.from_dict({
    "algorithm": "ppo", "num_envs": 4, "total_timesteps": args.timesteps, "seed": 0,
    "hyperparameters": {"n_steps": 32, "batch_size": 64, "n_epochs": 1,
                        "net_arch": {"actor": [16], "critic": [16]}},
    "evaluation": {"every": 256, "trials": "0:300:100", "steps": 10},
})  # fmt: skip
run = train(recipe, args.out / "ppo", progress=False)
records, _ = read_jsonl(args.out / "ppo" / "progress.jsonl")
for r in records:
    if r["type"] == "evaluation":
        print(f"evaluation at {r['timesteps']} timesteps: median best MAE "
              f"{r['median_best_mae_um']:.0f} um")  # fmt: skip
print(f"training {records[-1]['status']}: {run.timesteps} timesteps")

# 2. A deployment run: the shipped bundle on the simulated machine (trial 30), auto mode.
#    The controller logs every record to run.jsonl (fsync'ed) and then hands it to
#    on_record: here the command-line printer, one line per step in operator units.
policy = OnnxPolicy(resolve("agents/apg-ares-ea/bundle"))
config = load_machine_config(resolve("deploy/sim_ares_ea.yaml"))
plant = Plant.from_trial(30)
machine = SimMachine(plant, config)
controller = Controller(
    policy, machine, SafetyLayer.for_bundle(machine, config, policy.manifest), "auto",
    target=plant.target, max_steps=20, log_dir=args.out / "deploy", plot=False,
    on_record=StepLines(Console(), quiet=False),
)  # fmt: skip
result = controller.run()

# 3. Watch (or look back at) both in the browser.
print(f"open the dashboard: accelrl dashboard {args.out}   (then http://127.0.0.1:5006/)")
