"""The ``accelrl`` command: inspect environments, roll out baseline policies, render the screen.

Commands
--------
``accelrl envs list``
    The registered environment ids with their description, number of actuators and default
    ``TimeLimit``.
``accelrl envs show ID``
    Observation and action spaces (names, units, limits in both action modes), the screen,
    the randomisation of the hidden state, termination and reward of one environment.
``accelrl rollout ID --policy do-nothing|random [--trials PATH] [--steps 150] ...``
    Runs a baseline policy on every trial of a trial set (default: the 300 published ARES-EA
    trials) from the standard start settings, with termination disabled, and prints the
    median and interquartile range of the final and the best MAE.
``accelrl render ID --trial K --out beam.png``
    The beam on the screen before and after a rollout of one trial, saved as a PNG.
``accelrl demo``
    What ``make demo`` runs: both baselines on the published trials, then trial 0 rendered
    to ``demo_out/beam.png``.

Evaluation protocol
-------------------
Trial ``t`` (its position in the trial set, ``t.index``) is run in an environment that is
reset with ``seed=seed + t.index`` and ``options={"trial": t}``, with
``terminate_on_target=False``, in ``"delta"`` action mode, for exactly ``steps`` steps. All
trials are stepped together in one native vector environment; environment ``i`` follows
exactly the trajectory of a single environment reset that way (so ``rollout`` and ``render``
agree on a trial). The MAE is the mean absolute error of the true beam
``(mu_x, sigma_x, mu_y, sigma_y)`` on the screen to the target (``info["mae"]``); the best MAE
is the smallest over the episode, the initial state included.

The ``random`` policy draws every action uniformly from the action box, from a generator
seeded with ``(seed, t.index)``: a trial's actions do not depend on which other trials run.
``do-nothing`` sends zero changes.

Everything is computed in SI units; metres are converted to mm/um (and radians to
mrad/urad) only for display. The CSV written by ``rollout --out`` is in SI units.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from accelrl.agents.evaluate_cli import evaluate_command
from accelrl.agents.train_cli import train_command
from accelrl.agents.tune_cli import tune_command
from accelrl.deploy.cli import deploy_app, export_command
from accelrl.deploy.virtual.cli import serve_virtual_command
from accelrl.progress import progress_bar
from accelrl.surrogates.cli import surrogates_app

if TYPE_CHECKING:
    from accelrl.envs import TaskSpec, Trial

# accelrl.envs and the libraries behind it (torch, cheetah, gymnasium) are imported inside the
# commands that need them.

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Environment id used by ``accelrl demo``.
DEMO_ENV_ID = "accelrl/AresEATransverseTuning-v0"
#: Evaluation episode length of the published protocol [steps].
EVAL_STEPS = 150

app = typer.Typer(
    name="accelrl",
    help="Autonomous particle-accelerator beam tuning: environments, agents, BO, deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
envs_app = typer.Typer(help="Registered tuning environments.", no_args_is_help=True)
app.add_typer(envs_app, name="envs")
app.command("evaluate", help="Evaluate optimisers on a trial set (the published protocol).")(
    evaluate_command
)
app.command("train", help="Train a tuning agent from a recipe in agents/.")(train_command)
app.command("tune", help="Bayesian-optimisation tuning session (optionally with a physics prior).")(
    tune_command
)
app.command("export", help="Export a trained policy as an ONNX policy bundle.")(export_command)
app.add_typer(deploy_app, name="deploy")
app.add_typer(surrogates_app, name="surrogates")
app.command(
    "serve-virtual", help="Serve the virtual accelerator (EPICS CA soft IOC on 127.0.0.1)."
)(serve_virtual_command)


class Policy(StrEnum):
    """Baseline policies of ``rollout``, ``render`` and ``demo``."""

    do_nothing = "do-nothing"
    random = "random"


class Backend(StrEnum):
    """Simulation backends (the same names as :data:`accelrl.physics.BACKENDS`)."""

    fast = "fast"
    cheetah = "cheetah"
    cheetah_particles = "cheetah-particles"


@app.callback()
def _main() -> None:
    """Autonomous particle-accelerator beam tuning: environments, agents, BO, deployment."""
    # One torch thread where torch is installed; the deployment runtime runs without it.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- errors and input
def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; return the ``Exit`` to raise (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _check_env_id(env_id: str) -> str:
    """Argument callback: ``env_id`` must be a registered accelrl environment."""
    from accelrl.envs import TASKS
    from accelrl.registration import CODE_ENVIRONMENTS

    if env_id in CODE_ENVIRONMENTS:
        module = CODE_ENVIRONMENTS[env_id][0].partition(":")[0]
        raise typer.BadParameter(
            f"{env_id} is a surrogate-based environment; this command handles the "
            f"transverse-tuning tasks ({', '.join(sorted(TASKS))}). Its documentation: "
            f"python -m pydoc {module}"
        )
    if env_id not in TASKS:
        raise typer.BadParameter(
            f"unknown environment {env_id!r}; registered: {', '.join(sorted(TASKS))} "
            "(see `accelrl envs list`)"
        )
    return env_id


def _load_trials(path: Path | None) -> list[Trial]:
    """The trial set at ``path`` (default: the published set), errors as ``BadParameter``."""
    from accelrl.envs import load_trials

    try:
        trials = load_trials(path)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="'--trials'") from None
    if not trials:
        raise typer.BadParameter(f"{path}: the trial set is empty", param_hint="'--trials'")
    return trials


EnvIdArg = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help="Registered environment id, e.g. accelrl/AresEATransverseTuning-v0.",
        callback=_check_env_id,
    ),
]
TrialsOpt = Annotated[
    Path | None,
    typer.Option(
        "--trials",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Trial-set YAML (rl-vs-bo format); default: the 300 published ARES-EA trials.",
        show_default=False,
    ),
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Steps per trial.")]
BackendOpt = Annotated[Backend, typer.Option("--backend", help="Simulation backend.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed of resets and random actions.")]


# --------------------------------------------------------------------------- display helpers
#: Display scale and unit of an SI unit (values are multiplied by the scale).
_DISPLAY_UNITS: dict[str, tuple[float, str]] = {
    "m": (1e3, "mm"),
    "rad": (1e3, "mrad"),
    "eV": (1e-6, "MeV"),
}
#: Display scale and unit of each incoming-beam moment (:data:`accelrl.physics.INCOMING`).
_INCOMING_DISPLAY: dict[str, tuple[float, str]] = {
    "energy": (1e-6, "MeV"),
    "mu_x": (1e3, "mm"),
    "mu_px": (1e3, "mrad"),
    "mu_y": (1e3, "mm"),
    "mu_py": (1e3, "mrad"),
    "sigma_x": (1e6, "um"),
    "sigma_px": (1e6, "urad"),
    "sigma_y": (1e6, "um"),
    "sigma_py": (1e6, "urad"),
    "sigma_tau": (1e6, "um"),
    "sigma_p": (1.0, "1 (relative)"),
}
_UM = 1e6
_MM = 1e3


def _num(value: float, scale: float = 1.0) -> str:
    """``value * scale`` with 4 significant digits (``inf`` shown as such)."""
    v = float(value) * scale
    if not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def _display_unit(unit: str) -> tuple[float, str]:
    return _DISPLAY_UNITS.get(unit, (1.0, unit or "-"))


def _reward_descriptions() -> dict[str, str]:
    """Term name -> one-line description, read from :mod:`accelrl.envs.rewards`' docstring."""
    from accelrl.envs import rewards

    out: dict[str, str] = {}
    doc = rewards.__doc__ or ""
    for match in re.finditer(r"^``(\w+)``\n((?:[ \t]+\S.*\n?)+)", doc, flags=re.MULTILINE):
        text = " ".join(line.strip() for line in match.group(2).splitlines())
        out[match.group(1)] = text.replace("``", "")
    return out


