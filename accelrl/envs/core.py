"""The batched transverse-tuning simulation behind the single and the vector environments.

:class:`TuningCore` holds the state of ``B`` environments as numpy arrays and advances them
together: one beamline evaluation per step for all environments. The single environment is
the core with ``B = 1``; the vector environment is the core with ``B = num_envs``. Random
numbers come from per-environment counter-based streams (:mod:`accelrl.envs.rng`), so a
batch draws exactly the random numbers of separately seeded single environments.

A world (:mod:`accelrl.envs.world`) sits between the agent and the beamline: the magnets
turn setpoints into fields, the incoming beam jitters, drifts and changes, a camera and the
control room's image processing turn the beam into the reading. The ideal world takes the
code paths of the environment without a world, untouched (bit for bit).

Its size (~670 lines) is one class: reset, measurement and step, with and without a world, share
the batch's state arrays and random streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from accelrl.envs import rng, validation
from accelrl.envs.rewards import Reward, RewardInputs
from accelrl.envs.spec import TaskSpec
from accelrl.envs.world.spec import WorldSpec, load_world
from accelrl.physics.backends import Beamline
from accelrl.physics.beam import INCOMING
from accelrl.physics.compiled import CompiledBeamline

if TYPE_CHECKING:  # the world models (and scipy) load only when a world needs them
    from accelrl.envs.world.model import WorldModel

ActionMode = Literal["delta", "direct"]
StartMode = Literal["standard", "random"]

# Indices into INCOMING of the centroid moments that drift.
_MU = [INCOMING.index(k) for k in ("mu_x", "mu_px", "mu_y", "mu_py")]


#: The index of "all environments" (compared by identity on the hot path).
ALL = slice(None)


def _put(
    array: np.ndarray, index: np.ndarray | slice, value: Any, fresh: bool = False
) -> np.ndarray:
    """``array`` with ``array[index] = value``, as a new array (state arrays are never
    modified in place, so arrays handed out in ``info`` stay valid, read-only snapshots).

    ``fresh=True`` promises that ``value`` is a new array of the right shape and dtype that
    nobody else holds; with ``index`` :data:`ALL` it is then used as it is (no copy).
    """
    if index is ALL and fresh:
        out = value
    elif index is ALL and getattr(value, "ndim", 0) == array.ndim:
        out = np.array(value, dtype=array.dtype)
    else:
        out = array.copy()
        out[index] = value
    out.flags.writeable = False
    return out


@dataclass
class Hidden:
    """Hidden ("privileged") state of a batch, SI units."""

    incoming: np.ndarray  # [B, 11]
    misalignments: np.ndarray  # [B, M]
    gain: np.ndarray  # [B, K] relative calibration error
    fail_step: np.ndarray  # [B] step from which actuator fail_index is stuck (-1: never)
    fail_index: np.ndarray  # [B]


class TuningCore:
    """State and dynamics of ``num_envs`` transverse-tuning environments.

    :param spec: The task.
    :param beamline: Backend evaluating ``(magnets, incoming, misalignments) -> reading``;
        its knobs must be the spec's actuators, in order.
    :param num_envs: Batch size ``B``.
    :param action_mode: ``"delta"`` (change of each setting, at most ``delta_fraction`` of
        its largest magnitude per step) or ``"direct"`` (absolute settings).
    :param reward: Reward config (see :class:`~accelrl.envs.rewards.Reward`); default the spec's.
    :param start: ``"standard"`` (the spec's start settings) or ``"random"`` (uniform within
        the limits) at reset, unless reset options give magnets.
    :param terminate_on_target: Terminate when the target is held; default the spec's.
    :param world: The world (a :class:`~accelrl.envs.world.WorldSpec`, a shipped name such
        as ``"ares-realistic"``, a YAML path or a mapping); default the spec's ``world``
        (ideal when it names none).
    :param max_episode_steps: Episode length that the world's scenario steps must fit in
        (default: the spec's).
    """

    def __init__(
        self,
        spec: TaskSpec,
        beamline: Beamline,
        num_envs: int = 1,
        action_mode: ActionMode = "delta",
        reward: str | list[dict] | None = None,
        start: StartMode = "standard",
        terminate_on_target: bool | None = None,
        world: WorldSpec | str | Path | Mapping[str, Any] | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        if action_mode not in ("delta", "direct"):
            raise ValueError(f"action_mode must be 'delta' or 'direct', got {action_mode!r}")
        if start not in ("standard", "random"):
            raise ValueError(f"start must be 'standard' or 'random', got {start!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        expected = [(a.element, a.attribute) for a in spec.actuators]
        if list(beamline.knobs) != expected:
            raise ValueError(f"beamline knobs {beamline.knobs} differ from the spec's {expected}")
        self.spec = spec
        self.beamline = beamline
        self.num_envs = B = num_envs
        self.action_mode = action_mode
        self.start = start
        self.reward = Reward(reward if reward is not None else spec.reward)
        self.terminate = (
            spec.termination.enabled if terminate_on_target is None else terminate_on_target
        )

        K = len(spec.actuators)
        self.low = np.array([a.low for a in spec.actuators])
        self.high = np.array([a.high for a in spec.actuators])
        self.standard_start = np.array(spec.start, dtype=np.float64)
        names = [a.name for a in spec.actuators]
        failing = spec.randomisation.failure.actuator
        self._fail_actuator = names.index(failing) if failing is not None else -1
        step = spec.delta_fraction * np.maximum(np.abs(self.low), np.abs(self.high))
        self.action_low, self.action_high = (
            (-step, step) if action_mode == "delta" else (self.low, self.high)
        )
        self.misalignment_names: list[str] = [
            f"{n}.{ax}" for n in beamline.misaligned for ax in ("x", "y")
        ]
        r = spec.randomisation
        self._inc_low = np.array([r.incoming[k].low for k in INCOMING])
        self._inc_span = np.array([r.incoming[k].high for k in INCOMING]) - self._inc_low
        self._mis_half = np.array(
            [r.misalignments.get(n.rsplit(".", 1)[0], 0.0) for n in self.misalignment_names]
        )
        self.half_extent = np.array(spec.screen.half_extent)
        hx, hy = spec.screen.half_extent
        self._off_low = np.array([-hx, hx, -hy, hy])  # off-screen reading = clip(beam, low, high)
        self._off_high = np.array([hx, hx, hy, hy])
        px = np.array(spec.screen.pixel_size) * spec.screen.binning
        self._pixel = np.array([px[0], px[0], px[1], px[1]])
        self._thresholds = np.array(spec.termination.thresholds)
        M = len(self.misalignment_names)
        self._n_reset = 11 + M + 4 + 2 * K + 3
        self._step_noise = spec.screen.reading_noise > 0 or r.drift.mu > 0 or r.drift.mu_p > 0
        self._range = self.high - self.low
        self._threshold_list = [float(v) for v in self._thresholds]
        self._last_error: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # single-environment fast path: the hidden state as lists (with the arrays they are
        # of), the off-screen clip bounds, and the two possible on-screen flags (read-only)
        self._hidden_lists: tuple[Any, ...] = (None, None, [], [])
        self._off_lists = (self._off_low.tolist(), self._off_high.tolist())
        self._one_on_screen = {flag: np.array((flag,)) for flag in (False, True)}
        for flags in self._one_on_screen.values():
            flags.flags.writeable = False
        self._half = (float(self.half_extent[0]), float(self.half_extent[1]))
        # One environment on the compiled map without reading noise: the reading is taken
        # on Python floats (the numbers of the batched path, without its array overhead).
        self._scalar = (
            B == 1
            and isinstance(beamline, CompiledBeamline)
            and not beamline.stochastic
            and spec.screen.reading_noise == 0
        )

        self.keys = np.array([rng.key_from_seed(None) for _ in range(B)], dtype=np.uint64)
        self.counters = np.zeros(B, dtype=np.uint64)
        self.magnets = np.tile(self.standard_start, (B, 1))
        self.target = np.zeros((B, 4))
        self.hidden = Hidden(
            incoming=np.tile(self._inc_low + self._inc_span / 2, (B, 1)),
            misalignments=np.zeros((B, M)),
            gain=np.zeros((B, K)),
            fail_step=np.full(B, -1),
            fail_index=np.zeros(B, dtype=np.int64),
        )
        self.steps = np.zeros(B, dtype=np.int64)
        self.hold = np.zeros(B, dtype=np.int64)
        self.beam = np.zeros((B, 4))
        self.reading = np.zeros((B, 4))
        self.initial_reading = np.zeros((B, 4))
        self.on_screen = np.ones(B, dtype=bool)

        if world is None:
            world = spec.world if spec.world is not None else load_world(None)
        elif not isinstance(world, WorldSpec):
            world = load_world(world)
        world.check(spec, max_episode_steps)
        self.world_spec: WorldSpec = world
        #: The world's runtime; ``None`` in the ideal world.
        self.world: WorldModel | None = None
        if not world.is_ideal:
            from accelrl.envs.world.model import WorldModel

            self.world = WorldModel(world, spec, B, max_episode_steps)
        #: The camera's verdict on the beam being on the screen (the reward's ``on_screen``).
        self.readout_on_screen = self.on_screen
        # The single environment's fast step (see _step_one): nothing random in a step.
        self._plain = (
            self._scalar
            and self.world is None
            and r.failure.probability == 0
            and r.drift.mu == 0
            and r.drift.mu_p == 0
        )

    # ------------------------------------------------------------------ seeding
    def seed(self, index: np.ndarray, seeds: list[int | None]) -> None:
        """Restart the random streams of environments ``index`` from ``seeds``."""
        self.keys[index] = [rng.key_from_seed(s) for s in seeds]
        self.counters[index] = 0

    def _uniform(self, index: np.ndarray, n: int) -> np.ndarray:
        u = rng.uniform(self.keys[index], self.counters[index], n)
        self.counters[index] += np.uint64(1)
        return u

    # ------------------------------------------------------------------ reset
    def reset(self, index: np.ndarray, options: dict[str, Any] | None = None) -> None:
        """Draw new hidden state, target and start settings for environments ``index``.

        ``options`` (applied to every environment in ``index``): ``"trial"`` (a
        :class:`~accelrl.envs.trials.Trial`: incoming beam, misalignments, target; or a list
        of one trial per environment),
        ``"incoming"`` [11], ``"misalignments"`` [M], ``"target"`` [4], ``"magnets"`` [K]
        (SI), or ``"magnets": "trial"`` for the trial's stored initial settings. Values given
        explicitly are validated against the limits; the random draws are made regardless,
        so a stream's future does not depend on the options. For a world whose incoming
        beam changes to another (``IncomingChange`` with ``to: other``): ``"to_trial"`` (a
        trial or one per environment) or ``"to_incoming"`` [11], the beam it changes to
        (default: a draw from the task's incoming-beam distribution); other worlds ignore
        them.
        """
        options = validation.reset_options(options)
        n = len(index)
        trial = options.get("trial")
        trials = None if trial is None else validation.trial_option(trial, n)
        if trial is not None:
            names = [a.name for a in self.spec.actuators]
            initial = validation.wants_trial_settings(options)
            for t in trials if trials is not None else [trial]:
                validation.check_trial_fits(t, self.misalignment_names, names, initial)
        K, M = len(self.low), len(self.misalignment_names)
        u = self._uniform(index, self._n_reset)
        r = self.spec.randomisation
        o = 0
        incoming = self._inc_low + u[:, o : o + 11] * self._inc_span
        o += 11
        mis = (2.0 * u[:, o : o + M] - 1.0) * self._mis_half
        o += M
        mu_t = (2.0 * u[:, o : o + 2] - 1.0) * r.target_mu
        sig_t = r.target_sigma.low + u[:, o + 2 : o + 4] * (
            r.target_sigma.high - r.target_sigma.low
        )
        target = np.stack([mu_t[:, 0], sig_t[:, 0], mu_t[:, 1], sig_t[:, 1]], axis=1)
        o += 4
        random_start = self.low + u[:, o : o + K] * (self.high - self.low)
        o += K
        gain = (2.0 * u[:, o : o + K] - 1.0) * r.gain_error
        o += K
        fails = u[:, o] < r.failure.probability
        lo, hi = r.failure.step
        fail_step = np.where(fails, lo + np.floor(u[:, o + 1] * (hi - lo + 1)).astype(np.int64), -1)
        fail_index = np.floor(u[:, o + 2] * K).astype(np.int64)
        if r.failure.actuator is not None:  # a named actuator fails (the draw is made anyway)
            fail_index = np.full(n, self._fail_actuator, dtype=np.int64)

        if trials is not None:
            trial = None
        if trial is not None:
            incoming = np.broadcast_to(trial.incoming, (n, 11))
            mis = np.broadcast_to(trial.misalignment_vector(self.misalignment_names), (n, M))
            target = np.broadcast_to(trial.target, (n, 4))
        if trials is not None:
            incoming = np.stack([t.incoming for t in trials])
            mis = np.stack([t.misalignment_vector(self.misalignment_names) for t in trials])
            target = np.stack([t.target for t in trials])
        if "incoming" in options:
            value = self._vector(options["incoming"], 11, "incoming")
            validation.check_incoming(value, "reset option 'incoming'")
            incoming = np.broadcast_to(value, (n, 11))
        if "misalignments" in options:
            mis = np.broadcast_to(
                self._vector(options["misalignments"], M, "misalignments"), (n, M)
            )
        if "target" in options:
            value = self._vector(options["target"], 4, "target")
            validation.check_target(value, "reset option 'target'")
            target = np.broadcast_to(value, (n, 4))
        magnets = (
            random_start if self.start == "random" else np.broadcast_to(self.standard_start, (n, K))
        )
        if "magnets" in options:
            value = options["magnets"]
            if isinstance(value, str):
                if value != "trial":
                    raise ValueError(
                        f"reset option 'magnets' must be {K} settings or 'trial', got {value!r}"
                    )
                chosen = trials if trials is not None else [trial] if trial is not None else []
                if not chosen or not all(t.initial for t in chosen):
                    raise ValueError("magnets='trial' needs trials with initial settings")
                value = np.array([[t.initial[a.name] for a in self.spec.actuators] for t in chosen])
            else:
                value = self._vector(value, K, "magnets")
            if np.any(value < self.low) or np.any(value > self.high):
                raise ValueError(
                    f"magnets {value.tolist()} outside the limits "
                    f"[{self.low.tolist()}, {self.high.tolist()}]"
                )
            magnets = np.broadcast_to(value, (n, K))

        w = self.world
        if w is not None:
            to = self._destination(options, n)
            u_world = self._uniform(index, w.num_reset_draws) if w.num_reset_draws else None
            w.reset(
                index,
                u_world if u_world is not None else np.zeros((n, 0)),
                magnets,
                np.asarray(incoming, dtype=np.float64),
                to,
            )
        h = self.hidden
        h.incoming = _put(h.incoming, index, incoming)
        h.misalignments = _put(h.misalignments, index, mis)
        h.gain = _put(h.gain, index, gain)
        h.fail_step = _put(h.fail_step, index, fail_step)
        h.fail_index = _put(h.fail_index, index, fail_index)
        self.target = _put(self.target, index, target)
        self.magnets = _put(self.magnets, index, magnets)
        self.steps = _put(self.steps, index, 0)
        self.hold = _put(self.hold, index, 0)
        self._measure(index)
        self.initial_reading = _put(self.initial_reading, index, self.reading[index])

    def _destination(self, options: dict[str, Any], n: int) -> np.ndarray | None:
        """The ``to_trial`` / ``to_incoming`` reset option as ``[n, 11]`` (or ``None``)."""
        if "to_trial" in options and "to_incoming" in options:
            raise ValueError("give reset option 'to_trial' or 'to_incoming', not both")
        if "to_incoming" in options:
            return np.broadcast_to(self._vector(options["to_incoming"], 11, "to_incoming"), (n, 11))
        to = options.get("to_trial")
        if to is None:
            return None
        if isinstance(to, (list, tuple)):
            if len(to) != n:
                raise ValueError(
                    f"reset option 'to_trial' holds {len(to)} trials for {n} environments"
                )
            return np.stack([t.incoming for t in to])
        return np.broadcast_to(to.incoming, (n, 11))

    @staticmethod
    def _vector(value: Any, n: int, name: str) -> np.ndarray:
        return validation.finite_vector(value, n, f"reset option {name!r}")

    # ------------------------------------------------------------------ dynamics
    def _measure(self, index: np.ndarray | slice) -> None:
        """Evaluate the beamline and the screen reading for environments ``index``."""
        h = self.hidden
        w = self.world
        if w is not None:
            self._measure_world(index, w)
            return
        if self._scalar:
            self._measure_one()
            return
        applied = self.magnets[index]
        if self.spec.randomisation.gain_error > 0:
            applied = applied * (1.0 + h.gain[index])
        seed = None
        if self.beamline.stochastic:
            # Every env's stream advances (as a single env's would); the batch's particle
            # sampling is seeded from the first env's draw.
            seed = int(self._uniform(np.arange(self.num_envs)[index], 1)[0, 0] * 2**62)
        beam = self.beamline.evaluate(applied, h.incoming[index], h.misalignments[index], seed)
        self.beam = _put(self.beam, index, beam, fresh=True)
        reading = beam
        screen = self.spec.screen
        if screen.reading_noise > 0:
            idx = np.arange(self.num_envs)[index]
            noise = rng.normal(self.keys[idx], self.counters[idx], 4)
            self.counters[idx] += np.uint64(1)
            reading = reading + screen.reading_noise * noise
            reading[:, [1, 3]] = np.abs(reading[:, [1, 3]])
        if screen.quantise:
            reading = np.round(reading / self._pixel) * self._pixel
        on = np.logical_and.reduce(np.abs(beam[:, ::2]) < self.half_extent, axis=1)
        if not np.logical_and.reduce(on):
            # Documented off-screen reading: the centroid clamped to the screen edge and the
            # size of the whole screen (what a profile fit of an empty screen reports).
            edge = np.minimum(np.maximum(beam, self._off_low), self._off_high)
            reading = np.where(on[:, None], reading, edge)
        self.reading = _put(self.reading, index, reading, fresh=True)
        self.on_screen = _put(self.on_screen, index, on, fresh=True)
        self.readout_on_screen = self.on_screen

    def _measure_one(self) -> None:
        """:meth:`_measure` of the one environment of the batch, on Python floats (the same
        operations in the same order as the batched path, without its array overhead)."""
        h = self.hidden
        applied = self.magnets[0]
        if self.spec.randomisation.gain_error > 0:
            applied = applied * (1.0 + h.gain[0])
        if self._hidden_lists[0] is not h.incoming or self._hidden_lists[1] is not h.misalignments:
            # state arrays are replaced, never changed: their lists are valid until then
            self._hidden_lists = (
                h.incoming,
                h.misalignments,
                h.incoming[0].tolist(),
                h.misalignments[0].tolist(),
            )
        out = self.beamline.scalar(applied.tolist(), self._hidden_lists[2], self._hidden_lists[3])
        beam = np.array((out,))
        beam.flags.writeable = False
        hx, hy = self._half
        on = abs(out[0]) < hx and abs(out[2]) < hy
        if not on:  # clip(beam, _off_low, _off_high), on floats
            reading = np.array(
                ([min(max(v, lo), hi) for v, lo, hi in zip(out, *self._off_lists, strict=True)],)
            )
            reading.flags.writeable = False
        elif self.spec.screen.quantise:
            reading = np.round(beam / self._pixel) * self._pixel
            reading.flags.writeable = False
        else:
            reading = beam
        self.beam, self.reading = beam, reading
        self.on_screen = self.readout_on_screen = self._one_on_screen[on]

    def _measure_world(self, index: np.ndarray | slice, w: WorldModel) -> None:
        """:meth:`_measure` in a world: fields from the magnets, a jittered incoming beam,
        the camera's readout."""
        h = self.hidden
        applied = w.magnets.field[index] if w.magnets is not None else self.magnets[index]
        if self.spec.randomisation.gain_error > 0:
            applied = applied * (1.0 + h.gain[index])
        idx = np.arange(self.num_envs)[index]
        seed = None
        if self.beamline.stochastic:
            seed = int(self._uniform(idx, 1)[0, 0] * 2**62)
        incoming = h.incoming[index]
        u = self._uniform(idx, w.num_reading_draws) if w.num_reading_draws else None
        shot, z = w.reading_inputs(incoming, u)
        if w.beam is not None:
            w.jitter = _put(w.jitter, index, shot - incoming)
        beam = self.beamline.evaluate(applied, shot, h.misalignments[index], seed)
        self.beam = _put(self.beam, index, beam, fresh=True)
        on = np.logical_and.reduce(np.abs(beam[:, ::2]) < self.half_extent, axis=1)
        if w.camera is not None:
            reading, readout_on = w.camera.read(beam, z)
        else:
            reading, readout_on = self._screen_reading(idx, beam, on), on
        self.reading = _put(self.reading, index, reading, fresh=True)
        self.on_screen = _put(self.on_screen, index, on, fresh=True)
        self.readout_on_screen = _put(self.readout_on_screen, index, readout_on, fresh=True)

    def _screen_reading(self, idx: np.ndarray, beam: np.ndarray, on: np.ndarray) -> np.ndarray:
        """The task spec's screen reading model (no camera): noise, quantisation, clamp."""
        reading = beam
        screen = self.spec.screen
        if screen.reading_noise > 0:
            noise = rng.normal(self.keys[idx], self.counters[idx], 4)
            self.counters[idx] += np.uint64(1)
            reading = reading + screen.reading_noise * noise
            reading[:, [1, 3]] = np.abs(reading[:, [1, 3]])
        if screen.quantise:
            reading = np.round(reading / self._pixel) * self._pixel
        if not np.logical_and.reduce(on):
            edge = np.minimum(np.maximum(beam, self._off_low), self._off_high)
            reading = np.where(on[:, None], reading, edge)
        return reading

    def validate_actions(self, actions: Any) -> np.ndarray:
        """Check type, shape and finiteness, then clip to the action bounds (documented
        behaviour).

        :raises ValueError: For complex or non-numeric actions, a wrong shape or NaN/inf
            entries, naming the problem.
        """
        a = validation.real_array(actions, "action")
        K = len(self.low)
        if a.shape != (self.num_envs, K):
            raise ValueError(f"actions must have shape {(self.num_envs, K)}, got {a.shape}")
        # the sum is finite exactly when every entry is (or overflows: then check each)
        if not math.isfinite(np.add.reduce(a, axis=None)) and not np.isfinite(a).all():
            env, knob = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(
                f"action contains NaN or inf (env {env}, "
                f"actuator {self.spec.actuators[knob].name}: {a[env, knob]})"
            )
        return np.minimum(np.maximum(a, self.action_low), self.action_high)

    def step(
        self, actions: np.ndarray, index: np.ndarray | slice = ALL
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply validated ``actions`` to environments ``index``.

        :return: ``(reward [B], terminated [B])``.
        """
        if self._plain and index is ALL:
            return self._step_one(actions)
        previous_error = self.reading[index] - self.target[index]
        previous_magnets = self.magnets[index]
        w = self.world
        if self.action_mode == "delta":
            # a delta acts on what the machine reports: the readback of the power supplies
            base = previous_magnets if w is None or w.magnets is None else w.magnets.readback[index]
            target = np.minimum(np.maximum(base + actions, self.low), self.high)
        else:
            target = actions
        h = self.hidden
        steps = self.steps[index] + 1
        failure = self.spec.randomisation.failure
        if failure.probability > 0:
            stuck = (h.fail_step[index] >= 0) & (steps >= h.fail_step[index])
            rows = np.nonzero(stuck)[0]
            cols = h.fail_index[index][rows]
            target = target.copy()
            if failure.value is None:
                target[rows, cols] = previous_magnets[
                    rows, cols
                ]  # stuck actuators keep their value
            else:
                target[rows, cols] = failure.value
        if w is not None and w.failures:
            target = w.constrain(index, steps, previous_magnets, target)
        self.magnets = _put(self.magnets, index, target, fresh=target is not actions)
        self.steps = _put(self.steps, index, steps, fresh=True)
        drift = self.spec.randomisation.drift
        if drift.mu > 0 or drift.mu_p > 0:
            idx = np.arange(self.num_envs)[index]
            z = rng.normal(self.keys[idx], self.counters[idx], 4)
            self.counters[idx] += np.uint64(1)
            step = z * np.array([drift.mu, drift.mu_p, drift.mu, drift.mu_p])
            if w is not None and w.beam is not None:
                w.beam.shift_base(index, _MU, step)
            else:
                incoming = h.incoming.copy()
                incoming[idx[:, None], _MU] += step
                incoming.flags.writeable = False
                h.incoming = incoming
        if w is not None:
            self._step_world(index, w, steps, target)
        self._measure(index)
        error = self.reading[index] - self.target[index]
        reward = self.reward(
            RewardInputs(
                error=error,
                previous_error=previous_error,
                initial_reading=self.initial_reading[index],
                target=self.target[index],
                on_screen=self.readout_on_screen[index],
                magnets=target,
                previous_magnets=previous_magnets,
                magnet_range=self._range,
            )
        )
        within = np.logical_and.reduce(np.abs(error) < self._thresholds, axis=1)
        hold = (self.hold[index] + 1) * within
        self.hold = _put(self.hold, index, hold, fresh=True)
        terminated = (hold >= self.spec.termination.hold) & self.terminate
        return reward, terminated

    def _step_one(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` of the one environment of a plain batch (no world, failures or
        drift): the same numbers, with the per-environment flags on Python scalars."""
        reading, target, previous_magnets = self.reading, self.target, self.magnets
        last = self._last_error  # (reading, target, error) of the previous step
        if last is not None and last[0] is reading and last[1] is target:
            previous_error = last[2]  # state arrays are replaced, never changed
        else:
            previous_error = reading - target
        if self.action_mode == "delta":
            magnets = np.minimum(np.maximum(previous_magnets + actions, self.low), self.high)
        else:
            magnets = actions
        self.magnets = _put(previous_magnets, ALL, magnets, fresh=magnets is not actions)
        steps = self.steps + 1
        self.steps = _put(self.steps, ALL, steps, fresh=True)
        self._measure_one()
        error = self.reading - target
        error.flags.writeable = False
        self._last_error = (self.reading, target, error)
        reward = self.reward(
            RewardInputs(
                error=error,
                previous_error=previous_error,
                initial_reading=self.initial_reading,
                target=target,
                on_screen=self.readout_on_screen,
                magnets=magnets,
                previous_magnets=previous_magnets,
                magnet_range=self._range,
            )
        )
        within = all(
            abs(e) < t for e, t in zip(error[0].tolist(), self._threshold_list, strict=True)
        )
        hold = int(self.hold[0]) + 1 if within else 0
        self.hold = _put(self.hold, ALL, np.array((hold,)), fresh=True)
        return reward, np.array((hold >= self.spec.termination.hold and self.terminate,))

    def _step_world(
        self, index: np.ndarray | slice, w: WorldModel, steps: np.ndarray, setpoints: np.ndarray
    ) -> None:
        """The world's part of a step: beam drift and changes, magnets moving to the new
        setpoints."""
        if w.beam is not None:
            if w.has_drift:
                idx = np.arange(self.num_envs)[index]
                z = rng.normal(self.keys[idx], self.counters[idx], len(INCOMING))
                self.counters[idx] += np.uint64(1)
                w.beam.drift(index, z)
            h = self.hidden
            h.incoming = _put(h.incoming, index, w.beam.incoming(index, steps), fresh=True)
        if w.magnets is not None:
            w.magnets.advance(index, setpoints)

    # ------------------------------------------------------------------ views
    @property
    def readback(self) -> np.ndarray:
        """What the power supplies report ``[B, K]`` (SI): the settings, or in a world with
        magnets their outputs (quantised, settling)."""
        w = self.world
        return self.magnets if w is None or w.magnets is None else w.magnets.readback

    def observation(self, index: np.ndarray | slice = ALL) -> dict[str, np.ndarray]:
        """``{"beam": [B,4], "magnets": [B,K], "target": [B,4]}`` (float32, SI units).

        ``beam`` is the reading; ``magnets`` what the power supplies report (the settings,
        or in a world with magnets their readbacks)."""
        w = self.world
        magnets = self.magnets if w is None or w.magnets is None else w.magnets.readback
        return {
            "beam": self.reading[index].astype(np.float32),
            "magnets": magnets[index].astype(np.float32),
            "target": self.target[index].astype(np.float32),
        }

    def mae(self, index: np.ndarray | slice = ALL) -> np.ndarray:
        """Mean absolute error of the true beam to the target [m]."""
        return np.add.reduce(np.abs(self.beam[index] - self.target[index]), axis=1) * 0.25

    def info(self, index: np.ndarray | slice = ALL) -> dict[str, np.ndarray]:
        """Privileged state and diagnostics (float64, SI units); snapshots, never modified later.

        ``gain`` (relative calibration errors) and ``fail_step``/``fail_index`` (actuator
        failure, -1: none) are included when the spec randomises them. In a world:
        ``readout_on_screen`` (the camera's verdict, used by the reward; ``on_screen`` stays
        the geometric truth), ``readback``/``field``/``magnet_gain``/``magnet_offset``
        (magnets), ``incoming_jitter`` (this reading's jitter, added to ``incoming``) and
        ``failed`` (``[K]`` actuators failed by a scenario), as the world has them.
        """
        h = self.hidden
        info = {
            "beam": self.beam[index],
            "reading": self.reading[index],
            "target": self.target[index],
            "magnets": self.magnets[index],
            "incoming": h.incoming[index],
            "misalignments": h.misalignments[index],
            "mae": self.mae(index),
            "on_screen": self.on_screen[index],
            "step": self.steps[index],
        }
        r = self.spec.randomisation
        if r.gain_error > 0:
            info["gain"] = h.gain[index]
        if r.failure.probability > 0:
            info["fail_step"] = h.fail_step[index]
            info["fail_index"] = h.fail_index[index]
        w = self.world
        if w is not None:
            if w.camera is not None:
                info["readout_on_screen"] = self.readout_on_screen[index]
            info.update(w.info(index, self.steps[index]))
        return info
