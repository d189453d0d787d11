"""ARES-EA as a vector environment on a torch device: state, actions and results stay there.

Steps 4096 environments with random delta actions as tensors on ``--device`` (``cpu``, or
``cuda`` on a machine with a GPU), reports the mean beam error and the throughput, then
drives the same kind of environment through its numpy view, as Stable-Baselines3 does.

    python examples/device_vector_env.py [--device cuda] [--num-envs 4096] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import accelrl  # noqa: F401  (registers the environments)
from accelrl.envs import ARES_EA_ID, SB3VecEnv, make_vec
from accelrl.envs.device import NumpyView


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    venv = make_vec(ARES_EA_ID, args.num_envs, device=args.device)
    obs, info = venv.reset(seed=0)
    print(f"{venv.num_envs} environments on {venv.device}; observation {obs['beam'].device}")
    gen = torch.Generator(device=venv.device).manual_seed(0)
    shape = (venv.num_envs, len(venv.action_high))
    start = time.perf_counter()
    for _ in range(args.steps):
        u = torch.rand(shape, generator=gen, dtype=torch.float64, device=venv.device)
        obs, reward, terminated, truncated, info = venv.step((2 * u - 1) * venv.action_high)
    rate = args.steps * venv.num_envs / (time.perf_counter() - start)
    print(f"after {args.steps} random steps: mean MAE {float(info['mae'].mean()) * 1e6:.0f} um")
    print(f"{rate:.3g} env-steps/s (random actions drawn on the device)")

    sb3 = SB3VecEnv(NumpyView(make_vec(ARES_EA_ID, 8, device=args.device)))
    obs = sb3.reset()
    obs, reward, done, infos = sb3.step(np.zeros((8, 5), dtype=np.float32))
    print(
        f"numpy view for Stable-Baselines3: beam {type(obs['beam']).__name__} {obs['beam'].shape}"
    )


if __name__ == "__main__":
    main()
