"""Train a tuning agent with Stable-Baselines3 from a recipe (``accelrl train``).

The training environment is the native batched environment of the recipe's id
(:func:`accelrl.envs.make_vec`: one array operation steps all ``num_envs``), adapted to SB3 by
:class:`~accelrl.envs.sb3.SB3VecEnv` with actions normalised to ``[-1, 1]``, its ``Dict``
observation flattened to ``[beam (4), magnets (K), target (4)]`` (:class:`FlattenObservation`),
episode statistics recorded by ``VecMonitor`` and observations/rewards normalised by
``VecNormalize``. PPO additionally acts in a ``tanh``-squashed latent space
(:class:`TanhLatentActions`) so that its deterministic policy is exactly exportable.

During training, the current deterministic policy is exported to the portable form
(:func:`accelrl.agents.sb3_export.to_mlp_policy`) and evaluated every
``recipe.evaluation.every`` timesteps on held-out trials (:class:`TrialEvaluator`). A run
directory holds::

    policy/              the exported MLPPolicy (policy.pt, policy.json with provenance)
    model.zip            the SB3 model
    vecnormalize.pkl     the VecNormalize statistics
    recipe.yaml          the resolved recipe (overrides applied)
    evaluations.json     evaluation summaries vs timesteps
    episodes.csv         training episodes: timesteps, return, length
    learning_curve.png   episode return and evaluation median MAE vs timesteps
    train_summary.json   the TrainResult
    logs/                SB3 progress.csv (and TensorBoard events when enabled)
    checkpoints/         periodic model + VecNormalize snapshots (when enabled)

>>> from accelrl.agents.training import train
>>> result = train("agents/td3_icml.yaml", "runs/td3_icml")  # doctest: +SKIP
>>> result.final_eval["median_best_mae_um"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.vec_env import (
    VecEnv,
    VecEnvWrapper,
    VecMonitor,
    VecNormalize,
)

from accelrl.agents.policy import OBS_KEYS, MLPPolicy
from accelrl.agents.recipes import PPOParams, Recipe, SACParams, TD3Params
from accelrl.agents.sb3_export import PPO_LATENT_BOUND, to_mlp_policy
from accelrl.envs import TASKS, load_trials, make_vec
from accelrl.envs.sb3 import SB3VecEnv
from accelrl.envs.trials import Trial
from accelrl.execution import package_versions
from accelrl.progress import progress_bar

_log = logging.getLogger(__name__)

#: Best-so-far MAE below which a trial counts as "on target" [m] (benchmarks/README.md).
TARGET_MAE = 20e-6


# ---------------------------------------------------------------------- env wrappers
class FlattenObservation(VecEnvWrapper):
    """``Dict(beam, magnets, target)`` observations -> one flat float32 ``Box``, in
    :data:`~accelrl.agents.policy.OBS_KEYS` order (also ``terminal_observation``)."""

    def __init__(self, venv: VecEnv) -> None:
        space = venv.observation_space
        if not isinstance(space, spaces.Dict) or list(space.spaces) != list(OBS_KEYS):
            raise ValueError(f"need Dict observations with keys {OBS_KEYS}, got {space}")
        low = np.concatenate([space[k].low for k in OBS_KEYS]).astype(np.float32)
        high = np.concatenate([space[k].high for k in OBS_KEYS]).astype(np.float32)
        super().__init__(venv, observation_space=spaces.Box(low, high, dtype=np.float32))

    @staticmethod
    def flatten(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([obs[k] for k in OBS_KEYS], axis=-1).astype(np.float32)

    def reset(self) -> np.ndarray:
        return self.flatten(self.venv.reset())

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        obs, reward, done, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self.flatten(info["terminal_observation"])
        return self.flatten(obs), reward, done, infos


class TanhLatentActions(VecEnvWrapper):
    """Presents the latent box ``[-B, B]^K`` (``B`` = :data:`PPO_LATENT_BOUND`) and forwards
    ``tanh(u)`` to the wrapped ``[-1, 1]`` action space.

    PPO's Gaussian then acts in an unbounded (practically) latent space; its deterministic
    action ``tanh(mean)`` is what the portable policy computes. The squashing is part of the
    environment, so PPO's likelihood ratios (of the latent actions) stay exact.
    """

    def __init__(self, venv: VecEnv) -> None:
        space = venv.action_space
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            raise ValueError(f"need a [-1, 1] action space to squash into, got {space}")
        latent = spaces.Box(
            -PPO_LATENT_BOUND, PPO_LATENT_BOUND, shape=space.shape, dtype=np.float32
        )
        super().__init__(venv, action_space=latent)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        self.venv.step_async(np.tanh(np.asarray(actions, np.float64)))

    def step_wait(self) -> Any:
        return self.venv.step_wait()


def make_training_env(recipe: Recipe) -> VecNormalize:
    """The recipe's training environment: native batched env -> SB3 adapter (actions in
    ``[-1, 1]``) -> flat observations -> (PPO: tanh latent actions) -> ``VecMonitor`` ->
    ``VecNormalize``. Seeded: environment ``i`` starts from ``recipe.seed + i``."""
    venv = make_vec(recipe.env.id, recipe.num_envs, **recipe.env.kwargs())
    env: VecEnv = FlattenObservation(SB3VecEnv(venv, normalise_actions=True))
    if recipe.algorithm == "ppo":
        env = TanhLatentActions(env)
    env = VecMonitor(env)
    vn = recipe.vecnormalize
    env = VecNormalize(
        env,
        norm_obs=vn.obs,
        norm_reward=vn.reward,
        clip_obs=vn.clip_obs,
        clip_reward=vn.clip_reward,
        gamma=recipe.hyperparameters.gamma,
        epsilon=vn.epsilon,
    )
    env.seed(recipe.seed)
    return env


# ---------------------------------------------------------------------- evaluation
class TrialEvaluator:
    """Runs a delta-action policy on fixed trials in one native vector environment.

    Trial ``t`` runs in an environment reset with ``seed + t.index`` and
    ``options={"trial": t}`` from the standard start settings, with termination disabled,
    for ``steps`` steps (the protocol of ``accelrl rollout``). The MAE is that of the true
    beam to the target (``info["mae"]``).

    :param env_id: Registered environment id.
    :param trials: The trials, one environment each.
    :param steps: Steps per trial.
    :param seed: Base seed.
    :param backend: Simulation backend.
    """

    def __init__(
        self,
        env_id: str,
        trials: list[Trial],
        steps: int = 150,
        seed: int = 0,
        backend: str = "fast",
    ) -> None:
        if not trials:
            raise ValueError("need at least one trial")
        self.trials = trials
        self.steps = steps
        self.seed = seed
        self.venv = make_vec(
            env_id,
            len(trials),
            max_episode_steps=steps,
            terminate_on_target=False,
            action_mode="delta",
            start="standard",
            backend=backend,
        )
        targets = np.stack([t.target for t in trials])
        self.sigma_pos = (targets[:, 1] > 0) & (targets[:, 3] > 0)

    def mae_curves(self, policy: MLPPolicy) -> np.ndarray:
        """MAE of every trial after every step ``[steps + 1, N]`` [m] (row 0: the start)."""
        venv = self.venv
        obs, info = venv.reset(
            seed=[self.seed + t.index for t in self.trials], options={"trial": list(self.trials)}
        )
        curves = np.empty((self.steps + 1, len(self.trials)))
        curves[0] = info["mae"]
        for k in range(1, self.steps + 1):
            flat = np.concatenate([obs[key] for key in OBS_KEYS], axis=-1)
            obs, _, _, _, info = venv.step(policy.act(flat))
            curves[k] = info["mae"]
        return curves

    def __call__(self, policy: MLPPolicy) -> dict[str, Any]:
        """Summary: medians over all trials and over the ``sigma_pos`` subset (both target
        sizes > 0) of best MAE, final MAE [um], steps to target and to convergence."""
        start = time.perf_counter()
        curves = self.mae_curves(policy)
        out = summarise(curves)
        out["sigma_pos"] = summarise(curves[:, self.sigma_pos]) if self.sigma_pos.any() else {}
        out.update(n_trials=len(self.trials), steps=self.steps, wall_s=time.perf_counter() - start)
        return out

    def close(self) -> None:
        self.venv.close()


def _median(values: np.ndarray) -> float | None:
    m = float(np.median(values)) if values.size else float("nan")
    return m if np.isfinite(m) else None


def summarise(curves: np.ndarray) -> dict[str, Any]:
    """Metrics of ``benchmarks/README.md`` from MAE curves ``[steps + 1, N]`` [m].

    Best MAE: smallest over the episode (start included). Steps to target: first step at
    which the best-so-far MAE < 20 um (``None`` in the median when most never do). Steps to
    convergence: first step after which the best-so-far MAE changes by less than 20 um.
    """
    best_so_far = np.minimum.accumulate(curves, axis=0)
    best, final = best_so_far[-1], curves[-1]
    reached = best_so_far < TARGET_MAE
    to_target = np.where(reached.any(axis=0), reached.argmax(axis=0), np.inf)
    converged = (best_so_far - best) < TARGET_MAE
    to_convergence = converged.argmax(axis=0).astype(float)
    q25, q75 = np.percentile(best, [25, 75]) if best.size else (np.nan, np.nan)
    return {
        "median_best_mae_um": _median(best * 1e6),
        "median_final_mae_um": _median(final * 1e6),
        "iqr_best_mae_um": [float(q25 * 1e6), float(q75 * 1e6)],
        "median_steps_to_target": _median(to_target),
        "median_steps_to_convergence": _median(to_convergence),
        "fraction_on_target": float(reached[-1].mean()) if best.size else 0.0,
    }


# ---------------------------------------------------------------------- callbacks
class _Linear:
    """Learning rate decayed linearly to 0 (picklable SB3 schedule)."""

    def __init__(self, initial: float) -> None:
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return self.initial * progress_remaining


class TrainingMonitor(BaseCallback):
    """Periodic evaluation, episode records, a rich progress bar and an optional time limit.

    :param evaluate: ``policy -> summary`` (the exported policy of the current model).
    :param export: ``model -> MLPPolicy``.
    :param every: Evaluation period [timesteps] (0: only at the end, by the caller).
    :param total: Timesteps of the run (for the progress bar).
    :param progress: Show a rich progress bar on stderr.
    :param time_limit_s: Stop training after this wall time [s].
    """

    def __init__(
        self,
        evaluate: Any,
        export: Any,
        every: int,
        total: int,
        progress: bool = True,
        time_limit_s: float | None = None,
    ) -> None:
        super().__init__()
        self.evaluate_fn, self.export_fn = evaluate, export
        self.every, self.total = every, total
        self.show_progress, self.time_limit_s = progress, time_limit_s
        self.evaluations: list[dict[str, Any]] = []
        self.episodes: list[tuple[int, float, int]] = []
        self.eval_seconds = 0.0
        self.stopped_by_time_limit = False
        self._next_eval = every if every > 0 else None
        self._progress: Any = None
        self._task: Any = None
        self._last_draw = 0.0
        self._start = 0.0
        self._note = ""

    def run_evaluation(self) -> dict[str, Any]:
        start = time.perf_counter()
        summary = self.evaluate_fn(self.export_fn(self.model))
        summary = {"timesteps": int(self.model.num_timesteps), **summary}
        summary["train_wall_s"] = time.perf_counter() - self._start
        self.eval_seconds += time.perf_counter() - start
        self.evaluations.append(summary)
        if self.logger is not None:
            for key in ("median_best_mae_um", "median_final_mae_um", "median_steps_to_target"):
                if summary[key] is not None:
                    self.logger.record(f"eval/{key}", summary[key])
        best, final = summary["median_best_mae_um"], summary["median_final_mae_um"]
        self._note = f"eval median best {best:.1f} um" if best is not None else ""
        line = (
            f"{summary['timesteps']:>10,d} timesteps  {summary['train_wall_s']:7.0f} s  "
            f"eval: median best MAE {best:.1f} um, final {final:.1f} um, "
            f"steps to target {summary['median_steps_to_target']}"
        )
        _log.info(line)
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
        return summary

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        if self.show_progress:
            self._progress = progress_bar(
                "[bold]training[/bold]",
                middle=["steps {task.fields[rate]}"],
                after=["{task.fields[note]}"],
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, rate="", note="")

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self.episodes.append(
                    (int(self.num_timesteps), float(episode["r"]), int(episode["l"]))
                )
        if self._next_eval is not None and self.num_timesteps >= self._next_eval:
            self.run_evaluation()
            while self._next_eval <= self.num_timesteps:
                self._next_eval += self.every
        now = time.perf_counter()
        if self._progress is not None and now - self._last_draw > 0.25:
            self._last_draw = now
            rate = self.num_timesteps / max(now - self._start, 1e-9)
            self._progress.update(
                self._task, completed=self.num_timesteps, rate=f"{rate:,.0f}/s", note=self._note
            )
        if self.time_limit_s is not None and now - self._start > self.time_limit_s:
            self.stopped_by_time_limit = True
            return False
        return True

    def close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.num_timesteps, note=self._note)
            self._progress.stop()
            self._progress = None


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


def plot_learning_curve(
    episodes: list[tuple[int, float, int]],
    evaluations: list[dict[str, Any]],
    path: Path,
    title: str,
) -> Path:
    """PNG with the training episode return and the evaluation median MAE vs timesteps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if episodes:
        t = np.array([e[0] for e in episodes], dtype=float)
        r = np.array([e[1] for e in episodes], dtype=float)
        ax1.plot(t, r, ".", ms=2, alpha=0.2, color="tab:blue", label="episodes")
        # Mean return in (up to) 60 bins of equal timesteps (parallel envs end together).
        edges = np.linspace(t.min(), t.max() + 1, min(60, len(np.unique(t))) + 1)
        which = np.clip(np.digitize(t, edges) - 1, 0, len(edges) - 2)
        count = np.bincount(which, minlength=len(edges) - 1)
        total = np.bincount(which, weights=r, minlength=len(edges) - 1)
        used = count > 0
        centres = 0.5 * (edges[:-1] + edges[1:])
        ax1.plot(
            centres[used], total[used] / count[used], "-", color="tab:blue", label="binned mean"
        )
        ax1.legend(loc="lower right")
    ax1.set(xlabel="timesteps", ylabel="episode return (raw)", title="training")
    ax1.grid(alpha=0.3)
    if evaluations:
        t = [e["timesteps"] for e in evaluations]
        for key, label, style in (
            ("median_best_mae_um", "median best MAE", "o-"),
            ("median_final_mae_um", "median final MAE", "s--"),
        ):
            y = [e[key] if e[key] is not None else np.nan for e in evaluations]
            ax2.plot(t, y, style, ms=3, label=label)
        ax2.axhline(TARGET_MAE * 1e6, color="gray", lw=0.8, ls=":", label="20 um")
        ax2.set_yscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax2.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax2.yaxis.set_minor_formatter(NullFormatter())
        ax2.legend(loc="upper right")
        n, steps = evaluations[-1]["n_trials"], evaluations[-1]["steps"]
        ax2.set_title(f"evaluation ({n} held-out trials, {steps} steps)")
    ax2.set(xlabel="timesteps", ylabel="MAE [um]")
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


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
            "recipe asks for tensorboard: true, but the tensorboard package is missing "
            "(pip install tensorboard)"
        ) from err


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
    :param out_dir: Run directory (created; existing files are overwritten).
    :param progress: Show a progress bar on stderr.
    :param time_limit_s: Stop early after this wall time [s] (recorded in the result).
    :return: Paths, timings and evaluation summaries (also in ``train_summary.json``).
    :raises RecipeError: For an invalid recipe or evaluation trial selection.
    """
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.utils import set_random_seed

    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    if recipe.env.id not in TASKS:
        raise ValueError(f"unknown environment {recipe.env.id!r}; registered: {sorted(TASKS)}")
    if recipe.tensorboard:
        _check_tensorboard()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    torch.set_num_threads(recipe.torch_threads)
    set_random_seed(recipe.seed)

    ev = recipe.evaluation
    all_trials = load_trials(ev.trial_file)
    trials = [all_trials[i] for i in ev.select(len(all_trials))]
    evaluator = TrialEvaluator(recipe.env.id, trials, ev.steps, ev.seed, recipe.env.backend)

    env = make_training_env(recipe)
    names = [a.name for a in TASKS[recipe.env.id]().actuators]
    # The bounds SB3VecEnv rescales [-1, 1] to (the float32 action space, as float64).
    space = env.unwrapped.venv.single_action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)

    def export(model: Any, provenance: dict[str, Any] | None = None) -> MLPPolicy:
        return to_mlp_policy(model, env, names, low, high, recipe.env.id, provenance)

    tb_dir = str(out / "logs") if recipe.tensorboard else None
    model = _model(recipe, env, tb_dir)
    model.set_logger(configure(str(out / "logs"), ["csv"] + (["tensorboard"] if tb_dir else [])))

    monitor = TrainingMonitor(
        evaluator, export, ev.every, recipe.total_timesteps, progress, time_limit_s
    )
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
        evaluator.close()
    final_eval = monitor.evaluations[-1]
    timesteps = int(model.num_timesteps)
    learn_s = max(train_wall - monitor.eval_seconds, 1e-9)

    model_path = out / "model.zip"
    model.save(model_path)
    vecnorm_path = out / "vecnormalize.pkl"
    env.save(str(vecnorm_path))
    provenance = {
        "trainer": "accelrl.agents.training (Stable-Baselines3)",
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
    with (out / "episodes.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timesteps", "return", "length"])
        writer.writerows(monitor.episodes)
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
    return result
