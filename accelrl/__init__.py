"""accelrl: autonomous beam tuning — differentiable beamline environments, agents, deployment."""

from accelrl import physics

__version__ = "0.1.0"
__all__ = ["physics", "__version__"]
