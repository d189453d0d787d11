"""Training tuning agents.

* :mod:`~accelrl.agents.training.apg`: backpropagation through the differentiable simulation
  (analytic policy gradients);
* :mod:`~accelrl.agents.training.sb3`: Stable-Baselines3 (TD3, SAC, PPO) from a recipe, with
  :mod:`~accelrl.agents.training.recipes` (the validated recipe),
  :mod:`~accelrl.agents.training.wrappers` (the SB3 training environment) and
  :mod:`~accelrl.agents.training.monitor` (held-out evaluation, progress, learning curve).

Both produce the portable :class:`~accelrl.agents.policy.MLPPolicy`.
"""