# --------------------------------------------------------------------------- envs
@envs_app.command("list")
def envs_list() -> None:
    """List the registered accelrl environment ids."""
    import gymnasium as gym

    from accelrl.envs import TASKS

    table = Table(title="Registered accelrl environments")
    table.add_column("id", style="bold cyan", no_wrap=True)
    table.add_column("description")
    table.add_column("actuators", justify="right")
    table.add_column("TimeLimit", justify="right")
    for env_id in sorted(TASKS):
        spec = TASKS[env_id]()
        limit = gym.spec(env_id).max_episode_steps if env_id in gym.registry else None
        table.add_row(
            env_id,
            spec.description,
            str(len(spec.actuators)),
            str(limit if limit is not None else spec.max_episode_steps),
        )
    # Environments configured in code (surrogate-based): described by their action space.
    from accelrl.registration import CODE_ENVIRONMENTS

    for env_id in sorted(CODE_ENVIRONMENTS):
        env = gym.make(env_id)
        try:
            doc = (type(env.unwrapped).__doc__ or "").strip().splitlines()
            n_act = int(np.prod(env.action_space.shape or (0,)))
            table.add_row(
                env_id, doc[0] if doc else "", str(n_act), str(env.spec.max_episode_steps)
            )
        finally:
            env.close()
    console.print(table)


