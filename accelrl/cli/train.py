"""``accelrl train``: train a tuning agent from a recipe in ``agents/``.

Registered in :mod:`accelrl.cli` as ``app.command("train")(train_command)``. Heavy imports
(torch, Stable-Baselines3) happen inside the command.

Examples::

    accelrl train --recipe agents/td3_icml.yaml                 # -> runs/td3_icml-0
    accelrl train --recipe agents/ppo.yaml --seed 3 --timesteps 200000 --out runs/ppo3
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from accelrl.cli.common import input_path


def default_out(recipe: Path, seed: int) -> Path:
    """``runs/<recipe file stem>-<seed>`` (relative to the working directory)."""
    return Path("runs") / f"{recipe.stem}-{seed}"


def _is_apg(recipe: Path) -> bool:
    """Whether ``recipe`` is an ``algorithm: apg`` recipe (read without validation)."""
    import yaml

    try:
        data = yaml.safe_load(Path(recipe).read_text())
    except (OSError, yaml.YAMLError):
        return False  # the SB3 path reports the problem
    return isinstance(data, dict) and data.get("algorithm") == "apg"


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
        typer.Option("--timesteps", "-t", min=1, help="Override the recipe's total_timesteps."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", "-s", min=0, help="Override the recipe's seed.")
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit", min=0.0, help="Stop training after this many minutes (wall time)."
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Train an agent from a recipe: TD3, SAC or PPO (Stable-Baselines3; periodic evaluation
    on held-out trials, checkpoints, learning curve) or APG (backpropagation through the
    differentiable simulation); exports the policy to OUT/policy."""
    from rich.console import Console
    from rich.table import Table

    from accelrl.agents.training.recipes import Recipe, RecipeError

    console, err = Console(), Console(stderr=True, soft_wrap=True)
    if _is_apg(recipe):
        from accelrl.agents.training.apg import train_apg_recipe

        run_dir = out if out is not None else default_out(recipe, seed or 0)
        err.print(f"training by backpropagation through the simulation -> {run_dir}")
        try:
            result = train_apg_recipe(recipe, run_dir, seed=seed)
        except ValueError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, markup=True)
            raise typer.Exit(2) from None
        console.print(f"trained in {result.wall_s:.0f} s; policy: {run_dir / 'policy'}")
        return
    try:
        r = Recipe.from_yaml(recipe)
        changes: dict[str, int] = {}
        if timesteps is not None:
            changes["total_timesteps"] = timesteps
        if seed is not None:
            changes["seed"] = seed
        if changes:
            r = r.replace(**changes)
    except RecipeError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, markup=True)
        raise typer.Exit(2) from None
    run_dir = out if out is not None else default_out(recipe, r.seed)
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
        err.print(f"[red]error:[/red] {e}", highlight=False)
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
    table.add_row("median steps to target", fmt(ev["median_steps_to_target"]))
    sized = ev.get("sigma_pos") or {}
    table.add_row("median best MAE (sigma > 0)", fmt(sized.get("median_best_mae_um"), " um"))
    console.print(table)
    console.print(f"policy: {result.policy_dir}\nplot:   {result.plot_path}", highlight=False)
