"""First-order (affine 7x7) maps of Cheetah elements, traced symbolically.

Each builder returns the element's map in Cheetah's phase-space coordinates
``(x [m], px [1], y [m], py [1], tau [m], p [1], 1)`` exactly as Cheetah's linear tracking
defines it (``cheetah.track_methods.base_rmatrix``, misalignment and rotation matrices,
dipole edges), with the entries as floats (constants, folded at trace time) or
:class:`~accelrl.physics.symbolic.Expr` (functions of knobs, beam energy, misalignments).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cheetah

from accelrl.physics.numerics import SCALAR
from accelrl.physics.symbolic import Expr, Value

Map = list[list[Value]]

#: Element types the compiled map supports.
SUPPORTED = (
    cheetah.Drift,
    cheetah.Quadrupole,
    cheetah.Dipole,  # includes cheetah.RBend
    cheetah.HorizontalCorrector,
    cheetah.VerticalCorrector,
    cheetah.CombinedCorrector,
    cheetah.Marker,
    cheetah.Screen,
    cheetah.BPM,
)


class UnsupportedElementError(ValueError):
    """Raised when a lattice holds an element the compiled map cannot represent."""


def prim(name: str, *args: Value, n_out: int = 1) -> Value | tuple[Value, ...]:
    """Call numeric primitive ``name`` (see :mod:`accelrl.physics.numerics`) on traced values."""
    for a in args:
        if isinstance(a, Expr):
            return a.tracer.call(name, *args, n_out=n_out)
    return getattr(SCALAR, name)(*args)


def eye() -> Map:
    """The 7x7 identity map (a zero-length element)."""
    return [[1.0 if i == j else 0.0 for j in range(7)] for i in range(7)]


def matmul(a: Map, b: Map) -> Map:
    """Product ``a @ b`` of two traced 7x7 maps."""
    out = []
    for i in range(7):
        row = []
        for j in range(7):
            acc: Value = 0.0
            for k in range(7):
                if isinstance(a[i][k], float) and a[i][k] == 0.0:
                    continue
                if isinstance(b[k][j], float) and b[k][j] == 0.0:
                    continue
                acc = acc + a[i][k] * b[k][j]
            row.append(acc)
        out.append(row)
    return out


def transpose(a: Map) -> Map:
    """Transpose of a traced 7x7 map (the inverse of a rotation)."""
    return [[a[j][i] for j in range(7)] for i in range(7)]


@dataclass
class TraceContext:
    """What element builders need: the beam's relativistic factors and the traced inputs.

    :param energy: Reference energy [eV].
    :param mass_eV: Rest energy of the species [eV].
    :param knobs: ``(element name, attribute) -> traced value`` of the knobs.
    :param misalignments: ``element name -> (dx, dy)`` traced misalignments [m].
    """

    energy: Value
    mass_eV: float
    knobs: dict[tuple[str, str], Value] = field(default_factory=dict)
    misalignments: dict[str, tuple[Value, Value]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        gamma = self.energy / self.mass_eV
        self.igamma2: Value = 1.0 / (gamma * gamma)
        self.beta: Value = prim("sqrt", 1.0 - self.igamma2)

    def param(self, element: cheetah.Element, attribute: str) -> Value:
        """The element's ``attribute`` as a knob input or a constant float."""
        knob = self.knobs.get((element.name, attribute))
        if knob is not None:
            return knob
        value = getattr(element, attribute)
        if hasattr(value, "numel") and value.numel() != 1:
            raise ValueError(
                f"{element.name}.{attribute} is vectorised (shape {tuple(value.shape)}); "
                "compile the beamline with it as a knob instead."
            )
        return float(value)

    def misalignment(self, element: cheetah.Element) -> tuple[Value, Value]:
        """Traced misalignment of ``element`` if it is an input, else its stored value [m]."""
        if element.name in self.misalignments:
            return self.misalignments[element.name]
        mis = element.misalignment.detach().reshape(-1)
        if mis.numel() != 2:
            raise ValueError(f"{element.name}.misalignment is vectorised; pass it as an input.")
        return float(mis[0]), float(mis[1])

    def r56_drift(self, length: Value) -> Value:
        """Drift term of R56 ``-L / (beta^2 gamma^2)`` [m]."""
        return -length / (self.beta * self.beta) * self.igamma2


