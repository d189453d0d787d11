"""``accelrl train``: train a tuning agent from a recipe in ``agents/``.

Registered in :mod:`accelrl.cli` as ``app.command("train")(train_command)``. Heavy imports
(torch, Stable-Baselines3) happen inside the command.

Examples::

    accelrl train --recipe agents/td3_icml.yaml                 # -> runs/td3_icml-0
    accelrl train --recipe agents/ppo.yaml --seed 3 --timesteps 200000 --out runs/ppo3
    accelrl train --recipe agents/apg.yaml --out runs/apg --force   # reuse a run directory
    accelrl train --recipe agents/apg.yaml --device cuda            # APG on the GPU
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from accelrl.cli.common import input_path
from accelrl.cli.options import finite

if TYPE_CHECKING:
    from accelrl.agents.training.recipes import APGRecipe, Recipe


def default_out(recipe: Path, seed: int) -> Path:
    """``runs/<recipe file stem>-<seed>`` (relative to the working directory)."""
    return Path("runs") / f"{recipe.stem}-{seed}"


#: What a training run writes into its run directory (``--force`` replaces these only).
SB3_FILES = (
    "policy",
    "progress.jsonl",
    "model.zip",
    "vecnormalize.pkl",
    "recipe.yaml",
    "evaluations.json",
    "episodes.csv",
    "learning_curve.png",
    "train_summary.json",
    "logs",
    "checkpoints",
)
APG_FILES = ("policy", "recipe.yaml", "progress.jsonl")

#: Recipe field -> the command-line option that overrides it.
_OPTION = {"total_timesteps": "timesteps", "seed": "seed"}


def _occupied(path: Path) -> bool:
    """Whether ``path`` exists and is not an empty directory."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def prepare(
    recipe_path: Path,
    out: Path | None,
    timesteps: int | None,
    seed: int | None,
    time_limit: float | None,
    force: bool,
    device: str | None = None,
) -> tuple[Recipe | APGRecipe, Path]:
    """Validate the recipe, every override and the run directory; write nothing.

    :return: The recipe with the overrides applied and the run directory.
    :raises RecipeError: For an invalid recipe or override, naming the field and the value.
    :raises typer.BadParameter: For an option that does not apply to the recipe, or an
        existing run directory without ``force``.
    """
    from accelrl.agents.training.recipes import APGRecipe, load_recipe

    recipe = load_recipe(recipe_path)
    if isinstance(recipe, APGRecipe):
        if timesteps is not None:
            raise typer.BadParameter(
                "applies to Stable-Baselines3 recipes (total_timesteps); an APG recipe sets "
                "its budget with apg.iterations",
                param_hint="'--timesteps'",
            )
        if time_limit is not None:
            raise typer.BadParameter(
                "applies to Stable-Baselines3 recipes; APG training runs apg.iterations "
                "gradient steps",
                param_hint="'--time-limit'",
            )
        if seed is not None:
            recipe = recipe.replace(f"{recipe_path} with --seed {seed}", seed=seed)
        if device is not None:
            data = recipe.to_dict()
            data["apg"]["device"] = device
            recipe = APGRecipe.from_dict(data, source=f"{recipe_path} with --device {device}")
        from accelrl.physics.devices import DeviceError, resolve_device

        try:  # a device this machine lacks fails here, before anything is written
            resolve_device(recipe.apg.device, "--device" if device else "apg.device")
        except DeviceError as e:
            raise typer.BadParameter(str(e), param_hint="'--device'") from None
    else:
        if device is not None:
            raise typer.BadParameter(
                "applies to APG recipes (apg.device); Stable-Baselines3 recipes train on the CPU",
                param_hint="'--device'",
            )
        changes: dict[str, int] = {}
        if timesteps is not None:
            changes["total_timesteps"] = timesteps
        if seed is not None:
            changes["seed"] = seed
        if changes:
            options = " ".join(f"--{_OPTION[k]} {v}" for k, v in changes.items())
            recipe = recipe.replace(f"{recipe_path} with {options}", **changes)
        from accelrl.agents.training.sb3 import evaluation_trials

        evaluation_trials(recipe)
    run_dir = out if out is not None else default_out(recipe_path, recipe.seed)
    if _occupied(run_dir) and not force:
        raise typer.BadParameter(
            f"{run_dir} exists and is not empty (a previous run?); choose another --out or "
            "pass --force to replace that run",
            param_hint="'--out'",
        )
    return recipe, run_dir


