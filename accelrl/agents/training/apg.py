"""Differentiable-simulation policy training (analytic policy gradients).

A policy network is trained by backpropagating the tuning objective through batched K-step
rollouts of the compiled beamline (:mod:`accelrl.physics.compiled`), under the task's
domain randomisation: every rollout draws an incoming beam, misalignments and a target from
the spec, starts from the standard settings, and the loss is the mean over rollouts and
steps of ``log(MAE_t + eps)``. The screen model of the environment (finite screen with its
documented off-screen reading) is part of the rollout, so the policy sees in training what
it sees in the environment. The result is an :class:`~accelrl.agents.policy.MLPPolicy`, the
same portable form as the SB3 policies.

>>> from accelrl.agents.training.apg import APGConfig, train_apg
>>> result = train_apg(APGConfig(iterations=10, batch_size=32, horizon=5))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accelrl.agents.policy import MLPPolicy, PolicyMeta, default_normalisation
from accelrl.agents.training.recipes import (
    APGConfig,
    APGRecipe,
    RecipeError,
    task_file_relative,
)
from accelrl.agents.training.world import TrainingWorld
from accelrl.config import load_yaml_mapping
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.spec import TaskSpec
from accelrl.envs.world.spec import WorldSpec, load_world
from accelrl.names import INCOMING
from accelrl.physics.compiled import CompiledBeamline
from accelrl.physics.devices import resolve_device
from accelrl.runfiles import ProgressLog


@dataclass
class APGResult:
    """The trained policy, its loss curve and the wall time [s]."""

    policy: MLPPolicy
    losses: list[float]
    wall_s: float


class DomainSampler:
    """Draws hidden states, targets and start settings of a task spec as torch tensors, on
    the device of ``generator``."""

    def __init__(self, spec: TaskSpec, misaligned: list[str], generator: torch.Generator) -> None:
        r = spec.randomisation
        self.generator = generator
        f64 = {"dtype": torch.float64, "device": generator.device}
        self.inc_low = torch.tensor([r.incoming[k].low for k in INCOMING], **f64)
        self.inc_high = torch.tensor([r.incoming[k].high for k in INCOMING], **f64)
        self.mis_half = torch.tensor(
            [r.misalignments.get(n, 0.0) for n in misaligned for _ in ("x", "y")], **f64
        )
        self.target_mu, self.target_sigma = r.target_mu, r.target_sigma
        self.low = torch.tensor([a.low for a in spec.actuators], **f64)
        self.high = torch.tensor([a.high for a in spec.actuators], **f64)
        self.start = torch.tensor(spec.start, **f64)

    def _u(self, *shape: int) -> torch.Tensor:
        return torch.rand(
            *shape, dtype=torch.float64, generator=self.generator, device=self.generator.device
        )

    def sample(
        self, n: int, random_start_fraction: float, zero_target_fraction: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(incoming [n,11], misalignments [n,M], target [n,4], start [n,K])``; a fraction
        ``zero_target_fraction`` of the targets has zero sizes."""
        incoming = self.inc_low + self._u(n, len(INCOMING)) * (self.inc_high - self.inc_low)
        mis = (2 * self._u(n, len(self.mis_half)) - 1) * self.mis_half
        mu = (2 * self._u(n, 2) - 1) * self.target_mu
        sig = self.target_sigma.low + self._u(n, 2) * (
            self.target_sigma.high - self.target_sigma.low
        )
        if zero_target_fraction > 0:
            sig = sig * (self._u(n, 1) >= zero_target_fraction)
        target = torch.stack([mu[:, 0], sig[:, 0], mu[:, 1], sig[:, 1]], dim=1)
        start = self.start.expand(n, -1).clone()
        random = self._u(n) < random_start_fraction
        start[random] = self.low + self._u(int(random.sum()), len(self.low)) * (
            self.high - self.low
        )
        return incoming, mis, target, start


def screen_reading(beam: torch.Tensor, half_extent: tuple[float, float]) -> torch.Tensor:
    """The environment's screen reading of ``beam`` ``[B, 4]``: off the screen, the centroid
    clamped to the edge and the size of the screen (see ``accelrl.envs.core``)."""
    hx, hy = half_extent
    low = beam.new_tensor([-hx, hx, -hy, hy])
    high = beam.new_tensor([hx, hx, hy, hy])
    on = (beam[:, 0].abs() < hx) & (beam[:, 2].abs() < hy)
    return torch.where(on[:, None], beam, torch.minimum(torch.maximum(beam, low), high))