def _check_linear(element: cheetah.Element) -> None:
    """Raise unless ``element`` is tracked to first order (its ``tracking_method``)."""
    method = getattr(element, "tracking_method", "linear")
    if method != "linear" and type(element).__name__.lower() != method:
        raise UnsupportedElementError(
            f"{element.name} ({type(element).__name__}) uses tracking_method={method!r}; the "
            "compiled map is first order only. Set tracking_method='linear' or track it "
            "with backend='cheetah' (ParameterBeam) or backend='cheetah-particles'."
        )


def drift(element: cheetah.Drift, ctx: TraceContext) -> Map:
    """Field-free drift.

    ``R12 = R34 = L`` and the longitudinal slip ``R56 = -L / (beta^2 gamma^2)`` [m].

    :param element: Drift of length ``element.length`` [m] (a knob if compiled as one).
    :param ctx: Beam energy and traced inputs.
    """
    length = ctx.param(element, "length")
    m = eye()
    m[0][1] = length
    m[2][3] = length
    m[4][5] = ctx.r56_drift(length)
    return m


def _rotation(angle: Value) -> Map:
    """Rotation of the transverse coordinates by ``angle`` [rad] about the beam axis."""
    cs, sn = prim("cos", angle), prim("sin", angle)
    m = eye()
    m[0][0], m[0][2], m[1][1], m[1][3] = cs, sn, cs, sn
    m[2][0], m[2][2], m[3][1], m[3][3] = -sn, cs, -sn, cs
    return m


def quadrupole(element: cheetah.Quadrupole, ctx: TraceContext) -> Map:
    """Thick quadrupole, with tilt and transverse misalignment.

    Focusing ``k1 > 0`` [1/m^2] focuses in x: ``R11 = cos(sqrt(k1) L)``, ``R12 =
    sin(sqrt(k1) L) / sqrt(k1)`` [m], ``R21 = -k1 R12`` [1/m], and the hyperbolic functions
    in y (:func:`~accelrl.physics.numerics.focus_pair`, exact through ``k1 = 0``); ``R56`` as
    a drift [m]. The misalignment ``(dx, dy)`` [m] and the tilt [rad] enter as Cheetah's
    combined rotation-misalignment matrices (misalign, then rotate).

    :param element: ``length`` [m], ``k1`` [1/m^2], ``tilt`` [rad], ``misalignment`` [m].
    :param ctx: Beam energy and traced inputs.
    """
    length = ctx.param(element, "length")
    k1 = ctx.param(element, "k1")
    tilt = ctx.param(element, "tilt")
    cx, sx, cy, sy = prim("focus_pair", k1, length, n_out=4)
    r = eye()
    r[0][0], r[0][1], r[1][0], r[1][1] = cx, sx, -k1 * sx, cx
    r[2][2], r[2][3], r[3][2], r[3][3] = cy, sy, k1 * sy, cy
    r[4][5] = ctx.r56_drift(length)
    # Cheetah's combined_rotation_misalignment_matrix: misalign, then rotate.
    dx, dy = ctx.misalignment(element)
    entry = _rotation(tilt)
    exit_ = transpose(entry)
    cs, sn = entry[0][0], entry[0][2]
    entry[0][6] = -dx * cs - dy * sn
    entry[2][6] = dx * sn - dy * cs
    exit_[0][6], exit_[2][6] = dx, dy
    return matmul(exit_, matmul(r, entry))


