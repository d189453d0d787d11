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

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accelrl.agents.policy import MLPPolicy, PolicyMeta, default_normalisation
from accelrl.envs.ares_ea import ENV_ID, ares_ea_spec
from accelrl.envs.spec import TaskSpec
from accelrl.names import INCOMING
from accelrl.physics.compiled import CompiledBeamline
from accelrl.physics.lattices import ares_ea_segment


@dataclass
class APGConfig:
    """Hyperparameters of differentiable-simulation training (SI units).

    :param iterations: Gradient steps.
    :param batch_size: Rollouts per gradient step.
    :param horizon: Steps per rollout.
    :param learning_rate: Adam learning rate (cosine-decayed to 5%).
    :param hidden: Hidden layer widths of the policy.
    :param eps: Floor inside ``log(MAE + eps)`` [m]: precision below it is not rewarded.
    :param random_start_fraction: Fraction of rollouts starting from uniformly random settings
        (the rest from the standard start), for robustness.
    :param error_scale: Scale of the beam-error input of the policy [m] (``None``: off).
    :param grad_clip: Gradient-norm clip.
    :param seed: Seed of the initial weights and the domain randomisation.
    """

    iterations: int = 3000
    batch_size: int = 256
    horizon: int = 15
    learning_rate: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    eps: float = 2e-7
    random_start_fraction: float = 0.25
    error_scale: float | None = 1e-4
    grad_clip: float = 1.0
    seed: int = 0


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


def train_apg(
    config: APGConfig | None = None,
    spec: TaskSpec | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> APGResult:
    """Train a delta-action policy by backpropagation through the compiled beamline.

    :param config: Hyperparameters (default :class:`APGConfig`).
    :param spec: Task (default ARES-EA).
    :param out_dir: If given, the policy is saved there (``policy.pt``, ``policy.json``).
    :param progress: Show a progress bar.
    """
    config = config or APGConfig()
    spec = spec or ares_ea_spec()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    knobs = [(a.element, a.attribute) for a in spec.actuators]
    misaligned = list(spec.randomisation.misalignments)
    beamline = CompiledBeamline(ares_ea_segment(), knobs, spec.screen.element, misaligned)
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
    try:
        for _ in range(config.iterations):
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
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(task, advance=1, description=f"APG loss {losses[-1]:.3f}")
    finally:
        if bar is not None:
            bar.stop()
    wall = time.perf_counter() - start_time
    policy.meta.provenance = {
        "method": "apg",
        "config": asdict(config),
        "train_wall_s": wall,
        "env_id": ENV_ID,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "final_loss": losses[-1] if losses else None,
    }
    policy.eval()
    if out_dir is not None:
        policy.save(out_dir)
    return APGResult(policy, losses, wall)


def config_from_dict(data: dict[str, Any]) -> APGConfig:
    """:class:`APGConfig` from a mapping, rejecting unknown keys by name."""
    known = set(APGConfig.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown APG settings {sorted(unknown)}; allowed: {sorted(known)}")
    return APGConfig(**data)


def train_apg_recipe(path: str | Path, out_dir: str | Path, seed: int | None = None) -> APGResult:
    """Train from an ``algorithm: apg`` recipe (``agents/apg.yaml``) into ``out_dir``.

    :raises ValueError: For a recipe that is not an APG recipe or has unknown settings.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or data.get("algorithm") != "apg":
        raise ValueError(f"{path}: not an APG recipe (needs 'algorithm: apg')")
    env_id = data.get("env", {}).get("id", ENV_ID)
    if env_id != ENV_ID:
        raise ValueError(f"{path}: APG training supports {ENV_ID}, got {env_id!r}")
    settings = dict(data.get("apg", {}))
    settings["seed"] = int(seed if seed is not None else data.get("seed", settings.get("seed", 0)))
    config = config_from_dict(settings)
    out_dir = Path(out_dir)
    result = train_apg(config, out_dir=out_dir / "policy")
    (out_dir / "recipe.yaml").write_text(Path(path).read_text())
    return result
