"""Training recipes: validated YAML for training runs (top-level ``agents/``).

A recipe fixes everything a training run depends on: the algorithm (``td3``, ``sac``,
``ppo`` with Stable-Baselines3: :class:`Recipe`; ``apg``, backpropagation through the
differentiable simulation: :class:`APGRecipe`) and its hyperparameters, the environment
and its arguments, the number of parallel environments, the step budget, the seed,
observation/reward normalisation, periodic evaluation on a held-out slice of the published
trials, checkpoints and logging. Invalid input fails with a :class:`RecipeError` naming
the field, the value and the allowed range; every number must be finite.
:func:`load_recipe` reads either kind.

Actions are presented to the algorithm in normalised units ``[-1, 1]`` (the environment's
SI bounds rescaled linearly), so action-noise scales are in those units.

>>> from accelrl.agents.training.recipes import Recipe
>>> r = Recipe.from_dict({"algorithm": "td3", "total_timesteps": 1000})
>>> r.hyperparameters.gamma, r.hyperparameters.net_arch.actor
(0.99, [64, 64])

Its size (~700 lines): one pydantic schema tree per recipe kind (SB3: :class:`Recipe`; APG:
:class:`APGRecipe`), read by one :func:`load_recipe` and validated alike; the docstrings
documenting every field are a third of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from accelrl.bundle import MAX_TARGET_SIZE_FLOOR, AveragingInfo
from accelrl.config import field_value_errors, load_yaml_mapping
from accelrl.names import ARES_EA_ID

Algorithm = Literal["td3", "sac", "ppo"]
ALGORITHMS: tuple[str, ...] = ("td3", "sac", "ppo")


class RecipeError(ValueError):
    """An invalid training recipe; the message names the field, value and allowed range."""


class _Model(BaseModel):
    # Every float must be finite: NaN and +-inf are refused with the field named.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Width = Annotated[int, Field(ge=1, le=4096)]


class NetArch(_Model):
    """Hidden layer widths of the actor (policy) and the critic (Q or value function).

    :param actor: Actor widths; the exported policy has exactly these hidden layers.
    :param critic: Critic widths (each of TD3's/SAC's twin Q-networks; PPO's value net).
    """

    actor: list[Width] = Field([64, 64], min_length=1, max_length=8)
    critic: list[Width] = Field([64, 64], min_length=1, max_length=8)


class ActionNoise(_Model):
    """Exploration noise added to off-policy actions, in normalised action units ``[-1, 1]``.

    :param type: ``"normal"`` (Gaussian), ``"ornstein_uhlenbeck"`` or ``"none"``.
    :param sigma: Standard deviation (normalised units; 0.1 = 10% of the half-range).
    """

    type: Literal["normal", "ornstein_uhlenbeck", "none"] = "normal"
    sigma: float = Field(0.1, ge=0.0, le=2.0)


class _Common(_Model):
    """Hyperparameters shared by every algorithm.

    :param gamma: Discount factor, ``0 <= gamma < 1``.
    :param learning_rate: Adam learning rate (all networks).
    :param lr_schedule: ``"constant"`` or ``"linear"`` (decayed to 0 at the end of training).
    :param net_arch: Actor and critic widths.
    :param activation: Hidden activation of every network (``relu`` or ``tanh``).
    """

    gamma: float = Field(0.99, ge=0.0, lt=1.0)
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    lr_schedule: Literal["constant", "linear"] = "constant"
    net_arch: NetArch = NetArch()
    activation: Literal["relu", "tanh"] = "relu"


class _OffPolicy(_Common):
    """Replay-buffer algorithms (TD3, SAC).

    :param buffer_size: Replay buffer capacity [transitions].
    :param batch_size: Minibatch size [transitions].
    :param learning_starts: Transitions collected (random actions) before learning starts.
    :param tau: Polyak coefficient of the target networks.
    :param train_freq: Update every ``train_freq`` vector-env steps (each step collects
        ``num_envs`` transitions).
    :param gradient_steps: Gradient steps per update; ``-1``: as many as transitions
        collected since the last update (``train_freq * num_envs``).
    """

    buffer_size: int = Field(1_000_000, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_starts: int = Field(100, ge=0)
    tau: float = Field(0.005, gt=0.0, le=1.0)
    train_freq: int = Field(1, ge=1)
    gradient_steps: int = Field(-1, ge=-1)

    @field_validator("gradient_steps")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("gradient_steps must be -1 (as many as collected) or >= 1, got 0")
        return v

    @model_validator(mode="after")
    def _batch_fits(self) -> _OffPolicy:
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be <= buffer_size ({self.buffer_size})"
            )
        return self


class TD3Params(_OffPolicy):
    """TD3 (Fujimoto et al. 2018) as in Stable-Baselines3.

    :param policy_delay: Critic updates per actor update.
    :param target_policy_noise: Smoothing noise on target actions (normalised units).
    :param target_noise_clip: Clip of the smoothing noise (normalised units).
    :param action_noise: Exploration noise.
    """

    algorithm: Literal["td3"] = "td3"
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    policy_delay: int = Field(2, ge=1)
    target_policy_noise: float = Field(0.2, ge=0.0, le=2.0)
    target_noise_clip: float = Field(0.5, ge=0.0, le=2.0)
    action_noise: ActionNoise = ActionNoise()


class SACParams(_OffPolicy):
    """SAC (Haarnoja et al. 2018) as in Stable-Baselines3.

    :param ent_coef: Entropy coefficient: a number, ``"auto"`` (learned) or ``"auto_X"``
        (learned, starting at X).
    :param target_entropy: ``"auto"`` (``-dim(action)``) or a number.
    :param target_update_interval: Target-network update every this many gradient steps.
    :param action_noise: Extra exploration noise (usually ``none`` for SAC).
    """

    algorithm: Literal["sac"] = "sac"
    ent_coef: float | str = "auto"
    target_entropy: float | Literal["auto"] = "auto"
    target_update_interval: int = Field(1, ge=1)
    action_noise: ActionNoise = ActionNoise(type="none", sigma=0.0)

    @field_validator("ent_coef")
    @classmethod
    def _ent_coef(cls, v: float | str) -> float | str:
        if isinstance(v, str):
            if v == "auto":
                return v
            if v.startswith("auto_"):
                try:
                    start = float(v[5:])
                except ValueError:
                    start = -1.0
                if start > 0:
                    return v
            raise ValueError(
                f"ent_coef must be a number >= 0, 'auto' or 'auto_X' (X > 0), got {v!r}"
            )
        if v < 0:
            raise ValueError(f"ent_coef must be >= 0, got {v}")
        return v


class PPOParams(_Common):
    """PPO (Schulman et al. 2017) as in Stable-Baselines3.

    The Gaussian policy acts in an unbounded latent space; the training environment maps
    the latent action ``u`` to the normalised action ``tanh(u)`` (a deterministic part of
    the environment, so the policy gradient is unchanged). The deterministic policy is
    therefore ``tanh(mean)``, exactly the portable :class:`~accelrl.agents.policy.MLPPolicy`.

    :param n_steps: Steps per environment per rollout (rollout = ``n_steps * num_envs``).
    :param batch_size: Minibatch size [transitions].
    :param n_epochs: Passes over each rollout.
    :param gae_lambda: GAE lambda.
    :param clip_range: Policy ratio clip.
    :param ent_coef: Entropy bonus coefficient.
    :param vf_coef: Value-loss coefficient.
    :param max_grad_norm: Gradient-norm clip.
    :param target_kl: Stop an update's epochs early above this KL (``null``: never).
    :param log_std_init: Initial log standard deviation of the latent Gaussian.
    """

    algorithm: Literal["ppo"] = "ppo"
    activation: Literal["relu", "tanh"] = "tanh"
    n_steps: int = Field(2048, ge=1)
    batch_size: int = Field(64, ge=2)
    n_epochs: int = Field(10, ge=1)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    clip_range: float = Field(0.2, gt=0.0, le=1.0)
    ent_coef: float = Field(0.0, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    target_kl: float | None = Field(None, gt=0.0)
    log_std_init: float = Field(0.0, ge=-20.0, le=2.0)


Hyperparameters = Annotated[TD3Params | SACParams | PPOParams, Field(discriminator="algorithm")]


class EnvConfig(_Model):
    """The training environment (the native batched version of a registered id).

    :param id: Registered environment id.
    :param reward: Reward name or term list (:mod:`accelrl.envs.rewards`); ``null``: the spec's.
    :param action_mode: ``"delta"`` (the portable policy form acts in changes).
    :param max_episode_steps: Training TimeLimit [steps].
    :param terminate_on_target: End episodes when the target is reached; ``null``: spec's.
    :param start: ``"standard"`` or ``"random"`` start settings.
    :param backend: Simulation backend (``"fast"``: the compiled map).
    """

    id: str = ARES_EA_ID
    reward: str | list[dict[str, Any]] | None = "icml"
    action_mode: Literal["delta"] = "delta"
    max_episode_steps: int = Field(50, ge=1, le=100_000)
    terminate_on_target: bool | None = None
    start: Literal["standard", "random"] = "standard"
    backend: Literal["fast", "cheetah", "cheetah-particles"] = "fast"

    @field_validator("id")
    @classmethod
    def _registered(cls, v: str) -> str:
        return check_training_env_id(v)

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, v: str | list[dict[str, Any]] | None) -> Any:
        if v is None:
            return v
        from accelrl.envs.validation import check_reward

        return check_reward(v)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`accelrl.envs.make_vec` (all but ``id``)."""
        return self.model_dump(exclude={"id"})


def check_training_env_id(env_id: str) -> str:
    """``env_id`` if it names a transverse-tuning task training builds from a task spec: a
    registered id (shipped, or from :func:`accelrl.envs.register_task`) or the path of a task
    YAML.

    :raises ValueError: Naming the id and the registered ones.
    """
    from accelrl.registration import ENVIRONMENTS

    if Path(env_id).suffix.lower() in (".yaml", ".yml"):
        from accelrl.resources import resolve

        if not resolve(env_id).is_file():
            raise ValueError(f"unknown environment id; task file {env_id!r} does not exist")
        return env_id
    if env_id in ENVIRONMENTS:
        return env_id
    import sys

    tasks = getattr(sys.modules.get("accelrl.envs.tasks"), "TASKS", {})
    if env_id not in tasks:
        known = sorted({*ENVIRONMENTS, *tasks})
        raise ValueError(
            f"unknown environment id; training supports {known} or the path of a task YAML"
        )
    return env_id


class VecNormalizeConfig(_Model):
    """Stable-Baselines3 ``VecNormalize``: running mean/variance of observations and returns.

    :param obs: Normalise observations (folded into the exported policy).
    :param reward: Scale rewards by the running std of the discounted return (training only).
    :param clip_obs: Clip normalised observations to ``+-clip_obs``.
    :param clip_reward: Clip normalised rewards to ``+-clip_reward``.
    :param epsilon: Added to the variances before the square root.
    """

    obs: bool = True
    reward: bool = True
    clip_obs: float = Field(10.0, gt=0.0)
    clip_reward: float = Field(10.0, gt=0.0)
    epsilon: float = Field(1e-8, gt=0.0, le=1e-2)


class EvaluationConfig(_Model):
    """Periodic evaluation of the deterministic (exported) policy on fixed trials.

    Every trial runs from the standard start settings with termination disabled, for
    ``steps`` steps, in an environment reset with ``seed + trial.index`` (the evaluation
    protocol of ``accelrl rollout``). Training never sees the trials (it draws random
    problems), so they are held out.

    :param every: Evaluate every this many timesteps (0: only at the end).
    :param trials: Trial indices: a Python slice ``"start:stop[:step]"`` or a list.
    :param trial_file: Trial set (``null``: the 300 published ARES-EA trials for ARES-EA,
        100 trials drawn from the task's randomisation for any other task).
    :param steps: Steps per trial (150 as published, or 50 as the training TimeLimit).
    :param seed: Base seed of the evaluation environments.
    """

    every: int = Field(10_000, ge=0)
    trials: str | list[Annotated[int, Field(ge=0)]] = "0:300:3"
    trial_file: Path | None = None
    steps: int = Field(150, ge=1, le=10_000)
    seed: int = Field(0, ge=0)

    @field_validator("trials")
    @classmethod
    def _trials(cls, v: str | list[int]) -> str | list[int]:
        if isinstance(v, str):
            parse_slice(v)
        elif not v:
            raise ValueError("trials must name at least one trial")
        return v

    def select(self, n_available: int) -> list[int]:
        """Trial indices (positions in the trial file) for a file of ``n_available`` trials.

        :raises RecipeError: When an index is outside the file.
        """
        if isinstance(self.trials, str):
            idx = list(range(n_available))[parse_slice(self.trials)]
        else:
            idx = list(self.trials)
        bad = [i for i in idx if i >= n_available]
        if bad or not idx:
            raise RecipeError(
                f"evaluation.trials = {self.trials!r}: selects {bad or 'no'} trial indices, "
                f"allowed 0..{n_available - 1}"
            )
        return idx


def parse_slice(text: str) -> slice:
    """``"a:b[:c]"`` -> ``slice(a, b, c)`` (empty parts are ``None``; the step must be > 0)."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"trials must be a slice 'start:stop[:step]' or a list, got {text!r}")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(f"trials slice {text!r} must contain integers") from None
    if len(values) == 3 and values[2] is not None and values[2] <= 0:
        raise ValueError(f"trials slice step must be > 0, got {values[2]}")
    return slice(*values)


class Recipe(_Model):
    """A complete, validated training run.

    :param algorithm: ``"td3"``, ``"sac"`` or ``"ppo"``.
    :param env: The training environment.
    :param num_envs: Parallel environments in the native batched environment.
    :param total_timesteps: Training budget [environment transitions, all envs together].
    :param seed: Seed of weights, exploration, environments and evaluation.
    :param hyperparameters: The algorithm's hyperparameters (defaults: Stable-Baselines3's).
    :param vecnormalize: Observation and reward normalisation.
    :param evaluation: Periodic evaluation on held-out trials.
    :param checkpoint_every: Save model and normalisation every this many timesteps (0: never).
    :param tensorboard: Also write TensorBoard event files into ``logs/`` (the SB3 logger's
        values, at each of its dumps; ``tensorboard --logdir RUN/logs``). Needs the
        ``[tensorboard]`` extra; without it training stops before it starts, saying so.
    :param device: Torch device of the networks (``"cpu"``: best for small MLPs).
    :param torch_threads: Torch intra-op threads (1 per process on a shared machine).
    :param description: Free text.
    """

    algorithm: Algorithm
    env: EnvConfig = EnvConfig()
    num_envs: int = Field(1, ge=1, le=65_536)
    total_timesteps: int = Field(100_000, ge=1)
    seed: int = Field(0, ge=0, lt=2**31)
    hyperparameters: Hyperparameters
    vecnormalize: VecNormalizeConfig = VecNormalizeConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    checkpoint_every: int = Field(0, ge=0)
    tensorboard: bool = False
    device: str = "cpu"
    torch_threads: int = Field(1, ge=1, le=256)
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _tag_hyperparameters(cls, data: Any) -> Any:
        # The hyperparameters are validated against the model of the chosen algorithm.
        if isinstance(data, dict):
            data = dict(data)
            algo = data.get("algorithm")
            if algo not in ALGORITHMS:
                raise ValueError(
                    f"algorithm = {algo!r}: must be one of {', '.join(ALL_ALGORITHMS)}"
                    if "algorithm" in data
                    else f"algorithm is required: one of {', '.join(ALL_ALGORITHMS)}"
                )
            hp = data.get("hyperparameters")
            if hp is None:
                hp = {}
            if isinstance(hp, dict):
                if "algorithm" in hp and hp["algorithm"] != algo:
                    raise ValueError(
                        f"hyperparameters.algorithm ({hp['algorithm']!r}) differs from "
                        f"algorithm ({algo!r}); leave it out"
                    )
                data["hyperparameters"] = {**hp, "algorithm": algo}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        hp = self.hyperparameters
        if isinstance(hp, PPOParams):
            rollout = hp.n_steps * self.num_envs
            if hp.batch_size > rollout:
                raise ValueError(
                    f"hyperparameters.batch_size ({hp.batch_size}) must be <= n_steps * num_envs "
                    f"({hp.n_steps} * {self.num_envs} = {rollout})"
                )
        return self

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Load and validate a recipe file.

        :raises RecipeError: Naming the file, the field, the value and the allowed range.
        """
        data = load_yaml_mapping(path, RecipeError, "recipe")
        return cls.from_dict(task_file_relative(data, path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        """Validate a recipe given as a mapping.

        :raises RecipeError: Naming the source, the field, the value and the allowed range.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise RecipeError(_format_errors(err, source)) from None

    def replace(self, source: str = "recipe override", **changes: Any) -> Recipe:
        """A validated copy with top-level fields changed (e.g. ``seed``, ``total_timesteps``).

        :param source: Name of the changed recipe in error messages.
        """
        data = self.model_dump(mode="json")
        data.update(changes)
        return Recipe.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible mapping (the hyperparameters without their tag)."""
        data = self.model_dump(mode="json")
        data["hyperparameters"].pop("algorithm", None)
        return data


# ---------------------------------------------------------------------------- APG
class APGConfig(_Model):
    """Hyperparameters of differentiable-simulation training (SI units).

    :param iterations: Gradient steps (>= 1).
    :param batch_size: Rollouts per gradient step (>= 1).
    :param horizon: Steps per rollout (>= 1).
    :param learning_rate: Adam learning rate (cosine-decayed to 5%), in ``(0, 1]``.
    :param hidden: Hidden layer widths of the policy (1 to 8 layers of 1 to 4096).
    :param eps: Floor inside ``log(MAE + eps)`` [m], > 0: precision below it is not rewarded.
    :param random_start_fraction: Fraction of rollouts starting from uniformly random
        settings (the rest from the standard start), in ``[0, 1]``.
    :param error_scale: Scale of the beam-error input of the policy [m], > 0 (``None``: off).
    :param grad_clip: Gradient-norm clip, > 0.
    :param history: Past observations in the policy's input (0 to 32; 0: none, the
        original policy form). Needs ``error_scale``.
    :param hold_penalty: Weight of the hold term added to the per-step loss, >= 0: the
        mean relative action size ``|a| / max_delta`` weighted by ``exp(-MAE / hold_scale)``
        of the true beam before the action (small changes are cheap far from the target,
        costly close to it). 0: off.
    :param hold_scale: MAE scale of the hold term [m], > 0.
    :param ideal_fraction: With a ``world``: fraction of rollouts in the ideal world, in
        ``[0, 1]``.
    :param reading_noise: Largest Gaussian reading noise [m], >= 0: each rollout draws its
        level uniformly in ``[0, reading_noise]``.
    :param zero_target_fraction: Fraction of rollouts whose target sizes are zero (the
        smallest beam the magnets make), in ``[0, 1]``.
    :param init_policy: A policy directory (``agents/apg-ares-ea``, found from any folder)
        whose weights start the training, or ``None`` (random weights). It must have the same
        hidden layers, activation, actuators and normalisation; a policy without history
        starts a history policy with zero weights on the past (it acts as before).
    :param averaging: How the trained policy averages its setting changes over noisy
        readings when it runs (:mod:`accelrl.averaging`; ``{max_count, reset_fraction}``),
        stored with the policy and its bundle; never applied in the training rollouts.
        ``None``: no averaging.
    :param target_size_floor: Smallest target size the trained policy is asked for when it
        runs [m] (:func:`accelrl.bundle.floor_target_sizes`), in ``[0, 1e-3]``; stored with
        the policy and its bundle, never applied in training. ``None``: the target as given.
    :param seed: Seed of the initial weights and the domain randomisation.
    :param device: Where the rollouts and the policy run: ``"cpu"`` (default), ``"cuda"``,
        ``"cuda:N"`` or ``"mps"``; a device this machine lacks fails when training starts
        (never a silent fallback). The saved policy is on the CPU whatever the device.
    """

    iterations: int = Field(3000, ge=1)
    batch_size: int = Field(256, ge=1)
    horizon: int = Field(15, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    hidden: list[Width] = Field(default_factory=lambda: [128, 128], min_length=1, max_length=8)
    eps: float = Field(2e-7, gt=0.0)
    random_start_fraction: float = Field(0.25, ge=0.0, le=1.0)
    error_scale: float | None = Field(1e-4, gt=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    history: int = Field(0, ge=0, le=32)
    hold_penalty: float = Field(0.0, ge=0.0)
    hold_scale: float = Field(2e-5, gt=0.0)
    ideal_fraction: float = Field(0.0, ge=0.0, le=1.0)
    reading_noise: float = Field(0.0, ge=0.0, le=1e-3)
    zero_target_fraction: float = Field(0.0, ge=0.0, le=1.0)
    init_policy: str | None = None
    averaging: AveragingInfo | None = None
    target_size_floor: float | None = Field(
        None, ge=0.0, le=MAX_TARGET_SIZE_FLOOR, allow_inf_nan=False
    )
    seed: int = Field(0, ge=0, lt=2**31)
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", v):
            raise ValueError("must be 'cpu', 'cuda', 'cuda:N' (N = GPU index) or 'mps'")
        return v

    @model_validator(mode="after")
    def _history_needs_error(self) -> APGConfig:
        if self.history and not self.error_scale:
            raise ValueError(
                f"history = {self.history} needs error_scale (the policy sees past beam "
                "errors scaled by it); set error_scale > 0"
            )
        return self


class APGEnvConfig(_Model):
    """The environment of APG training: a transverse-tuning task whose lattice the compiled
    map represents (the gradient flows through it).

    :param id: A registered task id (default ARES-EA; :func:`accelrl.envs.register_task`)
        or the path of a task YAML (relative to the recipe file).
    """

    id: str = ARES_EA_ID

    @field_validator("id")
    @classmethod
    def _task(cls, v: str) -> str:
        if Path(v).suffix.lower() in (".yaml", ".yml"):
            from accelrl.resources import resolve

            if not resolve(v).is_file():
                raise ValueError(f"unknown environment id; task file {v!r} does not exist")
            return v
        from accelrl.envs.tasks import TASKS

        if v not in TASKS:
            raise ValueError(
                f"unknown environment id; APG training takes a registered task "
                f"{sorted(TASKS)} or a task YAML"
            )
        return v


class APGRecipe(_Model):
    """A complete, validated APG training run (``agents/apg.yaml``).

    :param algorithm: ``"apg"``.
    :param description: Free text.
    :param env: The environment.
    :param seed: Seed of the weights and the domain randomisation (overrides ``apg.seed``;
        give it in one place).
    :param world: The world trained under (:mod:`accelrl.agents.training.world`): a shipped
        name (``ares-realistic``, ``harsh``, overlays with ``+``) or a YAML path (relative to
        the working directory); ``None`` or ``ideal``: the ideal world.
    :param apg: The hyperparameters.
    """

    algorithm: Literal["apg"]
    description: str = ""
    env: APGEnvConfig = APGEnvConfig()
    seed: int = Field(0, ge=0, lt=2**31)
    world: str | None = None
    apg: APGConfig = APGConfig()

    @field_validator("world")
    @classmethod
    def _known_world(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from accelrl.envs.ares_ea import ares_ea_spec
        from accelrl.envs.world.spec import WorldError, load_world

        try:
            load_world(v).check(ares_ea_spec())
        except WorldError as err:
            raise ValueError(f"not a usable world: {err}") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("apg"), dict) and "seed" in data["apg"]:
            data = dict(data)
            apg = dict(data["apg"])
            if "seed" in data and data["seed"] != apg["seed"]:
                raise ValueError(
                    f"seed ({data['seed']!r}) and apg.seed ({apg['seed']!r}) differ; give one"
                )
            data["seed"] = apg.pop("seed")
            data["apg"] = apg
        return data

    @property
    def config(self) -> APGConfig:
        """The hyperparameters with the recipe's seed."""
        return self.apg.model_copy(update={"seed": self.seed})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> APGRecipe:
        """Validate an APG recipe given as a mapping.

        :raises RecipeError: Naming the source, the field, the value and the allowed range.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise RecipeError(_format_errors(err, source)) from None

    def replace(self, source: str = "recipe override", **changes: Any) -> APGRecipe:
        """A validated copy with top-level fields changed (e.g. ``seed``).

        :param source: Name of the changed recipe in error messages.
        """
        data = self.to_dict()
        data.update(changes)
        return APGRecipe.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible mapping (the seed given once, at the top level)."""
        data = self.model_dump(mode="json")
        data["apg"].pop("seed")
        return data


#: Every algorithm a recipe can name.
ALL_ALGORITHMS: tuple[str, ...] = (*ALGORITHMS, "apg")


def task_file_relative(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``data`` with an ``env.id`` that names a task YAML made relative to the recipe file."""
    env = data.get("env")
    if isinstance(env, dict) and isinstance(env.get("id"), str):
        ref = Path(env["id"])
        if ref.suffix.lower() in (".yaml", ".yml") and not ref.is_absolute():
            data = {**data, "env": {**env, "id": str((Path(path).parent / ref).resolve())}}
    return data


def load_recipe(path: str | Path) -> Recipe | APGRecipe:
    """Load and validate a recipe file of any algorithm (``apg``: :class:`APGRecipe`; else
    :class:`Recipe`).

    :raises RecipeError: Naming the file, the field, the value and the allowed range.
    """
    data = load_yaml_mapping(path, RecipeError, "recipe")
    if data.get("algorithm") == "apg":
        return APGRecipe.from_dict(task_file_relative(data, path), source=str(path))
    return Recipe.from_dict(task_file_relative(data, path), source=str(path))


def _format_errors(err: ValidationError, source: str) -> str:
    def location(loc: list[str]) -> list[str]:
        # Drop the discriminator tag from "hyperparameters.<algo>.<field>".
        if len(loc) >= 2 and loc[0] == "hyperparameters" and loc[1] in ALGORITHMS:
            del loc[1]
        return loc

    lines = field_value_errors(err, location=location)
    return f"{source}: invalid training recipe\n" + "\n".join(lines)
