"""``accelrl render`` (the screen before and after one trial) and the deprecated ``rollout``.

Both run their trials through the evaluation protocol (:mod:`accelrl.agents.evaluation.loop`):
the baseline ``do-nothing`` keeps the start settings, ``random`` takes uniformly random
steps within the delta-action bound (:class:`~accelrl.agents.tuners.baselines.RandomSteps`,
seeded per trial from ``seed + trial.index``). ``rollout`` is ``accelrl evaluate
--optimiser do-nothing|random-steps`` with a shorter table; use that instead (it is kept,
with a deprecation warning, for one release).

Everything is computed in SI units; metres are converted to um/mm only for display. The
CSV written by ``rollout --out`` is in SI units.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich import box
from rich.table import Table

from accelrl.agents.evaluation.metrics import sigma_pos
from accelrl.cli.common import (
    EVAL_STEPS,
    BackendOpt,
    EnvIdArg,
    LimitOpt,
    SeedOpt,
    StepsOpt,
    TrialsOpt,
    console,
    fail,
    load_trial_set,
    warn,
)
from accelrl.names import Backend
from accelrl.units import MM, UM

if TYPE_CHECKING:
    from accelrl.agents.evaluation import EvaluationResult
    from accelrl.envs import Trial


class Policy(StrEnum):
    """Baseline policies of ``rollout`` and ``render``."""

    do_nothing = "do-nothing"
    random = "random"


#: The optimiser spec of each baseline policy.
_SPECS = {Policy.do_nothing: "do-nothing", Policy.random: "random-steps"}


def _evaluate(
    env_id: str,
    trials: Sequence[Trial],
    policy: Policy | str,
    steps: int,
    backend: str,
    seed: int,
    progress: bool,
) -> EvaluationResult:
    """One baseline policy on ``trials``, in one vector environment, in this process."""
    from accelrl.agents.evaluation import evaluate

    policy = Policy(policy)
    return evaluate(
        _SPECS[policy],
        list(trials),
        max_steps=steps,
        backend=str(Backend(backend).value),
        seed=seed,
        executor="serial",
        progress=progress,
        env_id=env_id,
        chunk_size=len(trials),
        label=policy.value,
    )


@dataclass(frozen=True)
class RolloutResult:
    """Per-trial results of a rollout (SI units).

    :param policy: Policy name.
    :param backend: Simulation backend.
    :param steps: Steps per trial.
    :param seed: Base seed.
    :param trial: Trial indices ``[N]``.
    :param target: Targets ``[N, 4]`` ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param initial_mae: MAE at the start ``[N]`` [m].
    :param final_mae: MAE after the last step ``[N]`` [m].
    :param best_mae: Smallest MAE of the episode, the start included ``[N]`` [m].
    :param final_on_screen: Whether the beam is on the screen at the end ``[N]``.
    :param seconds: Wall time of the rollout [s].
    """

    policy: str
    backend: str
    steps: int
    seed: int
    trial: np.ndarray
    target: np.ndarray
    initial_mae: np.ndarray
    final_mae: np.ndarray
    best_mae: np.ndarray
    final_on_screen: np.ndarray
    seconds: float

    @property
    def sized(self) -> np.ndarray:
        """Mask of the trials whose target sizes ``sigma_x`` and ``sigma_y`` are both > 0."""
        return sigma_pos(self.target)


def rollout(
    env_id: str,
    trials: Sequence[Trial],
    policy: Policy | str,
    steps: int = EVAL_STEPS,
    backend: str = "fast",
    seed: int = 0,
    progress: bool = False,
) -> RolloutResult:
    """A baseline policy on every trial, through the evaluation protocol (deprecated: use
    :func:`accelrl.agents.evaluation.evaluate` with ``"do-nothing"`` or ``"random-steps"``).

    :raises ValueError: For ``steps < 1`` or no trials.
    """
    if steps < 1 or not trials:
        raise ValueError(f"need steps >= 1 and at least one trial, got {steps} and {len(trials)}")
    start = time.perf_counter()
    result = _evaluate(env_id, trials, policy, steps, backend, seed, progress)
    t = result.trial_table(Policy(policy).value)
    return RolloutResult(
        policy=Policy(policy).value,
        backend=str(Backend(backend).value),
        steps=steps,
        seed=seed,
        trial=t["trial"],
        target=np.stack([t[f"target_{p}"] for p in ("mu_x", "sigma_x", "mu_y", "sigma_y")], 1),
        initial_mae=t["initial_mae"],
        final_mae=t["final_mae"],
        best_mae=t["best_mae"],
        final_on_screen=t["final_on_screen"],
        seconds=time.perf_counter() - start,
    )


def _csv(path: Path, result: RolloutResult) -> None:
    """Per-trial results as CSV, SI units (metres)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["policy", "backend", "seed", "steps", "trial"]
            + [f"target_{p}_m" for p in ("mu_x", "sigma_x", "mu_y", "sigma_y")]
            + ["initial_mae_m", "final_mae_m", "best_mae_m", "final_on_screen"]
        )
        r = result
        for i, trial in enumerate(r.trial):
            w.writerow(
                [r.policy, r.backend, r.seed, r.steps, int(trial)]
                + [repr(float(v)) for v in r.target[i]]
                + [repr(float(v)) for v in (r.initial_mae[i], r.final_mae[i], r.best_mae[i])]
                + [int(bool(r.final_on_screen[i]))]
            )


