"""Quality of the shipped policies under world imperfections (the robust-policy targets).

Runs do-nothing, the ideal-world policy (``agents/apg-ares-ea``), the robust policy
(``agents/apg-ares-ea-robust``) and the ideal-world policy run with averaging over noisy
readings (``agents/apg-ares-ea-averaged``, :mod:`accelrl.averaging`) on the published
ARES-EA trials through the evaluation protocol's own loop
(:func:`accelrl.agents.evaluation.loop.run_trials`), in three settings:

* ``ares-realistic``: the world preset (camera readout, magnets, beam jitter and drift);
* ``ideal``: today's environment;
* ``noise-10um``: the ideal world with Gaussian reading noise of 10 um on every read
  parameter (the task spec's ``screen.reading_noise``);
* ``jitter`` (on request, ``--settings jitter``): the ideal world with ``ares-realistic``'s
  shot-to-shot beam jitter alone (exact readings of the jittered beam);
* ``no-jitter`` (on request): ``ares-realistic`` without its shot-to-shot beam jitter (camera,
  magnets and drift kept): how much of the final/best ratio the jitter makes.

A reference row, ``hold-optimum``, holds for every trial the settings the ideal-world policy
ends at after ``--steps`` steps in the ideal world (its optimum there, median 1.0 um) and
never moves: the final/best ratio that beam jitter and drift alone give a perfectly placed,
motionless optimiser in each setting. A second, ``averaged-frozen``, runs the averaged policy
for :data:`FREEZE_STEP` steps and then holds the setting it has reached: were the policy's
later moves chasing the noise, holding would lower its final MAE; tracking the drift, they
raise it.

Per setting and optimiser: median best MAE, median final MAE (mean of the last 10 steps),
median steps to 20 um (trials that never get there count as ``max_steps``), the fraction
reaching 20 um, and for the targets with a zero size (either axis: 27 of the 300) the median
final MAE next to the median initial one (do-nothing's).
The MAE is the true beam's. Prints a table and ends with one JSON line
``{setting: {optimiser: {...}}}``.

    PYTHONPATH=. python benchmarks/robust_policy.py --trials 300 --steps 150
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accelrl.agents.evaluation.loop import run_trials
from accelrl.agents.evaluation.metrics import TARGET_MAE, best_so_far
from accelrl.agents.registry import make_optimiser
from accelrl.envs import TransverseTuningVectorEnv
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.trials import load_trials
from accelrl.envs.world import load_world

#: Steps averaged for the final MAE.
FINAL_STEPS = 10
SETTINGS = ("ares-realistic", "ideal", "noise-10um")
#: Settings run on request.
EXTRA_SETTINGS = ("jitter", "no-jitter")
#: Step after which ``averaged-frozen`` holds its setting.
FREEZE_STEP = 20
OPTIMISERS = {
    "do-nothing": "do-nothing",
    "apg-ares-ea": "policy:agents/apg-ares-ea",
    "apg-ares-ea-robust": "policy:agents/apg-ares-ea-robust",
    "apg-ares-ea-averaged": "policy:agents/apg-ares-ea-averaged",
}


def setting_env(setting: str, n: int, steps: int) -> TransverseTuningVectorEnv:
    """The evaluation environment (direct actions, no termination) of ``setting``."""
    spec = ares_ea_spec()
    world: str | dict[str, Any] | None = None
    if setting == "noise-10um":
        spec = spec.model_copy(update={"screen": spec.screen.model_copy(
            update={"reading_noise": 10e-6})})  # fmt: skip
    elif setting == "jitter":
        jitter = load_world("ares-realistic").model_dump()["beam"]["jitter"]
        world = {"name": "ares-realistic-jitter", "beam": {"jitter": jitter}}
    elif setting == "no-jitter":
        world = load_world("ares-realistic").model_dump()
        world["beam"]["jitter"] = dict.fromkeys(world["beam"]["jitter"], 0.0)
        world["name"] = "ares-realistic-no-jitter"
    elif setting != "ideal":
        world = setting
    return TransverseTuningVectorEnv(
        spec, n, max_episode_steps=steps, action_mode="direct", terminate_on_target=False,
        world=world,
    )  # fmt: skip


def summary(records: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Medians of one optimiser's trials [m, steps]."""
    mae = np.stack([r["mae"] for r in records])
    best = best_so_far(mae.T).T
    reached = best < TARGET_MAE
    to_target = np.where(reached.any(axis=1), reached.argmax(axis=1), steps)
    final = mae[:, -FINAL_STEPS:].mean(axis=1)
    zero = np.array([r["target"][1] == 0 or r["target"][3] == 0 for r in records])
    return {
        "median_best_mae_m": float(np.median(best[:, -1])),
        "median_final_mae_m": float(np.median(final)),
        "median_steps_to_20um": float(np.median(to_target)),
        "fraction_reaching_20um": float(reached.any(axis=1).mean()),
        "zero_size_trials": int(zero.sum()),
        "zero_size_median_final_mae_m": float(np.median(final[zero])) if zero.any() else None,
        "zero_size_median_initial_mae_m": float(np.median(mae[zero, 0])) if zero.any() else None,
    }


