"""The ``accelrl`` command: one module per command group.

=========================  ===============================================================
``accelrl envs``           :mod:`accelrl.cli.envs`: registered environments (list, show)
``accelrl render``         :mod:`accelrl.cli.rollout`: the screen before and after a trial
``accelrl rollout``        :mod:`accelrl.cli.rollout`: deprecated, use ``accelrl evaluate``
``accelrl evaluate``       :mod:`accelrl.cli.evaluate`: optimisers on a trial set, report
``accelrl train``          :mod:`accelrl.cli.train`: an agent from a recipe
``accelrl tune``           :mod:`accelrl.cli.tune`: a BO tuning session
``accelrl export``         :mod:`accelrl.cli.export`: an ONNX policy bundle
``accelrl deploy``         :mod:`accelrl.cli.deploy`: an optimiser on a machine
``accelrl serve-virtual``  :mod:`accelrl.cli.serve_virtual`: the virtual accelerator
``accelrl surrogates``     :mod:`accelrl.cli.surrogates`: plasma datasets and surrogates
``accelrl dashboard``      :mod:`accelrl.cli.dashboard`: the live browser view of runs
``accelrl demo``           :mod:`accelrl.cli.demo`: what ``make demo`` runs
=========================  ===============================================================

Importing this package loads typer and rich only; each command imports what it needs (torch,
Cheetah, onnxruntime, caproto) when it runs, so ``accelrl deploy run`` on an EPICS machine
never imports torch. Nothing in the library imports this package.
"""

from __future__ import annotations

from accelrl.cli.common import command_group
from accelrl.cli.dashboard import dashboard_command
from accelrl.cli.demo import demo_command
from accelrl.cli.deploy import deploy_app
from accelrl.cli.envs import envs_app
from accelrl.cli.evaluate import evaluate_command
from accelrl.cli.export import export_command
from accelrl.cli.rollout import render_command, render_trial, rollout, rollout_command
from accelrl.cli.serve_virtual import serve_virtual_command
from accelrl.cli.surrogates import surrogates_app
from accelrl.cli.train import train_command
from accelrl.cli.tune import tune_command
from accelrl.names import Backend

__all__ = ["Backend", "app", "render_trial", "rollout"]

app = command_group(
    "Autonomous particle-accelerator beam tuning: environments, agents, BO, deployment.",
    name="accelrl",
)


@app.callback()
def _main() -> None:
    """Autonomous particle-accelerator beam tuning: environments, agents, BO, deployment."""
    # One torch thread where torch is installed; the deployment runtime runs without it.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


app.add_typer(envs_app, name="envs")
app.command("render", help="Render the beam on the screen for one trial, before and after.")(
    render_command
)
app.command("rollout", help="Deprecated: use `accelrl evaluate` (a baseline on a trial set).")(
    rollout_command
)
app.command("evaluate", help="Evaluate optimisers on a trial set (the published protocol).")(
    evaluate_command
)
app.command("train", help="Train a tuning agent from a recipe in agents/.")(train_command)
app.command("tune", help="Bayesian-optimisation tuning session (optionally with a physics prior).")(
    tune_command
)
app.command("export", help="Export a trained policy as an ONNX policy bundle.")(export_command)
app.add_typer(deploy_app, name="deploy")
app.command("serve-virtual", help="Serve the virtual accelerator (EPICS soft IOC on 127.0.0.1).")(
    serve_virtual_command
)
app.add_typer(surrogates_app, name="surrogates")
app.command("dashboard", help="Watch runs live in the browser (read-only, 127.0.0.1).")(
    dashboard_command
)
app.command("demo", help="Train a small agent on ARES-EA and evaluate it on the 300 trials.")(
    demo_command
)
