"""Stable-Baselines3 policies -> the portable :class:`~accelrl.agents.policy.MLPPolicy`.

A trained SB3 model acts on *normalised* observations (``VecNormalize``) and answers
*normalised* actions in ``[-1, 1]`` that the training environment
(:class:`accelrl.envs.sb3.SB3VecEnv` with ``normalise_actions=True``) rescales linearly to
the SI bounds ``[low, high]``. :func:`to_mlp_policy` folds both into one
:class:`~accelrl.agents.policy.MLPPolicy`: raw flat observation
``[beam (4) m, magnets (K) SI, target (4) m]`` in, the physical change of each setting out.

What is copied, per algorithm (the deterministic action of each):

* **TD3**: ``actor.mu`` = ``Linear, act, ..., Linear, Tanh`` -> ``tanh(mu(x))``.
* **SAC**: ``actor.latent_pi`` + ``actor.mu`` -> ``tanh(mu(latent_pi(x)))`` (the mode of the
  squashed Gaussian).
* **PPO**: ``mlp_extractor.policy_net`` + ``action_net`` -> the Gaussian mean ``m``. Plain
  SB3 PPO clips ``m`` to the box, which the portable form (ending in ``tanh``) cannot
  represent. accelrl therefore trains PPO in a *latent* action space
  ``[-PPO_LATENT_BOUND, PPO_LATENT_BOUND]`` whose actions the environment squashes with
  ``tanh`` (:class:`accelrl.agents.training.sb3.TanhLatentActions`); the deterministic action is
  ``tanh(clip(m, -B, B))``, which equals ``tanh(m)`` to ``1 - tanh(B) < 1e-8``. A PPO model
  trained directly on ``[-1, 1]`` is refused with an explanation.

Observation normalisation: ``VecNormalize`` computes ``clip((o - mean) / sqrt(var + eps),
-clip_obs, clip_obs)``; this becomes ``obs_mean = mean``, ``obs_std = sqrt(var + eps)``,
``obs_clip = clip_obs`` (per ``Dict`` key, concatenated in :data:`OBS_KEYS` order, when the
model was trained on ``Dict`` observations). Action scaling: ``low + (a + 1) (high - low) / 2``
is ``a * high`` for the symmetric bounds of delta actions, so ``action_scale = high``.

>>> policy = to_mlp_policy(model, vecnormalize, ["Q1", "Q2", "CV", "Q3", "CH"],
...                        low, high)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from accelrl.agents.policy import OBS_KEYS, MLPPolicy, PolicyMeta
from accelrl.names import ARES_EA_ID

#: Bound of PPO's latent action box; the environment applies ``tanh`` to the latent action.
PPO_LATENT_BOUND = 10.0

#: Clip used when observations are not normalised (effectively none).
_NO_CLIP = 1e300

_ACT_NAMES = {nn.ReLU: "relu", nn.Tanh: "tanh"}


def _layers(*modules: nn.Module) -> tuple[list[nn.Linear], list[str]]:
    """The Linear layers and hidden activations of ``Sequential``/``Linear`` modules in order."""
    linears: list[nn.Linear] = []
    acts: list[str] = []
    for module in modules:
        children = list(module) if isinstance(module, nn.Sequential) else [module]
        for child in children:
            if isinstance(child, nn.Linear):
                linears.append(child)
            elif type(child) in _ACT_NAMES:
                acts.append(_ACT_NAMES[type(child)])
            else:
                raise ValueError(f"cannot export layer {child!r}: only Linear, ReLU and Tanh")
    return linears, acts


def _check_extractor(extractor: nn.Module) -> None:
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    if isinstance(extractor, FlattenExtractor):
        return
    if isinstance(extractor, CombinedExtractor):
        keys = list(extractor.extractors)
        if keys != list(OBS_KEYS) or not all(
            isinstance(e, nn.Flatten) for e in extractor.extractors.values()
        ):
            raise ValueError(f"Dict observations must be {OBS_KEYS}, flattened; got {keys}")
        return
    raise ValueError(f"cannot export features extractor {type(extractor).__name__}")


def _network(model: Any) -> tuple[list[nn.Linear], str]:
    """``(linear layers, hidden activation)`` of the deterministic actor (tanh output)."""
    from stable_baselines3 import PPO, SAC, TD3

    if isinstance(model, TD3):
        actor = model.actor
        _check_extractor(actor.features_extractor)
        linears, acts = _layers(actor.mu)
        if not acts or acts[-1] != "tanh":
            raise ValueError("TD3 actor.mu must end in Tanh")
        acts = acts[:-1]
    elif isinstance(model, SAC):
        actor = model.actor
        if actor.use_sde:
            raise ValueError("cannot export SAC trained with gSDE (use_sde=True)")
        _check_extractor(actor.features_extractor)
        linears, acts = _layers(actor.latent_pi, actor.mu)
    elif isinstance(model, PPO):
        policy = model.policy
        if policy.use_sde or policy.squash_output:
            raise ValueError("cannot export PPO trained with gSDE or squash_output")
        _check_extractor(policy.pi_features_extractor)
        space = model.action_space
        if not (
            np.allclose(space.low, -PPO_LATENT_BOUND) and np.allclose(space.high, PPO_LATENT_BOUND)
        ):
            raise ValueError(
                "PPO's deterministic action is its Gaussian mean clipped to the action box; "
                "the portable policy ends in tanh and represents it only for PPO trained in "
                f"accelrl's tanh-squashed latent action space (box +-{PPO_LATENT_BOUND}, see "
                f"accelrl.agents.training.sb3.TanhLatentActions); this model's box is "
                f"[{space.low.tolist()}, {space.high.tolist()}]"
            )
        linears, acts = _layers(policy.mlp_extractor.policy_net, policy.action_net)
    else:
        raise TypeError(f"cannot export {type(model).__name__}: TD3, SAC or PPO only")
    if len(acts) != len(linears) - 1 or len(set(acts)) > 1:
        raise ValueError(f"need one hidden activation between every Linear layer, got {acts}")
    return linears, (acts[0] if acts else "relu")


def observation_normalisation(
    vecnormalize: Any, n_obs: int
) -> tuple[list[float], list[float], float]:
    """``(obs_mean, obs_std, obs_clip)`` of a ``VecNormalize`` (identity when ``None`` or
    not normalising observations)."""
    if vecnormalize is None or not vecnormalize.norm_obs:
        return [0.0] * n_obs, [1.0] * n_obs, _NO_CLIP
    rms = vecnormalize.obs_rms
    eps = float(vecnormalize.epsilon)
    if isinstance(rms, dict):
        keys = vecnormalize.norm_obs_keys
        if list(rms) != list(OBS_KEYS) or list(keys) != list(OBS_KEYS):
            raise ValueError(f"VecNormalize must normalise the keys {OBS_KEYS}, got {list(keys)}")
        mean = np.concatenate([np.asarray(rms[k].mean, np.float64).ravel() for k in OBS_KEYS])
        var = np.concatenate([np.asarray(rms[k].var, np.float64).ravel() for k in OBS_KEYS])
    else:
        mean = np.asarray(rms.mean, np.float64).ravel()
        var = np.asarray(rms.var, np.float64).ravel()
    if mean.shape != (n_obs,):
        raise ValueError(f"VecNormalize has {mean.shape[0]} observations, the policy {n_obs}")
    return mean.tolist(), np.sqrt(var + eps).tolist(), float(vecnormalize.clip_obs)


def to_mlp_policy(
    model: Any,
    vecnormalize: Any,
    actuator_names: Sequence[str],
    action_low: Sequence[float] | np.ndarray,
    action_high: Sequence[float] | np.ndarray,
    env_id: str = ARES_EA_ID,
    provenance: dict[str, Any] | None = None,
) -> MLPPolicy:
    """The deterministic actor of an SB3 TD3/SAC/PPO model as an :class:`MLPPolicy`.

    :param model: The trained model (its observations: the flat ``[beam, magnets, target]``
        or the ``Dict`` of those keys; its actions in ``[-1, 1]``, PPO: the latent box).
    :param vecnormalize: The ``VecNormalize`` it was trained with (or ``None``).
    :param actuator_names: Actuator names in action order ``[K]``.
    :param action_low: Lower SI bound of the delta action ``[K]`` (``-action_high``).
    :param action_high: Upper SI bound of the delta action ``[K]``.
    :param env_id: Environment the policy was trained on.
    :param provenance: Stored with the policy (recipe, seed, versions, evaluation).
    :raises ValueError: For bounds that are not symmetric, architectures or observation
        layouts the portable form cannot represent exactly.
    """
    low = np.asarray(action_low, np.float64)
    high = np.asarray(action_high, np.float64)
    K = len(actuator_names)
    if low.shape != (K,) or high.shape != (K,):
        raise ValueError(f"need {K} action bounds, got {low.shape} and {high.shape}")
    if not np.allclose(low, -high, rtol=1e-6, atol=0.0) or np.any(high <= 0):
        raise ValueError(
            f"action bounds must be symmetric (delta actions): low {low.tolist()}, "
            f"high {high.tolist()}"
        )
    linears, activation = _network(model)
    n_obs = linears[0].in_features
    if n_obs != 8 + K or linears[-1].out_features != K:
        raise ValueError(
            f"model maps {n_obs} observations to {linears[-1].out_features} actions; "
            f"the task has {8 + K} and {K}"
        )
    mean, std, clip = observation_normalisation(vecnormalize, n_obs)
    meta = PolicyMeta(
        obs_mean=mean,
        obs_std=std,
        action_scale=high.tolist(),
        hidden=[layer.out_features for layer in linears[:-1]],
        actuator_names=list(actuator_names),
        obs_clip=clip,
        activation=activation,
        env_id=env_id,
        action_mode="delta",
        provenance=dict(provenance or {}),
    )
    policy = MLPPolicy(meta)
    targets = [m for m in policy.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for dst, src in zip(targets, linears, strict=True):
            dst.weight.copy_(src.weight.detach().to(torch.float64).cpu())
            dst.bias.copy_(src.bias.detach().to(torch.float64).cpu())
    return policy.eval()


def sb3_physical_action(
    model: Any, vecnormalize: Any, obs: np.ndarray, action_high: np.ndarray
) -> np.ndarray:
    """The physical action SB3 itself takes for raw flat observations ``[N, 8 + K]``.

    ``model.predict(vecnormalize.normalize_obs(obs), deterministic=True)``, then (PPO) the
    environment's ``tanh`` of the latent action, then the linear rescale of ``[-1, 1]`` to
    the symmetric SI bounds. The reference :func:`to_mlp_policy` is tested against.
    """
    from stable_baselines3 import PPO

    obs = np.asarray(obs, np.float32)
    if vecnormalize is not None and vecnormalize.norm_obs:
        if isinstance(vecnormalize.obs_rms, dict):
            sizes = np.cumsum([vecnormalize.observation_space[k].shape[0] for k in OBS_KEYS])
            parts = np.split(obs, sizes[:-1], axis=-1)
            obs = vecnormalize.normalize_obs(dict(zip(OBS_KEYS, parts, strict=True)))
        else:
            obs = vecnormalize.normalize_obs(obs)
    action, _ = model.predict(obs, deterministic=True)
    action = np.asarray(action, np.float64)
    if isinstance(model, PPO):
        action = np.tanh(action)
    return action * np.asarray(action_high, np.float64)