class HoldSettings:
    """A batch optimiser that answers fixed settings per trial (the ``hold-optimum`` row).

    :param settings: Settings per trial ``[N, K]`` (SI), in the order of the trials run.
    """

    name = "hold-optimum"

    def __init__(self, settings: np.ndarray) -> None:
        self.settings = np.asarray(settings, np.float64)

    def reset(self, problem: Any) -> None:
        raise NotImplementedError("hold-optimum answers for the whole batch only")

    def ask(self, observation: Any) -> np.ndarray:
        raise NotImplementedError("hold-optimum answers for the whole batch only")

    def reset_batch(self, problems: Any) -> None:
        if len(problems) != len(self.settings):
            raise ValueError(f"{len(problems)} trials for {len(self.settings)} held settings")

    def ask_batch(self, observations: Any) -> np.ndarray:
        return self.settings.copy()


class FreezeAfter:
    """A batch optimiser that asks ``inner`` for ``steps`` steps, then holds the settings of
    its last answer (the ``averaged-frozen`` row).

    :param inner: A batch optimiser.
    :param steps: Steps answered by ``inner`` (>= 1).
    """

    name = "frozen"

    def __init__(self, inner: Any, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.inner, self.steps = inner, steps
        self._asked = 0
        self._last: np.ndarray | None = None

    def reset(self, problem: Any) -> None:
        raise NotImplementedError("averaged-frozen answers for the whole batch only")

    def ask(self, observation: Any) -> np.ndarray:
        raise NotImplementedError("averaged-frozen answers for the whole batch only")

    def reset_batch(self, problems: Any) -> None:
        self._asked, self._last = 0, None
        self.inner.reset_batch(problems)

    def ask_batch(self, observations: Any) -> np.ndarray:
        if self._asked < self.steps or self._last is None:
            self._last = np.asarray(self.inner.ask_batch(observations), np.float64)
        self._asked += 1
        return self._last.copy()


def ideal_optimum(trials: list[Any], steps: int, seed: int) -> np.ndarray:
    """The ideal-world policy's final settings ``[N, K]`` after ``steps`` ideal steps."""
    env = setting_env("ideal", len(trials), steps)
    records = run_trials(env, make_optimiser(OPTIMISERS["apg-ares-ea"]), trials, steps, seed)
    return np.stack([r["settings"][-1] for r in records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="first N published trials")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS + EXTRA_SETTINGS
    )
    parser.add_argument("--out", type=Path, help="write the JSON summary there too")
    parser.add_argument(
        "--robust", default="agents/apg-ares-ea-robust", help="robust policy directory"
    )
    args = parser.parse_args()
    OPTIMISERS["apg-ares-ea-robust"] = f"policy:{args.robust}"
    torch.set_num_threads(1)
    trials = load_trials()[: args.trials]
    results: dict[str, dict[str, Any]] = {}
    print(f"{len(trials)} published trials, {args.steps} steps; MAE of the true beam [um]")
    head = ("setting", "optimiser", "best", "final", "final/best", "to 20um", "reach",
            "zero: final", "(start)", "wall s")  # fmt: skip
    widths = (-16, -20, 8, 8, 10, 8, 6, 11, 8, 7)
    print(
        " ".join(
            f"{h:<{-w}s}" if w < 0 else f"{h:>{w}s}" for h, w in zip(head, widths, strict=True)
        )
    )
    optimum = ideal_optimum(trials, args.steps, args.seed)
    for setting in args.settings:
        results[setting] = {}
        references = {"hold-optimum": None, "averaged-frozen": None}
        for label, spec in {**OPTIMISERS, **references}.items():
            env = setting_env(setting, len(trials), args.steps)
            start = time.perf_counter()
            if label == "hold-optimum":
                optimiser: Any = HoldSettings(optimum)
            elif label == "averaged-frozen":
                averaged = make_optimiser(OPTIMISERS["apg-ares-ea-averaged"])
                optimiser = FreezeAfter(averaged, FREEZE_STEP)
            else:
                optimiser = make_optimiser(spec)
            records = run_trials(env, optimiser, trials, args.steps, args.seed)
            wall = time.perf_counter() - start
            s = summary(records, args.steps)
            s["wall_s"] = wall
            results[setting][label] = s
            um = 1e6
            ratio = s["median_final_mae_m"] / max(s["median_best_mae_m"], 1e-12)
            zf = s["zero_size_median_final_mae_m"]
            zi = s["zero_size_median_initial_mae_m"]
            print(
                f"{setting:16s} {label:20s} {s['median_best_mae_m'] * um:8.2f} "
                f"{s['median_final_mae_m'] * um:8.2f} {ratio:10.2f} "
                f"{s['median_steps_to_20um']:8.1f} {s['fraction_reaching_20um']:6.2f} "
                f"{(zf or 0) * um:11.1f} {(zi or 0) * um:8.1f} {wall:7.1f}",
                flush=True,
            )
    line = json.dumps(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