@envs_app.command("show")
def envs_show(env_id: EnvIdArg) -> None:
    """Spaces, screen, randomisation, termination and reward of one environment."""
    import gymnasium as gym

    from accelrl.envs import TASKS, TransverseTuningEnv
    from accelrl.physics import BACKENDS, INCOMING, TRANSVERSE

    spec: TaskSpec = TASKS[env_id]()
    # The spaces are read from real environments, so what is shown is what an agent gets.
    envs = {mode: TransverseTuningEnv(spec, action_mode=mode) for mode in ("delta", "direct")}
    limit = gym.spec(env_id).max_episode_steps if env_id in gym.registry else None

    console.print(f"[bold cyan]{escape(env_id)}[/]")
    if spec.description:
        console.print(spec.description)
    console.print(
        f"lattice: {spec.lattice or '-'}   default TimeLimit: "
        f"{limit if limit is not None else spec.max_episode_steps} steps (evaluation: "
        f"{EVAL_STEPS})   backends: {', '.join(BACKENDS)}   render modes: "
        f"{', '.join(envs['delta'].metadata['render_modes'])}"
    )

    # Action space
    delta, direct = envs["delta"].action_space, envs["direct"].action_space
    table = Table(
        title=f"Action space: Box({delta.shape[0]}), float32. 'delta' mode (default): change "
        f"per step, at most {spec.delta_fraction:g} x max(|low|, |high|) of each actuator; "
        "'direct' mode: absolute setting. Actions outside the box are clipped."
    )
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("element.attribute")
    table.add_column("unit", no_wrap=True)
    table.add_column(escape("delta [low, high]"), justify="right", no_wrap=True)
    table.add_column(escape("direct [low, high]"), justify="right", no_wrap=True)
    table.add_column("start", justify="right", no_wrap=True)
    for i, (act, start) in enumerate(zip(spec.actuators, spec.start, strict=True)):
        scale, unit = _display_unit(act.unit)
        table.add_row(
            act.name,
            f"{act.element}.{act.attribute}",
            unit,
            escape(f"[{_num(delta.low[i], scale)}, {_num(delta.high[i], scale)}]"),
            escape(f"[{_num(direct.low[i], scale)}, {_num(direct.high[i], scale)}]"),
            _num(start, scale),
        )
    console.print(table)

    # Observation space
    obs_space = envs["delta"].observation_space
    table = Table(title="Observation space: Dict(beam, magnets, target), float32")
    for col in ("key", "component", "unit", "low", "high"):
        table.add_column(col, justify="right" if col in ("low", "high") else None)
    for key in ("beam", "magnets", "target"):
        box = obs_space[key]
        for i in range(box.shape[0]):
            if key == "magnets":
                act = spec.actuators[i]
                name, (scale, unit) = act.name, _display_unit(act.unit)
            else:
                name, scale, unit = TRANSVERSE[i], _MM, "mm"
            table.add_row(
                key if i == 0 else "", name, unit, _num(box.low[i], scale), _num(box.high[i], scale)
            )
    console.print(table)
    console.print(
        "beam: the screen reading; off the screen it is the centroid clamped to the edge and "
        "the screen's half size (info['on_screen'] is False). info carries the hidden state."
    )

    # Screen
    s = spec.screen
    hx, hy = s.half_extent
    table = Table(title=f"Screen {s.element}", show_header=False)
    table.add_column("property")
    table.add_column("value")
    table.add_row("resolution", f"{s.resolution[0]} x {s.resolution[1]} px (binning {s.binning})")
    table.add_row("pixel size", f"{_num(s.pixel_size[0], _UM)} x {_num(s.pixel_size[1], _UM)} um")
    table.add_row(
        "extent",
        f"{_num(2 * hx, _MM)} x {_num(2 * hy, _MM)} mm "
        f"(x in +-{_num(hx, _MM)} mm, y in +-{_num(hy, _MM)} mm)",
    )
    table.add_row(
        "reading noise", f"{_num(s.reading_noise, _UM)} um rms" if s.reading_noise else "off"
    )
    table.add_row("quantised to pixels", "yes" if s.quantise else "no")
    console.print(table)

    # Randomisation
    r = spec.randomisation
    table = Table(title="Randomisation (uniform, drawn at every reset)")
    for col in ("quantity", "low", "high", "unit"):
        table.add_column(col, justify="right" if col in ("low", "high") else None)
    for key in INCOMING:
        scale, unit = _INCOMING_DISPLAY.get(key, (1.0, "SI"))
        u = r.incoming[key]
        table.add_row(f"incoming {key}", _num(u.low, scale), _num(u.high, scale), unit)
    for name, half in r.misalignments.items():
        table.add_row(f"misalignment {name} (x, y)", _num(-half, _UM), _num(half, _UM), "um")
    table.add_row("target mu_x, mu_y", _num(-r.target_mu, _MM), _num(r.target_mu, _MM), "mm")
    table.add_row(
        "target sigma_x, sigma_y",
        _num(r.target_sigma.low, _MM),
        _num(r.target_sigma.high, _MM),
        "mm",
    )
    console.print(table)
    optional = [
        ("reading noise", f"{_num(s.reading_noise, _UM)} um rms" if s.reading_noise else "off"),
        (
            "incoming-beam drift",
            f"{_num(r.drift.mu, _UM)} um, {_num(r.drift.mu_p, _UM)} urad rms per step"
            if r.drift.mu or r.drift.mu_p
            else "off",
        ),
        (
            "actuator failure",
            f"probability {r.failure.probability:g} per episode, stuck from step "
            f"{r.failure.step[0]}-{r.failure.step[1]}"
            if r.failure.probability
            else "off",
        ),
        (
            "calibration (gain) error",
            f"+-{100 * r.gain_error:g} % per actuator" if r.gain_error else "off",
        ),
    ]
    console.print("optional: " + "; ".join(f"{k}: {v}" for k, v in optional))

    # Termination, truncation, reward
    t = spec.termination
    thresholds = ", ".join(
        f"{n} {_num(v, _UM)} um" for n, v in zip(TRANSVERSE, t.thresholds, strict=True)
    )
    console.print(
        f"[bold]termination:[/] {'enabled' if t.enabled else 'disabled'} - all |reading - target| "
        f"below ({thresholds}) for {t.hold} step(s); off in evaluation "
        "(terminate_on_target=False)"
    )
    console.print(
        f"[bold]truncation:[/] TimeLimit {limit if limit is not None else spec.max_episode_steps}"
        f" steps (evaluation: {EVAL_STEPS})"
    )
    from accelrl.envs import Reward

    descriptions = _reward_descriptions()
    config = spec.reward
    console.print(f"[bold]reward:[/] {escape(repr(Reward(config)))}")
    names = [config] if isinstance(config, str) else [c.get("term", "?") for c in config]
    for name in names:
        if name in descriptions:
            console.print(f"  {name}: {escape(descriptions[name])}")
    if not isinstance(config, str):
        console.print(f"  config: {escape(repr(config))}")


