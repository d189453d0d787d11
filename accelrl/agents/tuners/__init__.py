"""Tuners of the optimiser protocol that need no training.

* :mod:`~accelrl.agents.tuners.baselines`: do-nothing, random search, random steps,
  Nelder-Mead, extremum seeking (the published comparison's baselines);
* :mod:`~accelrl.agents.tuners.gradient`: Adam through the nominal model's Jacobian;
* :mod:`~accelrl.agents.tuners.model_based`: fit the hidden state, then solve for settings;
* :mod:`~accelrl.agents.tuners.base`: what they share (problem checks, normalised
  coordinates, :class:`~accelrl.agents.tuners.base.TunerBase`).

Every one is registered by name in :mod:`accelrl.agents.registry`.
"""