@contextlib.contextmanager
def _ended(bar: Any) -> Iterator[None]:
    """Stop the progress display ``bar`` (if any) however the block ends."""
    try:
        yield
    finally:
        if bar is not None:
            bar.stop()


def train_apg(
    config: APGConfig | None = None,
    spec: TaskSpec | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    log_dir: str | Path | None = None,
    world: WorldSpec | str | None = None,
    segment: Any = None,
) -> APGResult:
    """Train a delta-action policy by backpropagation through the compiled beamline.

    With ``config.history > 0`` the policy sees its past observations (see
    :class:`~accelrl.agents.policy.ObservationHistory`); with a ``world`` every rollout draws
    the world's imperfections (:class:`~accelrl.agents.training.world.TrainingWorld`); with
    ``config.hold_penalty > 0`` the loss also charges for moving close to the target. With
    none of these (the defaults) the training is the original one, draw for draw.

    :param config: Hyperparameters (default :class:`APGConfig`).
    :param spec: Task (default ARES-EA); any task whose lattice the compiled map represents.
    :param out_dir: If given, the policy is saved there (``policy.pt``, ``policy.json``).
    :param progress: Show a progress bar.
    :param log_dir: Where the live ``progress.jsonl`` goes (:class:`accelrl.runfiles.
        ProgressLog`: the start record, one record per iteration with its loss, learning rate
        and gradient norm, the end), which ``accelrl dashboard`` follows; default
        ``out_dir`` (none without either).
    :param world: The world to train under (a :class:`~accelrl.envs.world.WorldSpec`, a
        shipped name or a YAML path); default ideal. Training under a world runs on the CPU.
    :raises ValueError: For a device that is not available (naming it and the fix), or a
        world with a device other than the CPU.
    :param segment: The task's lattice (a ``cheetah.Segment``; default: the spec's).
    """
    config = config or APGConfig()
    spec = spec or ares_ea_spec()
    if world is not None and not isinstance(world, WorldSpec):
        world = load_world(world)
    if world is not None:
        world.check(spec)
    device = resolve_device(config.device, "apg.device")
    if world is not None and device.type != "cpu":
        raise ValueError(
            f"apg.device = {config.device!r}: training under a world "
            f"({world.name or world.source}) runs on the CPU only (its imperfection model "
            "keeps CPU tensors); set device: cpu"
        )
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    knobs = [(a.element, a.attribute) for a in spec.actuators]
    misaligned = list(spec.randomisation.misalignments)
    from accelrl.envs.tuning import task_segment

    lattice = task_segment(spec, segment)
    beamline = CompiledBeamline(lattice, knobs, spec.screen.element, misaligned, device=device)
    sampler = DomainSampler(spec, misaligned, generator)
    low, high = sampler.low, sampler.high
    max_delta = spec.delta_fraction * torch.maximum(low.abs(), high.abs())
    mean, std = default_normalisation(low.tolist(), high.tolist())
    meta = PolicyMeta(
        obs_mean=mean,
        obs_std=std,
        action_scale=max_delta.tolist(),
        hidden=list(config.hidden),
        actuator_names=[a.name for a in spec.actuators],
        activation="tanh",
        error_scale=config.error_scale,
        env_id=spec.id,
        history=config.history,
        averaging=config.averaging.model_dump() if config.averaging is not None else None,
        target_size_floor=config.target_size_floor,
    )
    policy = MLPPolicy(meta)
    if config.init_policy is not None:
        initialise_from(policy, config.init_policy)
    policy = policy.to(device)
    optimiser = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, config.iterations, eta_min=0.05 * config.learning_rate
    )
    robust = (
        world is not None
        or config.reading_noise > 0
        or config.history > 0
        or config.hold_penalty > 0
    )
    train_world = (
        TrainingWorld(world, spec, generator, config.ideal_fraction, config.reading_noise)
        if robust
        else None
    )
    half_extent = spec.screen.half_extent
    losses: list[float] = []
    start_time = time.perf_counter()
    bar = None
    if progress:
        from accelrl.progress import progress_bar

        bar = progress_bar(transient=True)
        bar.start()
        task = bar.add_task("APG training", total=config.iterations)
    log_dir = log_dir if log_dir is not None else out_dir
    log = (
        ProgressLog(
            log_dir,
            "apg",
            env_id=spec.id,
            iterations=config.iterations,
            batch_size=config.batch_size,
            horizon=config.horizon,
            config=config.model_dump(mode="json"),
            world=None if world is None else world.name or world.source,
        )  # fmt: skip
        if log_dir is not None
        else contextlib.nullcontext()
    )
    with log, _ended(bar):
        for i in range(config.iterations):
            incoming, mis, target, magnets = sampler.sample(
                config.batch_size, config.random_start_fraction, config.zero_target_fraction
            )
            if train_world is None:
                loss = _rollout(policy, beamline, config, incoming, mis, target, magnets,
                                low, high, half_extent)  # fmt: skip
            else:
                loss = _robust_rollout(policy, beamline, config, train_world, incoming, mis,
                                       target, magnets, low, high, max_delta,
                                       half_extent)  # fmt: skip
            optimiser.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
            rate = schedule.get_last_lr()[0]
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(task, advance=1, description=f"APG loss {losses[-1]:.3f}")
            if isinstance(log, ProgressLog):
                log.iteration(
                    iteration=i, loss=losses[-1], learning_rate=rate, grad_norm=float(norm),
                    wall_s=time.perf_counter() - start_time,
                )  # fmt: skip
        if isinstance(log, ProgressLog):
            log.end("completed", final_loss=losses[-1] if losses else None)
    wall = time.perf_counter() - start_time
    policy.meta.provenance = {
        "method": "apg",
        "config": config.model_dump(mode="json"),
        "train_wall_s": wall,
        "env_id": spec.id,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "final_loss": losses[-1] if losses else None,
    }
    if world is not None:
        policy.meta.provenance["world"] = world.name or world.source
    policy.cpu().eval()
    if out_dir is not None:
        policy.save(out_dir)
    return APGResult(policy, losses, wall)


