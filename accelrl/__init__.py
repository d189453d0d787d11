"""accelrl: autonomous beam tuning — differentiable beamline environments, agents, deployment."""

from accelrl import envs, physics

__version__ = "0.1.0"
__all__ = ["envs", "physics", "__version__"]
