"""``python -m accelrl.dashboard RUN_DIR ...`` (the same as ``accelrl dashboard``)."""

import typer

from accelrl.dashboard.command import dashboard_command


def main() -> None:
    """Run the dashboard command."""
    typer.run(dashboard_command)


if __name__ == "__main__":
    main()
