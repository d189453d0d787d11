"""``accelrl serve-virtual``: serve the virtual accelerator (an EPICS 7 IOC serving Channel
Access and PV Access, or a caproto Channel Access server).

Registered in :mod:`accelrl.cli` as
``app.command("serve-virtual")(serve_virtual_command)``. The simulation (torch) is imported
inside the command.

Examples::

    accelrl serve-virtual --config deploy/virtual_ares_ea.yaml
    accelrl serve-virtual --config deploy/virtual_ares_ea.yaml --port 5070 --prefix VA2: \\
        --trial 57 --fault stale --write-machine-config /tmp/va2_machine.yaml
    accelrl serve-virtual --config deploy/virtual_ares_ea.yaml --server caproto

Clients then use ``EPICS_CA_ADDR_LIST=127.0.0.1 EPICS_CA_AUTO_ADDR_LIST=NO
EPICS_CA_SERVER_PORT=<port>`` (PV Access: ``EPICS_PVA_ADDR_LIST=127.0.0.1:<pva port>``) and
the machine config (the one written by ``--write-machine-config`` when ``--prefix`` renames
the PVs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from accelrl.cli.common import input_path


def serve_virtual_command(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="Virtual accelerator config (YAML), e.g. deploy/virtual_ares_ea.yaml.",
            callback=input_path,
            show_default=False,
        ),
    ],
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            min=1024,
            max=65535,
            help="Channel Access server port (EPICS_CA_SERVER_PORT); default the config's.",
        ),
    ] = None,
    pva_port: Annotated[
        int | None,
        typer.Option(
            "--pva-port",
            min=1024,
            max=65535,
            help="PV Access server port (softioc server); default the config's.",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="softioc (EPICS 7 IOC: CA and PVA, record fields, alarms) or caproto "
            "(pure-Python CA server); default the config's.",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Serve the PVs under this prefix (e.g. VA2:)."),
    ] = None,
    trial: Annotated[
        int | None,
        typer.Option("--trial", "-t", min=0, help="Published trial (hidden state) to simulate."),
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="Fault on from the start (repeatable): stale, reject_put, ignore_put, "
            "interlock, beam_loss, stuck, heartbeat.",
        ),
    ] = None,
    write_machine_config: Annotated[
        Path | None,
        typer.Option(
            "--write-machine-config",
            help="Write the machine config with the served PV names here (for clients).",
        ),
    ] = None,
) -> None:
    """Serve the virtual accelerator: the accelrl simulation of a published trial behind
    EPICS PVs on 127.0.0.1 (magnets with ramps and busy flags, a noisy screen, interlock,
    beam loss, heartbeat, and faults switchable through <prefix>SIM:FAULT). Runs until
    Ctrl-C."""
    import yaml
    from rich.console import Console

    from accelrl.deploy.virtual.config import VirtualConfigError, load_virtual_config

    err = Console(stderr=True, soft_wrap=True)
    try:
        if server not in (None, "softioc", "caproto"):
            raise VirtualConfigError(f"--server must be softioc or caproto, got {server!r}")
        loaded = load_virtual_config(
            config, port=port, pva_port=pva_port, prefix=prefix, trial=trial, server=server
        )
        if fault:
            faults = loaded.config.faults.model_dump()
            faults["active"] = sorted(set(faults["active"]) | set(fault))
            loaded = loaded.replace(faults=faults)
    except VirtualConfigError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    machine = loaded.machine
    if write_machine_config is not None:
        write_machine_config.parent.mkdir(parents=True, exist_ok=True)
        write_machine_config.write_text(
            yaml.safe_dump(machine.model_dump(mode="json"), sort_keys=False)
        )
    cfg = loaded.config
    err.print(
        f"virtual accelerator {machine.name!r}: trial {cfg.trial}, "
        f"{len(machine.knobs)} knobs, {len(machine.observations)} observations, "
        f"faults {list(cfg.faults.active) or 'none'}",
        highlight=False,
    )
    pva = (
        f"; PV Access: EPICS_PVA_ADDR_LIST={cfg.interface}:{cfg.pva_port}"
        if cfg.server == "softioc"
        else ""
    )
    err.print(
        f"{cfg.server} server on {cfg.interface}:{cfg.port}; clients: "
        f"EPICS_CA_ADDR_LIST={cfg.interface} EPICS_CA_AUTO_ADDR_LIST=NO "
        f"EPICS_CA_SERVER_PORT={cfg.port}{pva}",
        highlight=False,
    )
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - the simulation needs torch
        pass
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("caproto").setLevel(logging.WARNING)
    if cfg.server == "softioc":
        from accelrl.deploy.virtual import supervisor

        raise typer.Exit(supervisor.run(loaded))
    from accelrl.deploy.virtual.ioc import run

    run(loaded)
