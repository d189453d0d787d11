"""Train a tuning agent with Stable-Baselines3 from a recipe (``accelrl train``).

The training environment is :func:`~accelrl.agents.training.wrappers.make_training_env`
(the native batched environment of the recipe's id, adapted to SB3).

During training, the current deterministic policy is exported to the portable form
(:func:`accelrl.agents.export.sb3.to_mlp_policy`) and evaluated every
``recipe.evaluation.every`` timesteps on held-out trials
(:func:`~accelrl.agents.training.monitor.evaluate_policy`). A run
directory holds::

    progress.jsonl       live: start, every evaluation as it is done, end (completed,
                         interrupted or failed)                     (accelrl.runfiles)
    episodes.csv         live: training episodes (timesteps, return, length), one row as
                         each ends
    logs/                live: SB3's progress.csv (one row per logger dump) and, with
                         ``tensorboard: true``, TensorBoard events
    recipe.yaml          the resolved recipe (overrides applied), first
    checkpoints/         periodic model + VecNormalize snapshots (when enabled)
    policy/              at the end: the exported MLPPolicy (policy.pt, policy.json)
    model.zip            at the end: the SB3 model
    vecnormalize.pkl     at the end: the VecNormalize statistics
    evaluations.json     at the end: evaluation summaries vs timesteps
    learning_curve.png   at the end: episode return and evaluation median MAE vs timesteps
    train_summary.json   at the end: the TrainResult

The live files are flushed as each record is written (``accelrl dashboard`` follows them;
a killed run leaves them readable up to its last record).

>>> from accelrl.agents.training.sb3 import train
>>> result = train("agents/td3_icml.yaml", "runs/td3_icml")  # doctest: +SKIP
>>> result.final_eval["median_best_mae_um"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.vec_env import VecNormalize

from accelrl.agents.evaluation.runner import SAMPLED_TRIALS
from accelrl.agents.export.sb3 import to_mlp_policy
from accelrl.agents.policy import MLPPolicy
from accelrl.agents.training.monitor import (
    EPISODE_COLUMNS,
    TrainingMonitor,
    evaluate_policy,
    plot_learning_curve,
)
from accelrl.agents.training.recipes import (
    PPOParams,
    Recipe,
    RecipeError,
    SACParams,
    TD3Params,
)
from accelrl.agents.training.wrappers import make_training_env
from accelrl.envs import ARES_EA_ID, Trial, load_trials, resolve_task, sample_trials
from accelrl.execution import package_versions
from accelrl.runfiles import PROGRESS_FILE, CsvWriter, ProgressLog


class _Linear:
    """Learning rate decayed linearly to 0 (picklable SB3 schedule)."""

    def __init__(self, initial: float) -> None:
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return self.initial * progress_remaining


# ---------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What a training run produced (paths) and how it went.

    :param out_dir: The run directory.
    :param policy_dir: The exported portable policy.
    :param model_path: The SB3 model zip.
    :param vecnormalize_path: The VecNormalize statistics.
    :param plot_path: The learning-curve PNG.
    :param algorithm: ``td3``, ``sac`` or ``ppo``.
    :param seed: The run's seed.
    :param timesteps: Environment transitions trained on.
    :param train_wall_s: Wall time of training, periodic evaluations included [s].
    :param eval_wall_s: Part of it spent in periodic evaluations [s].
    :param timesteps_per_s: ``timesteps / (train_wall_s - eval_wall_s)``.
    :param stopped_by_time_limit: Whether the time limit ended the run early.
    :param final_eval: Evaluation summary of the exported policy.
    :param evaluations: Every evaluation summary, in order.
    """

    out_dir: Path
    policy_dir: Path
    model_path: Path
    vecnormalize_path: Path
    plot_path: Path
    algorithm: str
    seed: int
    timesteps: int
    train_wall_s: float
    eval_wall_s: float
    timesteps_per_s: float
    stopped_by_time_limit: bool
    final_eval: dict[str, Any]
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