def _table(result: RolloutResult, title: str) -> Table:
    """Median and IQR of the final and best MAE [um], all trials and sized targets."""
    table = Table(
        title=title,
        caption="MAE to the target in um; IQR: 25th-75th percentile; sized: both target sizes > 0",
        box=box.SIMPLE_HEAD,
    )
    for col in ("policy", "trials", "n", "final median", "final IQR", "best median", "best IQR"):
        table.add_column(col, justify="left" if col in ("policy", "trials") else "right")
    sized = result.sized
    for label, mask in (("all", np.ones_like(sized)), ("sized", sized)):
        cells = [result.policy if label == "all" else "", label, str(int(mask.sum()))]
        for values in (result.final_mae[mask], result.best_mae[mask]):
            if not values.size:
                cells += ["-", "-"]
                continue
            q25, q50, q75 = np.percentile(values, [25, 50, 75]) * UM
            cells += [f"{q50:.1f}", f"{q25:.1f}-{q75:.1f}"]
        table.add_row(*cells)
    return table


def rollout_command(
    env_id: EnvIdArg,
    policy: Annotated[
        Policy, typer.Option("--policy", help="Baseline policy.")
    ] = Policy.do_nothing,
    trials_path: TrialsOpt = None,
    steps: StepsOpt = EVAL_STEPS,
    backend: BackendOpt = Backend.fast,
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
    out: Annotated[
        Path | None,
        typer.Option("--out", dir_okay=False, help="Write per-trial results (SI units) as CSV."),
    ] = None,
) -> None:
    """Deprecated: use `accelrl evaluate --optimiser do-nothing|random-steps`. Roll out a
    baseline policy on a trial set and print the MAE table."""
    warn(
        "`accelrl rollout` is deprecated and will be removed in the next release; use "
        f"`accelrl evaluate --optimiser {_SPECS[policy]}` (same protocol, full report)"
    )
    trials = load_trial_set(trials_path)
    if limit is not None:
        trials = trials[:limit]
    try:
        result = rollout(env_id, trials, policy, steps, backend.value, seed, progress=True)
    except ValueError as err:
        raise fail(str(err)) from None
    title = f"{env_id}: {len(trials)} trials x {steps} steps, backend {backend.value}, seed {seed}"
    console.print(_table(result, title))
    console.print(f"rolled out in {result.seconds:.2f} s")
    if out is not None:
        _csv(out, result)
        console.print(f"per-trial results: {out}", highlight=False)


