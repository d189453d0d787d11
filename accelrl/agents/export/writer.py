"""Export a trained policy as a policy bundle (``accelrl export MODEL --out BUNDLE_DIR``).

``MODEL`` is either an :class:`~accelrl.agents.policy.MLPPolicy` directory (``policy.pt`` +
``policy.json``, e.g. ``agents/apg-ares-ea`` or a training run's ``policy/``) or a
Stable-Baselines3 model zip (TD3, SAC, PPO trained by :mod:`accelrl.agents.training.sb3`) with
its ``VecNormalize`` statistics; an SB3 model is first converted to the portable form by
:func:`accelrl.agents.export.sb3.to_mlp_policy` (its deterministic actor, observation
normalisation and action rescaling).

**An SB3 model runs code when it is read.** The zip's ``data`` entry holds cloudpickled
Python objects (policy class, spaces, schedules) and ``vecnormalize.pkl`` is a pickle:
unpickling either runs whatever code the file names. :func:`load_sb3` therefore refuses
unless called with ``trust_pickle=True`` (``accelrl export --trust-pickle``): export only
files that you (or your own training run) wrote. An MLPPolicy directory needs no trust: its
weights are read with ``torch.load(weights_only=True)``.

The graph is written op by op from the policy's weights (:mod:`accelrl.agents.export.onnx_graph`).
Before anything is written, the graph is checked against the torch policy on 10 000
observations, a fifth of them far outside the observation ranges; the largest difference
relative to the action range is stored in the provenance. The bundle is then loaded back
with full verification (:class:`~accelrl.deploy.runtime.OnnxPolicy`).

>>> from accelrl.agents.export.writer import export
>>> export("agents/apg-ares-ea", "agents/apg-ares-ea/bundle")  # doctest: +SKIP

Its size (~530 lines): one export pipeline, its functions the stages (reading the model with the
pickle check, sampling observations, the parity check, the provenance) of :func:`export_policy`
and :func:`export`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml
from torch import nn

from accelrl import execution
from accelrl.agents.export.onnx_graph import OPSET, MLPWeights, build_graph
from accelrl.agents.policy import MLPPolicy, history_features
from accelrl.bundle import (
    MANIFEST_FILE,
    METADATA_KEY,
    ONNX_FILE,
    SELFTEST_FILE,
    AveragingInfo,
    BundleError,
    GraphInfo,
    KnobLimits,
    Manifest,
    Quantity,
    SelftestInfo,
    sha256_file,
)
from accelrl.envs.spec import TaskSpec

#: Number of reference observations in ``selftest.npz``.
SELFTEST_COUNT = 256
#: Self-test tolerance relative to each action component's range.
SELFTEST_RTOL = 1e-6
#: Parity check at export: observations, and tolerance relative to the action range.
PARITY_COUNT = 10_000
PARITY_RTOL = 1e-5


class ExportError(ValueError):
    """A model cannot be exported (the message names the file or the problem)."""


# ---------------------------------------------------------------------- sources
def mlp_weights(policy: MLPPolicy) -> MLPWeights:
    """The weights and pre/post-processing of ``policy`` as float64 numpy arrays."""
    linears = [m for m in policy.net if isinstance(m, nn.Linear)]
    m = policy.meta
    return MLPWeights(
        weights=tuple(
            (
                lin.weight.detach().to(torch.float64).cpu().numpy().copy(),
                lin.bias.detach().to(torch.float64).cpu().numpy().copy(),
            )
            for lin in linears
        ),
        activation=m.activation,
        obs_mean=np.asarray(m.obs_mean, np.float64),
        obs_std=np.asarray(m.obs_std, np.float64),
        obs_clip=float(m.obs_clip),
        action_scale=np.asarray(m.action_scale, np.float64),
        error_scale=m.error_scale,
        features=history_features(m) if m.history else None,
    )


def _task(env_id: str) -> TaskSpec:
    from accelrl.envs import TASKS

    if env_id not in TASKS:
        raise ExportError(f"unknown environment {env_id!r}; registered: {sorted(TASKS)}")
    return TASKS[env_id]()


def _sb3_algorithm(path: Path) -> str:
    """``"td3"``, ``"sac"`` or ``"ppo"`` from the ``data`` entry of an SB3 zip (read as
    JSON; nothing is unpickled). Every entry's checksum is verified first.

    :raises ExportError: For a file that is not a zip, a truncated or damaged one, or a zip
        without an SB3 ``data`` entry.
    """
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                raise ExportError(f"{path}: damaged zip (entry {bad!r} fails its checksum)")
            data = json.loads(z.read("data"))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise ExportError(
            f"{path}: not a Stable-Baselines3 model zip (truncated, damaged or not a zip: {err})"
        ) from None
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ExportError(f"{path}: not a Stable-Baselines3 model zip ({err})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: not a Stable-Baselines3 model zip (data is not a mapping)")
    module = str(data.get("policy_class", {}).get("__module__", ""))
    for algo in ("td3", "sac", "ppo"):
        if f".{algo}." in module:
            return algo
    # Policies shared between algorithms (PPO's ActorCriticPolicy): attributes only one
    # algorithm saves.
    for algo, key in (("td3", "policy_delay"), ("sac", "target_entropy"), ("ppo", "clip_range")):
        if key in data:
            return algo
    raise ExportError(f"{path}: policy class from {module!r}; only TD3, SAC and PPO export")


def delta_bounds(spec: TaskSpec) -> np.ndarray:
    """Upper bound of the delta action per knob (SI), as the training environment's
    float32 action space holds it."""
    low = np.array([a.low for a in spec.actuators])
    high = np.array([a.high for a in spec.actuators])
    step = spec.delta_fraction * np.maximum(np.abs(low), np.abs(high))
    return step.astype(np.float32).astype(np.float64)


def load_sb3(
    model_path: str | Path,
    vecnormalize_path: str | Path | None = None,
    env_id: str | None = None,
    *,
    trust_pickle: bool = False,
) -> tuple[MLPPolicy, Any, Any]:
    """An SB3 model zip as ``(MLPPolicy, model, vecnormalize)``.

    :param model_path: ``model.zip`` (TD3, SAC or PPO).
    :param vecnormalize_path: Its ``VecNormalize`` pickle; default ``vecnormalize.pkl`` next
        to the zip (``None`` there: no observation normalisation).
    :param env_id: Training environment; default: the ``recipe.yaml`` next to the zip, else
        ARES-EA.
    :param trust_pickle: Allow unpickling the zip's Python objects and the VecNormalize
        pickle, which runs code named in those files. Default ``False``: refused.
    :raises ExportError: Without ``trust_pickle``, for a file that is not an SB3 zip
        (truncated, damaged), or one that cannot be read.
    """
    from stable_baselines3 import PPO, SAC, TD3

    from accelrl.agents.export.sb3 import to_mlp_policy
    from accelrl.envs import ARES_EA_ID

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ExportError(f"{model_path}: model file not found")
    algo = _sb3_algorithm(model_path)
    if vecnormalize_path is None and (model_path.parent / "vecnormalize.pkl").is_file():
        vecnormalize_path = model_path.parent / "vecnormalize.pkl"
    if not trust_pickle:
        also = f" and {vecnormalize_path} is a pickle" if vecnormalize_path is not None else ""
        raise ExportError(
            f"{model_path}: a Stable-Baselines3 zip holds pickled Python objects{also}; "
            "reading them runs code named in the files. Export only files you trust, with "
            "--trust-pickle (library: trust_pickle=True)"
        )
    recipe = _recipe_next_to(model_path)
    if env_id is None:
        env_id = str(((recipe or {}).get("env") or {}).get("id") or ARES_EA_ID)
    spec = _task(env_id)
    try:
        model = {"td3": TD3, "sac": SAC, "ppo": PPO}[algo].load(model_path, device="cpu")
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, RuntimeError, OSError) as err:
        raise ExportError(f"{model_path}: cannot read the {algo.upper()} model: {err}") from None
    vecnormalize = None
    if vecnormalize_path is not None:
        try:
            with Path(vecnormalize_path).open("rb") as fh:
                vecnormalize = pickle.load(fh)  # noqa: S301 - trust_pickle was given
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise ExportError(f"{vecnormalize_path}: cannot read VecNormalize: {err}") from None
        if not hasattr(vecnormalize, "obs_rms"):
            raise ExportError(
                f"{vecnormalize_path}: holds a {type(vecnormalize).__name__}, not VecNormalize"
            )
        vecnormalize.training = False
    high = delta_bounds(spec)
    provenance: dict[str, Any] = {"algorithm": algo, "model": str(model_path)}
    if recipe is not None:
        provenance["recipe"] = recipe
        provenance["seed"] = recipe.get("seed")
    summary = model_path.parent / "train_summary.json"
    if summary.is_file():
        provenance["train_summary"] = json.loads(summary.read_text())
    names = [a.name for a in spec.actuators]
    try:
        policy = to_mlp_policy(model, vecnormalize, names, -high, high, env_id, provenance)
    except (ValueError, TypeError) as err:
        raise ExportError(f"{model_path}: {err}") from None
    return policy, model, vecnormalize


def _recipe_next_to(path: Path) -> dict[str, Any] | None:
    for candidate in (path / "recipe.yaml", path.parent / "recipe.yaml"):
        if candidate.is_file():
            data = yaml.safe_load(candidate.read_text())
            return data if isinstance(data, dict) else None
    return None


def load_model(
    model: str | Path,
    vecnormalize: str | Path | None = None,
    env_id: str | None = None,
    *,
    trust_pickle: bool = False,
) -> tuple[MLPPolicy, str]:
    """The policy to export from ``model`` and a short name of its source.

    :param model: An MLPPolicy directory or an SB3 model zip.
    :param vecnormalize: For an SB3 zip: its VecNormalize pickle (see :func:`load_sb3`).
    :param env_id: For an SB3 zip: its training environment.
    :param trust_pickle: For an SB3 zip: allow the unpickling it needs (see
        :func:`load_sb3`).
    :raises ExportError: If ``model`` is neither, or cannot be read.
    """
    path = Path(model)
    if path.is_dir():
        try:
            policy = MLPPolicy.load(path)
        except FileNotFoundError as err:
            raise ExportError(str(err)) from None
        recipe = _recipe_next_to(path / "policy.json")
        if recipe is not None:
            policy.meta.provenance = {**policy.meta.provenance, "recipe": recipe}
        if env_id is not None and env_id != policy.meta.env_id:
            raise ExportError(f"{path} was trained on {policy.meta.env_id!r}, not {env_id!r}")
        return policy, "mlp-policy"
    if path.suffix == ".zip":
        policy, sb3_model, _ = load_sb3(path, vecnormalize, env_id, trust_pickle=trust_pickle)
        return policy, f"sb3-{type(sb3_model).__name__.lower()}"
    raise ExportError(
        f"{path}: expected an MLPPolicy directory (policy.pt + policy.json) or an SB3 model .zip"
    )


# ---------------------------------------------------------------------- observations
def observation_quantities(spec: TaskSpec) -> tuple[Quantity, ...]:
    """Observation components of ``spec``'s tasks with units and the ranges a reading can
    take (the screen clamps the reading of a beam that misses it)."""
    hx, hy = spec.screen.half_extent
    r = spec.randomisation
    beam = (
        Quantity(name="mu_x", unit="m", group="beam", low=-hx, high=hx),
        Quantity(name="sigma_x", unit="m", group="beam", low=0.0, high=hx),
        Quantity(name="mu_y", unit="m", group="beam", low=-hy, high=hy),
        Quantity(name="sigma_y", unit="m", group="beam", low=0.0, high=hy),
    )
    magnets = tuple(
        Quantity(name=a.name, unit=a.unit, group="magnets", low=a.low, high=a.high)
        for a in spec.actuators
    )
    t_mu, t_sig = r.target_mu, r.target_sigma
    target = (
        Quantity(name="mu_x", unit="m", group="target", low=-max(t_mu, hx), high=max(t_mu, hx)),
        Quantity(name="sigma_x", unit="m", group="target", low=0.0, high=max(t_sig.high, hx)),
        Quantity(name="mu_y", unit="m", group="target", low=-max(t_mu, hy), high=max(t_mu, hy)),
        Quantity(name="sigma_y", unit="m", group="target", low=0.0, high=max(t_sig.high, hy)),
    )
    return beam + magnets + target


def sample_observations(
    quantities: tuple[Quantity, ...],
    n: int,
    seed: int = 0,
    outside_fraction: float = 0.2,
    history: int = 0,
) -> np.ndarray:
    """Raw observations ``[n, 8 + K]``: uniform within the ranges, and a fraction far
    outside them (up to 100x the range beyond each side), plus the range corners. With
    ``history`` H, policy inputs ``[n, 8 + K + H (4 + K)]``: each past observation's beam
    and magnets drawn the same way (a third of them equal to the current ones, as at an
    episode's start).

    :param quantities: The observation components (with finite limits).
    :param n: Number of observations (>= 2).
    :param seed: Random seed.
    :param outside_fraction: Fraction drawn outside the ranges.
    :param history: Past observations in the input.
    """
    if history:
        k = len(quantities) - 8
        parts = [sample_observations(quantities, n, seed, outside_fraction)]
        rng = np.random.default_rng(seed + 7919)
        for j in range(history):
            past = sample_observations(quantities, n, seed + 1000 * (j + 1), outside_fraction)
            same = rng.uniform(size=(n, 1)) < 1 / 3
            parts.append(np.where(same, parts[0], past)[:, : 4 + k])
        return np.concatenate(parts, axis=1)
    rng = np.random.default_rng(seed)
    low = np.array([q.low for q in quantities], np.float64)
    high = np.array([q.high for q in quantities], np.float64)
    span = high - low
    obs = rng.uniform(low, high, size=(n, len(quantities)))
    n_out = int(round(n * outside_fraction))
    if n_out:
        factor = 10.0 ** rng.uniform(-2, 2, size=(n_out, len(quantities)))
        side = rng.choice([-1.0, 1.0], size=(n_out, len(quantities)))
        beyond = np.where(side > 0, high + factor * span, low - factor * span)
        keep = rng.uniform(size=(n_out, len(quantities))) < 0.5
        obs[:n_out] = np.where(keep, obs[:n_out], beyond)
    obs[-1], obs[-2] = low, high
    return obs


# ---------------------------------------------------------------------- provenance
def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON (non-finite floats -> None, other objects -> str)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return str(value)


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: accelrl's source), with
    ``-dirty`` appended when it has uncommitted changes; ``None`` outside a checkout."""
    state = execution.git_state(path)
    if state is None:
        return None
    head, dirty = state
    return head + ("-dirty" if dirty else "")


#: Distributions whose versions an export records (besides Python).
_VERSIONED: tuple[str, ...] = (
    "accelrl",
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "stable-baselines3",
    "gymnasium",
    "cheetah-accelerator",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages involved in training and export."""
    return execution.package_versions(_VERSIONED, missing="not installed")


def _provenance(policy: MLPPolicy, source: str, parity: float) -> dict[str, Any]:
    training = dict(policy.meta.provenance)
    recipe = training.pop("recipe", None)
    config = training.get("config") if isinstance(training.get("config"), Mapping) else {}
    seed = training.get("seed", config.get("seed") if config else None)
    if seed is None and isinstance(recipe, Mapping):
        seed = recipe.get("seed")
    versions = training.get("versions") or {
        k: training[k] for k in ("torch", "numpy") if k in training
    }
    return _jsonable(
        {
            "source": source,
            "recipe": recipe,
            "seed": seed,
            "commit": training.get("commit"),
            "training_versions": versions,
            "training": training,
            "export": {
                "commit": git_commit(),
                "versions": package_versions(),
                "parity_observations": PARITY_COUNT,
                "parity_max_error_over_range": parity,
            },
        }
    )


# ---------------------------------------------------------------------- export
def _check_parity(
    model_bytes: bytes, policy: MLPPolicy, obs: np.ndarray, action_range: np.ndarray
) -> float:
    import onnxruntime as ort

    from accelrl.deploy.runtime import session_options

    session = ort.InferenceSession(model_bytes, session_options(), ["CPUExecutionProvider"])
    (onnx_action,) = session.run(None, {"observation": obs})
    torch_action = policy.act(obs)
    err = float(np.max(np.abs(onnx_action - torch_action) / action_range))
    if not err <= PARITY_RTOL:
        raise ExportError(
            f"the ONNX graph differs from the torch policy by {err:.3g} of the action range "
            f"(> {PARITY_RTOL:g}) on {len(obs)} observations"
        )
    return err


def export_policy(
    policy: MLPPolicy,
    out_dir: str | Path,
    source: str = "mlp-policy",
    seed: int = 0,
) -> Path:
    """Write the bundle of ``policy`` into ``out_dir`` and verify it by loading it back.

    :param policy: A portable policy (delta or direct actions).
    :param out_dir: Bundle directory (created; the three bundle files are overwritten).
    :param source: Short name of what was exported (stored in the manifest).
    :param seed: Seed of the self-test and parity observations.
    :return: ``out_dir``.
    :raises ExportError: If the graph and the policy disagree, or the policy's actuators
        differ from its environment's.
    """
    from accelrl.deploy.runtime import OnnxPolicy

    meta = policy.meta
    spec = _task(meta.env_id)
    names = [a.name for a in spec.actuators]
    if list(meta.actuator_names) != names:
        raise ExportError(f"policy actuators {meta.actuator_names} differ from {names}")
    if meta.action_mode not in ("delta", "direct"):
        raise ExportError(f"action_mode must be 'delta' or 'direct', got {meta.action_mode!r}")
    policy = policy.eval()
    scale = np.asarray(meta.action_scale, np.float64)
    act_low, act_high = -scale, scale  # tanh output times action_scale, either mode
    action_range = act_high - act_low
    observation = observation_quantities(spec)
    action = tuple(
        Quantity(name=a.name, unit=a.unit, group="action", low=float(lo), high=float(hi))
        for a, lo, hi in zip(spec.actuators, act_low, act_high, strict=True)
    )
    weights = mlp_weights(policy)

    history = meta.history
    parity_obs = sample_observations(observation, PARITY_COUNT, seed=seed + 1, history=history)
    probe = build_graph(weights).SerializeToString()
    parity = _check_parity(probe, policy, parity_obs, action_range)

    selftest_obs = sample_observations(observation, SELFTEST_COUNT, seed=seed, history=history)
    selftest_action = policy.act(selftest_obs)
    env_version = meta.env_id.rsplit("-", 1)[-1] if "-v" in meta.env_id else ""
    # version 3: averaging or a target-size floor; 2: a history; 1: neither
    version = 3 if meta.averaging is not None or meta.target_size_floor else 2 if history else 1
    manifest = Manifest(
        format_version=version,
        history=history,
        averaging=None if meta.averaging is None else AveragingInfo(**meta.averaging),
        target_size_floor=meta.target_size_floor or None,
        env_id=meta.env_id,
        env_version=env_version,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        source=source,
        observation=observation,
        action=action,
        action_mode=meta.action_mode,  # type: ignore[arg-type]
        knobs=tuple(
            KnobLimits(name=a.name, unit=a.unit, low=a.low, high=a.high) for a in spec.actuators
        ),
        target_thresholds=tuple(spec.termination.thresholds),  # type: ignore[arg-type]
        graph=GraphInfo(opset=OPSET),
        selftest=SelftestInfo(
            count=SELFTEST_COUNT, atol=tuple(float(v) for v in SELFTEST_RTOL * action_range)
        ),
        provenance=_provenance(policy, source, parity),
    )
    model = build_graph(weights, {METADATA_KEY: json.dumps(manifest.embedded(), sort_keys=True)})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, out / ONNX_FILE, save_as_external_data=False)
    np.savez(out / SELFTEST_FILE, observation=selftest_obs, action=selftest_action)
    manifest = manifest.model_copy(
        update={"files": {n: sha256_file(out / n) for n in (ONNX_FILE, SELFTEST_FILE)}}
    )
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    try:
        OnnxPolicy(out)
    except BundleError as err:
        raise ExportError(f"the written bundle does not verify: {err}") from err
    return out


def export(
    model: str | Path,
    out_dir: str | Path,
    vecnormalize: str | Path | None = None,
    env_id: str | None = None,
    seed: int = 0,
    *,
    trust_pickle: bool = False,
) -> Path:
    """Export ``model`` (MLPPolicy directory or SB3 zip) as a bundle in ``out_dir``.

    :param model: See :func:`load_model`.
    :param out_dir: Bundle directory.
    :param vecnormalize: For an SB3 zip, its VecNormalize pickle.
    :param env_id: For an SB3 zip, its training environment.
    :param seed: Seed of the self-test and parity observations.
    :param trust_pickle: For an SB3 zip: allow unpickling the zip's objects and the
        VecNormalize pickle, which runs code named in them (default ``False``: refused).
    """
    policy, source = load_model(model, vecnormalize, env_id, trust_pickle=trust_pickle)
    return export_policy(policy, out_dir, source=source, seed=seed)
