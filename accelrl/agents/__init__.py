"""Everything that acts on an environment: optimisers, training, the evaluation protocol."""

from accelrl.agents.protocol import Observation, Optimiser, Problem

__all__ = ["Observation", "Optimiser", "Problem"]
