"""Gradient tuning through the differentiable nominal model of the beamline.

:class:`GradientTuner` knows the lattice but not the hidden state: it assumes the *design*
incoming beam (the centre of the task's randomisation ranges: centred, sizes and
divergences at the middle of their ranges) and no misalignments. At every step it combines
the *measured* residual ``r = reading - target`` with the nominal model's Jacobian
``J = d reading / d settings`` at the current settings (autograd through the compiled
beamline, float64, one thread):

    d MAE / d settings  ~=  1/4 * sign(r)^T J_nominal

(the exact chain rule of ``MAE = mean |reading - target|`` with the machine's Jacobian
replaced by the model's), and takes an Adam step on the normalised settings, limited to
``max_delta`` per step and clipped to the limits. The measured residual keeps the
direction right where the nominal model is wrong about the beam itself; only the
sensitivities come from the model.

The nominal model is the task's :class:`~accelrl.envs.model.TaskModel`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import cheetah
import numpy as np
import torch

from accelrl.agents.tuners.base import TunerBase, to_unit
from accelrl.envs.model import model_for
from accelrl.envs.spec import TaskSpec
from accelrl.protocol import Observation, Problem

__all__ = ["GradientTuner", "one_torch_thread"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the enclosed torch code on one intra-op thread, restoring the setting after."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class GradientTuner(TunerBase):
    """Adam on the settings with the measured residual and the nominal model's Jacobian.

    :param lr: Adam learning rate [normalised units per step; 0.1 is one ``max_delta`` of
        the ARES task].
    :param beta1: Adam's first-moment decay.
    :param beta2: Adam's second-moment decay.
    :param eps: Adam's epsilon (on the normalised gradient).
    :param decay: Factor on the learning rate after a step that made the observed MAE
        worse (1: constant learning rate).
    :param spec: Task spec of the model (default ARES-EA); the problem's actuators must match.
    :param segment: Lattice of the model (default: the spec's shipped lattice).
    """

    name = "gradient"

    def __init__(
        self,
        lr: float = 0.03,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        decay: float = 0.9,
        spec: TaskSpec | None = None,
        segment: cheetah.Segment | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0 normalised units, got {lr}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.lr, self.beta1, self.beta2, self.eps, self.decay = lr, beta1, beta2, eps, decay
        self.model = model_for(spec, segment)

    def reset(self, problem: Problem) -> None:
        super().reset(problem)
        self.model.check(problem)
        K = len(self.low)
        self._m = np.zeros(K)
        self._v = np.zeros(K)
        self._t = 0
        self._lr = self.lr
        self._previous_mae = math.inf
        self._incoming = torch.as_tensor(self.model.incoming_nominal)[None]
        self._misalignments = torch.zeros(1, self.model.num_misalignments, dtype=torch.float64)

    def nominal_jacobian(self, settings: np.ndarray) -> np.ndarray:
        """``d reading / d settings`` ``[4, K]`` of the nominal model [m per SI unit]."""
        with one_torch_thread():
            x = torch.tensor(settings[None], dtype=torch.float64)
            jac = torch.autograd.functional.jacobian(
                lambda k: self.model.beamline(k, self._incoming, self._misalignments)[0], x
            )
        return jac[:, 0, :].numpy()

    def _vjp(self, settings: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``weights^T J_nominal`` ``[K]`` at ``settings`` (one backward pass)."""
        with one_torch_thread():
            x = torch.tensor(settings[None], dtype=torch.float64, requires_grad=True)
            out = self.model.beamline(x, self._incoming, self._misalignments)[0]
            (grad,) = torch.autograd.grad(out @ torch.as_tensor(weights), x)
        return grad[0].numpy()

    def ask(self, observation: Observation) -> np.ndarray:
        """Next settings ``[K]`` (SI): one Adam step on the normalised settings."""
        beam, magnets = self._check(observation)
        mae = self._mae(beam)
        if mae > self._previous_mae:
            self._lr *= self.decay
        self._previous_mae = mae
        residual = beam - self.target
        if not np.all(np.isfinite(residual)):
            return self._out(magnets)
        scale = 0.5 * (self.high - self.low)  # d settings / d normalised settings
        grad = 0.25 * self._vjp(magnets, np.sign(residual)) * scale
        grad = grad / max(np.abs(grad).max(), 1e-30)  # scale-free (Adam normalises anyway)
        self._t += 1
        self._m = self.beta1 * self._m + (1 - self.beta1) * grad
        self._v = self.beta2 * self._v + (1 - self.beta2) * grad**2
        m_hat = self._m / (1 - self.beta1**self._t)
        v_hat = self._v / (1 - self.beta2**self._t)
        step = -self._lr * m_hat / (np.sqrt(v_hat) + self.eps)
        limit = self.max_delta / scale
        step = np.clip(step, -limit, limit)
        u = np.clip(to_unit(magnets, self.low, self.high) + step, -1.0, 1.0)
        return self._out(self.low + (u + 1.0) * scale)
