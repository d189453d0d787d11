"""Trained tuning policies in one portable form, and the optimiser that runs them.

Every trained policy — an SB3 actor (TD3, SAC, PPO) or a policy trained by backpropagating
through the differentiable simulation — is stored as a :class:`MLPPolicy`: a plain torch
module from the *raw* flat observation ``[beam (4) m, magnets (K) SI, target (4) m]`` to the
*physical* action (the change of each setting, SI), with the observation normalisation and
the action scaling inside. A policy directory holds ``policy.pt`` (state dict) and
``policy.json`` (architecture, normalisation, action bounds, provenance).
:class:`PolicyOptimiser` runs it under the evaluation protocol.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from accelrl.averaging import StepAverager
from accelrl.bundle import ObservationHistory, check_target_size_floor, floor_target_sizes
from accelrl.names import ARES_EA_ID
from accelrl.protocol import Observation, ObservationBatch, Problem

#: Order of the flat observation (Gymnasium's Dict keys, sorted).
OBS_KEYS: tuple[str, ...] = ("beam", "magnets", "target")


@dataclass
class PolicyMeta:
    """Everything needed to rebuild and trust a stored policy.

    :param obs_mean: Mean subtracted from the flat raw observation (SI).
    :param obs_std: Scale the centred observation is divided by (SI).
    :param obs_clip: Normalised observations are clipped to ``+-obs_clip``.
    :param action_scale: Half-range of the action per actuator (SI): the network's
        ``tanh`` output in ``[-1, 1]`` is multiplied by it.
    :param hidden: Hidden layer widths.
    :param activation: ``"relu"`` or ``"tanh"``.
    :param error_scale: If set, the network also sees the beam error ``(beam - target) /
        error_scale`` (clipped to ``+-obs_clip``) [m], which resolves micrometre errors that
        are tiny in the normalised observation.
    :param actuator_names: Names of the actuators, in action order.
    :param env_id: Environment the policy was trained on.
    :param action_mode: ``"delta"`` (changes of the settings).
    :param history: Past observations in the input (0: none). With ``H > 0`` the raw input
        is the current flat observation followed by the ``beam`` and ``magnets`` parts of
        the ``H`` previous observations, newest first (``[8 + K + H (4 + K)]``; see
        :func:`history_features`); needs ``error_scale``.
    :param averaging: How the policy's setting changes are averaged over noisy readings
        when it runs (:mod:`accelrl.averaging`: ``{"max_count": n, "reset_fraction": f}``),
        or ``None`` (none: every change applied as proposed). Training rollouts never
        average; evaluation and deployment (the bundle) do.
    :param target_size_floor: Smallest target size the policy is asked for when it runs [m]
        (:func:`accelrl.bundle.floor_target_sizes`), or ``None`` (the target as given).
    :param provenance: Recipe, seed, training time, versions, evaluation summary.
    """

    obs_mean: list[float]
    obs_std: list[float]
    action_scale: list[float]
    hidden: list[int]
    actuator_names: list[str]
    obs_clip: float = 10.0
    activation: str = "relu"
    error_scale: float | None = None
    env_id: str = ARES_EA_ID
    action_mode: str = "delta"
    history: int = 0
    averaging: dict[str, Any] | None = None
    target_size_floor: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        """Length of the raw network input: ``8 + K + history (4 + K)``."""
        k = len(self.action_scale)
        return 8 + k + self.history * (4 + k)


def history_features(meta: PolicyMeta) -> tuple[np.ndarray, np.ndarray]:
    """The linear map ``z = clip(A x + c)`` from the raw input of a history policy to the
    network's features (float64): the normalised current observation, its scaled beam
    error, and per past observation ``j`` its scaled beam error against the current target
    ``(beam_j - target) / error_scale`` and the settings' change since then
    ``(magnets - magnets_j) / action_scale`` (the actions taken in between).

    :return: ``(A [F, n_obs], c [F])``.
    :raises ValueError: Without ``error_scale``.
    """
    if not meta.error_scale:
        raise ValueError("a policy with history needs error_scale")
    K = len(meta.action_scale)
    n_cur = 8 + K
    es = meta.error_scale
    scale = np.asarray(meta.action_scale, np.float64)
    rows: list[np.ndarray] = []
    consts: list[float] = []

    def row() -> np.ndarray:
        r = np.zeros(meta.n_obs)
        rows.append(r)
        return r

    for i in range(n_cur):
        row()[i] = 1.0 / meta.obs_std[i]
        consts.append(-meta.obs_mean[i] / meta.obs_std[i])
    for offset in [0] + [n_cur + j * (4 + K) for j in range(meta.history)]:
        for i in range(4):
            r = row()
            r[offset + i] += 1.0 / es
            r[4 + K + i] -= 1.0 / es
            consts.append(0.0)
        if offset:
            for k in range(K):
                r = row()
                r[4 + k] += 1.0 / scale[k]
                r[offset + 4 + k] -= 1.0 / scale[k]
                consts.append(0.0)
    return np.stack(rows), np.asarray(consts)


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLPPolicy(nn.Module):
    """Raw flat observation ``[..., 4 + K + 4]`` -> action ``[..., K]`` (SI), deterministic.

    :param meta: Architecture, normalisation and action scaling.
    """

    def __init__(self, meta: PolicyMeta) -> None:
        super().__init__()
        if meta.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
        self.meta = meta
        n_obs, n_act = len(meta.obs_mean), len(meta.action_scale)
        if len(meta.obs_std) != n_obs or n_obs != 8 + n_act:
            raise ValueError(f"inconsistent sizes: {n_obs} observations, {n_act} actions")
        if meta.history < 0:
            raise ValueError(f"history must be >= 0, got {meta.history}")
        StepAverager.from_spec(meta.averaging)  # a bad entry fails here, naming it
        check_target_size_floor(meta.target_size_floor)
        layers: list[nn.Module] = []
        width = n_obs + (4 if meta.error_scale else 0)
        if meta.history:
            A, c = history_features(meta)
            width = len(A)
            self.register_buffer("feature_matrix", torch.tensor(A), persistent=False)
            self.register_buffer("feature_offset", torch.tensor(c), persistent=False)
        for h in meta.hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[meta.activation]()]
            width = h
        layers += [nn.Linear(width, n_act), nn.Tanh()]
        self.net = nn.Sequential(*layers).double()
        self.register_buffer("obs_mean", torch.tensor(meta.obs_mean, dtype=torch.float64))
        self.register_buffer("obs_std", torch.tensor(meta.obs_std, dtype=torch.float64))
        self.register_buffer("action_scale", torch.tensor(meta.action_scale, dtype=torch.float64))

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised, clipped network input (observation, and the scaled error if enabled)."""
        clip = self.meta.obs_clip
        if self.meta.history:
            return (obs @ self.feature_matrix.T + self.feature_offset).clamp(-clip, clip)
        z = ((obs - self.obs_mean) / self.obs_std).clamp(-clip, clip)
        if self.meta.error_scale:
            k = len(self.meta.action_scale)
            error = (obs[..., :4] - obs[..., 4 + k :]) / self.meta.error_scale
            z = torch.cat([z, error.clamp(-clip, clip)], dim=-1)
        return z

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(obs.to(self.obs_mean.dtype))) * self.action_scale

    def act(self, obs: np.ndarray) -> np.ndarray:
        """numpy convenience: action ``[..., K]`` for raw flat observations."""
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(obs, dtype=np.float64))).numpy()

    def save(self, directory: str | Path) -> Path:
        """Write ``policy.pt`` and ``policy.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "policy.pt")
        (directory / "policy.json").write_text(json.dumps(asdict(self.meta), indent=2))
        return directory

    def with_meta(self, **changes: Any) -> MLPPolicy:
        """This policy's weights with ``changes`` to its :class:`PolicyMeta` (the entries
        that act when it runs, such as ``target_size_floor``, ``averaging`` or
        ``provenance``), checked as for a new policy; in evaluation mode.

        :raises ValueError: For a bad entry, naming it.
        :raises RuntimeError: For a change of the architecture (``hidden``, ``history``, ...)
            that the weights do not fit.
        """
        out = MLPPolicy(replace(self.meta, **changes))
        out.load_state_dict(self.state_dict())
        return out.eval()

    @classmethod
    def load(cls, directory: str | Path) -> MLPPolicy:
        """Read a policy directory written by :meth:`save`.

        :raises FileNotFoundError: Naming the missing file.
        """
        directory = Path(directory)
        for name in ("policy.pt", "policy.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a policy directory")
        path = directory / "policy.json"
        try:
            meta = PolicyMeta(**json.loads(path.read_text()))
            policy = cls(meta)
        except (ValueError, TypeError) as err:  # JSON syntax, fields, values
            raise ValueError(f"{path}: {err}") from err
        policy.load_state_dict(torch.load(directory / "policy.pt", weights_only=True))
        return policy.eval()


def flat_observation(beam: Any, magnets: Any, target: Any) -> np.ndarray:
    """Flat raw observation in :data:`OBS_KEYS` order (float64)."""
    return np.concatenate(
        [
            np.asarray(beam, np.float64),
            np.asarray(magnets, np.float64),
            np.asarray(target, np.float64),
        ],
        axis=-1,
    )


def default_normalisation(
    low: Sequence[float], high: Sequence[float], beam_scale: float = 2e-3
) -> tuple[list[float], list[float]]:
    """Fixed observation normalisation from the task: beam and target in units of
    ``beam_scale`` [m] (sizes centred at ``beam_scale / 2``), settings by their limits."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    mean = [
        0.0,
        beam_scale / 2,
        0.0,
        beam_scale / 2,
        *((low + high) / 2),
        0.0,
        beam_scale / 2,
        0.0,
        beam_scale / 2,
    ]
    std = [beam_scale] * 4 + list((high - low) / 2) + [beam_scale] * 4
    return [float(v) for v in mean], [float(v) for v in std]