def train_command(
    recipe: Annotated[
        Path,
        typer.Option(
            "--recipe",
            "-r",
            help="Training recipe (YAML), e.g. agents/td3_icml.yaml.",
            callback=input_path,
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default: runs/<recipe name>-<seed>)."),
    ] = None,
    timesteps: Annotated[
        int | None,
        typer.Option(
            "--timesteps",
            "-t",
            min=1,
            help="Override the recipe's total_timesteps (Stable-Baselines3 recipes).",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", "-s", min=0, help="Override the recipe's seed.")
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            help="Stop training after this many minutes of wall time (Stable-Baselines3 recipes).",
            callback=finite("--time-limit", low=0.0, low_open=True, unit="minutes"),
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Reuse an existing, non-empty run directory (the files a run writes are "
            "replaced; others are kept).",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Override the recipe's apg.device (APG recipes): cpu, cuda, cuda:N or mps.",
        ),
    ] = None,
) -> None:
    """Train an agent from a recipe: TD3, SAC or PPO (Stable-Baselines3; periodic evaluation
    on held-out trials, checkpoints, learning curve) or APG (backpropagation through the
    differentiable simulation); exports the policy to OUT/policy.

    The recipe, every option and the run directory are checked before anything is written;
    an existing run directory is refused without --force."""
    from rich.console import Console
    from rich.table import Table

    from accelrl.agents.training.recipes import APGRecipe, RecipeError

    console, err = Console(), Console(stderr=True, soft_wrap=True)
    try:
        r, run_dir = prepare(recipe, out, timesteps, seed, time_limit, force, device)
    except (RecipeError, RuntimeError) as e:  # RuntimeError: a missing optional package
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    from accelrl.runs import OutputFolderError, prepare_output

    try:  # everything is valid: now the run directory may be created (or cleared)
        owned = APG_FILES if isinstance(r, APGRecipe) else SB3_FILES
        prepare_output(run_dir, force=force, owned=owned, what="--out")
    except OutputFolderError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    err.print(f"follow it live: accelrl dashboard {escape(str(run_dir))}", highlight=False)
    if isinstance(r, APGRecipe):
        from accelrl.agents.training.apg import train_apg_recipe

        err.print(
            f"training APG on {r.env.id} by backpropagation through the simulation -> {run_dir}",
            highlight=False,
        )
        result = train_apg_recipe(r, run_dir, progress=progress)
        console.print(f"trained in {result.wall_s:.0f} s; policy: {run_dir / 'policy'}")
        return
    err.print(
        f"training {r.algorithm.upper()} on {r.env.id}: {r.total_timesteps:,} timesteps, "
        f"{r.num_envs} envs, seed {r.seed} -> {run_dir}",
        highlight=False,
    )
    if not progress:  # one line per evaluation instead of the bar
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from accelrl.agents.training.sb3 import train

    try:
        result = train(
            r,
            run_dir,
            progress=progress,
            time_limit_s=None if time_limit is None else 60.0 * time_limit,
        )
    except (RecipeError, RuntimeError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None

    ev = result.final_eval
    table = Table(title=f"{r.algorithm.upper()} {recipe.name} seed {r.seed}")
    table.add_column("quantity")
    table.add_column("value", justify="right")

    def fmt(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.1f}{unit}"

    table.add_row("timesteps", f"{result.timesteps:,}")
    table.add_row("train wall time", f"{result.train_wall_s:.0f} s")
    table.add_row("timesteps/s", f"{result.timesteps_per_s:.0f}")
    table.add_row(
        f"median best MAE ({ev['n_trials']} trials, {ev['steps']} steps)",
        fmt(ev["median_best_mae_um"], " um"),
    )
    table.add_row("median final MAE", fmt(ev["median_final_mae_um"], " um"))
    steps = ev["median_steps_to_target"]
    table.add_row("median steps to target", "not reached" if steps is None else fmt(steps))
    sized = ev.get("sigma_pos") or {}
    table.add_row("median best MAE (sigma > 0)", fmt(sized.get("median_best_mae_um"), " um"))
    console.print(table)
    console.print(f"policy: {result.policy_dir}\nplot:   {result.plot_path}", highlight=False)
