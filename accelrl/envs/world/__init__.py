"""World models: the imperfect machine between an agent and the beam.

A world (:class:`WorldSpec`, YAML in ``envs/worlds/``) says how the simulated machine
differs from the ideal one:

* :mod:`~accelrl.envs.world.camera`: the screen camera (image formation, noise, bit depth,
  saturation, finite screen) and the control room's image processing that turns images
  into ``(mu_x, sigma_x, mu_y, sigma_y)``;
* :mod:`~accelrl.envs.world.magnets`: calibration errors, hysteresis, setpoint resolution,
  rate limits and settling between a setpoint and the field;
* :mod:`~accelrl.envs.world.beam`: jitter, drift and scripted changes of the incoming beam;
* actuator failures (:class:`ActuatorFailure`).

Presets: ``ideal`` (the environment without a world model, bit for bit),
``ares-realistic`` (best estimate of the real ARES-EA, every value with its source),
``harsh``; scenario overlays ``beam-animation``, ``beam-switch``, ``q3-failure``,
``steering-change``. Use them with ``gym.make(ID, world="ares-realistic")``,
``make_vec(ID, n, world="ares-realistic+q3-failure")`` or a task spec's ``world:`` key.

>>> from accelrl.envs.world import load_world
>>> world = load_world("ares-realistic")
>>> world.camera.method
'ares'
"""

from __future__ import annotations

from accelrl.envs.world.spec import (
    ActuatorFailure,
    BeamDrift,
    BeamSpec,
    CameraSpec,
    Drift,
    FailureScenario,
    Hysteresis,
    IncomingChange,
    Jitter,
    MagnetSpec,
    WorldError,
    WorldSpec,
    load_world,
    shipped_worlds,
    world_from_dict,
)

__all__ = [
    "ActuatorFailure",
    "BeamDrift",
    "BeamSpec",
    "CameraSpec",
    "Drift",
    "FailureScenario",
    "Hysteresis",
    "IncomingChange",
    "Jitter",
    "MagnetSpec",
    "WorldError",
    "WorldSpec",
    "load_world",
    "shipped_worlds",
    "world_from_dict",
]
