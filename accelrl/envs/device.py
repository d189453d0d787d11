"""Transverse tuning on a torch device: N environments whose state never leaves the device.

:class:`DeviceTuningVectorEnv` is a ``gymnasium.vector.VectorEnv`` for any transverse-tuning
task (the registered ARES-EA task, a :func:`~accelrl.envs.tuning.make_tuning_env` task or a
task spec of your own) in the ideal world. Its state is float64 torch tensors on one device
(``"cpu"``, ``"cuda"``, ...); ``step`` takes a ``[N, K]`` tensor of actions on that device and
returns observations, rewards, flags and ``info`` as tensors on it. It follows
:class:`~accelrl.envs.vector.TransverseTuningVectorEnv` step for step: the same random
streams (:mod:`accelrl.envs.device_rng` draws the numpy core's numbers bit for bit), the same
dynamics, screen model, rewards and autoreset, so environment ``i`` reset with ``seed=s``
matches a single environment reset with ``seed=s + i`` to floating-point rounding.

Nothing in ``step`` waits for the device: autoreset selects fresh state with ``where`` (on
the CPU it skips that work when no environment is due, which gives the same numbers), and
the only optional host synchronisation is the finiteness check of the actions
(``check_actions=False`` removes it; a NaN action then propagates NaN instead of raising).

Stable-Baselines3 and other numpy code use :class:`NumpyView`: the same environment with
numpy arrays in and out (one device-to-host copy per step)::

    venv = make_vec("accelrl/AresEATransverseTuning-v0", 4096, device="cuda")
    sb3_env = SB3VecEnv(NumpyView(venv))

Not on the device (use ``device=None``, the numpy environments): worlds other than
``ideal``, the Cheetah backends, reset options other than ``trial`` and ``magnets``, and
rendering.

Its size (~540 lines) is one class: reset, step and autoreset share the batch's state tensors
and random-stream counters on the device; :class:`NumpyView` is a thin wrapper of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cheetah
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from accelrl.envs import device_rng, rng
from accelrl.envs.batched import vector_seeds
from accelrl.envs.device_rewards import DeviceReward
from accelrl.envs.rewards import RewardInputs
from accelrl.envs.spec import TaskSpec
from accelrl.envs.trials import Trial
from accelrl.envs.tuning import observation_space, shipped_lattice
from accelrl.envs.world.spec import load_world
from accelrl.physics.beam import INCOMING
from accelrl.physics.compiled import CompiledBeamline
from accelrl.physics.devices import DeviceError, DeviceLike, resolve_device

_MU = [INCOMING.index(k) for k in ("mu_x", "mu_px", "mu_y", "mu_py")]
#: State fields drawn at reset (and replaced for the environments being reset).
_RESET_FIELDS = (
    "incoming",
    "misalignments",
    "target",
    "magnets",
    "gain",
    "fail_step",
    "fail_index",
)


class DeviceTuningVectorEnv(VectorEnv):
    """``num_envs`` transverse-tuning environments with their state on ``device``.

    :param spec: Task spec (or path to its YAML).
    :param num_envs: Number of environments (>= 1).
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
    :param max_episode_steps: Truncation after this many steps (default: the spec's).
    :param autoreset_mode: ``"next_step"`` (Gymnasium's default) or ``"same_step"`` (the
        last observation in ``info["final_obs"]``; one more beamline evaluation per step).
    :param segment: The lattice; default the spec's shipped lattice.
    :param action_mode: ``"delta"`` or ``"direct"``.
    :param reward: Reward config; default the spec's.
    :param start: ``"standard"`` or ``"random"`` start settings.
    :param terminate_on_target: Default the spec's ``termination.enabled``.
    :param world: Only the ideal world (``None``, ``"ideal"``) runs on a device.
    :param check_actions: Raise on NaN/inf actions (one host synchronisation per step).
    :param compile_backend: Run the beamline through ``torch.compile(fullgraph=True)`` with
        this backend (``"inductor"``: fused kernels, so small batches on a GPU are not
        bound by kernel launches; the first step then compiles, for minutes on a CPU);
        ``None`` (default): eager.
    :raises DeviceError: For a device this machine cannot use.
    :raises ValueError: For a world, action mode or start the device environment lacks.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        spec: TaskSpec | str,
        num_envs: int,
        device: DeviceLike = "cpu",
        max_episode_steps: int | None = None,
        autoreset_mode: str = "next_step",
        segment: cheetah.Segment | None = None,
        action_mode: str = "delta",
        reward: str | list[dict] | None = None,
        start: str = "standard",
        terminate_on_target: bool | None = None,
        world: Any = None,
        check_actions: bool = True,
        compile_backend: str | None = None,
    ) -> None:
        if not isinstance(spec, TaskSpec):
            spec = TaskSpec.from_yaml(spec)
        self.device = resolve_device(device)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        modes = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}
        if autoreset_mode not in modes:
            raise ValueError(
                f"autoreset_mode must be one of {sorted(modes)}, got {autoreset_mode!r}"
            )
        if action_mode not in ("delta", "direct"):
            raise ValueError(f"action_mode must be 'delta' or 'direct', got {action_mode!r}")
        if start not in ("standard", "random"):
            raise ValueError(f"start must be 'standard' or 'random', got {start!r}")
        world_spec = spec.world if world is None else load_world(world)
        if world_spec is not None and not world_spec.is_ideal:
            raise ValueError(
                f"the device environment runs the ideal world only, not {world_spec.name!r}; "
                "for this world use make_vec(..., device=None) (numpy, on the CPU)"
            )
        self.metadata = {**self.metadata, "autoreset_mode": modes[autoreset_mode]}
        self.task = spec
        self.num_envs = B = num_envs
        self.max_episode_steps = max_episode_steps or spec.max_episode_steps
        self.action_mode = action_mode
        self.start = start
        self.check_actions = check_actions
        self.terminate = (
            spec.termination.enabled if terminate_on_target is None else terminate_on_target
        )
        self.reward = DeviceReward(reward if reward is not None else spec.reward)
        if segment is None:
            if spec.lattice is None:
                raise ValueError(f"task {spec.id} names no shipped lattice; pass segment=")
            segment = shipped_lattice(spec.lattice)
        knobs = [(a.element, a.attribute) for a in spec.actuators]
        misalign = list(spec.randomisation.misalignments)
        dev = self.device
        self.beamline = CompiledBeamline(segment, knobs, spec.screen.element, misalign, device=dev)
        self.misalignment_names = self.beamline.misalignment_names
        self._map = self.beamline
        if compile_backend is not None:
            self._map = torch.compile(
                self.beamline, fullgraph=True, dynamic=False, backend=compile_backend
            )

        def t(values: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values), dtype=dtype, device=dev)

        K, M = len(spec.actuators), len(self.misalignment_names)
        self.K, self.M = K, M
        low = np.array([a.low for a in spec.actuators])
        high = np.array([a.high for a in spec.actuators])
        step = spec.delta_fraction * np.maximum(np.abs(low), np.abs(high))
        a_low, a_high = (-step, step) if action_mode == "delta" else (low, high)
        self.low, self.high, self.range = t(low), t(high), t(high - low)
        self.action_low, self.action_high = t(a_low), t(a_high)
        self.standard_start = t(spec.start)
        r = spec.randomisation
        self.randomisation = r
        inc_low = np.array([r.incoming[k].low for k in INCOMING])
        self._inc_low = t(inc_low)
        self._inc_span = t(np.array([r.incoming[k].high for k in INCOMING]) - inc_low)
        self._mis_half = t(
            [r.misalignments.get(n.rsplit(".", 1)[0], 0.0) for n in self.misalignment_names]
        )
        names = [a.name for a in spec.actuators]
        self._fail_actuator = names.index(r.failure.actuator) if r.failure.actuator else -1
        hx, hy = spec.screen.half_extent
        self._half = t([hx, hy])
        self._off_low, self._off_high = t([-hx, hx, -hy, hy]), t([hx, hx, hy, hy])
        px = np.array(spec.screen.pixel_size) * spec.screen.binning
        self._pixel = t([px[0], px[0], px[1], px[1]])
        self._thresholds = t(spec.termination.thresholds)
        self._drift = t([r.drift.mu, r.drift.mu_p, r.drift.mu, r.drift.mu_p])
        self._n_reset = 11 + M + 4 + 2 * K + 3

        self.single_observation_space = observation_space(spec)
        self.single_action_space = spaces.Box(
            a_low.astype(np.float32), a_high.astype(np.float32), dtype=np.float32
        )
        self.observation_space = batch_space(self.single_observation_space, B)
        self.action_space = batch_space(self.single_action_space, B)

        i64 = {"dtype": torch.int64, "device": dev}
        self.keys = t([rng.key_from_seed(None) for _ in range(B)], torch.int64)
        self.counters = torch.zeros(B, **i64)
        self.state: dict[str, torch.Tensor] = {}
        self._needs_reset = torch.zeros(B, dtype=torch.bool, device=dev)
        self._mask = torch.ones(B, dtype=torch.bool, device=dev)
        self.reset()

    # ------------------------------------------------------------------ random state
    def _draw_reset(self, counters: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fresh hidden state, target and settings of every environment, drawn at
        ``counters`` (the numpy core's draw layout)."""
        K, M, r = self.K, self.M, self.randomisation
        u = device_rng.uniform(self.keys, counters, self._n_reset)
        o = 0
        incoming = self._inc_low + u[:, o : o + 11] * self._inc_span
        o += 11
        mis = (2.0 * u[:, o : o + M] - 1.0) * self._mis_half
        o += M
        mu_t = (2.0 * u[:, o : o + 2] - 1.0) * r.target_mu
        sig_t = r.target_sigma.low + u[:, o + 2 : o + 4] * (
            r.target_sigma.high - r.target_sigma.low
        )
        target = torch.stack([mu_t[:, 0], sig_t[:, 0], mu_t[:, 1], sig_t[:, 1]], dim=1)
        o += 4
        random_start = self.low + u[:, o : o + K] * self.range
        o += K
        gain = (2.0 * u[:, o : o + K] - 1.0) * r.gain_error
        o += K
        lo, hi = r.failure.step
        fails = u[:, o] < r.failure.probability
        step = lo + torch.floor(u[:, o + 1] * (hi - lo + 1)).to(torch.int64)
        fail_step = torch.where(fails, step, -1)
        fail_index = torch.floor(u[:, o + 2] * K).to(torch.int64)
        if self._fail_actuator >= 0:
            fail_index = torch.full_like(fail_index, self._fail_actuator)
        magnets = random_start if self.start == "random" else self.standard_start.expand_as(gain)
        return {
            "incoming": incoming,
            "misalignments": mis,
            "target": target,
            "magnets": magnets,
            "gain": gain,
            "fail_step": fail_step,
            "fail_index": fail_index,
        }

    def _measure(self, s: dict[str, torch.Tensor], counters: torch.Tensor) -> torch.Tensor:
        """Beam, reading and on-screen flag of state ``s`` into ``s``; the counters after
        the reading noise (drawn at ``counters``)."""
        applied = s["magnets"]
        if self.randomisation.gain_error > 0:
            applied = applied * (1.0 + s["gain"])
        beam = self._map(applied, s["incoming"], s["misalignments"])
        reading = beam
        screen = self.task.screen
        if screen.reading_noise > 0:
            noise = device_rng.normal(self.keys, counters, 4)
            counters = counters + 1
            reading = reading + screen.reading_noise * noise
            reading = torch.stack(
                [reading[:, 0], reading[:, 1].abs(), reading[:, 2], reading[:, 3].abs()], dim=1
            )
        if screen.quantise:
            reading = torch.round(reading / self._pixel) * self._pixel
        on = (beam[:, 0::2].abs() < self._half).all(dim=1)
        edge = torch.minimum(torch.maximum(beam, self._off_low), self._off_high)
        s["beam"] = beam
        s["reading"] = torch.where(on[:, None], reading, edge)
        s["on_screen"] = on
        return counters

    @staticmethod
    def _select(
        mask: torch.Tensor, new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = dict(old)
        for key, value in new.items():
            m = mask if value.ndim == 1 else mask[:, None]
            out[key] = torch.where(m, value, old[key])
        return out

    def _reset_where(self, mask: torch.Tensor) -> None:
        """Reset the environments of ``mask`` (draws at their counters), then read them."""
        if self.device.type == "cpu" and not bool(mask.any()):  # same numbers either way
            return
        fresh = self._draw_reset(self.counters)
        fresh["steps"] = torch.zeros_like(self.state["steps"])
        fresh["hold"] = torch.zeros_like(self.state["hold"])
        s = self._select(mask, fresh, self.state)
        counters = torch.where(mask, self.counters + 1, self.counters)
        measured = dict(s)
        after = self._measure(measured, counters)
        s = self._select(mask, {k: measured[k] for k in ("beam", "reading", "on_screen")}, s)
        s["initial_reading"] = torch.where(mask[:, None], s["reading"], s["initial_reading"])
        self.counters = torch.where(mask, after, counters)
        self.state = s

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Reset all environments; ``seed`` int gives environment ``i`` the seed ``seed + i``.

        ``options``: ``"trial"`` (a :class:`~accelrl.envs.trials.Trial` or one per
        environment) and ``"magnets"`` (``K`` settings, or ``"trial"`` for the trials'
        stored ones); the random draws are made regardless, as in the numpy environment.
        """
        seeds = vector_seeds(seed, self.num_envs)
        if seeds is not None:
            keys = [rng.key_from_seed(s) for s in seeds]
            self.keys = torch.tensor(np.array(keys, dtype=np.int64), device=self.device)
            self.counters = torch.zeros_like(self.counters)
        B = self.num_envs
        s = self._draw_reset(self.counters)
        s["steps"] = torch.zeros(B, dtype=torch.int64, device=self.device)
        s["hold"] = torch.zeros(B, dtype=torch.int64, device=self.device)
        if options:
            self._apply_options(s, options)
        self.counters = self._measure(s, self.counters + 1)
        s["initial_reading"] = s["reading"]
        self.state = s
        self._needs_reset = torch.zeros_like(self._needs_reset)
        return self._observation(), self._info()

    def _apply_options(self, s: dict[str, torch.Tensor], options: dict[str, Any]) -> None:
        unknown = set(options) - {"trial", "magnets"}
        if unknown:
            raise ValueError(
                f"reset options {sorted(unknown)} are not supported on a device; it takes "
                "'trial' and 'magnets' (the numpy environment, device=None, takes all)"
            )
        B, dev = self.num_envs, self.device
        trial = options.get("trial")
        trials: list[Trial] | None = None
        if trial is not None:
            trials = list(trial) if isinstance(trial, (list, tuple)) else [trial] * B
            if len(trials) != B:
                raise ValueError(f"reset option 'trial' holds {len(trials)} trials for {B} envs")

            def stack(values: list[np.ndarray]) -> torch.Tensor:
                return torch.as_tensor(np.stack(values), dtype=torch.float64, device=dev)

            s["incoming"] = stack([t.incoming for t in trials])
            s["misalignments"] = stack(
                [t.misalignment_vector(self.misalignment_names) for t in trials]
            )
            s["target"] = stack([t.target for t in trials])
        if "magnets" in options:
            value = options["magnets"]
            if isinstance(value, str):
                if value != "trial" or trials is None or not all(t.initial for t in trials):
                    raise ValueError("magnets='trial' needs trials with initial settings")
                names = [a.name for a in self.task.actuators]
                value = np.array([[t.initial[n] for n in names] for t in trials])
            value = np.broadcast_to(np.asarray(value, dtype=np.float64), (B, self.K))
            low, high = self.low.cpu().numpy(), self.high.cpu().numpy()
            if not np.isfinite(value).all() or (value < low).any() or (value > high).any():
                raise ValueError(f"reset option 'magnets' outside the limits [{low}, {high}]")
            s["magnets"] = torch.as_tensor(value.copy(), device=dev)

    def _validate(self, actions: Any) -> torch.Tensor:
        if not isinstance(actions, torch.Tensor):
            raise TypeError(
                f"actions must be a torch tensor on {self.device} (got {type(actions).__name__}); "
                "numpy code uses accelrl.envs.device.NumpyView(env)"
            )
        if actions.device.type != self.device.type or (
            self.device.index is not None
            and actions.device.index is not None
            and actions.device.index != self.device.index
        ):
            raise DeviceError(
                f"actions are on {actions.device}, the environment on {self.device}: "
                f"move them with .to({str(self.device)!r})"
            )
        if tuple(actions.shape) != (self.num_envs, self.K):
            raise ValueError(
                f"actions must have shape {(self.num_envs, self.K)}, got {tuple(actions.shape)}"
            )
        if actions.dtype.is_complex:
            raise ValueError("actions must be real numbers, got a complex tensor")
        a = actions.to(torch.float64)
        if self.check_actions and not bool(torch.isfinite(a).all()):
            env, knob = (int(v) for v in torch.nonzero(~torch.isfinite(a))[0])
            raise ValueError(
                f"action contains NaN or inf (env {env}, actuator "
                f"{self.task.actuators[knob].name}: {float(a[env, knob])})"
            )
        return torch.minimum(torch.maximum(a, self.action_low), self.action_high)

    def step(
        self, actions: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step all environments with ``actions`` ``[N, K]`` (a tensor on the device)."""
        a = self._validate(actions)
        old = self.state
        c0 = self.counters
        previous_error = old["reading"] - old["target"]
        previous_magnets = old["magnets"]
        if self.action_mode == "delta":
            target = torch.minimum(torch.maximum(previous_magnets + a, self.low), self.high)
        else:
            target = a
        steps = old["steps"] + 1
        r = self.randomisation
        if r.failure.probability > 0:
            stuck = (old["fail_step"] >= 0) & (steps >= old["fail_step"])
            column = torch.nn.functional.one_hot(old["fail_index"], self.K).bool()
            held = (
                previous_magnets
                if r.failure.value is None
                else torch.full_like(target, r.failure.value)
            )
            target = torch.where(stuck[:, None] & column, held, target)
        s = dict(old, magnets=target, steps=steps)
        counters = c0
        if r.drift.mu > 0 or r.drift.mu_p > 0:
            z = device_rng.normal(self.keys, counters, 4)
            counters = counters + 1
            incoming = s["incoming"].clone()
            incoming[:, _MU] += z * self._drift
            s["incoming"] = incoming
        resetting = self._needs_reset
        if self.device.type != "cpu" or bool(resetting.any()):  # same numbers either way
            fresh = self._draw_reset(c0)
            fresh["steps"] = torch.zeros_like(steps)
            fresh["hold"] = torch.zeros_like(steps)
            s = self._select(resetting, fresh, s)
            counters = torch.where(resetting, c0 + 1, counters)
        self.counters = self._measure(s, counters)
        error = s["reading"] - s["target"]
        reward = self.reward(
            RewardInputs(
                error=error,
                previous_error=previous_error,
                initial_reading=old["initial_reading"],
                target=s["target"],
                on_screen=s["on_screen"],
                magnets=target,
                previous_magnets=previous_magnets,
                magnet_range=self.range,
            )
        )
        within = (error.abs() < self._thresholds).all(dim=1)
        hold = (s["hold"] + 1) * within
        s["hold"] = torch.where(resetting, 0, hold)
        s["initial_reading"] = torch.where(resetting[:, None], s["reading"], old["initial_reading"])
        terminated = (hold >= self.task.termination.hold) & self.terminate & ~resetting
        truncated = (s["steps"] >= self.max_episode_steps) & ~resetting
        reward = torch.where(resetting, 0.0, reward)
        self.state = s
        done = terminated | truncated
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
            self._needs_reset = torch.zeros_like(done)
            final_obs, final_info = self._observation(), self._info()
            self._reset_where(done)
            infos = self._info()
            infos.update(final_obs=final_obs, final_info=final_info)
            infos.update(_final_obs=done, _final_info=done)
            return self._observation(), reward, terminated, truncated, infos
        self._needs_reset = done
        return self._observation(), reward, terminated, truncated, self._info()

    def _observation(self) -> dict[str, torch.Tensor]:
        s = self.state
        return {
            "beam": s["reading"].to(torch.float32),
            "magnets": s["magnets"].to(torch.float32),
            "target": s["target"].to(torch.float32),
        }

    def _info(self) -> dict[str, Any]:
        s = self.state
        info: dict[str, Any] = {
            "beam": s["beam"],
            "reading": s["reading"],
            "target": s["target"],
            "magnets": s["magnets"],
            "incoming": s["incoming"],
            "misalignments": s["misalignments"],
            "mae": (s["beam"] - s["target"]).abs().sum(dim=1) * 0.25,
            "on_screen": s["on_screen"],
            "step": s["steps"],
        }
        r = self.randomisation
        if r.gain_error > 0:
            info["gain"] = s["gain"]
        if r.failure.probability > 0:
            info["fail_step"] = s["fail_step"]
            info["fail_index"] = s["fail_index"]
        for key in list(info):
            info["_" + key] = self._mask
        return info


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value


class NumpyView(VectorEnv):
    """A :class:`DeviceTuningVectorEnv` with numpy arrays in and out, e.g. for
    Stable-Baselines3 (``SB3VecEnv(NumpyView(env))``).

    Actions are copied to the device, results back to the host (float32 observations,
    float64 rewards, bool flags, ``info`` as numpy); the environment itself, its spaces and
    its ``metadata`` (autoreset mode) are shared.

    :param env: The device environment.
    """

    def __init__(self, env: DeviceTuningVectorEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.observation_space = env.observation_space
        self.action_space = env.action_space

    @property
    def metadata(self) -> dict[str, Any]:  # type: ignore[override]
        return self.env.metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self.env.metadata = value

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple:
        return _to_numpy(self.env.reset(seed=seed, options=options))

    def step(self, actions: Any) -> tuple:
        a = torch.as_tensor(np.asarray(actions, dtype=np.float64), device=self.env.device)
        obs, reward, terminated, truncated, info = self.env.step(a)
        return (
            _to_numpy(obs),
            _to_numpy(reward),
            _to_numpy(terminated),
            _to_numpy(truncated),
            _to_numpy(info),
        )
