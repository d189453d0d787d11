"""``accelrl demo``: what ``make demo`` runs.

Trains a small policy for the ARES-EA task by backpropagating through the differentiable
simulation, evaluates it against do-nothing and random search on the 300 published trials
(the published protocol), prints the table and writes the policy, the records and a report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from accelrl.cli.common import EVAL_STEPS, SeedOpt, StepsOpt, console
from accelrl.names import ARES_EA_ID


def demo_command(
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
    from accelrl.agents.evaluation import evaluate_many
    from accelrl.agents.evaluation.report import write_report
    from accelrl.agents.training.apg import APGConfig, train_apg
    from accelrl.cli.evaluate import print_summary

    start = time.perf_counter()
    policy_dir = out_dir / "policy"
    console.print(
        f"[bold]{ARES_EA_ID}[/]: training a small policy through the differentiable "
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
    print_summary(evaluation)
    console.print(f"report: {escape(str(report))}")
    console.print(f"done in {time.perf_counter() - start:.1f} s")
