"""``python -m accelrl.cli ...``: the ``accelrl`` command without its entry-point script."""

from accelrl.cli import app

app()