# --------------------------------------------------------------------------- rollout
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
        return (self.target[:, 1] > 0) & (self.target[:, 3] > 0)


def policy_actions(
    policy: Policy | str,
    trials: Sequence[Trial],
    steps: int,
    low: np.ndarray,
    high: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Actions of a baseline policy for every step and trial, ``[steps, N, K]`` (SI).

    :param policy: ``"do-nothing"`` (zero change) or ``"random"`` (uniform in ``[low, high]``,
        from a generator seeded with ``(seed, trial.index)`` per trial).
    :param trials: The trials (only their ``index`` is used).
    :param steps: Number of steps.
    :param low: Lower bound of the action box ``[K]``.
    :param high: Upper bound of the action box ``[K]``.
    :param seed: Base seed (>= 0).
    """
    policy = Policy(policy)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if policy is Policy.do_nothing:
        return np.zeros((steps, len(trials), low.shape[0]))
    per_trial = [
        np.random.default_rng([seed, t.index]).uniform(low, high, size=(steps, low.shape[0]))
        for t in trials
    ]
    return np.stack(per_trial, axis=1)


def rollout(
    env_id: str,
    trials: Sequence[Trial],
    policy: Policy | str,
    steps: int = EVAL_STEPS,
    backend: str = "fast",
    seed: int = 0,
    progress: Progress | None = None,
) -> RolloutResult:
    """Run a baseline policy on every trial at once in the native vector environment.

    Environment ``i`` is reset exactly as a single environment with
    ``reset(seed=seed + trials[i].index, options={"trial": trials[i]})`` and stepped
    ``steps`` times with ``terminate_on_target=False`` (see the module documentation).

    :param env_id: A registered id.
    :param trials: The trials, one environment each.
    :param policy: ``"do-nothing"`` or ``"random"``.
    :param steps: Steps per trial.
    :param backend: ``"fast"``, ``"cheetah"`` or ``"cheetah-particles"``.
    :param seed: Base seed (>= 0).
    :param progress: A rich progress display to advance, one unit per step.

    >>> from accelrl.envs import load_trials
    >>> r = rollout("accelrl/AresEATransverseTuning-v0", load_trials()[:4], "do-nothing", 5)
    >>> r.final_mae.shape
    (4,)
    """
    from accelrl.envs import make_vec

    policy = Policy(policy)
    if steps < 1 or not trials:
        raise ValueError(f"need steps >= 1 and at least one trial, got {steps} and {len(trials)}")
    start = time.perf_counter()
    n = len(trials)
    venv = make_vec(
        env_id,
        num_envs=n,
        max_episode_steps=steps,
        terminate_on_target=False,
        backend=str(Backend(backend).value),
    )
    try:
        task = None
        if progress is not None:
            task = progress.add_task(f"{policy.value} ({n} trials)", total=steps)
        # Environment i runs trial i, seeded as a single env reset with seed + trial index.
        _, reset_info = venv.reset(
            seed=[seed + t.index for t in trials], options={"trial": list(trials)}
        )
        actions = policy_actions(
            policy, trials, steps, venv.single_action_space.low, venv.single_action_space.high, seed
        )
        initial = np.asarray(reset_info["mae"]).copy()
        best = initial.copy()
        info: dict[str, Any] = {}
        for k in range(steps):
            _, _, terminated, truncated, info = venv.step(actions[k])
            best = np.minimum(best, info["mae"])
            # Termination is off and the TimeLimit is `steps`: nothing resets mid-rollout.
            if terminated.any() or truncated.any() != (k == steps - 1):
                raise RuntimeError(f"an environment ended early at step {k + 1} of {steps}")
            if task is not None:
                progress.advance(task)
        return RolloutResult(
            policy=policy.value,
            backend=str(Backend(backend).value),
            steps=steps,
            seed=seed,
            trial=np.array([t.index for t in trials]),
            target=np.stack([t.target for t in trials]),
            initial_mae=initial,
            final_mae=np.asarray(info["mae"]).copy(),
            best_mae=best,
            final_on_screen=np.asarray(info["on_screen"]).copy(),
            seconds=time.perf_counter() - start,
        )
    finally:
        venv.close()


def _progress() -> Progress:
    return progress_bar(middle=["steps"], remaining=False, transient=True, console=err_console)


def _quartiles(values: np.ndarray) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q25), float(q50), float(q75)


def summary_table(results: Sequence[RolloutResult], title: str) -> Table:
    """Median and IQR (25-75 %) of the final and best MAE [um], all trials and sized targets.

    Rows per policy: ``all`` trials and ``sized`` (both target sizes ``sigma_x``, ``sigma_y``
    > 0).
    """
    table = Table(
        title=title,
        caption="MAE to the target in um; IQR: 25th-75th percentile; sized: both target sizes > 0",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("policy", style="bold", no_wrap=True)
    table.add_column("trials", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("final median", justify="right")
    table.add_column("final IQR", justify="right", no_wrap=True)
    table.add_column("best median", justify="right")
    table.add_column("best IQR", justify="right", no_wrap=True)
    for res in results:
        for label, mask in (("all", np.ones_like(res.sized)), ("sized", res.sized)):
            n = int(mask.sum())
            cells = [res.policy if label == "all" else "", label, str(n)]
            if n == 0:
                cells += ["-"] * 4
            else:
                for values in (res.final_mae[mask], res.best_mae[mask]):
                    q25, q50, q75 = _quartiles(values)
                    cells += [f"{q50 * _UM:.1f}", f"{q25 * _UM:.1f}-{q75 * _UM:.1f}"]
            table.add_row(*cells)
    return table


def write_csv(path: Path, results: Sequence[RolloutResult]) -> None:
    """Per-trial results as CSV, SI units (metres)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "policy",
                "backend",
                "seed",
                "steps",
                "trial",
                "target_mu_x_m",
                "target_sigma_x_m",
                "target_mu_y_m",
                "target_sigma_y_m",
                "initial_mae_m",
                "final_mae_m",
                "best_mae_m",
                "final_on_screen",
            ]
        )
        for res in results:
            for i, trial in enumerate(res.trial):
                w.writerow(
                    [res.policy, res.backend, res.seed, res.steps, int(trial)]
                    + [repr(float(v)) for v in res.target[i]]
                    + [
                        repr(float(res.initial_mae[i])),
                        repr(float(res.final_mae[i])),
                        repr(float(res.best_mae[i])),
                        int(bool(res.final_on_screen[i])),
                    ]
                )


