"""A task's compiled model: its beamline and the ranges of everything an optimiser cannot see.

:class:`TaskModel` is what the model-aware tuners use (the gradient tuner's nominal
Jacobian, the model-based tuner's hidden-state fit, the BO physics prior): the task's lattice
compiled with its actuators as knobs, its screen as observation point and its randomised
misalignments as inputs, plus the task's randomisation ranges.

>>> from accelrl.envs.model import default_model
>>> model = default_model()  # doctest: +SKIP
>>> zero = np.zeros(model.num_misalignments)  # doctest: +SKIP
>>> model.evaluate(settings, model.incoming_nominal, zero)  # readings [B, 4] m  # doctest: +SKIP
"""

from __future__ import annotations

import functools

import cheetah
import numpy as np

from accelrl.envs.spec import TaskSpec
from accelrl.names import INCOMING
from accelrl.physics.compiled import CompiledBeamline, compile
from accelrl.protocol import Problem

__all__ = ["TaskModel", "default_model", "model_for"]


class TaskModel:
    """A task's compiled beamline and the ranges of everything an optimiser cannot see.

    :param spec: Task spec (default: ARES-EA, :func:`accelrl.envs.ares_ea.ares_ea_spec`).
    :param segment: Cheetah segment of the lattice (default: the spec's ``lattice``, a shipped
        name or a lattice file).

    Attributes (SI units, numpy float64):

    * ``beamline``: :class:`~accelrl.physics.compiled.CompiledBeamline` with the spec's
      actuators as knobs, its screen as observation point and its randomised
      misalignments as inputs ``[M]`` (``"ELEMENT.x"``, ``"ELEMENT.y"``).
    * ``incoming_low``, ``incoming_high``, ``incoming_nominal``: ``[11]`` in
      :data:`~accelrl.physics.beam.INCOMING` order; nominal = centre of the range.
    * ``misalignment_half``: ``[M]`` uniform half-range of each misalignment [m].
    """

    def __init__(
        self, spec: TaskSpec | None = None, segment: cheetah.Segment | None = None
    ) -> None:
        if spec is None:
            from accelrl.envs.ares_ea import ares_ea_spec

            spec = ares_ea_spec()
        if segment is None:
            from accelrl.envs.tuning import task_segment

            segment = task_segment(spec)  # a shipped name or a lattice file
        self.spec = spec
        self.actuator_names: tuple[str, ...] = tuple(a.name for a in spec.actuators)
        knobs = [(a.element, a.attribute) for a in spec.actuators]
        misaligned = list(spec.randomisation.misalignments)
        self.beamline: CompiledBeamline = compile(
            segment, knobs, spec.screen.element, misalign=misaligned
        )
        inc = spec.randomisation.incoming
        self.incoming_low = np.array([inc[k].low for k in INCOMING], dtype=np.float64)
        self.incoming_high = np.array([inc[k].high for k in INCOMING], dtype=np.float64)
        self.incoming_nominal = 0.5 * (self.incoming_low + self.incoming_high)
        half = spec.randomisation.misalignments
        self.misalignment_half = np.repeat(
            np.array([half[n] for n in self.beamline.misaligned], dtype=np.float64), 2
        )
        self.screen_half_extent = np.array(spec.screen.half_extent, dtype=np.float64)

    @property
    def num_misalignments(self) -> int:
        """Number of misalignment inputs ``M`` (two per misaligned element)."""
        return len(self.misalignment_half)

    def check(self, problem: Problem) -> None:
        """Raise ``ValueError`` unless ``problem``'s actuators are this model's knobs, in order."""
        if tuple(problem.actuator_names) != self.actuator_names:
            raise ValueError(
                f"the model's actuators {list(self.actuator_names)} (task {self.spec.id}) differ "
                f"from the problem's {list(problem.actuator_names)}; pass the task's spec= "
                "(and segment=) to the optimiser"
            )

    def evaluate(
        self, settings: np.ndarray, incoming: np.ndarray, misalignments: np.ndarray
    ) -> np.ndarray:
        """Readings ``[B, 4]`` [m] of numpy ``settings [B, K]`` (broadcast hidden state)."""
        settings = np.atleast_2d(np.asarray(settings, np.float64))
        B = len(settings)
        inc = np.ascontiguousarray(np.broadcast_to(incoming, (B, 11)))
        mis = np.ascontiguousarray(np.broadcast_to(misalignments, (B, self.num_misalignments)))
        return self.beamline.evaluate(settings, inc, mis)


@functools.lru_cache(maxsize=1)
def default_model() -> TaskModel:
    """The ARES-EA :class:`TaskModel`, built once per process."""
    return TaskModel()


def model_for(spec: TaskSpec | None, segment: cheetah.Segment | None) -> TaskModel:
    """The shared default model, or a new one for a given task."""
    return default_model() if spec is None and segment is None else TaskModel(spec, segment)
