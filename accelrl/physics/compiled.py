"""Compile a Cheetah segment and a list of knobs into a fast, batched, differentiable map.

>>> import torch
>>> from accelrl.physics import ares_ea_segment, compile
>>> beamline = compile(
...     ares_ea_segment(),
...     knobs=[("AREAMQZM1", "k1"), ("AREAMQZM2", "k1"), ("AREAMCVM1", "angle"),
...            ("AREAMQZM3", "k1"), ("AREAMCHM1", "angle")],
...     observe="AREABSCR1",
... )
>>> knobs = torch.tensor([[10.0, -10.0, 0.0, 10.0, 0.0]], dtype=torch.float64)
>>> incoming = torch.tensor([[107e6, 0, 0, 0, 0, 175e-6, 4e-6, 175e-6, 4e-6, 8e-6, 2e-4]],
...                         dtype=torch.float64)
>>> beamline(knobs, incoming).shape  # (mu_x, sigma_x, mu_y, sigma_y) [m]
torch.Size([1, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cheetah
import numpy as np
import torch
from torch import nn

from accelrl.physics import symbolic
from accelrl.physics.beam import INCOMING, TRANSVERSE
from accelrl.physics.devices import DeviceError, resolve_device
from accelrl.physics.elements import (
    SUPPORTED,
    Map,
    TraceContext,
    UnsupportedElementError,
    element_map,
    prim,
)
from accelrl.physics.numerics import NUMPY, SCALAR, TORCH

#: Attributes that may be knobs, per element type.
KNOB_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    cheetah.Drift: ("length",),
    cheetah.Quadrupole: ("k1", "length", "tilt"),
    cheetah.Dipole: (
        "angle",
        "k1",
        "length",
        "tilt",
        "dipole_e1",
        "dipole_e2",
        "gap",
        "fringe_integral",
        "fringe_integral_exit",
    ),
    cheetah.HorizontalCorrector: ("angle", "length"),
    cheetah.VerticalCorrector: ("angle", "length"),
    cheetah.CombinedCorrector: ("horizontal_angle", "vertical_angle", "length"),
}

#: Element types whose transverse misalignment [m] can be an input.
MISALIGNABLE: tuple[type, ...] = (cheetah.Quadrupole, cheetah.Screen, cheetah.BPM)


#: Batch chunk of :meth:`CompiledBeamline.evaluate` (measured fastest on a 2-core x86 machine).
EVALUATE_CHUNK = 4096


class BeamMoments(NamedTuple):
    """First and second moments at the observation point.

    :param mu: Centroid ``[..., 6]`` in ``(x, px, y, py, tau, p)`` [m, 1, m, 1, m, 1].
    :param cov: Covariance ``[..., 6, 6]`` in the same coordinates.
    """

    mu: torch.Tensor
    cov: torch.Tensor


Knob = tuple[str, str]


def _allowed_attributes(element: cheetah.Element) -> tuple[str, ...]:
    for cls, attributes in KNOB_ATTRIBUTES.items():
        if isinstance(element, cls):
            return attributes
    return ()


def _tensor_attributes(element: cheetah.Element) -> tuple[str, ...]:
    """Names of the tensor-valued physical attributes of ``element`` (not its misalignment)."""
    skip = {"misalignment", "length"}
    names = [
        n
        for n, v in vars(element).items()
        if isinstance(v, torch.Tensor) and not n.startswith("_") and n not in skip
    ]
    names += [n for n, _ in element.named_buffers(recurse=False) if n not in skip]
    names += [n for n, _ in element.named_parameters(recurse=False) if n not in skip]
    return tuple(dict.fromkeys(names + ["length"]))


class LatticeInputs(NamedTuple):
    """What a backend needs to know about its inputs (see :func:`resolve_inputs`).

    :param knobs: ``(element, attribute)`` per knob column.
    :param misaligned: Elements whose misalignment ``(dx, dy)`` [m] is an input.
    :param defaults: Their misalignments stored in the segment, flattened ``[2M]`` [m].
    :param upstream: The elements before the observation point.
    :param observed: The observed element (``None``: the end of the segment).
    """

    knobs: list[Knob]
    misaligned: list[str]
    defaults: list[float]
    upstream: list[cheetah.Element]
    observed: cheetah.Element | None


def resolve_inputs(
    segment: cheetah.Segment,
    knobs: Sequence[Knob],
    observe: str | None = None,
    misalign: Sequence[str] | None = None,
    any_attribute: bool = False,
) -> LatticeInputs:
    """Check knobs, observation point and misaligned elements against ``segment``.

    :param any_attribute: Also allow, on element types the compiled map does not know (e.g.
        ``Cavity``), any of their tensor attributes (``voltage`` [V], ``phase`` [deg], ...) as
        a knob (what Cheetah tracking can vary).
    :raises ValueError: Naming the unknown element, attribute or observation point.
    """
    elements = list(segment.flattened().elements)
    names = [e.name for e in elements]
    if observe is not None and observe not in names:
        raise ValueError(f"observe={observe!r} is not an element of the segment {segment.name!r}")
    stop = names.index(observe) if observe is not None else len(elements)
    upstream = elements[:stop]
    observed = elements[stop] if observe is not None else None

    out: list[Knob] = [tuple(k) for k in knobs]  # type: ignore[misc]
    by_name = {e.name: e for e in elements}
    for name, attribute in out:
        if name not in by_name:
            raise ValueError(f"knob element {name!r} is not in the segment")
        element = by_name[name]
        allowed = _allowed_attributes(element)
        if not allowed and any_attribute:
            allowed = _tensor_attributes(element)
        elif not allowed and not isinstance(element, SUPPORTED):
            element_map(element, None)  # type: ignore[arg-type]  # raises, naming the backends
        if attribute not in allowed:
            raise ValueError(
                f"{name} ({type(element).__name__}) has no knob {attribute!r}; "
                f"allowed: {allowed or 'none'}"
            )
        if name not in {e.name for e in upstream}:
            raise ValueError(f"knob element {name!r} is not upstream of observe={observe!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate knobs in {out}")

    if misalign is None:
        misalign = [e.name for e in upstream if isinstance(e, cheetah.Quadrupole)]
        if observed is not None and isinstance(observed, (cheetah.Screen, cheetah.BPM)):
            misalign.append(observed.name)
    misalign = list(dict.fromkeys(misalign))
    for name in misalign:
        if name not in by_name or not isinstance(by_name[name], MISALIGNABLE):
            raise ValueError(
                f"cannot misalign {name!r}: not a quadrupole, screen or BPM of the segment"
            )
    defaults: list[float] = []
    for name in misalign:
        defaults.extend(float(v) for v in by_name[name].misalignment.detach().reshape(-1)[:2])
    return LatticeInputs(out, misalign, defaults, upstream, observed)


def _total_row(i: int, maps: list[Map]) -> list[symbolic.Value]:
    """Row ``i`` of the product ``maps[-1] @ ... @ maps[0]``, propagated from the exit."""
    row: list[symbolic.Value] = [1.0 if j == i else 0.0 for j in range(7)]
    for m in reversed(maps):
        out = []
        for j in range(7):
            acc: symbolic.Value = 0.0
            for n in range(7):
                if isinstance(row[n], float) and row[n] == 0.0:
                    continue
                acc = acc + row[n] * m[n][j]
            out.append(acc)
        row = out
    return row


class CompiledBeamline(nn.Module):
    """A Cheetah segment compiled to a straight-line program over knobs, beam and misalignments.

    Evaluates the first-order (linear) beam dynamics of the segment for a batch of knob
    settings, incoming beams and element misalignments in one fused pass, with autograd. It
    agrees with Cheetah's ``ParameterBeam`` tracking to floating-point rounding.

    :param segment: The lattice. Nested segments are flattened.
    :param knobs: ``(element name, attribute)`` pairs, e.g. ``("AREAMQZM1", "k1")``; their
        values are the columns of the ``knobs`` input, in SI units (1/m^2, rad, m).
    :param observe: Name of the element at whose entrance the beam is read (a ``Screen`` or
        ``BPM`` subtracts its own misalignment from the centroid, as Cheetah's reading does).
        ``None`` reads the beam at the end of the segment.
    :param misalign: Names of elements whose misalignment ``(dx, dy)`` [m] is an input.
        Default: every quadrupole upstream of ``observe`` and ``observe`` itself if it is a
        screen or BPM. The other elements keep the misalignment stored in the segment.
    :param species: Particle species (default: electron).
    :param dtype: Floating-point type of the default-misalignment buffer.
    :param device: Device of the default-misalignment buffer (``"cpu"``, ``"cuda"``, ...;
        default torch's). The map runs on the device of its inputs; every path is
        branch-free (no host synchronisation), so ``torch.compile(fullgraph=True)`` and
        CUDA-graph capture take it whole.
    :raises UnsupportedElementError: If the segment holds an element the map cannot represent.
    :raises ValueError: For unknown elements, attributes or observation points.
    :raises DeviceError: For a device this machine cannot use (see
        :func:`~accelrl.physics.devices.resolve_device`).
    """

    def __init__(
        self,
        segment: cheetah.Segment,
        knobs: Sequence[Knob],
        observe: str | None = None,
        misalign: Sequence[str] | None = None,
        species: cheetah.Species | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        inputs = resolve_inputs(segment, knobs, observe, misalign)
        self.knobs: list[Knob] = inputs.knobs
        self.misaligned: list[str] = inputs.misaligned
        self.observe = observe
        # float64 rest energy: Cheetah's default species is float32 (510998.9375 eV)
        self.species = (
            species if species is not None else cheetah.Species("electron", dtype=torch.float64)
        )
        if device is not None:
            device = resolve_device(device)
        self.register_buffer(
            "default_misalignments", torch.tensor(inputs.defaults, dtype=dtype, device=device)
        )
        upstream, observed = inputs.upstream, inputs.observed

        transverse, full = self._trace(upstream, observed)
        self._transverse_fn, self.source = symbolic.generate(transverse, "transverse_map")
        self._transverse_array_fn, self.source_array = symbolic.generate(
            transverse, "transverse_map", free_temporaries=True
        )
        self._full_fn, self.source_full = symbolic.generate(full, "full_map", free_temporaries=True)

    # ------------------------------------------------------------------ tracing
    def _trace(
        self, upstream: list[cheetah.Element], observed: cheetah.Element | None
    ) -> tuple[list[symbolic.Value], list[symbolic.Value]]:
        tracer = symbolic.Tracer()
        k = [tracer.input("k", i) for i in range(len(self.knobs))]
        b = [tracer.input("b", i) for i in range(len(INCOMING))]
        m = [tracer.input("m", i) for i in range(2 * len(self.misaligned))]
        ctx = TraceContext(
            energy=b[0],
            mass_eV=float(self.species.mass_eV),
            knobs=dict(zip(self.knobs, k, strict=True)),
            misalignments={n: (m[2 * i], m[2 * i + 1]) for i, n in enumerate(self.misaligned)},
        )
        maps = [element_map(element, ctx) for element in upstream]
        rows = [_total_row(i, maps) for i in range(6)]  # only the rows used are emitted
        mu0 = [b[1], b[2], b[3], b[4], 0.0, 0.0, 1.0]
        var0 = [b[i] * b[i] for i in range(5, 11)]
        mu: list[symbolic.Value] = []
        for i in range(6):
            acc: symbolic.Value = 0.0
            for j in range(7):
                acc = acc + rows[i][j] * mu0[j]
            mu.append(acc)
        if observed is not None and isinstance(observed, (cheetah.Screen, cheetah.BPM)):
            dx, dy = ctx.misalignment(observed)
            mu[0], mu[2] = mu[0] - dx, mu[2] - dy
        cov = [[0.0] * 6 for _ in range(6)]
        for i in range(6):
            for j in range(i, 6):
                acc = 0.0
                for n in range(6):
                    acc = acc + rows[i][n] * rows[j][n] * var0[n]
                cov[i][j] = cov[j][i] = acc
        transverse = [mu[0], prim("sqrt", cov[0][0]), mu[2], prim("sqrt", cov[2][2])]
        full = mu + [cov[i][j] for i in range(6) for j in range(i, 6)]
        return transverse, full

    # ------------------------------------------------------------------ evaluation
    @property
    def knob_names(self) -> list[str]:
        """``"ELEMENT.attribute"`` of every knob, in column order."""
        return [f"{n}.{a}" for n, a in self.knobs]

    @property
    def misalignment_names(self) -> list[str]:
        """``"ELEMENT.x"``/``"ELEMENT.y"`` of every misalignment column [m]."""
        return [f"{n}.{ax}" for n in self.misaligned for ax in ("x", "y")]

    def _check(self, knobs: torch.Tensor | np.ndarray, incoming, misalignments) -> None:
        expected = (len(self.knobs), len(INCOMING), 2 * len(self.misaligned))
        for label, value, n in zip(
            ("knobs", "incoming", "misalignments"),
            (knobs, incoming, misalignments),
            expected,
            strict=True,
        ):
            if value.shape[-1] != n:
                raise ValueError(f"{label} must have {n} columns, got shape {tuple(value.shape)}")

    def forward(
        self,
        knobs: torch.Tensor,
        incoming: torch.Tensor,
        misalignments: torch.Tensor | None = None,
        full: bool = False,
    ) -> torch.Tensor | BeamMoments:
        """Beam at the observation point.

        :param knobs: ``[..., K]`` knob values (SI).
        :param incoming: ``[..., 11]`` incoming beams, columns
            :data:`~accelrl.physics.beam.INCOMING`.
        :param misalignments: ``[..., M]`` misalignments [m], columns :attr:`misalignment_names`;
            default: the values stored in the segment.
        :param full: Return all first and second moments instead of the transverse reading.
        :return: ``[..., 4]`` ``(mu_x, sigma_x, mu_y, sigma_y)`` [m], or :class:`BeamMoments`.
        """
        if misalignments is None:
            buffer = self.default_misalignments
            if buffer.device != incoming.device:
                raise DeviceError(
                    f"the beamline's default misalignments are on {buffer.device}, the inputs "
                    f"on {incoming.device}: move the beamline with .to({str(incoming.device)!r}) "
                    f"(or compile(..., device={str(incoming.device)!r})), or pass misalignments"
                )
            misalignments = buffer.to(incoming.dtype)
        if not knobs.device == incoming.device == misalignments.device:
            raise DeviceError(
                f"inputs on different devices: knobs on {knobs.device}, incoming on "
                f"{incoming.device}, misalignments on {misalignments.device}; move them to one "
                f"device with .to(device)"
            )
        self._check(knobs, incoming, misalignments)
        shape = torch.broadcast_shapes(
            knobs.shape[:-1], incoming.shape[:-1], misalignments.shape[:-1]
        )
        k = knobs.expand(*shape, knobs.shape[-1]).unbind(-1)
        b = incoming.expand(*shape, incoming.shape[-1]).unbind(-1)
        m = misalignments.expand(*shape, misalignments.shape[-1]).unbind(-1)
        if not full:
            return torch.stack(self._transverse_array_fn(TORCH, k, b, m), dim=-1)
        out = self._full_fn(TORCH, k, b, m)
        mu = torch.stack(out[:6], dim=-1)
        cov = mu.new_empty(*shape, 6, 6)
        idx = 6
        for i in range(6):
            for j in range(i, 6):
                cov[..., i, j] = out[idx]
                cov[..., j, i] = out[idx]
                idx += 1
        return BeamMoments(mu, cov)

    #: The compiled map is deterministic.
    stochastic = False

    def evaluate(
        self,
        knobs: np.ndarray,
        incoming: np.ndarray,
        misalignments: np.ndarray | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Transverse reading ``[B, 4]`` [m] of numpy ``[B, ·]`` float64 inputs, fastest path.

        One beamline runs on Python floats (:meth:`scalar`); a batch runs on numpy in
        chunks of :data:`EVALUATE_CHUNK` beamlines, whose intermediates stay in cache.
        """
        if misalignments is None:
            misalignments = np.broadcast_to(
                self.default_misalignments.cpu().numpy(), (len(incoming), len(self.misaligned) * 2)
            )
        self._check(knobs, incoming, misalignments)
        if len(knobs) == 1:
            out = self._transverse_fn(
                SCALAR, knobs.tolist()[0], incoming.tolist()[0], misalignments.tolist()[0]
            )
            return np.array((out,))
        out = np.empty((len(knobs), 4))
        for start in range(0, len(knobs), EVALUATE_CHUNK):
            chunk = slice(start, start + EVALUATE_CHUNK)
            k, b, m = (np.ascontiguousarray(a[chunk].T) for a in (knobs, incoming, misalignments))
            columns = self._transverse_array_fn(NUMPY, k, b, m)
            for j, column in enumerate(columns):
                out[chunk, j] = column
        return out

    def scalar(
        self, knobs: Sequence[float], incoming: Sequence[float], misalignments: Sequence[float]
    ) -> tuple[float, float, float, float]:
        """Transverse reading of one beamline from Python floats (lowest latency)."""
        expected = (len(self.knobs), len(INCOMING), 2 * len(self.misaligned))
        if (len(knobs), len(incoming), len(misalignments)) != expected:
            raise ValueError(
                f"scalar() needs {expected} values (knobs, incoming, misalignments), got "
                f"{(len(knobs), len(incoming), len(misalignments))}"
            )
        return self._transverse_fn(SCALAR, knobs, incoming, misalignments)

    # generated functions are rebuilt from source when unpickled
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for attr in ("_transverse_fn", "_transverse_array_fn", "_full_fn"):
            state.pop(attr, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for attr, src, name in (
            ("_transverse_fn", self.source, "transverse_map"),
            ("_transverse_array_fn", self.source_array, "transverse_map"),
            ("_full_fn", self.source_full, "full_map"),
        ):
            object.__setattr__(self, attr, symbolic.load(src, name))


def compile(  # noqa: A001 - the public name mirrors what it does
    segment: cheetah.Segment,
    knobs: Sequence[Knob],
    observe: str | None = None,
    misalign: Sequence[str] | None = None,
    species: cheetah.Species | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> CompiledBeamline:
    """Compile ``segment`` with ``knobs`` into a :class:`CompiledBeamline` (see there)."""
    return CompiledBeamline(segment, knobs, observe, misalign, species, dtype, device)


__all__ = ["BeamMoments", "CompiledBeamline", "UnsupportedElementError", "compile", "TRANSVERSE"]