# --------------------------------------------------------------------------- render
@dataclass(frozen=True)
class Rendered:
    """Screen images of one trial before and after a rollout.

    :param before: RGB image ``[H, W, 3]`` after the reset.
    :param after: RGB image after the last step.
    :param mae_before: MAE after the reset [m].
    :param mae_after: MAE after the last step [m].
    :param half_extent: Half width and height of the screen [m].
    """

    before: np.ndarray
    after: np.ndarray
    mae_before: float
    mae_after: float
    half_extent: tuple[float, float]


def render_trial(
    env_id: str,
    trial: Trial,
    policy: Policy | str = Policy.do_nothing,
    steps: int = EVAL_STEPS,
    backend: str = "fast",
    seed: int = 0,
) -> Rendered:
    """One trial through the evaluation protocol; the screen after the reset and after the
    last step, drawn from the recorded readings."""
    from accelrl.envs import TASKS
    from accelrl.envs.render import screen_image

    half_extent = TASKS[env_id]().screen.half_extent
    result = _evaluate(env_id, [trial], policy, steps, backend, seed, progress=False)
    ep = result.episode(Policy(policy).value, trial.index)
    beam = ("mu_x", "sigma_x", "mu_y", "sigma_y")

    def image(s: int) -> np.ndarray:
        reading = [ep[f"reading_{p}"][s] for p in beam]
        target = [ep[f"target_{p}"][s] for p in beam]
        return screen_image(reading, target, half_extent, on_screen=bool(ep["on_screen"][s]))

    return Rendered(image(0), image(-1), float(ep["mae"][0]), float(ep["mae"][-1]), half_extent)


def save_render(
    path: Path, rendered: Rendered, env_id: str, trial: int, policy: str, steps: int
) -> None:
    """Two panels (before, after) with axes in mm and the MAE in the titles, as PNG."""
    from matplotlib.figure import Figure

    hx, hy = (v * MM for v in rendered.half_extent)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        (rendered.before, f"before (reset): MAE = {rendered.mae_before * UM:.1f} µm"),
        (rendered.after, f"after {steps} steps ({policy}): MAE = {rendered.mae_after * UM:.1f} µm"),
    )
    for ax, (img, title) in zip(axes, panels, strict=True):
        ax.imshow(img, extent=(-hx, hx, -hy, hy), origin="upper", interpolation="nearest")
        ax.set_xlabel("x [mm]")
        ax.set_ylabel("y [mm]")
        ax.set_title(title)
    fig.suptitle(f"{env_id}, trial {trial} (red: target, 1-sigma ellipse)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)


def render_command(
    env_id: EnvIdArg,
    trial: Annotated[int, typer.Option("--trial", min=0, help="Trial position in the set.")] = 0,
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="PNG file to write.")] = Path(
        "beam.png"
    ),
    steps: StepsOpt = EVAL_STEPS,
    policy: Annotated[
        Policy, typer.Option("--policy", help="Baseline policy.")
    ] = Policy.do_nothing,
    trials_path: TrialsOpt = None,
    backend: BackendOpt = Backend.fast,
    seed: SeedOpt = 0,
) -> None:
    """Render the beam on the screen for one trial, before and after a rollout, as a PNG."""
    if out.suffix.lower() != ".png":
        raise typer.BadParameter(f"{out} must end in .png", param_hint="'--out'")
    trials = load_trial_set(trials_path)
    if trial >= len(trials):
        raise typer.BadParameter(
            f"trial {trial} is out of range: the set has {len(trials)} trials "
            f"(0..{len(trials) - 1})",
            param_hint="'--trial'",
        )
    try:
        r = render_trial(env_id, trials[trial], policy, steps, backend.value, seed)
        save_render(out, r, env_id, trials[trial].index, policy.value, steps)
    except ValueError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write {out}: {err}") from None
    console.print(
        f"trial {trials[trial].index}: MAE {r.mae_before * UM:.1f} um -> "
        f"{r.mae_after * UM:.1f} um after {steps} steps ({policy.value})"
    )
    typer.echo(str(out))