def initialise_from(policy: MLPPolicy, path: str | Path) -> None:
    """Copy the weights of the policy directory ``path`` into ``policy``.

    The source may have less history than ``policy``: its features are the first ones of
    ``policy``'s (current observation, current error, then the past, newest first), and the
    weights of the extra features start at zero, so ``policy`` acts exactly as the source.

    :raises RecipeError: When the architectures or normalisations differ, naming them.
    """
    from accelrl.resources import resolve

    source = MLPPolicy.load(resolve(path))
    a, b = source.meta, policy.meta
    for name in ("hidden", "activation", "actuator_names", "obs_mean", "obs_std",
                 "action_scale", "error_scale", "obs_clip"):  # fmt: skip
        if getattr(a, name) != getattr(b, name):
            raise RecipeError(
                f"init_policy {path}: {name} is {getattr(a, name)!r}, the recipe's policy "
                f"has {getattr(b, name)!r}"
            )
    if a.history > b.history:
        raise RecipeError(f"init_policy {path}: history {a.history} > the recipe's {b.history}")
    with torch.no_grad():
        src = dict(source.net.named_parameters())
        for name, param in policy.net.named_parameters():
            if name == "0.weight":
                param.zero_()
                param[:, : src[name].shape[1]] = src[name]
            else:
                param.copy_(src[name])


def _rollout(
    policy: MLPPolicy,
    beamline: CompiledBeamline,
    config: APGConfig,
    incoming: torch.Tensor,
    mis: torch.Tensor,
    target: torch.Tensor,
    magnets: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    half_extent: tuple[float, float],
) -> torch.Tensor:
    """Mean ``log(MAE + eps)`` over the rollouts of the ideal world (no history, no hold
    term, no reading noise): the original training objective."""
    loss = incoming.new_zeros(())
    beam = beamline(magnets, incoming, mis)
    for _t in range(config.horizon):
        reading = screen_reading(beam, half_extent)
        obs = torch.cat([reading, magnets, target], dim=1)
        magnets = torch.minimum(torch.maximum(magnets + policy(obs), low), high)
        beam = beamline(magnets, incoming, mis)
        mae = (beam - target).abs().mean(dim=1)
        loss = loss + torch.log(mae + config.eps).mean()
    return loss / config.horizon


