"""Gymnasium registration of accelrl's environments (imports nothing heavy).

``import accelrl`` registers the ids, so ``gym.make("accelrl/...")`` works; the environment
modules (torch, Cheetah) load on first use.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import yaml

from accelrl.names import ARES_EA_ID, LPA_HYBRID_ID, LPA_TUNING_ID

_SPECS = Path(__file__).resolve().parent / "data" / "envs"

#: Registered id -> (entry point, task spec file in the shipped ``envs/``).
ENVIRONMENTS: dict[str, tuple[str, str]] = {
    ARES_EA_ID: ("accelrl.envs.ares_ea:AresEATransverseTuning", "ares_ea"),
}


#: Registered id -> (entry point, vector entry point, max_episode_steps) of environments
#: configured in code (surrogate-based tasks, no task spec file).
CODE_ENVIRONMENTS: dict[str, tuple[str, str, int]] = {
    LPA_TUNING_ID: (
        "accelrl.envs.lpa:LPATuningEnv",
        "accelrl.envs.lpa_vector:LPATuningVectorEnv",
        50,
    ),
    LPA_HYBRID_ID: (
        "accelrl.envs.hybrid:HybridBeamlineEnv",
        "accelrl.envs.hybrid:HybridBeamlineVectorEnv",
        50,
    ),
}


def _max_episode_steps(spec_name: str) -> int:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load((_SPECS / f"{spec_name}.yaml").read_text(), Loader=loader)
    return int(data.get("max_episode_steps", 50))


def register_all() -> None:
    """Register every accelrl environment id with Gymnasium (idempotent)."""
    for env_id, (entry_point, spec_name) in ENVIRONMENTS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point="accelrl.envs:vector_entry_point",
            max_episode_steps=_max_episode_steps(spec_name),
            kwargs={},
        )
    for env_id, (entry_point, vector_entry_point, steps) in CODE_ENVIRONMENTS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            max_episode_steps=steps,
            kwargs={},
        )
