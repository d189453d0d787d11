"""Agents on accelrl/LPATuning-v0 at equal step budgets, and Wake-T re-simulation of the result.

1. A policy is trained by backpropagating the penalised objective through batched rollouts of
   the differentiable deep-ensemble surrogate (analytic policy gradients), with the task's
   laser-energy jitter and density drift sampled in the rollouts.
2. The policy, random search and Nelder-Mead (scipy, bounded) each get the same budget of
   environment steps per case (one step = one shot = one surrogate evaluation) on a fixed set
   of targets and seeds. Random search and Nelder-Mead set the inputs directly and recommend
   the setting with the best observed reward; the policy acts in delta mode and recommends its
   final setting. Every recommended setting is scored on the noise-free surrogate (the case's
   drift, no jitter): the plain objective ``J``, the penalised ``J - k sigma``, energy error,
   spread and charge.
3. The policy's recommended settings of the first ``--resimulate`` cases are re-simulated in
   Wake-T (the dataset's simulator, fixed parameters and fidelity, through
   ``make_simulator``) and compared with the surrogate's prediction and 95% interval.

Usage::

    .venv/bin/python benchmarks/lpa_agents.py [--iterations 1500] [--resimulate 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import torch
from torch import nn

from accelrl.envs.lpa import LPACore, LPATuningEnv
from accelrl.surrogates.models import load_surrogate
from accelrl.surrogates.objective import objective_from_outputs

SCORED = ("energy_median", "energy_spread_core", "charge_in_acceptance")


# ---------------------------------------------------------------------------- policy
class LPAPolicy(nn.Module):
    """MLP from normalised observations to delta actions in units of the action box."""

    def __init__(self, core: LPACore, hidden: int = 128) -> None:
        super().__init__()
        k = len(core.actuators)
        self.register_buffer("low", torch.as_tensor(core.low))
        self.register_buffer("span", torch.as_tensor(core.high - core.low))
        self.register_buffer("step", torch.as_tensor(core.action_high))
        self.t_low, self.t_span = core.target_low, core.target_high - core.target_low
        self.q_ref = core.terms.charge_ref
        self.net = nn.Sequential(
            nn.Linear(2 * k + 4, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, k),
        ).double()

    def features(
        self,
        settings: torch.Tensor,
        beam: torch.Tensor,
        target: torch.Tensor,
        last_delta: torch.Tensor,
    ) -> torch.Tensor:
        u = 2 * (settings - self.low) / self.span - 1
        e_err = torch.clamp(beam[:, 0] / target - 1, -2, 2) * 5
        spread = torch.log(torch.clamp(beam[:, 1], min=1e-5) / 0.01)
        charge = beam[:, 2] / self.q_ref - 1
        t = 2 * (target - self.t_low) / self.t_span - 1
        return torch.cat(
            [
                u,
                e_err[:, None],
                spread[:, None],
                charge[:, None],
                t[:, None],
                last_delta / self.step,
            ],
            -1,
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(feats)) * self.step

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], last_delta: np.ndarray) -> np.ndarray:
        f = self.features(
            torch.as_tensor(obs["settings"], dtype=torch.float64)[None],
            torch.as_tensor(obs["beam"], dtype=torch.float64)[None],
            torch.as_tensor(obs["target"], dtype=torch.float64),
            torch.as_tensor(last_delta, dtype=torch.float64)[None],
        )
        return self(f)[0].numpy()


def train_apg(core: LPACore, iterations: int, batch: int, horizon: int, seed: int) -> LPAPolicy:
    """Analytic policy gradients through the surrogate (penalised reward, jitter, drift)."""
    torch.manual_seed(seed)
    policy = LPAPolicy(core)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=5e-5)
    c = core.config
    low, high = torch.as_tensor(core.low), torch.as_tensor(core.high)
    in_low, in_high = torch.as_tensor(core.in_low), torch.as_tensor(core.in_high)
    base = torch.as_tensor(core.base)
    cols = torch.as_tensor(core.cols)
    for p in core.surrogate.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    for it in range(iterations):
        target = core.target_low + torch.rand(batch, dtype=torch.float64) * (
            core.target_high - core.target_low
        )
        mid = (low + high) / 2
        rand = low + torch.rand(batch, len(cols), dtype=torch.float64) * (high - low)
        start_random = (torch.rand(batch, 1) < 0.5).double()
        settings = start_random * rand + (1 - start_random) * mid
        drift = (2 * torch.rand(batch, dtype=torch.float64) - 1) * c.drift_rel_init
        last = torch.zeros(batch, len(cols), dtype=torch.float64)

        def inputs(s: torch.Tensor, jitter: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
            x = base.expand(batch, -1).clone()
            x[:, cols] = s
            if core.jitter_col >= 0:
                x[:, core.jitter_col] = x[:, core.jitter_col] * (1 + jitter)
            if core.drift_col >= 0:
                x[:, core.drift_col] = x[:, core.drift_col] * (1 + drift)
            return torch.maximum(torch.minimum(x, in_high), in_low)

        jitter = torch.zeros(batch, dtype=torch.float64)
        terms = core.terms(inputs(settings, jitter, drift), target)
        total = 0.0
        for h in range(horizon):
            beam = torch.stack([terms["energy"], terms["spread"], terms["charge"]], -1)
            delta = policy(policy.features(settings, beam, target, last))
            settings = torch.maximum(torch.minimum(settings + delta, high), low)
            last = delta
            jitter = c.jitter_rel_rms * torch.randn(batch, dtype=torch.float64)
            drift = drift + c.drift_rel_step * torch.randn(batch, dtype=torch.float64)
            terms = core.terms(inputs(settings, jitter, drift), target)
            weight = 1.0 + h / horizon  # later steps count more: converge, then hold
            total = total + weight * terms["penalised"].mean()
        loss = -total / horizon
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        if it % 100 == 0 or it == iterations - 1:
            print(
                f"  apg it {it:5d}  mean penalised reward {-loss.item():.4f}  "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return policy


# ---------------------------------------------------------------------------- agents
def run_policy(env: LPATuningEnv, policy: LPAPolicy, budget: int) -> np.ndarray:
    obs = {k: v[0] for k, v in env.core.observation().items()}  # the env was just reset
    last = np.zeros(env.action_space.shape)
    for _ in range(budget):
        a = policy.act(obs, last)
        obs, *_ = env.step(a.astype(np.float32))
        last = a
    return env.core.settings[0].copy()


def run_random(env: LPATuningEnv, budget: int, rng: np.random.Generator) -> np.ndarray:
    core = env.core
    best, best_r = None, -np.inf
    for _ in range(budget):
        s = core.low + rng.random(len(core.low)) * (core.high - core.low)
        _, r, *_ = env.step(s.astype(np.float32))
        if r > best_r:
            best, best_r = core.settings[0].copy(), r
    return best


def run_nelder_mead(env: LPATuningEnv, budget: int) -> np.ndarray:
    core = env.core
    span = core.high - core.low
    seen: list[tuple[float, np.ndarray]] = []

    def f(u: np.ndarray) -> float:
        if len(seen) >= budget:
            return 1e9
        s = core.low + np.clip(u, 0, 1) * span
        _, r, *_ = env.step(s.astype(np.float32))
        seen.append((r, core.settings[0].copy()))
        return -r

    k = len(span)
    simplex = np.vstack([np.full(k, 0.5)] + [0.5 + 0.25 * np.eye(k)[i] for i in range(k)])
    scipy.optimize.minimize(
        f,
        np.full(k, 0.5),
        method="Nelder-Mead",
        bounds=[(0, 1)] * k,
        options={"maxfev": budget, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-6},
    )
    while len(seen) < budget:  # converged early: spend the rest re-measuring the best point
        f((max(seen, key=lambda t: t[0])[1] - core.low) / span)
    return max(seen, key=lambda t: t[0])[1]


def score(core: LPACore, settings: np.ndarray, target: float, drift: float) -> dict[str, float]:
    x = core.true_inputs(settings[None], np.array([drift]), np.zeros(1))
    with torch.no_grad():
        t = core.terms(torch.as_tensor(x), torch.as_tensor([target]))
    return {
        "objective": float(t["objective"][0]),
        "penalised": float(t["penalised"][0]),
        "sigma": float(t["sigma"][0]),
        "energy_error": float(t["energy_error"][0]),
        "spread": float(t["spread"][0]),
        "charge_pC": float(t["charge"][0]) * 1e12,
        "p_valid": float(t["p_valid"][0]),
        "inputs": x[0].tolist(),
    }


def gradient_optimum(core: LPACore, target: float, k_sigma: float, starts: int = 64) -> np.ndarray:
    """Best setting (all inputs, no drift/jitter) of ``J - k_sigma sigma_J`` on the surrogate,
    by Adam from ``starts`` random points (seeded)."""
    from accelrl.surrogates.objective import ObjectiveConfig, SurrogateObjective

    c = core.terms.config
    f = SurrogateObjective(
        core.surrogate,
        ObjectiveConfig(
            target_energy=target,
            weight_energy=c.weight_energy,
            weight_spread=c.weight_spread,
            weight_charge=c.weight_charge,
            charge_ref=core.terms.charge_ref,
            k_sigma=k_sigma,
        ),
        tuned=core.actuators,
        fixed={
            n: float(v)
            for n, v in zip(core.surrogate.input_names, core.base, strict=True)
            if n not in core.actuators
        },
    )
    low, high = torch.as_tensor(core.low), torch.as_tensor(core.high)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(starts, len(low), dtype=torch.float64, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        (-f(low + u.clamp(0, 1) * (high - low))).sum().backward()
        opt.step()
    with torch.no_grad():
        x = low + u.clamp(0, 1) * (high - low)
        return x[int(f(x).argmax())].numpy()


def exploit_check(core: LPACore, spec, n_targets: int) -> None:
    """Plain-mean (k=0) against penalised (k=1) optima, both re-simulated in Wake-T."""
    from accelrl.surrogates.models.resimulate import resimulate

    targets = np.linspace(core.target_low, core.target_high, n_targets)
    settings, meta = [], []
    for t in targets:
        for k in (0.0, 1.0):
            s = gradient_optimum(core, float(t), k)
            x = core.true_inputs(s[None], np.zeros(1), np.zeros(1))[0]
            with torch.no_grad():
                terms = core.terms(torch.as_tensor(x[None]), torch.as_tensor([t]))
            settings.append(dict(zip(core.surrogate.input_names, x.tolist(), strict=True)))
            meta.append((float(t), k, float(terms["objective"][0]), float(terms["sigma"][0])))
    print(f"\nexploitation check: {len(settings)} Wake-T runs (plain-mean vs penalised optima)")
    results = resimulate(core.surrogate, spec, settings)
    print(f"{'target MeV':>10s} {'k':>4s} {'J surrogate':>11s} {'σ_J':>7s} {'J Wake-T':>9s}")
    gaps = {0.0: [], 1.0: []}
    for (t, k, j, sj), res in zip(meta, results, strict=True):
        sim = {n: v["simulated"] for n, v in res["outputs"].items()}
        intact = res["status"] == "ok" and sim.get("charge_fraction", 1.0) >= 0.99
        j_sim = objective_from_outputs(core.terms, sim, t, intact)
        gaps[k].append(j - j_sim)
        print(f"{t / 1e6:10.1f} {k:4.1f} {j:11.4f} {sj:7.4f} {j_sim:9.4f}")
    for k, g in gaps.items():
        print(f"k={k}: mean (surrogate J - Wake-T J) = {np.mean(g):+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lpa_beamloading")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--budget", type=int, default=50, help="steps per case")
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resimulate", type=int, default=10, help="Wake-T runs (0: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/lpa_agents"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exploit-check",
        type=int,
        default=0,
        help="targets for the plain-mean vs penalised check (2 Wake-T runs each)",
    )
    parser.add_argument("--only-exploit-check", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    surrogate = load_surrogate(args.model)
    delta_env = LPATuningEnv(surrogate=surrogate)
    direct_env = LPATuningEnv(surrogate=surrogate, action_mode="direct")
    core = delta_env.core
    print(
        f"task: actuators {core.actuators}, targets "
        f"[{core.target_low / 1e6:.0f}, {core.target_high / 1e6:.0f}] MeV, "
        f"k_sigma={core.config.k_sigma}, budget {args.budget} steps/case"
    )

    if args.exploit_check or args.only_exploit_check:
        from accelrl.surrogates.spec import DatasetSpec

        spec = DatasetSpec.from_yaml(Path("surrogates") / f"{surrogate.provenance['dataset']}.yaml")
        exploit_check(core, spec, max(args.exploit_check, 1))
        if args.only_exploit_check:
            return

    t0 = time.perf_counter()
    policy = train_apg(core, args.iterations, args.batch, args.horizon, args.seed)
    train_s = time.perf_counter() - t0
    print(f"APG training: {train_s:.0f} s")

    targets = np.linspace(core.target_low, core.target_high, args.targets)
    records: list[dict[str, Any]] = []
    for ti, target in enumerate(targets):
        for seed in range(args.seeds):
            case = {"target_energy": float(target), "seed": seed, "case": ti}
            for agent in ("apg", "random", "nelder-mead"):
                env = delta_env if agent == "apg" else direct_env
                env.reset(seed=1000 * seed + ti, options={"target_energy": float(target)})
                drift0 = float(env.core.drift[0])
                t1 = time.perf_counter()
                if agent == "apg":
                    best = run_policy(env, policy, args.budget)
                elif agent == "random":
                    best = run_random(env, args.budget, np.random.default_rng(seed * 97 + ti))
                else:
                    best = run_nelder_mead(env, args.budget)
                drift = float(env.core.drift[0])
                rec = {
                    **case,
                    "agent": agent,
                    "settings": best.tolist(),
                    "drift_start": drift0,
                    "drift_end": drift,
                    "wall_s": time.perf_counter() - t1,
                }
                rec.update(score(core, best, float(target), drift))
                records.append(rec)

    print()
    print(
        f"{len(targets)} targets x {args.seeds} seeds, {args.budget} steps each; scored on "
        "the noise-free surrogate at the recommended setting (drift at the episode end)"
    )
    header = (
        f"{'agent':12s} {'J mean':>8s} {'J-kσ mean':>9s} {'J median':>8s} "
        f"{'|ΔE|/E med':>10s} {'spread med':>10s} {'Q [pC] med':>10s} {'σ_J mean':>8s} "
        f"{'wins':>5s}"
    )
    print(header)
    by = {a: [r for r in records if r["agent"] == a] for a in ("apg", "random", "nelder-mead")}
    n_cases = len(by["apg"])
    wins = {a: 0 for a in by}
    for i in range(n_cases):
        best_agent = max(by, key=lambda a: by[a][i]["penalised"])
        wins[best_agent] += 1
    summary = {}
    for a, rs in by.items():
        j = np.array([r["objective"] for r in rs])
        jp = np.array([r["penalised"] for r in rs])
        summary[a] = {
            "J_mean": float(j.mean()),
            "Jpen_mean": float(jp.mean()),
            "J_median": float(np.median(j)),
            "energy_error_median": float(np.median([r["energy_error"] for r in rs])),
            "spread_median": float(np.median([r["spread"] for r in rs])),
            "charge_pC_median": float(np.median([r["charge_pC"] for r in rs])),
            "sigma_mean": float(np.mean([r["sigma"] for r in rs])),
            "wins": wins[a],
        }
        s = summary[a]
        print(
            f"{a:12s} {s['J_mean']:8.4f} {s['Jpen_mean']:9.4f} {s['J_median']:8.4f} "
            f"{s['energy_error_median']:10.4f} {s['spread_median']:10.4f} "
            f"{s['charge_pC_median']:10.2f} {s['sigma_mean']:8.4f} {s['wins']:5d}"
        )
    (args.out / "agents.json").write_text(
        json.dumps({"summary": summary, "records": records, "apg_train_s": train_s}, indent=1)
    )
    torch.save(policy.state_dict(), args.out / "apg_policy.pt")

    if args.resimulate <= 0:
        return
    from accelrl.surrogates.models.resimulate import resimulate
    from accelrl.surrogates.spec import DatasetSpec

    spec_path = Path("surrogates") / f"{surrogate.provenance['dataset']}.yaml"
    spec = DatasetSpec.from_yaml(spec_path)
    cases = [r for r in by["apg"] if r["seed"] == 0][: args.resimulate]
    settings = [dict(zip(surrogate.input_names, r["inputs"], strict=True)) for r in cases]
    print()
    print(
        f"re-simulating {len(settings)} APG results in {spec.simulator} ({spec_path})", flush=True
    )

    def show(i: int, rec: dict) -> None:
        print(f"  case {i}: {rec['status']} in {rec['wall_time_s']:.1f} s", flush=True)

    t2 = time.perf_counter()
    results = resimulate(surrogate, spec, settings, on_result=show)
    print(f"re-simulation: {time.perf_counter() - t2:.0f} s")
    print()
    print(
        f"{'case':>4s} {'target MeV':>10s} {'output':22s} {'Wake-T':>11s} {'surrogate':>11s} "
        f"{'95% interval':>25s} in?"
    )
    agree = 0
    per_output = {n: 0 for n in SCORED}
    j_rows = []
    for i, (case, res) in enumerate(zip(cases, results, strict=True)):
        ok_all = res["status"] == "ok"
        for name in SCORED:
            o = res["outputs"].get(name)
            if o is None:
                continue
            inside = bool(o["inside95"])
            per_output[name] += inside
            ok_all &= inside
            print(
                f"{i:4d} {case['target_energy'] / 1e6:10.1f} {name:22s} {o['simulated']:11.4g} "
                f"{o['mean']:11.4g} [{o['low95']:11.4g}, {o['high95']:11.4g}] "
                f"{'yes' if inside else 'NO'}"
            )
        agree += ok_all
        sim = {k: v["simulated"] for k, v in res["outputs"].items()}
        intact = res["status"] == "ok" and sim.get("charge_fraction", 1.0) >= 0.99
        j_sim = objective_from_outputs(core.terms, sim, case["target_energy"], intact)
        j_rows.append((case["target_energy"], case["objective"], case["sigma"], j_sim))
    n = len(results)
    print()
    print("objective J of the recommended settings: surrogate (± epistemic σ_J) vs Wake-T")
    for t, j_pred, s_j, j_sim in j_rows:
        print(f"  {t / 1e6:7.1f} MeV  surrogate {j_pred:7.4f} ± {s_j:.4f}   Wake-T {j_sim:7.4f}")
    print(
        f"  mean: surrogate {np.mean([r[1] for r in j_rows]):.4f}, "
        f"Wake-T {np.mean([r[3] for r in j_rows]):.4f}"
    )
    print()
    print(
        f"agreement within the 95% interval: all three outputs in {agree}/{n} cases; "
        + ", ".join(f"{k} {v}/{n}" for k, v in per_output.items())
    )
    (args.out / "resimulation.json").write_text(json.dumps(results, indent=1, default=float))
    print(
        json.dumps(
            {
                "agree_all3": agree,
                "n": n,
                "per_output": per_output,
                "summary": {a: {k: round(v, 4) for k, v in s.items()} for a, s in summary.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