#: Distributions a trained policy depends on, whose versions its provenance records.
_VERSIONED: tuple[str, ...] = (
    "accelrl",
    "stable-baselines3",
    "torch",
    "numpy",
    "gymnasium",
    "cheetah-accelerator",
)


def versions() -> dict[str, str]:
    """Versions of Python and the packages a trained policy depends on."""
    return package_versions(_VERSIONED, missing="unknown")


# ---------------------------------------------------------------------- training
def _model(recipe: Recipe, env: VecNormalize, tensorboard_dir: str | None) -> Any:
    from stable_baselines3 import PPO, SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    hp = recipe.hyperparameters
    lr: Any = hp.learning_rate if hp.lr_schedule == "constant" else _Linear(hp.learning_rate)
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[hp.activation]
    common = dict(
        learning_rate=lr,
        gamma=hp.gamma,
        seed=recipe.seed,
        device=recipe.device,
        tensorboard_log=tensorboard_dir,
        verbose=0,
    )
    if isinstance(hp, (TD3Params, SACParams)):
        K = env.action_space.shape[0]
        noise = None
        if hp.action_noise.type == "normal" and hp.action_noise.sigma > 0:
            noise = NormalActionNoise(np.zeros(K), np.full(K, hp.action_noise.sigma))
        elif hp.action_noise.type == "ornstein_uhlenbeck" and hp.action_noise.sigma > 0:
            noise = OrnsteinUhlenbeckActionNoise(np.zeros(K), np.full(K, hp.action_noise.sigma))
        off = dict(
            buffer_size=hp.buffer_size,
            learning_starts=hp.learning_starts,
            batch_size=hp.batch_size,
            tau=hp.tau,
            train_freq=(hp.train_freq, "step"),
            gradient_steps=hp.gradient_steps,
            action_noise=noise,
            policy_kwargs=dict(
                net_arch=dict(pi=list(hp.net_arch.actor), qf=list(hp.net_arch.critic)),
                activation_fn=act,
            ),
        )
        if isinstance(hp, TD3Params):
            return TD3(
                "MlpPolicy",
                env,
                policy_delay=hp.policy_delay,
                target_policy_noise=hp.target_policy_noise,
                target_noise_clip=hp.target_noise_clip,
                **off,
                **common,
            )
        return SAC(
            "MlpPolicy",
            env,
            ent_coef=hp.ent_coef,
            target_entropy=hp.target_entropy,
            target_update_interval=hp.target_update_interval,
            **off,
            **common,
        )
    assert isinstance(hp, PPOParams)
    return PPO(
        "MlpPolicy",
        env,
        n_steps=hp.n_steps,
        batch_size=hp.batch_size,
        n_epochs=hp.n_epochs,
        gae_lambda=hp.gae_lambda,
        clip_range=hp.clip_range,
        ent_coef=hp.ent_coef,
        vf_coef=hp.vf_coef,
        max_grad_norm=hp.max_grad_norm,
        target_kl=hp.target_kl,
        policy_kwargs=dict(
            net_arch=dict(pi=list(hp.net_arch.actor), vf=list(hp.net_arch.critic)),
            activation_fn=act,
            log_std_init=hp.log_std_init,
        ),
        **common,
    )


def _check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "recipe asks for tensorboard: true, but the tensorboard package is missing: "
            "install the extra (pip install 'accelrl[tensorboard]', i.e. pip install "
            f"tensorboard), or set tensorboard: false ({err})"
        ) from err


#: Live files of a run that a new run never writes into (``accelrl train --force`` removes
#: them first).
LIVE_FILES: tuple[str, ...] = (PROGRESS_FILE, "episodes.csv")


