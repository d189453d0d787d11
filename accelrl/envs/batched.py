"""Native batching: the helpers of any batched core and the vector environment over one.

* :class:`BatchedCore`: what a batched core provides (``seed``, ``reset``, ``step``,
  ``counters``, ``steps``);
* :func:`vector_seeds`, :func:`reset_core`, :func:`single_action` and
  :func:`step_with_autoreset`, which steps all environments as one batch and resets those due
  for a reset with their random streams rewound, so that environment ``i`` of a vector env
  follows a single environment exactly;
* :class:`CoreVectorEnv`: a ``gymnasium.vector.VectorEnv`` whose environments are one
  batched core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv


class BatchedCore(Protocol):
    """What the helpers need of a batched core."""

    num_envs: int
    counters: np.ndarray
    steps: np.ndarray

    def seed(self, idx: np.ndarray, seeds: list[int | None]) -> None: ...

    def reset(self, idx: np.ndarray, options: dict[str, Any] | None = None) -> None: ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rewards ``[B]`` and terminated flags ``[B]``."""
        ...


# ---------------------------------------------------------------------------- helpers
def vector_seeds(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None] | None:
    """Per-environment seeds: ``seed + i`` for an int, the sequence itself, or ``None``.

    :raises ValueError: For a sequence whose length is not ``num_envs``.
    """
    if seed is None:
        return None
    seeds = [seed + i for i in range(num_envs)] if isinstance(seed, int) else list(seed)
    if len(seeds) != num_envs:
        raise ValueError(f"need {num_envs} seeds, got {len(seeds)}")
    return seeds


def reset_core(
    core: BatchedCore,
    idx: np.ndarray,
    seeds: list[int | None] | None,
    options: dict[str, Any] | None,
) -> None:
    """Re-key the random streams of environments ``idx`` (when ``seeds`` is given) and reset
    them with ``options``."""
    if seeds is not None:
        core.seed(idx, seeds)
    core.reset(idx, options)


def single_action(action: Any, space: spaces.Box) -> np.ndarray:
    """A single environment's action as a float64 batch of one, ``[1, K]``.

    :raises ValueError: When its shape is not the action space's.
    """
    a = np.asarray(action, dtype=np.float64)
    if a.shape != space.shape:
        raise ValueError(f"action must have shape {space.shape}, got {a.shape}")
    return a.reshape(1, -1)


def step_with_autoreset(
    core: BatchedCore, actions: np.ndarray, needs_reset: np.ndarray, max_episode_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step all environments, then reset those in ``needs_reset`` (Gymnasium's next-step
    autoreset) with their random streams rewound, so that they match a single environment
    that is reset instead of stepped.

    :param core: The batched core; its ``step`` returns ``(rewards, terminated)``.
    :param actions: Validated actions ``[B, K]``.
    :param needs_reset: ``[B]`` environments whose episode ended at the previous step.
    :param max_episode_steps: Truncation, as Gymnasium's ``TimeLimit``.
    :return: ``reward``, ``terminated`` and ``truncated``, each ``[B]`` (zero and ``False``
        for the environments just reset).
    """
    resetting = np.nonzero(needs_reset)[0]
    counters = core.counters[resetting].copy()
    reward, terminated = core.step(actions)
    truncated = core.steps >= max_episode_steps
    if resetting.size:
        core.counters[resetting] = counters
        core.reset(resetting)
        reward[resetting] = 0.0
        terminated[resetting] = False
        truncated[resetting] = False
    return reward, terminated, truncated


def action_box(low: np.ndarray, high: np.ndarray) -> spaces.Box:
    """The float32 action space ``Box(low, high)``."""
    return spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


class CoreVectorEnv(VectorEnv):
    """A vector environment whose ``num_envs`` environments are one batched core.

    Holds what every such environment shares: all-environment reset with per-environment
    seeds, and ``info`` from the core with Gymnasium's ``"_<key>"`` masks. Subclasses build
    the core and spaces, call :meth:`_start_core`, and implement ``step``.
    """

    core: BatchedCore
    #: Whether ``info`` carries Gymnasium's ``"_<key>"`` masks (all ``True``).
    info_masks: bool = True

    def _start_core(self) -> None:
        """Bookkeeping arrays for ``self.core`` and a first reset of all environments."""
        self._all = np.arange(self.num_envs)
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)
        self._mask = np.ones(self.num_envs, dtype=bool)
        self.core.reset(self._all)

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all environments; ``seed`` int gives environment ``i`` the seed ``seed + i``."""
        reset_core(self.core, self._all, vector_seeds(seed, self.num_envs), options)
        self._needs_reset[:] = False
        return self.core.observation(), self._info()

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.core.info()
        if self.info_masks:
            for key in list(info):
                info["_" + key] = self._mask
        return info
