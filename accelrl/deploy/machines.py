"""The machine a machine config describes: the simulation or an EPICS machine.

>>> from accelrl.deploy.config import load_machine_config
>>> config = load_machine_config("deploy/sim_ares_ea.yaml")
>>> machine, target = build_machine(config, trial=30)  # doctest: +SKIP

``transport: sim`` builds a :class:`~accelrl.deploy.sim.SimMachine` around a
:class:`~accelrl.deploy.plant.Plant` with one published trial's hidden state (this imports
torch); ``ca`` and ``pva`` build an :class:`~accelrl.deploy.epics.EpicsMachine` (numpy and
caproto or p4p only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelrl.deploy.config import MachineConfig
    from accelrl.deploy.machine import Machine

__all__ = ["build_machine"]


def build_machine(
    config: MachineConfig,
    trial: int = 30,
    trials: str | Path | None = None,
    settle_delay_s: float = 0.0,
    reading_noise: float = 0.0,
    seed: int = 0,
    addresses: Sequence[str] | None = None,
) -> tuple[Machine, dict[str, float] | None]:
    """The machine of ``config`` and, for the simulation, the trial's target [m].

    :param config: The machine config.
    :param trial: Simulation: index of the published trial whose hidden state is simulated.
    :param trials: Simulation: trial-set YAML (default: the published set).
    :param settle_delay_s: Simulation: magnet settle time [s].
    :param reading_noise: Simulation: rms noise on every screen reading [m].
    :param seed: Simulation: seed of the reading noise.
    :param addresses: EPICS: search only these ``HOST[:PORT]`` (overrides the environment).
    :raises ValueError: For a trial that is not in the set or bad simulation settings.
    """
    if config.transport == "sim":
        import torch

        from accelrl.deploy.plant import Plant
        from accelrl.deploy.sim import SimMachine

        torch.set_num_threads(1)
        try:
            plant = Plant.from_trial(
                trial, trials, env_id=config.env_id, reading_noise=reading_noise, seed=seed
            )
        except IndexError as err:
            raise ValueError(str(err)) from None
        return SimMachine(plant, config, settle_delay_s=settle_delay_s), plant.target
    from accelrl.deploy.epics import EpicsMachine

    return EpicsMachine(config, addresses=list(addresses) if addresses else None), None
