"""``accelrl dashboard``: the live browser view of runs.

Importing this module loads typer only; Bokeh is imported when the command runs.

Examples::

    accelrl dashboard runs/                      # every run under runs/, on 127.0.0.1:5006
    accelrl dashboard runs/deploy-1 demo_out --port 8000
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from accelrl.cli.common import EXIT_INVALID, console, fail, warn


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_command(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders to search for runs (recursively): deploy runs, tuning sessions, "
            "training runs, evaluations. Default: runs/ in the working directory.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: any free port).")
    ] = 5006,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. The default serves this computer only; any other "
            "address lets everyone who reaches it read the runs (there is no login).",
        ),
    ] = "127.0.0.1",
    poll_ms: Annotated[
        int,
        typer.Option("--poll-ms", min=50, max=10_000, help="Page refresh period, in milliseconds."),
    ] = 250,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-origin",
            help="Also accept browser sessions from this HOST:PORT (behind a proxy; repeatable).",
        ),
    ] = None,
) -> None:
    """Watch training, tuning, evaluation and deployment runs live in the browser
    (read-only)."""
    roots = list(run_dirs) if run_dirs else [Path("runs")]
    for root in roots:
        if not root.is_dir():
            raise fail(f"{root} is not a folder (give folders holding runs)", EXIT_INVALID)
    from accelrl.dashboard.server import make_server

    try:
        server = make_server(roots, host, port, poll_ms, allow_origin or ())
    except OSError as error:
        raise fail(f"cannot listen on {host}:{port}: {error}") from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.port}/"
    if not _loopback(host):
        warn(
            f"listening on {host}: anyone who reaches this address can read these runs "
            "(read-only, no login)"
        )
    console.print(f"accelrl dashboard: {url}", highlight=False)
    console.print(
        f"following runs under {', '.join(str(r) for r in roots)} (Ctrl-C to stop)", highlight=False
    )
    server.start()
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
