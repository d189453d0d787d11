"""Laser-plasma accelerator surrogate: predict, tune with gradients, check in Wake-T.

Read top to bottom:

1. load the shipped deep-ensemble surrogate of the Wake-T dataset ``lpa_beamloading``;
2. predict a setting's beam with its 95% interval and the probability of an intact beam;
3. find the setting that best reaches a target energy with small spread and high charge, by
   gradient ascent on the penalised objective ``J - k sigma`` (differentiable surrogate);
4. step the Gymnasium environment ``accelrl/LPATuning-v0`` (jitter and drift included) at
   that setting;
5. optionally (``--resimulate``) re-simulate the setting in Wake-T and compare.

    .venv/bin/python examples/lpa_surrogate.py [--target-energy 1.2e9] [--resimulate]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import accelrl  # noqa: F401  (registers accelrl/LPATuning-v0)
from accelrl.surrogates.models import load_surrogate
from accelrl.surrogates.objective import ObjectiveConfig, SurrogateObjective

parser = argparse.ArgumentParser()
parser.add_argument("--target-energy", type=float, default=1.2e9, help="[eV]")
parser.add_argument("--resimulate", action="store_true", help="run Wake-T once (~1-2 min)")
args = parser.parse_args()
torch.set_num_threads(1)

# 1. the surrogate: a torch module over named physical inputs (SI)
model = load_surrogate("lpa_beamloading")
print("inputs :", model.input_names)
print("outputs:", model.output_names)

# 2. one prediction at the middle of the design
centre = dict(zip(model.input_names, model.bounds.mean(1), strict=True))
pred = model.predict({k: [v] for k, v in centre.items()})
for j, name in enumerate(model.output_names):
    print(
        f"  {name:22s} {pred['mean'][0, j]:.4g}  "
        f"[{pred['low95'][0, j]:.4g}, {pred['high95'][0, j]:.4g}]"
    )
print(f"  p(beam intact) = {pred['p_valid'][0]:.2f}")

# 3. gradient ascent on the penalised objective, from 64 random starts at once
objective = SurrogateObjective(model, ObjectiveConfig(target_energy=args.target_energy))
low, high = (torch.as_tensor(model.bounds[:, i]) for i in (0, 1))
u = torch.rand(64, len(low), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
u.requires_grad_(True)
opt = torch.optim.Adam([u], lr=0.02)
for _ in range(300):
    opt.zero_grad()
    (-objective(low + u.clamp(0, 1) * (high - low))).sum().backward()
    opt.step()
with torch.no_grad():
    x = low + u.clamp(0, 1) * (high - low)
    best = int(objective(x).argmax())
setting = dict(zip(model.input_names, x[best].tolist(), strict=True))
terms = objective.evaluate(x[best : best + 1].numpy())
print(f"\nbest setting for {args.target_energy / 1e9:.2f} GeV:")
for k, v in setting.items():
    print(f"  {k:20s} {v:.4g}")
print(
    f"  predicted energy {terms['energy'][0] / 1e9:.3f} GeV, spread {terms['spread'][0]:.4f}, "
    f"charge {terms['charge'][0] * 1e12:.1f} pC, J = {terms['objective'][0]:.4f} "
    f"+- {terms['sigma'][0]:.4f}"
)

# 4. the environment at that setting: shot-to-shot jitter and drift move the beam
env = gym.make("accelrl/LPATuning-v0")
obs, info = env.reset(
    seed=0,
    options={"settings": list(setting.values()), "target_energy": args.target_energy},
)
rewards = []
for _ in range(10):
    obs, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    rewards.append(reward)
print(
    f"\nenvironment, 10 shots at that setting: reward {np.mean(rewards):.4f} "
    f"+- {np.std(rewards):.4f}; last energy {obs['beam'][0] / 1e9:.3f} GeV "
    f"(laser jitter {info['laser_jitter']:+.3%}, density drift {info['density_drift']:+.3%})"
)

# 5. the real code
if args.resimulate:
    from accelrl.surrogates.dataset import load_dataset
    from accelrl.surrogates.models.resimulate import resimulate

    spec = load_dataset(model.provenance["dataset"]).spec
    (rec,) = resimulate(model, spec, [setting])
    print(f"\nWake-T: {rec['status']} in {rec['wall_time_s']:.0f} s")
    for name, o in rec["outputs"].items():
        print(
            f"  {name:22s} Wake-T {o['simulated']:.4g}  surrogate {o['mean']:.4g} "
            f"[{o['low95']:.4g}, {o['high95']:.4g}]  {'in' if o['inside95'] else 'OUT'}"
        )
