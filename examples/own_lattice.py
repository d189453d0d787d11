"""Your own lattice end to end: a FODO line from a LatticeJSON file, trained and evaluated.

Read top to bottom: (1) read the lattice file and make its monitor a screen; (2) a quick
environment with make_tuning_env and your machine's beam ranges; (3) the same line as a task
with an id, from two files (envs/fodo_task.yaml naming envs/lattices/fodo.json): gym.make and
the batched make_vec; (4) a line with a cavity, which only the Cheetah backends track;
(5) train a policy through the differentiable simulation (APG) and evaluate it against
Nelder-Mead and doing nothing with the same command as for ARES-EA, `accelrl evaluate --env`.
About two minutes on 2 cores with the defaults below (more --iterations, better policy).

    python examples/own_lattice.py [--iterations 150] [--trials 20] [--out runs/own_lattice]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cheetah
import gymnasium as gym
import numpy as np
import torch
import yaml

import accelrl
from accelrl.physics import UnsupportedElementError, as_screen, load_lattice
from accelrl.resources import shipped

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iterations", type=int, default=150, help="APG training iterations")
parser.add_argument("--trials", type=int, default=20, help="evaluation trials (of 100)")
parser.add_argument("--out", type=Path, default=Path("runs/own_lattice"))
args = parser.parse_args()
torch.set_num_threads(1)
TASK = shipped("envs", "fodo_task.yaml")
LATTICE = shipped("envs", "lattices", "fodo.json")

# 1. The lattice file: LatticeJSON read by Cheetah (float64). Its monitor MON is a Marker
#    (as an Ocelot Monitor arrives); a task observes a Screen, so give it a camera geometry.
segment = load_lattice(LATTICE)
print("elements:", [f"{e.name}:{type(e).__name__}" for e in segment.flattened().elements])
segment = as_screen(segment, "MON", resolution=(1000, 800), pixel_size=(5e-6, 5e-6))

# 2. A quick environment: knobs with SI limits, the screen, and the beam of *your* machine
#    (ranges not given keep accelrl.envs.DEFAULT_INCOMING, the ARES-EA ranges).
env = accelrl.envs.make_tuning_env(
    segment,
    knobs=[("QF", "k1", -30.0, 30.0), ("QD", "k1", -30.0, 30.0),
           ("HCOR", "angle", -2e-3, 2e-3), ("VCOR", "angle", -2e-3, 2e-3)],
    screen="MON",
    randomisation={"incoming": {"energy": (45e6, 55e6)}, "target_mu": 1e-3},
)  # fmt: skip
obs, info = env.reset(seed=0)
print(f"make_tuning_env: energy {info['incoming'][0] / 1e6:.1f} MeV, beam on screen "
      f"{np.round(obs['beam'] * 1e3, 3)} mm")  # fmt: skip

# 3. The same line as a task with an id (two files, no code); gym.make and make_vec know it.
env_id = accelrl.envs.register_task(TASK)
env = gym.make(env_id)
venv = accelrl.envs.make_vec(env_id, num_envs=256)
_, vinfo = venv.reset(seed=0)
print(f"{env_id}: batched {venv.num_envs} envs, median MAE at the start "
      f"{np.median(vinfo['mae']) * 1e6:.0f} um")  # fmt: skip

# 4. A cavity: the compiled map cannot represent it, the Cheetah backends track it.
cavity = cheetah.Segment(
    [
        cheetah.Cavity(length=torch.tensor(1.0), voltage=torch.tensor(10e6),
                       phase=torch.tensor(0.0), frequency=torch.tensor(1.3e9), name="CAV"),
        *segment.elements,
    ],
    name="cavity_fodo",
)  # fmt: skip
knobs = [("QF", "k1", -30.0, 30.0), ("CAV", "voltage", 1e6, 20e6)]
try:
    accelrl.envs.make_tuning_env(cavity, knobs=knobs, screen="MON")
except UnsupportedElementError as err:
    print("the fast backend refuses, naming the element and the backends that can:", err)
env = accelrl.envs.make_tuning_env(cavity, knobs=knobs, screen="MON", backend="cheetah")
_, info = env.reset(seed=0)
print(f"cheetah backend with a cavity: beam {np.round(info['beam'] * 1e3, 3)} mm")

# 5. Train through the differentiable simulation (the shipped APG recipe for this task,
#    shortened), then evaluate with the CLI, as for ARES-EA.
recipe = yaml.safe_load(shipped("agents", "apg_fodo.yaml").read_text())
recipe["env"]["id"] = str(TASK)
recipe["apg"]["iterations"] = args.iterations
args.out.mkdir(parents=True, exist_ok=True)
(args.out / "apg.yaml").write_text(yaml.safe_dump(recipe))
cli = [sys.executable, "-m", "accelrl.cli"]
run = args.out / "apg"
subprocess.run([*cli, "train", "--recipe", args.out / "apg.yaml", "--out", run, "--force",
                "--no-progress"], check=True)  # fmt: skip
subprocess.run(
    [*cli, "evaluate", "--env", TASK, "-o", "do-nothing", "-o", "nelder-mead",
     "-o", f"policy:{run / 'policy'}", "--limit", str(args.trials), "--no-progress",
     "--out", args.out / "eval", "--force"],
    check=True,
)  # fmt: skip
summary = yaml.safe_load((args.out / "eval" / "summary.json").read_text())
for label, s in summary.items():
    print(f"{label:>40s}: median best MAE {s['all']['median_best_mae_um']:.1f} um")