class PolicyOptimiser:
    """Runs a delta-action policy under the optimiser protocol.

    The next settings are the current ones (the setpoints on a machine) plus the policy's
    change, clipped to ``problem.max_delta`` and to the limits. A
    :class:`~accelrl.protocol.BatchOptimiser`: the policy evaluates all trials of a batch in
    one forward pass.

    A policy with ``history`` keeps the past observations of each episode
    (:class:`~accelrl.bundle.ObservationHistory`), and a policy with ``averaging`` the state
    of its averaging (:class:`~accelrl.averaging.StepAverager`), both cleared by
    ``reset``/``reset_batch``.

    :param policy: The policy.
    :param name: Name in reports (default ``"policy"``).
    """

    def __init__(self, policy: MLPPolicy, name: str = "policy") -> None:
        self.policy = policy
        self.name = name
        self._problem: Problem | None = None
        self._bounds: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._history = ObservationHistory(policy.meta.history, len(policy.meta.action_scale))
        self._averager = StepAverager.from_spec(policy.meta.averaging)

    def _check(self, problem: Problem) -> None:
        if list(problem.actuator_names) != list(self.policy.meta.actuator_names):
            raise ValueError(
                f"policy actuators {self.policy.meta.actuator_names} differ from the task's "
                f"{list(problem.actuator_names)}"
            )

    def reset(self, problem: Problem) -> None:
        self._check(problem)
        self._problem = problem
        self._history.clear()
        self._averager.clear()

    def ask(self, observation: Observation) -> np.ndarray:
        if self._problem is None:
            raise RuntimeError("call reset(problem) before ask()")
        target = floor_target_sizes(observation.target, self.policy.meta.target_size_floor)
        obs = flat_observation(observation.beam, observation.magnets, target)
        obs = self._history.push(obs[None])[0]
        p = self._problem
        delta = np.clip(self.policy.act(obs), -p.max_delta, p.max_delta)
        base = np.asarray(
            observation.setpoints if observation.setpoints is not None else observation.magnets,
            np.float64,
        )
        proposal = np.clip(base + delta, p.low, p.high)
        settings = self._averager.next_settings(
            base[None], proposal[None], p.max_delta, p.low, p.high
        )
        return settings[0]

    def reset_batch(self, problems: Sequence[Problem]) -> None:
        for problem in problems:
            self._check(problem)
        self._bounds = tuple(  # type: ignore[assignment]
            np.stack([np.asarray(getattr(p, k), np.float64) for p in problems])
            for k in ("max_delta", "low", "high")
        )
        self._history.clear()
        self._averager.clear()

    def ask_batch(self, observations: ObservationBatch) -> np.ndarray:
        if self._bounds is None:
            raise RuntimeError("call reset_batch(problems) before ask_batch()")
        max_delta, low, high = self._bounds
        target = floor_target_sizes(observations.target, self.policy.meta.target_size_floor)
        obs = flat_observation(observations.beam, observations.magnets, target)
        obs = self._history.push(obs)
        delta = np.clip(self.policy.act(obs), -max_delta, max_delta)
        proposal = np.clip(observations.magnets + delta, low, high)
        return self._averager.next_settings(observations.magnets, proposal, max_delta, low, high)


def load_policy_optimiser(path: str | Path) -> PolicyOptimiser:
    """:class:`PolicyOptimiser` of the policy directory ``path`` (used by ``"policy:PATH"``;
    a shipped policy such as ``agents/apg-ares-ea`` is found from any folder, see
    :func:`accelrl.resources.resolve`)."""
    from accelrl.resources import resolve

    return PolicyOptimiser(MLPPolicy.load(resolve(path)), name=f"policy:{Path(path).name}")