def dipole(element: cheetah.Dipole, ctx: TraceContext) -> Map:
    """Sector (or, through the edge angles, rectangular) bending magnet with edge focusing.

    Curvature ``h = angle / L`` [1/m]; horizontal focusing ``kx^2 = k1 + h^2`` [1/m^2];
    dispersion ``R16 = h D / beta`` [m] and ``R26`` [1]; the edges ``e1``, ``e2`` [rad] with
    fringe-field integrals over the full ``gap`` [m] give the thin edge kicks (Cheetah's
    ``base_rmatrix`` and edge matrices).

    :param element: ``length`` [m] (> 0), ``angle`` [rad], ``k1`` [1/m^2], ``dipole_e1``,
        ``dipole_e2`` [rad], ``gap`` [m], ``fringe_integral``, ``fringe_integral_exit``
        [1], ``tilt`` [rad].
    :param ctx: Beam energy and traced inputs.
    :raises UnsupportedElementError: For a dipole of zero length.
    """
    length = ctx.param(element, "length")
    angle = ctx.param(element, "angle")
    if isinstance(length, float) and length == 0.0:
        raise UnsupportedElementError(f"{element.name}: a dipole of zero length has no curvature.")
    k1 = ctx.param(element, "k1")
    e1, e2 = ctx.param(element, "dipole_e1"), ctx.param(element, "dipole_e2")
    gap = ctx.param(element, "gap")
    fint, fint_exit = (
        ctx.param(element, "fringe_integral"),
        ctx.param(element, "fringe_integral_exit"),
    )
    tilt = ctx.param(element, "tilt")
    hx = angle / length
    kx2 = k1 + hx * hx
    cx, sx = prim("focus", kx2, length, n_out=2)
    cy, sy = prim("focus", -k1, length, n_out=2)
    d, f = prim("dispersion", kx2, length, n_out=2)
    beta = ctx.beta
    dx = hx * d
    r = eye()
    r[0][0], r[0][1], r[0][5] = cx, sx, dx / beta
    r[1][0], r[1][1], r[1][5] = -kx2 * sx, cx, sx * hx / beta
    r[2][2], r[2][3], r[3][2], r[3][3] = cy, sy, k1 * sy, cy
    r[4][0], r[4][1] = sx * hx / beta, dx / beta
    r[4][5] = hx * hx * f / (beta * beta) + ctx.r56_drift(length)

    def edge(e: Value, fint_: Value) -> Map:
        sec = 1.0 / prim("cos", e)
        sin_e = prim("sin", e)
        phi = fint_ * hx * gap * sec * (1.0 + sin_e * sin_e)
        m = eye()
        m[1][0] = hx * prim("tan", e)
        m[3][2] = -hx * prim("tan", e - phi)
        return m

    r = matmul(edge(e2, fint_exit), matmul(r, edge(e1, fint)))
    rot = _rotation(tilt)
    return matmul(transpose(rot), matmul(r, rot))


def corrector(element: cheetah.Element, ctx: TraceContext) -> Map:
    """Steering magnet: a drift of its length [m] plus an angular kick [rad] in x
    (``HorizontalCorrector.angle``), y (``VerticalCorrector.angle``) or both
    (``CombinedCorrector.horizontal_angle``, ``vertical_angle``), in the map's constant
    column.

    :param element: One of the three corrector types.
    :param ctx: Beam energy and traced inputs.
    """
    m = drift(element, ctx)
    if isinstance(element, cheetah.HorizontalCorrector):
        m[1][6] = ctx.param(element, "angle")
    elif isinstance(element, cheetah.VerticalCorrector):
        m[3][6] = ctx.param(element, "angle")
    else:
        m[1][6] = ctx.param(element, "horizontal_angle")
        m[3][6] = ctx.param(element, "vertical_angle")
    return m


def thin_diagnostic(element: cheetah.Element, ctx: TraceContext) -> Map:
    """Marker, screen or BPM: the identity (a point where the beam may be observed).

    :raises UnsupportedElementError: For an active, blocking screen (no beam passes it).
    """
    if getattr(element, "is_active", False) and getattr(element, "is_blocking", False):
        raise UnsupportedElementError(
            f"{element.name} is an active, blocking screen: no beam passes it. Deactivate it "
            "or observe the beam there."
        )
    return eye()


_BUILDERS: list[tuple[type, Callable[[cheetah.Element, TraceContext], Map]]] = [
    (cheetah.Drift, drift),
    (cheetah.Quadrupole, quadrupole),
    (cheetah.Dipole, dipole),
    (cheetah.HorizontalCorrector, corrector),
    (cheetah.VerticalCorrector, corrector),
    (cheetah.CombinedCorrector, corrector),
    (cheetah.Marker, thin_diagnostic),
    (cheetah.Screen, thin_diagnostic),
    (cheetah.BPM, thin_diagnostic),
]


def element_map(element: cheetah.Element, ctx: TraceContext) -> Map:
    """Traced first-order map of ``element``.

    :raises UnsupportedElementError: For element types outside :data:`SUPPORTED` or
        non-linear tracking methods, naming the element.
    """
    for cls, builder in _BUILDERS:
        if isinstance(element, cls):
            _check_linear(element)
            return builder(element, ctx)
    raise UnsupportedElementError(
        f"{element.name} ({type(element).__name__}) is not supported by the compiled map "
        f"(supported: {', '.join(c.__name__ for c in SUPPORTED)}). Track this lattice with "
        "backend='cheetah' (ParameterBeam) or backend='cheetah-particles'."
    )
