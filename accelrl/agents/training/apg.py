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
from accelrl.config import load_yaml_mapping
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.spec import TaskSpec
from accelrl.names import INCOMING
from accelrl.physics.compiled import CompiledBeamline
from accelrl.runfiles import ProgressLog


@dataclass
class APGResult:
    """The trained policy, its loss curve and the wall time [s]."""

    policy: MLPPolicy
    losses: list[float]
    wall_s: float


class DomainSampler:
    """Draws hidden states, targets and start settings of a task spec as torch tensors."""

    def __init__(self, spec: TaskSpec, misaligned: list[str], generator: torch.Generator) -> None:
        r = spec.randomisation
        self.generator = generator
        self.inc_low = torch.tensor([r.incoming[k].low for k in INCOMING], dtype=torch.float64)
        self.inc_high = torch.tensor([r.incoming[k].high for k in INCOMING], dtype=torch.float64)
        self.mis_half = torch.tensor(
            [r.misalignments.get(n, 0.0) for n in misaligned for _ in ("x", "y")],
            dtype=torch.float64,
        )
        self.target_mu, self.target_sigma = r.target_mu, r.target_sigma
        self.low = torch.tensor([a.low for a in spec.actuators], dtype=torch.float64)
        self.high = torch.tensor([a.high for a in spec.actuators], dtype=torch.float64)
        self.start = torch.tensor(spec.start, dtype=torch.float64)

    def _u(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, dtype=torch.float64, generator=self.generator)

    def sample(
        self, n: int, random_start_fraction: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(incoming [n,11], misalignments [n,M], target [n,4], start [n,K])``."""
        incoming = self.inc_low + self._u(n, len(INCOMING)) * (self.inc_high - self.inc_low)
        mis = (2 * self._u(n, len(self.mis_half)) - 1) * self.mis_half
        mu = (2 * self._u(n, 2) - 1) * self.target_mu
        sig = self.target_sigma.low + self._u(n, 2) * (
            self.target_sigma.high - self.target_sigma.low
        )
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
    segment: Any = None,
) -> APGResult:
    """Train a delta-action policy by backpropagation through the compiled beamline.

    :param config: Hyperparameters (default :class:`APGConfig`).
    :param spec: Task (default ARES-EA); any task whose lattice the compiled map represents.
    :param out_dir: If given, the policy is saved there (``policy.pt``, ``policy.json``).
    :param progress: Show a progress bar.
    :param log_dir: Where the live ``progress.jsonl`` goes (:class:`accelrl.runfiles.
        ProgressLog`: the start record, one record per iteration with its loss, learning rate
        and gradient norm, the end), which ``accelrl dashboard`` follows; default
        ``out_dir`` (none without either).
    :param segment: The task's lattice (a ``cheetah.Segment``; default: the spec's).
    """
    config = config or APGConfig()
    spec = spec or ares_ea_spec()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    knobs = [(a.element, a.attribute) for a in spec.actuators]
    misaligned = list(spec.randomisation.misalignments)
    from accelrl.envs.tuning import task_segment

    lattice = task_segment(spec, segment)
    beamline = CompiledBeamline(lattice, knobs, spec.screen.element, misaligned)
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
    )
    policy = MLPPolicy(meta)
    optimiser = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, config.iterations, eta_min=0.05 * config.learning_rate
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
        )  # fmt: skip
        if log_dir is not None
        else contextlib.nullcontext()
    )
    with log, _ended(bar):
        for i in range(config.iterations):
            incoming, mis, target, magnets = sampler.sample(
                config.batch_size, config.random_start_fraction
            )
            loss = incoming.new_zeros(())
            beam = beamline(magnets, incoming, mis)
            for _t in range(config.horizon):
                reading = screen_reading(beam, half_extent)
                obs = torch.cat([reading, magnets, target], dim=1)
                magnets = torch.minimum(torch.maximum(magnets + policy(obs), low), high)
                beam = beamline(magnets, incoming, mis)
                mae = (beam - target).abs().mean(dim=1)
                loss = loss + torch.log(mae + config.eps).mean()
            loss = loss / config.horizon
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
    policy.eval()
    if out_dir is not None:
        policy.save(out_dir)
    return APGResult(policy, losses, wall)


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
        segment=task.segment,
    )