def _run_rollouts(
    env_id: str,
    trials: Sequence[Trial],
    policies: Sequence[Policy],
    steps: int,
    backend: Backend,
    seed: int,
) -> list[RolloutResult]:
    results = []
    with _progress() as progress:
        for policy in policies:
            try:
                results.append(
                    rollout(env_id, trials, policy, steps, backend.value, seed, progress)
                )
            except ValueError as err:
                raise _fail(str(err)) from None
    return results


@app.command("rollout")
def rollout_cmd(
    env_id: EnvIdArg,
    policy: Annotated[
        Policy, typer.Option("--policy", help="Baseline policy.")
    ] = Policy.do_nothing,
    trials_path: TrialsOpt = None,
    steps: StepsOpt = EVAL_STEPS,
    backend: BackendOpt = Backend.fast,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Run only the first K trials.")
    ] = None,
    seed: SeedOpt = 0,
    out: Annotated[
        Path | None,
        typer.Option("--out", dir_okay=False, help="Write per-trial results (SI units) as CSV."),
    ] = None,
) -> None:
    """Roll out a baseline policy on a trial set; print the MAE table."""
    trials = _load_trials(trials_path)
    if limit is not None:
        trials = trials[:limit]
    (result,) = _run_rollouts(env_id, trials, [policy], steps, backend, seed)
    console.print(
        summary_table(
            [result],
            f"{env_id}: {len(trials)} trials x {steps} steps, backend {backend.value}, seed {seed}",
        )
    )
    console.print(f"rolled out in {result.seconds:.2f} s")
    if out is not None:
        write_csv(out, [result])
        console.print(f"per-trial results: {escape(str(out))}")


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
    """Roll out one trial in a single environment (``render_mode="rgb_array"``), as
    :func:`rollout` does, and render the screen before and after.
    """
    from accelrl.envs import TASKS, TransverseTuningEnv

    spec = TASKS[env_id]()
    env = TransverseTuningEnv(
        spec,
        backend=str(Backend(backend).value),
        terminate_on_target=False,
        render_mode="rgb_array",
    )
    _, info = env.reset(seed=seed + trial.index, options={"trial": trial})
    before, mae_before = env.render(), info["mae"]
    actions = policy_actions(
        policy, [trial], steps, env.action_space.low, env.action_space.high, seed
    )
    for k in range(steps):
        _, _, _, _, info = env.step(actions[k, 0])
    after = env.render()
    env.close()
    return Rendered(before, after, float(mae_before), float(info["mae"]), spec.screen.half_extent)


