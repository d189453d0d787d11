"""Tune the simulated ARES experimental area with a physics-informed BO session.

Read top to bottom: build the problem, the physics prior and the session; then the ask/tell
loop against the simulated machine, each step written to the live progress file that
``accelrl dashboard`` follows; then diagnostics, the return to the best setting, and a
save/resume. Runs in about half a minute on one core.

    python examples/bo_session.py [--trial 30] [--steps 20] [--out runs/bo_example]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from accelrl.agents.bo import (
    BeamlinePrior,
    SessionProgress,
    TuningSession,
    ares_ea_problem,
    screen_result,
)
from accelrl.envs import TASKS, TransverseTuningEnv, load_trials

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--trial", type=int, default=30, help="trial of the published set")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--out", type=Path, default=Path("runs/bo_example"))
args = parser.parse_args()
torch.set_num_threads(1)

# 1. The machine: the simulated ARES-EA beamline with one published trial's hidden state
#    (incoming beam, misalignments) and target. The session never sees the hidden state.
env = TransverseTuningEnv(
    TASKS["accelrl/AresEATransverseTuning-v0"](), action_mode="direct", terminate_on_target=False
)
_, info = env.reset(seed=args.trial, options={"trial": load_trials()[args.trial]})
target = np.asarray(info["target"])


def measure() -> dict[str, float]:
    """What the control system reports: MAE to the target [m], beam on screen, the reading
    (mu_x, sigma_x, mu_y, sigma_y) [m] that the prior's calibration also fits."""
    return screen_result(info["reading"], target, bool(info["on_screen"]))


# 2. The problem: five magnets with hard bounds and a max step of 10 % of the range per move;
#    the objective is the MAE (modelled in log); beam on screen is a critical constraint.
problem = ares_ea_problem(initial=info["magnets"])
print("variables:", ", ".join(f"{v.name} [{v.unit}]" for v in problem.variables))

# 3. The prior: the compiled beamline with the design incoming beam and no misalignments,
#    returning log(MAE). Its misalignments and beam offsets are calibrated with the GP.
prior = BeamlinePrior(target)
session = TuningSession(problem, prior, {"acquisition": "logei", "seed": 0})

# 4. Ask/tell: ingest what the machine reads back, apply the next suggestion. Each step goes
#    to args.out/progress.jsonl as it happens (start record, then one record per step with
#    the best so far and the prior's state): `accelrl dashboard args.out` shows it live.
progress = SessionProgress(args.out, machine="sim:ares-ea", trial=args.trial, prior="physics",
                           acquisition="logei", steps=args.steps)  # fmt: skip
print(f"follow it live: accelrl dashboard {args.out}")
for step in range(1, args.steps + 1):
    session.ingest(problem.named(info["magnets"]), measure())
    setting = session.suggest()  # dict name -> SI value, within bounds and max step
    progress.update(session)  # the step just ingested, with the diagnostics after it
    _, _, _, _, info = env.step(np.array([setting[n] for n in problem.names]))
    d = session.diagnostics()
    print(
        f"step {step:2d}: MAE {info['mae'] * 1e6:7.1f} um   best measured before this step "
        f"{d['best']['objective'] * 1e6:7.1f} um   prior used: {d['uses_prior']}"
    )
session.ingest(problem.named(info["magnets"]), measure())
progress.update(session)
progress.end("completed", best_mae_m=session.best()[1])

# 5. What the model learnt: the prior's correlation with the data and the calibration.
d = session.diagnostics()
r = d["prior_correlation"]
print(
    f"prior correlation {r if r is None else round(r, 3)} (fallback below "
    f"{d['correlation_threshold']}); blend weight {d['prior_weight']:.2f}"
)
print("calibrated incoming centroid [m, rad]:", np.round(d["calibration"]["incoming"][1:5], 6))

# 6. Save, resume, and return to the best setting in max-step sized moves.
session.save(args.out)
resumed = TuningSession.load(args.out)
for move in resumed.finish():
    _, _, _, _, info = env.step(np.array([move[n] for n in problem.names]))
print(f"back at the best setting: MAE {info['mae'] * 1e6:.1f} um; session in {args.out}/")
