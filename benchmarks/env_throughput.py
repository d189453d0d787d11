"""Environment throughput on ARES-EA: single-step latency and batched env-steps per second.

Measures, in one run and on one CPU thread:
* the median ``env.step`` latency of the single environment (``gym.make``, all Gymnasium
  wrappers) with the compiled fast map and with Cheetah's ParameterBeam tracking;
* the env-steps per second of the native vector environment at several batch sizes;
* the env-steps per second of the device vector environment (``make_vec(..., device=)``,
  torch tensors in and out, ``check_actions=False``: nothing waits for the device inside a
  step) on the CPU at the largest ``--sizes`` entry, and on CUDA at ``--device-sizes``
  when a GPU is present (the rows are noted as skipped otherwise).

Targets: single step <= 100 us median; batched >= 2e6 env-steps/s per core; fast vs
Cheetah single step >= 100x; on one H200 >= 1e9 env-steps/s at >= 4M envs. Ends with one
line of JSON.

    python benchmarks/env_throughput.py [--sizes 1 64 1024 16384] [--seconds 2] [--clock cpu]
                                        [--device-sizes 1000 65536 1048576 4194304 16777216]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import accelrl  # noqa: E402, F401  (registers the environments)
from accelrl.envs import ARES_EA_ID, make_vec  # noqa: E402

#: The clock of every timing: wall time (default) or, with ``--clock cpu``, the CPU time of
#: this process, which other jobs on a shared machine do not inflate (GPU rows: wall time).
CLOCK = [time.perf_counter]


def step_latency_us(backend: str, steps: int, seed: int = 0) -> float:
    """Median latency [us] of ``env.step`` with random delta actions."""
    env = gym.make(ARES_EA_ID, backend=backend, max_episode_steps=10**9)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(env.action_space.low, env.action_space.high, (steps, 5)).astype(
        np.float32
    )
    for a in actions[:10]:  # warm-up
        env.step(a)
    times = np.empty(steps)
    clock = CLOCK[0]
    for i, a in enumerate(actions):
        t = clock()
        env.step(a)
        times[i] = clock() - t
    return float(np.median(times) * 1e6)


def vector_steps_per_s(num_envs: int, seconds: float, seed: int = 0) -> float:
    """Env-steps per second of the native vector env (best of 3 timed blocks)."""
    venv = make_vec(ARES_EA_ID, num_envs=num_envs)
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    actions = [rng.uniform(low, high, (num_envs, 5)).astype(np.float32) for _ in range(8)]
    venv.step(actions[0])
    t = CLOCK[0]()
    venv.step(actions[1])
    per_step = max(CLOCK[0]() - t, 1e-6)
    n = max(3, int(seconds / 3 / per_step))
    best = float("inf")
    for _ in range(3):
        t = CLOCK[0]()
        for i in range(n):
            venv.step(actions[i % 8])
        best = min(best, (CLOCK[0]() - t) / n)
    return num_envs / best


def device_steps_per_s(device: str, num_envs: int, seconds: float, seed: int = 0) -> float:
    """Env-steps per second of the device vector env (best of 3 timed blocks)."""
    venv = make_vec(ARES_EA_ID, num_envs=num_envs, device=device, check_actions=False)
    venv.reset(seed=seed)
    gen = torch.Generator(device=venv.device).manual_seed(seed)
    scale = venv.action_high
    actions = [
        (2 * torch.rand(num_envs, 5, generator=gen, dtype=torch.float64, device=venv.device) - 1)
        * scale
        for _ in range(4)
    ]

    clock = time.perf_counter if venv.device.type == "cuda" else CLOCK[0]

    def sync() -> None:
        if venv.device.type == "cuda":
            torch.cuda.synchronize(venv.device)

    venv.step(actions[0])
    sync()
    t = clock()
    venv.step(actions[1])
    sync()
    per_step = max(clock() - t, 1e-6)
    n = max(3, int(seconds / 3 / per_step))
    best = float("inf")
    for _ in range(3):
        sync()
        t = clock()
        for i in range(n):
            venv.step(actions[i % 4])
        sync()
        best = min(best, (clock() - t) / n)
    return num_envs / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 16384])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per batch size [s]")
    parser.add_argument("--steps", type=int, default=5000, help="single-env steps (fast)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time with the wall clock, or with this process's CPU time (shared machines)",
    )
    parser.add_argument(
        "--device-sizes",
        type=int,
        nargs="+",
        default=[1000, 65536, 1048576, 4194304, 16777216],
        help="batch sizes of the CUDA rows",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time

    fast = step_latency_us("fast", args.steps)
    cheetah = step_latency_us("cheetah", max(200, args.steps // 25))
    ratio = cheetah / fast
    print(f"{'single env.step (gym.make)':34s} {'median [us]':>12s} {'vs fast':>10s}")
    print(f"{'  fast (compiled map)':34s} {fast:12.1f} {1.0:10.2f}")
    print(f"{'  cheetah (ParameterBeam)':34s} {cheetah:12.1f} {ratio:10.1f}x")
    print()
    rates = {}
    print(f"{'vector env num_envs':34s} {'env-steps/s':>12s} {'vs N=1':>10s}")
    for n in args.sizes:
        rates[str(n)] = vector_steps_per_s(n, args.seconds)
        print(
            f"  {n:<32d} {rates[str(n)]:12.3g} {rates[str(n)] / rates[str(args.sizes[0])]:10.1f}x"
        )
    print()
    device_rates: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    print(f"{'device vector env':34s} {'env-steps/s':>12s} {'vs numpy':>10s}")
    largest = max(args.sizes)
    rate = device_steps_per_s("cpu", largest, args.seconds)
    device_rates["cpu"] = {str(largest): rate}
    print(f"  cpu (torch) {largest:<20d} {rate:12.3g} {rate / rates[str(largest)]:9.2f}x")
    if torch.cuda.is_available():
        device_rates["cuda"] = {}
        for n in args.device_sizes:
            rate = device_steps_per_s("cuda", n, args.seconds)
            device_rates["cuda"][str(n)] = rate
            print(f"  cuda {n:<27d} {rate:12.3g} {rate / rates[str(largest)]:9.1f}x")
    else:
        skipped.append("cuda: no CUDA GPU on this machine")
        print("  cuda                             skipped: no CUDA GPU on this machine")
    print()
    print(
        f"targets: single fast <= 100 us ({'met' if fast <= 100 else 'MISSED'}), "
        f"fast vs cheetah >= 100x ({'met' if ratio >= 100 else 'MISSED'}), "
        f"batched >= 2e6 env-steps/s ({'met' if max(rates.values()) >= 2e6 else 'MISSED'})"
    )
    print(
        json.dumps(
            {
                "step_us_fast": round(fast, 2),
                "step_us_cheetah": round(cheetah, 2),
                "ratio": round(ratio, 1),
                "clock": args.clock,
                "vec_steps_per_s": {k: round(v) for k, v in rates.items()},
                "device_steps_per_s": {
                    d: {k: round(v) for k, v in r.items()} for d, r in device_rates.items()
                },
                "skipped": skipped,
            }
        )
    )


if __name__ == "__main__":
    main()