def save_render(
    path: Path, rendered: Rendered, env_id: str, trial: int, policy: str, steps: int
) -> None:
    """Two panels (before, after) with axes in mm and the MAE in the titles, as PNG."""
    from matplotlib.figure import Figure

    hx, hy = (v * _MM for v in rendered.half_extent)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        (rendered.before, f"before (reset): MAE = {rendered.mae_before * _UM:.1f} µm"),
        (
            rendered.after,
            f"after {steps} steps ({policy}): MAE = {rendered.mae_after * _UM:.1f} µm",
        ),
    )
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(image, extent=(-hx, hx, -hy, hy), origin="upper", interpolation="nearest")
        ax.set_xlabel("x [mm]")
        ax.set_ylabel("y [mm]")
        ax.set_title(title)
    fig.suptitle(f"{env_id}, trial {trial} (red: target, 1-sigma ellipse)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)


def _render_to(
    env_id: str,
    trials: Sequence[Trial],
    k: int,
    out: Path,
    policy: Policy,
    steps: int,
    backend: Backend,
    seed: int,
) -> Rendered:
    try:
        rendered = render_trial(env_id, trials[k], policy, steps, backend.value, seed)
    except ValueError as err:
        raise _fail(str(err)) from None
    try:
        save_render(out, rendered, env_id, trials[k].index, policy.value, steps)
    except OSError as err:
        raise _fail(f"cannot write {out}: {err}") from None
    return rendered


@app.command("render")
def render_cmd(
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
    trials = _load_trials(trials_path)
    if trial >= len(trials):
        raise typer.BadParameter(
            f"trial {trial} is out of range: the set has {len(trials)} trials "
            f"(0..{len(trials) - 1})",
            param_hint="'--trial'",
        )
    r = _render_to(env_id, trials, trial, out, policy, steps, backend, seed)
    console.print(
        f"trial {trials[trial].index}: MAE {r.mae_before * _UM:.1f} um -> "
        f"{r.mae_after * _UM:.1f} um after {steps} steps ({policy.value})"
    )
    typer.echo(str(out))


# --------------------------------------------------------------------------- demo
@app.command("demo")
def demo_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", file_okay=False, help="Folder of the policy and report.")
    ] = Path("demo_out"),
    iterations: Annotated[
        int, typer.Option(min=1, help="Gradient steps of the small agent's training.")
    ] = 600,
    steps: StepsOpt = EVAL_STEPS,
    seed: SeedOpt = 0,
) -> None:
    """Train a small agent on ARES-EA and evaluate it against baselines on the 300 trials.

    The agent is trained by backpropagating through the differentiable simulation (a few
    minutes on 2 cores), then evaluated with do-nothing and random search under the
    published protocol; prints the table and writes the records and a report.
    """
    from accelrl.agents.apg import APGConfig, train_apg
    from accelrl.agents.evaluate_cli import summary_table as evaluation_table
    from accelrl.agents.evaluation import evaluate_many
    from accelrl.agents.report import write_report

    start = time.perf_counter()
    policy_dir = out_dir / "policy"
    console.print(
        f"[bold]{DEMO_ENV_ID}[/]: training a small policy through the differentiable "
        f"simulation ({iterations} gradient steps)"
    )
    config = APGConfig(
        iterations=iterations, batch_size=128, horizon=12, hidden=[64, 64], seed=seed
    )
    result = train_apg(config, out_dir=policy_dir)
    console.print(f"trained in {result.wall_s:.0f} s -> {escape(str(policy_dir))}")
    console.print(f"evaluating on the published trials, {steps} steps each")
    evaluation = evaluate_many(
        {"do-nothing": "do-nothing", "random": "random", "demo-policy": f"policy:{policy_dir}"},
        max_steps=steps,
        seed=seed,
    )
    evaluation.save(out_dir / "evaluation")
    report = write_report(evaluation, out_dir / "evaluation")
    table = evaluation_table(evaluation, wide=True)
    if console.measure(table).maximum > console.width:
        table = evaluation_table(evaluation, wide=False)
    console.print(table)
    console.print(f"report: {escape(str(report))}")
    console.print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    app()