def _robust_rollout(
    policy: MLPPolicy,
    beamline: CompiledBeamline,
    config: APGConfig,
    world: TrainingWorld,
    incoming: torch.Tensor,
    mis: torch.Tensor,
    target: torch.Tensor,
    magnets: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    max_delta: torch.Tensor,
    half_extent: tuple[float, float],
) -> torch.Tensor:
    """The loss of one batch of rollouts under the world's randomisation, with the policy's
    observation history and the hold term; the MAE is that of the true beam."""
    world.reset(magnets)
    H = config.history
    past: list[torch.Tensor] = []
    loss = incoming.new_zeros(())
    beam = beamline(world.field(magnets), world.jitter(incoming), mis)
    for _t in range(config.horizon):
        reading = screen_reading(world.reading(beam), half_extent)
        now = torch.cat([reading, magnets], dim=1)
        if not past:
            past = [now] * H
        obs = torch.cat([now, target, *past], dim=1)
        if H:
            past = [now, *past[:-1]]
        action = policy(obs)
        mae_before = (beam - target).abs().mean(dim=1)
        magnets = torch.minimum(torch.maximum(magnets + action, low), high)
        incoming = world.drift(incoming)
        beam = beamline(world.field(magnets), world.jitter(incoming), mis)
        mae = (beam - target).abs().mean(dim=1)
        step = torch.log(mae + config.eps).mean()
        if config.hold_penalty > 0:
            near = torch.exp(-mae_before.detach() / config.hold_scale)
            size = (action.abs() / max_delta).mean(dim=1)
            step = step + config.hold_penalty * (near * size).mean()
        loss = loss + step
    return loss / config.horizon


def config_from_dict(data: dict[str, Any]) -> APGConfig:
    """:class:`APGConfig` from a mapping (the ``apg:`` section of a recipe).

    :raises RecipeError: Naming unknown settings and values outside their ranges.
    """
    return APGRecipe.from_dict({"algorithm": "apg", "apg": data}, source="APG settings").apg


def load_apg_recipe(path: str | Path) -> APGRecipe:
    """Load and validate an ``algorithm: apg`` recipe.

    :raises RecipeError: For a recipe of another algorithm, or naming the file, the field, the
        value and the allowed range.
    """
    data = load_yaml_mapping(path, RecipeError, "recipe")
    if data.get("algorithm") != "apg":
        raise RecipeError(
            f"{path}: not an APG recipe (needs 'algorithm: apg', got {data.get('algorithm')!r})"
        )
    return APGRecipe.from_dict(task_file_relative(data, path), source=str(path))


def train_apg_recipe(
    recipe: APGRecipe | str | Path,
    out_dir: str | Path,
    seed: int | None = None,
    progress: bool = True,
) -> APGResult:
    """Train from an ``algorithm: apg`` recipe (``agents/apg.yaml``) into ``out_dir``.

    The recipe and the seed are validated before anything is written; ``out_dir`` receives
    the resolved ``recipe.yaml``, the live ``progress.jsonl`` and ``policy/``.

    :param recipe: An :class:`APGRecipe` or the path of its YAML.
    :param out_dir: Run directory.
    :param seed: Overrides the recipe's seed.
    :param progress: Show a progress bar.
    :raises RecipeError: For a recipe that is not an APG recipe or has invalid settings.
    """
    import yaml

    if not isinstance(recipe, APGRecipe):
        recipe = load_apg_recipe(recipe)
    if seed is not None:
        recipe = recipe.replace(seed=seed)
    from accelrl.envs import resolve_task

    try:
        task = resolve_task(recipe.env.id)
    except ValueError as err:
        raise RecipeError(f"env.id = {recipe.env.id!r}: {err}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return train_apg(
        recipe.config,
        task.spec,
        out_dir=out_dir / "policy",
        progress=progress,
        log_dir=out_dir,
        world=recipe.world,
        segment=task.segment,
    )