def evaluation_trials(recipe: Recipe) -> list[Trial]:
    """Check what a recipe needs beyond its own fields (its environment is registered, the
    TensorBoard package when asked for, its evaluation trial file and selection) and return
    the evaluation trials.

    :raises RecipeError: Naming the field, the value and the problem.
    :raises RuntimeError: When ``tensorboard: true`` and the package is missing.
    """
    try:
        task = resolve_task(recipe.env.id)
    except ValueError as err:
        raise RecipeError(f"env.id = {recipe.env.id!r}: {err}") from None
    if recipe.tensorboard:
        _check_tensorboard()
    ev = recipe.evaluation
    if ev.trial_file is None and task.id != ARES_EA_ID:  # a task without a published set
        all_trials = sample_trials(recipe.env.id, SAMPLED_TRIALS, ev.seed)
    else:
        try:
            all_trials = load_trials(ev.trial_file)
        except (OSError, ValueError) as err:
            raise RecipeError(f"evaluation.trial_file = {str(ev.trial_file)!r}: {err}") from None
    return [all_trials[i] for i in ev.select(len(all_trials))]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def train(
    recipe: Recipe | str | Path,
    out_dir: str | Path,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train the recipe's agent, evaluate it periodically and export its policy.

    Seeds Python, numpy and torch, the weights, the exploration and every environment from
    ``recipe.seed``; sets ``torch.set_num_threads(recipe.torch_threads)``.

    :param recipe: A :class:`Recipe` or the path of its YAML.
    :param out_dir: Run directory (created; the files of the end are overwritten, but a
        directory holding another run's live files, :data:`LIVE_FILES`, is refused: ``accelrl
        train --force`` removes them first).
    :param progress: Show a progress bar on stderr.
    :param time_limit_s: Stop early after this wall time [s] (recorded in the result).
    :return: Paths, timings and evaluation summaries (also in ``train_summary.json``).
    :raises RecipeError: For an invalid recipe, environment or evaluation trial selection,
        before anything is written.
    :raises FileExistsError: When ``out_dir`` holds a live file of another run.
    """
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.utils import set_random_seed

    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    trials = evaluation_trials(recipe)  # everything is checked before anything is written
    out = Path(out_dir)
    taken = [name for name in LIVE_FILES if (out / name).exists()]
    if taken:
        raise FileExistsError(
            f"{out} holds {', '.join(taken)} of another run; choose a new directory "
            "(accelrl train --force replaces that run)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    torch.set_num_threads(recipe.torch_threads)
    set_random_seed(recipe.seed)

    ev = recipe.evaluation
    evaluator = functools.partial(
        evaluate_policy, trials=trials, steps=ev.steps, seed=ev.seed, backend=recipe.env.backend,
        env_id=recipe.env.id,
    )  # fmt: skip

    env = make_training_env(recipe)
    task = resolve_task(recipe.env.id)
    names = [a.name for a in task.spec.actuators]
    # The bounds SB3VecEnv rescales [-1, 1] to (the float32 action space, as float64).
    space = env.unwrapped.venv.single_action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)

    def export(model: Any, provenance: dict[str, Any] | None = None) -> MLPPolicy:
        return to_mlp_policy(model, env, names, low, high, task.id, provenance)

    tb_dir = str(out / "logs") if recipe.tensorboard else None
    model = _model(recipe, env, tb_dir)
    model.set_logger(configure(str(out / "logs"), ["csv"] + (["tensorboard"] if tb_dir else [])))

    log = ProgressLog(
        out, "sb3", algorithm=recipe.algorithm, env_id=recipe.env.id, seed=recipe.seed,
        total_timesteps=recipe.total_timesteps, num_envs=recipe.num_envs,
        evaluation_every=ev.every, evaluation_trials=len(trials), evaluation_steps=ev.steps,
        tensorboard=recipe.tensorboard,
    )  # fmt: skip
    episodes = CsvWriter(out / "episodes.csv", EPISODE_COLUMNS)
    try:
        return _learn(recipe, out, env, model, log, episodes, evaluator, export, progress,
                      time_limit_s)  # fmt: skip
    except BaseException as err:
        if not log.closed:
            if isinstance(err, KeyboardInterrupt):
                log.end("interrupted", timesteps=int(model.num_timesteps))
            else:
                log.end("failed", error=f"{type(err).__name__}: {err}",
                        timesteps=int(model.num_timesteps))  # fmt: skip
        raise
    finally:
        episodes.close()
        log.close()


def _learn(
    recipe: Recipe,
    out: Path,
    env: Any,
    model: Any,
    log: ProgressLog,
    episodes: CsvWriter,
    evaluator: Any,
    export: Any,
    progress: bool,
    time_limit_s: float | None,
) -> TrainResult:
    """Learn, evaluate, export and write the run's files (the body of :func:`train`)."""
    ev = recipe.evaluation
    monitor = TrainingMonitor(
        evaluator, export, ev.every, recipe.total_timesteps, progress, time_limit_s,
        log=log, episodes_file=episodes,
    )  # fmt: skip
    callbacks: list[BaseCallback] = [monitor]
    if recipe.checkpoint_every > 0:
        callbacks.append(
            CheckpointCallback(
                save_freq=max(recipe.checkpoint_every // recipe.num_envs, 1),
                save_path=str(out / "checkpoints"),
                name_prefix=recipe.algorithm,
                save_vecnormalize=True,
            )
        )
    start = time.perf_counter()
    try:
        model.learn(recipe.total_timesteps, callback=CallbackList(callbacks))
        train_wall = time.perf_counter() - start
        # Always evaluate the final weights: SB3 updates after the last step's callback.
        if monitor.evaluations and monitor.evaluations[-1]["timesteps"] == model.num_timesteps:
            monitor.evaluations.pop()
        monitor.run_evaluation()
    finally:
        monitor.close()
    final_eval = monitor.evaluations[-1]
    timesteps = int(model.num_timesteps)
    learn_s = max(train_wall - monitor.eval_seconds, 1e-9)

    model_path = out / "model.zip"
    model.save(model_path)
    vecnorm_path = out / "vecnormalize.pkl"
    env.save(str(vecnorm_path))
    provenance = {
        "trainer": "accelrl.agents.training.sb3 (Stable-Baselines3)",
        "algorithm": recipe.algorithm,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "total_timesteps": timesteps,
        "train_wall_s": round(train_wall, 3),
        "eval_wall_s": round(monitor.eval_seconds, 3),
        "stopped_by_time_limit": monitor.stopped_by_time_limit,
        "torch_threads": recipe.torch_threads,
        "machine": platform.machine(),
        "versions": versions(),
        "final_eval": final_eval,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    policy_dir = export(model, json.loads(json.dumps(provenance, default=_json_default))).save(
        out / "policy"
    )
    (out / "evaluations.json").write_text(
        json.dumps(monitor.evaluations, indent=2, default=_json_default)
    )
    plot_path = plot_learning_curve(
        monitor.episodes,
        monitor.evaluations,
        out / "learning_curve.png",
        f"{recipe.algorithm.upper()} on {recipe.env.id} (seed {recipe.seed})",
    )
    env.close()
    result = TrainResult(
        out_dir=out,
        policy_dir=policy_dir,
        model_path=model_path,
        vecnormalize_path=vecnorm_path,
        plot_path=plot_path,
        algorithm=recipe.algorithm,
        seed=recipe.seed,
        timesteps=timesteps,
        train_wall_s=train_wall,
        eval_wall_s=monitor.eval_seconds,
        timesteps_per_s=timesteps / learn_s,
        stopped_by_time_limit=monitor.stopped_by_time_limit,
        final_eval=final_eval,
        evaluations=monitor.evaluations,
    )
    (out / "train_summary.json").write_text(
        json.dumps(result.to_json(), indent=2, default=_json_default)
    )
    log.end(
        "completed", timesteps=timesteps, train_wall_s=train_wall,
        eval_wall_s=monitor.eval_seconds, stopped_by_time_limit=monitor.stopped_by_time_limit,
        median_best_mae_um=final_eval.get("median_best_mae_um"),
        median_final_mae_um=final_eval.get("median_final_mae_um"),
    )  # fmt: skip
    return result
