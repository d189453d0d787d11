"""The compiled fast map (:mod:`accelrl.physics.compiled`) against Cheetah's own tracking.

Cheetah is the physics reference (DESIGN.md, decision 1). The reference used here,
:func:`cheetah_moments`, drives Cheetah directly (element attributes set to vectorised
tensors, ``ParameterBeam.from_parameters``, ``Segment.track``) and does not go through
:mod:`accelrl.physics.backends`, so the backend wrapper is tested too, not trusted.

Relative deviations (see :func:`transverse_rel_dev`, :func:`moments_rel_dev`):

* centroids ``mu_i`` are compared to ``max(|mu_i|, sigma_i)`` of the reference, because a
  centroid that happens to cross zero has no meaningful relative error of its own; the
  beam size is the physical scale on which a centroid error matters;
* rms sizes ``sigma_i`` are compared to themselves;
* covariance entries ``cov_ij`` are compared to ``sqrt(cov_ii cov_jj)``, the largest value
  they can take (Cauchy-Schwarz), so near-zero correlations do not blow the ratio up.

With these definitions both codes evaluate the same float64 linear algebra, so the
tolerance :data:`RTOL` = 1e-9 (DESIGN.md) is ~3 orders of magnitude above what is observed
(<= 1e-12 on covariance entries, ~1e-13 on the transverse reading).
"""

from __future__ import annotations

import copy
import math
import pickle

import cheetah
import numpy as np
import pytest
import torch

from accelrl.physics import (
    ARES_EA_KNOBS,
    ARES_EA_SCREEN,
    INCOMING,
    BeamMoments,
    UnsupportedElementError,
    ares_ea_segment,
    compile,
    make_beamline,
)

F64 = torch.float64
#: Relative agreement required between the fast map and Cheetah in float64 (DESIGN.md).
RTOL = 1e-9
#: numpy / scalar / torch evaluations of the same generated program: rounding only.
RTOL_NUMERIC_BACKENDS = 1e-12

#: ARES-EA actuator ranges [Q1, Q2, CV, Q3, CH] (1/m^2, rad), as in the RL-vs-BO studies.
ARES_KNOB_LOW = (-72.0, -72.0, -6.1782e-3, -72.0, -6.1782e-3)
ARES_KNOB_HIGH = (72.0, 72.0, 6.1782e-3, 72.0, 6.1782e-3)
#: Incoming-beam ranges, columns INCOMING: energy [eV], mu [m, rad], sigma [m, rad, m, 1].
INCOMING_LOW = (80e6, -1e-3, -1e-4, -1e-3, -1e-4, 10e-6, 1e-6, 10e-6, 1e-6, 1e-6, 1e-4)
INCOMING_HIGH = (160e6, 1e-3, 1e-4, 1e-3, 1e-4, 500e-6, 50e-6, 500e-6, 50e-6, 50e-6, 1e-3)
#: Element misalignment range [m].
MISALIGNMENT = 400e-6
#: Electron with its float64 rest energy 510998.95069 eV, the species Cheetah's float64
#: ``ParameterBeam.from_parameters`` uses. (``cheetah.Species("electron")`` without a dtype is
#: float32, 510998.9375 eV; see :func:`test_default_species_is_the_float64_electron`.)
ELECTRON = cheetah.Species("electron", dtype=torch.float64)


# ---------------------------------------------------------------------------- helpers
def uniform(gen: torch.Generator, low, high, n: int) -> torch.Tensor:
    """``[n, len(low)]`` uniform samples between ``low`` and ``high`` (float64)."""
    low_t = torch.as_tensor(low, dtype=F64)
    high_t = torch.as_tensor(high, dtype=F64)
    return low_t + (high_t - low_t) * torch.rand(n, len(low_t), generator=gen, dtype=F64)


def sample_incoming(gen: torch.Generator, n: int) -> torch.Tensor:
    return uniform(gen, INCOMING_LOW, INCOMING_HIGH, n)


def sample_misalignments(gen: torch.Generator, n: int, columns: int) -> torch.Tensor:
    return uniform(gen, (-MISALIGNMENT,) * columns, (MISALIGNMENT,) * columns, n)


def sample_ares(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knobs ``[n, 5]``, incoming beams ``[n, 11]``, misalignments ``[n, 8]`` of ARES-EA."""
    return (
        uniform(gen, ARES_KNOB_LOW, ARES_KNOB_HIGH, n),
        sample_incoming(gen, n),
        sample_misalignments(gen, n, 8),
    )


def cheetah_moments(
    segment: cheetah.Segment,
    knobs: list[tuple[str, str]],
    observe: str | None,
    misaligned: list[str],
    k: torch.Tensor,
    incoming: torch.Tensor,
    misalignments: torch.Tensor,
    species: cheetah.Species | None = None,
) -> BeamMoments:
    """Reference: Cheetah ``ParameterBeam`` tracking, driven directly (no accelrl backend).

    Knobs and misalignments are set as vectorised tensors on a deep copy of the segment.
    The beam is read at the entrance of ``observe``: a BPM's centroid comes from Cheetah's
    own ``BPM.reading``; a screen's misalignment is subtracted here, because Cheetah 0.8's
    ``Screen`` cannot broadcast a vectorised misalignment against a vectorised beam (the
    scalar case is checked against ``Screen.get_read_beam()`` in
    :func:`test_screen_misalignment_shifts_the_reading`).
    """
    flat = copy.deepcopy(segment.flattened())
    elements = list(flat.elements)
    names = [e.name for e in elements]
    stop = names.index(observe) if observe is not None else len(elements)
    observed = elements[stop] if observe is not None else None
    by_name = {e.name: e for e in elements}
    for i, (name, attribute) in enumerate(knobs):
        setattr(by_name[name], attribute, k[:, i])
    offset = incoming.new_zeros(len(incoming), 2)
    if isinstance(observed, cheetah.Screen):
        offset = offset + observed.misalignment.detach()
    for i, name in enumerate(misaligned):
        value = misalignments[:, 2 * i : 2 * i + 2]
        if isinstance(by_name[name], cheetah.Screen) and name == observe:
            offset = value
        else:
            by_name[name].misalignment = value
    tracked = elements[:stop]
    if isinstance(observed, cheetah.BPM):
        observed.is_active = True
        tracked.append(observed)
    beam = cheetah.ParameterBeam.from_parameters(
        **{name: incoming[:, i] for i, name in enumerate(INCOMING)},
        species=species,
        dtype=F64,
    )
    out = cheetah.Segment(tracked).track(beam) if tracked else beam
    mu = out.mu[..., :6].expand(len(incoming), 6).clone()
    cov = out.cov[..., :6, :6].expand(len(incoming), 6, 6)
    if isinstance(observed, cheetah.BPM):
        mu[:, 0], mu[:, 2] = observed.reading[..., 0], observed.reading[..., 1]
    else:
        mu[:, 0] -= offset[:, 0]
        mu[:, 2] -= offset[:, 1]
    return BeamMoments(mu, cov)


def cheetah_transverse(moments: BeamMoments) -> torch.Tensor:
    """``(mu_x, sigma_x, mu_y, sigma_y)`` of reference moments."""
    return torch.stack(
        [
            moments.mu[:, 0],
            moments.cov[:, 0, 0].sqrt(),
            moments.mu[:, 2],
            moments.cov[:, 2, 2].sqrt(),
        ],
        dim=-1,
    )


def transverse_rel_dev(fast: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``[B, 4]`` deviations; centroids over ``max(|mu|, sigma)``, sizes over themselves."""
    scale = torch.stack(
        [
            torch.maximum(ref[:, 0].abs(), ref[:, 1]),
            ref[:, 1],
            torch.maximum(ref[:, 2].abs(), ref[:, 3]),
            ref[:, 3],
        ],
        dim=-1,
    )
    return (fast - ref).abs() / scale


def moments_rel_dev(fast: BeamMoments, ref: BeamMoments) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, 6], [B, 6, 6])`` deviations of centroids and covariance (see module doc)."""
    sigma = ref.cov.diagonal(dim1=-2, dim2=-1).sqrt()
    mu = (fast.mu - ref.mu).abs() / torch.maximum(ref.mu.abs(), sigma)
    cov = (fast.cov - ref.cov).abs() / (sigma[:, :, None] * sigma[:, None, :])
    return mu, cov


def assert_agrees(beamline, segment, k, incoming, misalignments, species=None) -> None:
    """Transverse reading and full moments agree with Cheetah to :data:`RTOL`."""
    ref = cheetah_moments(
        segment,
        beamline.knobs,
        beamline.observe,
        beamline.misaligned,
        k,
        incoming,
        misalignments,
        species,
    )
    with torch.no_grad():
        fast = beamline(k, incoming, misalignments)
        fast_full = beamline(k, incoming, misalignments, full=True)
    dev = transverse_rel_dev(fast, cheetah_transverse(ref))
    dev_mu, dev_cov = moments_rel_dev(fast_full, ref)
    assert torch.isfinite(fast).all() and torch.isfinite(fast_full.cov).all()
    assert dev.max() < RTOL, f"transverse max rel. dev. {dev.max():.3g} per column {dev.amax(0)}"
    assert dev_mu.max() < RTOL, f"centroid max rel. dev. {dev_mu.max():.3g}"
    assert dev_cov.max() < RTOL, f"covariance max rel. dev. {dev_cov.max():.3g}"


def cheetah_gradient(segment, beamline, k, b, m, column: int, step: float) -> torch.Tensor:
    """``[B]`` central difference of Cheetah's summed transverse reading w.r.t. knob ``column``."""
    delta = torch.zeros_like(k)
    delta[:, column] = step
    args = (segment, beamline.knobs, beamline.observe, beamline.misaligned)
    plus = cheetah_transverse(cheetah_moments(*args, k + delta, b, m))
    minus = cheetah_transverse(cheetah_moments(*args, k - delta, b, m))
    return ((plus - minus) / (2 * step)).sum(-1)


# ---------------------------------------------------------------------------- lattices
def t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


def kitchen_sink_segment() -> cheetah.Segment:
    """Every supported element type, with tilts, edges, fringe fields and misalignments."""
    kw = {"dtype": F64}
    inner = cheetah.Segment(
        [
            cheetah.Quadrupole(
                length=t(0.2),
                k1=t(3.0),
                tilt=t(0.3),
                misalignment=torch.tensor((1e-4, -2e-4), **kw),
                name="Q2",
                **kw,
            ),
            cheetah.BPM(name="BPM1", misalignment=torch.tensor((3e-5, 1e-5), **kw), **kw),
            cheetah.CombinedCorrector(length=t(0.05), name="CC1", **kw),
        ],
        name="INNER",
    )
    return cheetah.Segment(
        [
            cheetah.Marker(name="START"),
            cheetah.Drift(length=t(0.3), name="D1", **kw),
            cheetah.Quadrupole(length=t(0.15), k1=t(-5.0), name="Q1", **kw),
            cheetah.Drift(length=t(0.2), name="D2", **kw),
            cheetah.Dipole(
                length=t(0.8),
                angle=t(0.2),
                k1=t(0.5),
                dipole_e1=t(0.1),
                dipole_e2=t(0.05),
                fringe_integral=t(0.5),
                fringe_integral_exit=t(0.4),
                gap=t(0.03),
                tilt=t(0.1),
                name="B1",
                **kw,
            ),
            cheetah.HorizontalCorrector(length=t(0.02), name="HC1", **kw),
            inner,
            cheetah.Screen(name="SCR0", misalignment=torch.tensor((2e-4, 2e-4), **kw), **kw),
            cheetah.RBend(
                length=t(0.5),
                angle=t(-0.15),
                k1=t(-0.3),
                rbend_e1=t(0.02),
                rbend_e2=t(-0.04),
                fringe_integral=t(0.3),
                gap=t(0.02),
                tilt=t(math.pi / 2),
                name="RB1",
                **kw,
            ),
            cheetah.VerticalCorrector(length=t(0.0), name="VC1", **kw),
            cheetah.Drift(length=t(0.6), name="D3", **kw),
            cheetah.Screen(
                name="SCREEN",
                misalignment=torch.tensor((-5e-5, 7e-5), **kw),
                is_active=True,
                **kw,
            ),
            cheetah.Drift(length=t(1.0), name="D4", **kw),
        ],
        name="KITCHEN_SINK",
    )


#: Knobs of :func:`kitchen_sink_segment` and their ranges ``(low, high)``.
KITCHEN_SINK_KNOBS: dict[tuple[str, str], tuple[float, float]] = {
    ("Q1", "k1"): (-30.0, 30.0),
    ("B1", "angle"): (-0.3, 0.3),
    ("B1", "k1"): (-1.0, 1.0),
    ("B1", "dipole_e1"): (-0.2, 0.2),
    ("B1", "tilt"): (-0.5, 0.5),
    ("HC1", "angle"): (-5e-3, 5e-3),
    ("Q2", "k1"): (-30.0, 30.0),
    ("Q2", "tilt"): (-1.0, 1.0),
    ("CC1", "horizontal_angle"): (-5e-3, 5e-3),
    ("CC1", "vertical_angle"): (-5e-3, 5e-3),
    ("RB1", "angle"): (-0.3, 0.3),
    ("RB1", "gap"): (0.0, 0.05),
    ("VC1", "angle"): (-5e-3, 5e-3),
    ("D3", "length"): (0.1, 1.0),
}

#: Knob ranges of the random lattices, by (element type, attribute).
_RANDOM_KNOB_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("quad", "k1"): (-50.0, 50.0),
    ("quad", "tilt"): (-math.pi, math.pi),
    ("quad", "length"): (0.05, 0.4),
    ("drift", "length"): (0.05, 1.0),
    ("bend", "angle"): (-0.4, 0.4),
    ("bend", "k1"): (-2.0, 2.0),
    ("bend", "tilt"): (-math.pi, math.pi),
    ("bend", "dipole_e1"): (-0.3, 0.3),
    ("bend", "dipole_e2"): (-0.3, 0.3),
    ("bend", "fringe_integral"): (0.0, 0.7),
    ("bend", "fringe_integral_exit"): (0.0, 0.7),
    ("bend", "gap"): (0.0, 0.06),
    ("bend", "length"): (0.2, 1.2),
    ("corrector", "angle"): (-5e-3, 5e-3),
    ("corrector", "horizontal_angle"): (-5e-3, 5e-3),
    ("corrector", "vertical_angle"): (-5e-3, 5e-3),
    ("corrector", "length"): (0.0, 0.1),
}
_PRIMARY = {
    "quad": ["k1"],
    "bend": ["angle"],
    "hcor": ["angle"],
    "vcor": ["angle"],
    "ccor": ["horizontal_angle", "vertical_angle"],
    "drift": [],
}
_SECONDARY = {
    "quad": ["tilt", "length"],
    "bend": [
        "k1",
        "length",
        "tilt",
        "dipole_e1",
        "dipole_e2",
        "fringe_integral",
        "fringe_integral_exit",
        "gap",
    ],
    "hcor": ["length"],
    "vcor": ["length"],
    "ccor": ["length"],
    "drift": ["length"],
}
_KINDS = ("drift", "quad", "dipole", "rbend", "hcor", "vcor", "ccor", "marker", "bpm", "screen")


def random_lattice(rng: np.random.Generator, index: int):
    """A random segment of every supported element type, with random knobs.

    :return: ``(segment, knobs, (low, high), observe, misalign)``; ``misalign`` is ``None``
        (the default inputs) or an explicit list.
    """
    kw = {"dtype": F64}

    def u(low: float, high: float) -> torch.Tensor:
        return t(float(rng.uniform(low, high)))

    def mis() -> torch.Tensor:
        return torch.tensor(rng.uniform(-MISALIGNMENT, MISALIGNMENT, 2), **kw)

    def element(kind: str, name: str) -> cheetah.Element:
        if kind == "drift":
            return cheetah.Drift(length=u(0.05, 1.0), name=name, **kw)
        if kind == "quad":
            tilt = [0.0, math.pi / 4, float(rng.uniform(-math.pi, math.pi))][rng.integers(3)]
            return cheetah.Quadrupole(
                length=u(0.05, 0.4),
                k1=u(-50, 50),
                tilt=t(tilt),
                misalignment=mis(),
                name=name,
                **kw,
            )
        if kind in ("dipole", "rbend"):
            tilt = [0.0, math.pi / 2, float(rng.uniform(-math.pi, math.pi))][rng.integers(3)]
            common = dict(
                length=u(0.2, 1.2),
                angle=u(-0.4, 0.4),
                k1=u(-2, 2) if rng.random() < 0.7 else t(0.0),
                tilt=t(tilt),
                gap=u(0.0, 0.06),
                fringe_integral=u(0.0, 0.7),
                name=name,
                **kw,
            )
            if rng.random() < 0.5:
                common["fringe_integral_exit"] = u(0.0, 0.7)
            if kind == "dipole":
                return cheetah.Dipole(dipole_e1=u(-0.3, 0.3), dipole_e2=u(-0.3, 0.3), **common)
            return cheetah.RBend(rbend_e1=u(-0.1, 0.1), rbend_e2=u(-0.1, 0.1), **common)
        if kind == "hcor":
            return cheetah.HorizontalCorrector(
                length=u(0, 0.1), angle=u(-5e-3, 5e-3), name=name, **kw
            )
        if kind == "vcor":
            return cheetah.VerticalCorrector(
                length=u(0, 0.1), angle=u(-5e-3, 5e-3), name=name, **kw
            )
        if kind == "ccor":
            return cheetah.CombinedCorrector(
                length=u(0, 0.1),
                horizontal_angle=u(-5e-3, 5e-3),
                vertical_angle=u(-5e-3, 5e-3),
                name=name,
                **kw,
            )
        if kind == "marker":
            return cheetah.Marker(name=name)
        if kind == "bpm":
            return cheetah.BPM(
                is_active=bool(rng.random() < 0.5), misalignment=mis(), name=name, **kw
            )
        return cheetah.Screen(  # an upstream screen the beam passes through
            is_active=bool(rng.random() < 0.5), misalignment=mis(), name=name, **kw
        )

    kinds = list(rng.permutation(_KINDS)) + list(rng.choice(_KINDS, size=rng.integers(0, 6)))
    elements: list[cheetah.Element] = []
    for i, kind in enumerate(kinds):
        elements.append(element(str(kind), f"L{index}_{kind.upper()}{i}"))
        if rng.random() < 0.5:
            elements.append(element("drift", f"L{index}_DRIFT{i}_B"))

    observe_kind = ("screen", "screen", "screen", "bpm", None)[rng.integers(5)]
    observe = None
    if observe_kind is not None:
        observe = f"L{index}_OBSERVE"
        obs = element(observe_kind, observe)
        obs.is_active = True
        elements.append(obs)
        for j in range(rng.integers(0, 3)):  # downstream of the observation point: ignored
            elements.append(element(str(rng.choice(_KINDS)), f"L{index}_AFTER{j}"))
    if rng.random() < 0.3:  # nested segments are flattened
        cut = int(rng.integers(1, len(elements)))
        elements = elements[:cut] + [cheetah.Segment(elements[cut:], name=f"L{index}_SUB")]
    segment = cheetah.Segment(elements, name=f"RANDOM{index}")

    flat = list(segment.flattened().elements)
    stop = [e.name for e in flat].index(observe) if observe is not None else len(flat)
    knobs, low, high = [], [], []
    for e in flat[:stop]:
        kind = {
            cheetah.Drift: "drift",
            cheetah.Quadrupole: "quad",
            cheetah.Dipole: "bend",
            cheetah.RBend: "bend",
            cheetah.HorizontalCorrector: "hcor",
            cheetah.VerticalCorrector: "vcor",
            cheetah.CombinedCorrector: "ccor",
        }.get(type(e))
        if kind is None:
            continue
        attributes = [a for a in _PRIMARY[kind] if rng.random() < 0.85]
        attributes += [a for a in _SECONDARY[kind] if rng.random() < 0.15]
        family = kind if kind in ("quad", "bend", "drift") else "corrector"
        for attribute in attributes:
            knobs.append((e.name, attribute))
            lo, hi = _RANDOM_KNOB_RANGES[(family, attribute)]
            low.append(lo)
            high.append(hi)

    misalign = None
    if rng.random() < 0.5:
        candidates = [
            e.name for e in flat[:stop] if isinstance(e, (cheetah.Quadrupole, cheetah.BPM))
        ]
        misalign = [n for n in candidates if rng.random() < 0.6]
        if observe is not None and rng.random() < 0.7:
            misalign.append(observe)
    return segment, knobs, (low, high), observe, misalign


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ares() -> tuple[cheetah.Segment, object]:
    segment = ares_ea_segment()
    return segment, compile(segment, ARES_EA_KNOBS, observe=ARES_EA_SCREEN)


@pytest.fixture(scope="module")
def kitchen_sink() -> tuple[cheetah.Segment, object]:
    segment = kitchen_sink_segment()
    return segment, compile(segment, list(KITCHEN_SINK_KNOBS), observe="SCREEN")


def sample_kitchen_sink(gen: torch.Generator, n: int):
    low, high = zip(*KITCHEN_SINK_KNOBS.values(), strict=True)
    # default inputs: Q1, Q2 and SCREEN -> 6 columns
    return uniform(gen, low, high, n), sample_incoming(gen, n), sample_misalignments(gen, n, 6)


# ---------------------------------------------------------------------------- agreement
def test_ares_ea_agrees_with_cheetah_on_random_settings(ares) -> None:
    """1000 random ARES-EA settings, beams and misalignments: |dev| < 1e-9 relative."""
    segment, beamline = ares
    assert beamline.misalignment_names == [
        "AREAMQZM1.x",
        "AREAMQZM1.y",
        "AREAMQZM2.x",
        "AREAMQZM2.y",
        "AREAMQZM3.x",
        "AREAMQZM3.y",
        "AREABSCR1.x",
        "AREABSCR1.y",
    ]
    gen = torch.Generator().manual_seed(20240611)
    assert_agrees(beamline, segment, *sample_ares(gen, 1000))


def test_random_lattices_agree_with_cheetah() -> None:
    """20 random lattices x 50 settings = 1000 cases over every supported element type."""
    rng = np.random.default_rng(12345)
    gen = torch.Generator().manual_seed(12345)
    seen: set[type] = set()
    cases = 0
    for index in range(20):
        segment, knobs, (low, high), observe, misalign = random_lattice(rng, index)
        beamline = compile(segment, knobs, observe=observe, misalign=misalign)
        n = 50
        k = uniform(gen, low, high, n) if knobs else torch.empty(n, 0, dtype=F64)
        m = sample_misalignments(gen, n, len(beamline.misalignment_names))
        assert_agrees(beamline, segment, k, sample_incoming(gen, n), m)
        flat = list(segment.flattened().elements)
        stop = [e.name for e in flat].index(observe) if observe is not None else len(flat)
        seen.update(type(e) for e in flat[: stop + 1])
        cases += n
    assert cases >= 1000
    required = {
        cheetah.Drift,
        cheetah.Quadrupole,
        cheetah.Dipole,
        cheetah.RBend,
        cheetah.HorizontalCorrector,
        cheetah.VerticalCorrector,
        cheetah.CombinedCorrector,
        cheetah.Marker,
        cheetah.BPM,
        cheetah.Screen,
    }
    assert required <= seen, f"not covered: {required - seen}"


def test_kitchen_sink_agrees_with_cheetah(kitchen_sink) -> None:
    segment, beamline = kitchen_sink
    gen = torch.Generator().manual_seed(7)
    assert_agrees(beamline, segment, *sample_kitchen_sink(gen, 200))


def test_cheetah_backend_matches_fast_map(ares, kitchen_sink) -> None:
    """``make_beamline(backend="cheetah")`` (what envs use for fidelity runs) agrees too."""
    gen = torch.Generator().manual_seed(3)
    for (segment, compiled), sample, observe in (
        (ares, sample_ares, ARES_EA_SCREEN),
        (kitchen_sink, sample_kitchen_sink, "SCREEN"),
    ):
        fast = make_beamline(segment, compiled.knobs, observe=observe, backend="fast")
        backend = make_beamline(segment, compiled.knobs, observe=observe, backend="cheetah")
        k, b, m = sample(gen, 100)
        with torch.no_grad():
            ref = backend(k, b, m)
            ref_full = backend(k, b, m, full=True)
            dev = transverse_rel_dev(fast(k, b, m), ref)
            dev_mu, dev_cov = moments_rel_dev(fast(k, b, m, full=True), ref_full)
        assert max(dev.max(), dev_mu.max(), dev_cov.max()) < RTOL
        assert np.allclose(
            backend.evaluate(k.numpy(), b.numpy(), m.numpy()), ref.numpy(), rtol=0, atol=0
        )


def test_proton_species_agrees_with_cheetah() -> None:
    segment = ares_ea_segment()
    proton = cheetah.Species("proton", dtype=F64)
    beamline = compile(segment, ARES_EA_KNOBS, observe=ARES_EA_SCREEN, species=proton)
    gen = torch.Generator().manual_seed(11)
    k, b, m = sample_ares(gen, 100)
    b[:, 0] = 1.0e9 + 1.0e9 * torch.rand(100, generator=gen, dtype=F64)  # total energy [eV] > m_p
    assert_agrees(beamline, segment, k, b, m, species=proton)


def test_default_species_is_the_float64_electron() -> None:
    segment = ares_ea_segment()
    beamline = compile(segment, ARES_EA_KNOBS, observe=ARES_EA_SCREEN)
    assert float(beamline.species.mass_eV) == float(ELECTRON.mass_eV)
    gen = torch.Generator().manual_seed(20240611)
    assert_agrees(beamline, segment, *sample_ares(gen, 1000))


def test_default_misalignments_are_the_stored_ones() -> None:
    """Without a misalignment input the values stored in the segment are used."""
    segment = kitchen_sink_segment()
    beamline = compile(segment, [("Q1", "k1")], observe="SCREEN", species=ELECTRON)
    expected = [0.0, 0.0, 1e-4, -2e-4, -5e-5, 7e-5]  # Q1, Q2 (stored), SCREEN (stored)
    assert beamline.misalignment_names == ["Q1.x", "Q1.y", "Q2.x", "Q2.y", "SCREEN.x", "SCREEN.y"]
    assert beamline.default_misalignments.tolist() == pytest.approx(expected, rel=1e-15)
    gen = torch.Generator().manual_seed(5)
    k = uniform(gen, (-30.0,), (30.0,), 20)
    b = sample_incoming(gen, 20)
    m = beamline.default_misalignments.expand(20, 6)
    assert torch.equal(beamline(k, b), beamline(k, b, m))
    assert_agrees(beamline, segment, k, b, m)


def test_elements_downstream_of_observe_are_ignored() -> None:
    """Even an unsupported element after the observation point does not matter."""
    kw = {"dtype": F64}
    segment = cheetah.Segment(
        [
            cheetah.Drift(length=t(1.0), name="D", **kw),
            cheetah.BPM(name="BPM", **kw),
            cheetah.Solenoid(length=t(0.2), k=t(1.0), name="SOL", **kw),
        ]
    )
    beamline = compile(segment, [("D", "length")], observe="BPM", species=ELECTRON)
    gen = torch.Generator().manual_seed(0)
    assert_agrees(
        beamline,
        segment,
        uniform(gen, (0.1,), (2.0,), 10),
        sample_incoming(gen, 10),
        sample_misalignments(gen, 10, 2),
    )


# ---------------------------------------------------------------------------- k1 = 0
@pytest.mark.parametrize("k1", [0.0, 1e-12, -1e-12])
def test_zero_and_tiny_k1_agree_and_have_finite_gradients(ares, kitchen_sink, k1: float) -> None:
    """The removable singularities at k1 = 0 (and dipole angle = 0) are handled exactly.

    Values agree with Cheetah to 1e-9; gradients are finite and equal the central finite
    difference of Cheetah's own tracking (step 1e-4 1/m^2 or rad; truncation error of the
    difference quotient ~h^2 ~ 1e-8 relative, hence the 1e-6 tolerance).
    """
    gen = torch.Generator().manual_seed(99)
    for (segment, beamline), columns in (
        (ares, [0, 1, 3]),  # all three quadrupoles
        (kitchen_sink, [0, 1, 2, 6, 10]),  # Q1.k1, B1.angle, B1.k1, Q2.k1, RB1.angle
    ):
        sample = sample_ares if beamline.knobs[0][0] == "AREAMQZM1" else sample_kitchen_sink
        k, b, m = sample(gen, 4)
        k[:, columns] = k1
        assert_agrees(beamline, segment, k, b, m)

        k = k.clone().requires_grad_(True)
        out = beamline(k, b, m)
        full = beamline(k, b, m, full=True)
        (grad,) = torch.autograd.grad(out.sum(), k, retain_graph=True)
        (grad_full,) = torch.autograd.grad(full.mu.sum() + full.cov.sum(), k)
        assert torch.isfinite(grad).all() and torch.isfinite(grad_full).all()

        for column in columns:
            numeric = cheetah_gradient(segment, beamline, k.detach(), b, m, column, step=1e-4)
            scale = numeric.abs().max().clamp_min(1e-30)
            assert torch.allclose(grad[:, column], numeric, rtol=0, atol=1e-6 * scale), column


# ---------------------------------------------------------------------------- gradients
def _gradcheck(beamline, k, b, m, k_scale, b_scale, m_scale, full_fast_mode=False) -> None:
    """gradcheck of the transverse reading and the full moments in O(1) units.

    Inputs are divided by typical scales (so gradcheck's finite-difference step 1e-6 is a
    relative step) and outputs normalised by the reference beam size (so its atol 1e-5 is
    a relative tolerance). ``full_fast_mode`` checks the 42 full-moment outputs along random
    directions (``gradcheck(fast_mode=True)``) instead of column by column, to save time.
    """
    with torch.no_grad():
        ref = beamline(k, b, m, full=True)
    sigma = ref.cov.diagonal(dim1=-2, dim2=-1).sqrt()
    size = torch.stack([sigma[:, 0], sigma[:, 0], sigma[:, 2], sigma[:, 2]], -1)

    def transverse(ku, bu, mu):
        return beamline(ku * k_scale, bu * b_scale, mu * m_scale) / size

    def full(ku, bu, mu):
        out = beamline(ku * k_scale, bu * b_scale, mu * m_scale, full=True)
        cov = out.cov / (sigma[:, :, None] * sigma[:, None, :])
        return torch.cat([out.mu / sigma, cov.flatten(-2)], dim=-1)

    inputs = tuple(
        (x / s).detach().requires_grad_(True) for x, s in ((k, k_scale), (b, b_scale), (m, m_scale))
    )
    assert torch.autograd.gradcheck(transverse, inputs)
    assert torch.autograd.gradcheck(full, inputs, fast_mode=full_fast_mode)


_B_SCALE = torch.tensor(
    [1e8, 1e-3, 1e-4, 1e-3, 1e-4, 1e-4, 1e-5, 1e-4, 1e-5, 1e-5, 1e-4], dtype=F64
)


def test_gradcheck_ares_ea(ares) -> None:
    _, beamline = ares
    gen = torch.Generator().manual_seed(1)
    k, b, m = sample_ares(gen, 2)
    k_scale = torch.tensor([10.0, 10.0, 1e-3, 10.0, 1e-3], dtype=F64)
    _gradcheck(beamline, k, b, m, k_scale, _B_SCALE, torch.full((8,), 1e-4, dtype=F64))


def test_gradcheck_kitchen_sink(kitchen_sink) -> None:
    _, beamline = kitchen_sink
    gen = torch.Generator().manual_seed(2)
    k, b, m = sample_kitchen_sink(gen, 1)  # 14 knobs + 11 beam + 6 misalignment columns
    k_scale = torch.tensor(
        [max(abs(lo), abs(hi)) for lo, hi in KITCHEN_SINK_KNOBS.values()], dtype=F64
    )
    m_scale = torch.full((6,), 1e-4, dtype=F64)
    _gradcheck(beamline, k, b, m, k_scale, _B_SCALE, m_scale, full_fast_mode=True)


# ---------------------------------------------------------------------------- screens
def test_screen_misalignment_shifts_the_reading(ares) -> None:
    """A screen misalignment moves the reading by exactly -misalignment, as Cheetah's Screen.

    Checked against Cheetah's own ``Screen`` (scalar misalignment, ``is_active=True``,
    ``get_read_beam()``) to 1e-9; the shift itself is exact up to one rounding of
    ``mu - dx`` (4 ulp of the larger operand); the sizes do not change at all.
    """
    _, beamline = ares
    gen = torch.Generator().manual_seed(17)
    k, b, m = sample_ares(gen, 5)
    for i in range(5):
        segment = ares_ea_segment()
        for (name, attribute), value in zip(ARES_EA_KNOBS, k[i], strict=True):
            setattr(getattr(segment, name), attribute, value.clone())
        for j, name in enumerate(beamline.misaligned):
            getattr(segment, name).misalignment = m[i, 2 * j : 2 * j + 2].clone()
        screen = getattr(segment, ARES_EA_SCREEN)
        assert screen.is_active
        beam = cheetah.ParameterBeam.from_parameters(
            **{name: b[i, c] for c, name in enumerate(INCOMING)}, dtype=F64
        )
        segment.track(beam)
        read = screen.get_read_beam()
        reference = torch.stack([read.mu_x, read.sigma_x, read.mu_y, read.sigma_y])[None]
        with torch.no_grad():
            fast = beamline(k[i : i + 1], b[i : i + 1], m[i : i + 1])
        assert transverse_rel_dev(fast, reference).max() < RTOL

        centred = m[i : i + 1].clone()
        centred[:, 6:] = 0.0
        with torch.no_grad():
            aligned = beamline(k[i : i + 1], b[i : i + 1], centred)
        dx, dy = m[i, 6], m[i, 7]
        for col, d in ((0, dx), (2, dy)):
            ulp = 4 * torch.finfo(F64).eps * max(abs(float(aligned[0, col])), abs(float(d)))
            assert abs(float(fast[0, col] - aligned[0, col] + d)) <= ulp
        assert torch.equal(fast[:, [1, 3]], aligned[:, [1, 3]])


def test_active_blocking_screen_upstream_is_rejected() -> None:
    segment = kitchen_sink_segment()
    segment.SCR0.is_active = True
    segment.SCR0.is_blocking = True
    with pytest.raises(UnsupportedElementError, match="SCR0"):
        compile(segment, [("Q1", "k1")], observe="SCREEN")


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make",
    [
        lambda: cheetah.Cavity(
            length=t(1.0), voltage=t(1e6), phase=t(0.0), frequency=t(1.3e9), name="CAV1", dtype=F64
        ),
        lambda: cheetah.Solenoid(length=t(0.2), k=t(1.0), name="SOL1", dtype=F64),
        lambda: cheetah.Sextupole(length=t(0.2), k2=t(10.0), name="SEXT1", dtype=F64),
    ],
    ids=["Cavity", "Solenoid", "Sextupole"],
)
def test_unsupported_element_raises(make) -> None:
    element = make()
    segment = cheetah.Segment(
        [cheetah.Drift(length=t(0.5), name="D", dtype=F64), element, cheetah.Marker(name="END")]
    )
    with pytest.raises(UnsupportedElementError) as info:
        compile(segment, [("D", "length")], observe="END")
    message = str(info.value)
    assert element.name in message and type(element).__name__ in message
    assert "backend='cheetah'" in message
    assert isinstance(info.value, ValueError)


def test_nonlinear_tracking_method_raises() -> None:
    segment = ares_ea_segment()
    segment.AREAMQZM2.tracking_method = "drift_kick_drift"
    with pytest.raises(UnsupportedElementError, match="AREAMQZM2.*backend='cheetah'"):
        compile(segment, ARES_EA_KNOBS, observe=ARES_EA_SCREEN)


@pytest.mark.parametrize(
    ("knobs", "observe", "misalign", "match"),
    [
        ([("NOPE", "k1")], ARES_EA_SCREEN, None, "NOPE"),
        ([("AREAMQZM1", "angle")], ARES_EA_SCREEN, None, "AREAMQZM1.*'angle'.*allowed"),
        ([("AREAMQZM1", "k1"), ("AREAMQZM1", "k1")], ARES_EA_SCREEN, None, "duplicate"),
        ([("AREASOLA1", "length")], ARES_EA_SCREEN, None, "AREASOLA1.*allowed: none"),
        ([("AREAMCHM1", "angle")], "AREAMQZM3", None, "AREAMCHM1.*not upstream"),
        ([("AREAMQZM1", "k1")], "NOWHERE", None, "observe='NOWHERE'"),
        ([("AREAMQZM1", "k1")], ARES_EA_SCREEN, ["Drift_AREAMQZM1"], "cannot misalign"),
    ],
)
def test_bad_arguments_raise_value_error(knobs, observe, misalign, match) -> None:
    with pytest.raises(ValueError, match=match):
        compile(ares_ea_segment(), knobs, observe=observe, misalign=misalign)


def test_wrong_column_counts_raise_value_error(ares) -> None:
    _, beamline = ares
    gen = torch.Generator().manual_seed(4)
    k, b, m = sample_ares(gen, 3)
    bad = [
        (k[:, :4], b, m, "knobs must have 5 columns"),
        (k, b[:, :10], m, "incoming must have 11 columns"),
        (k, b, m[:, :7], "misalignments must have 8 columns"),
    ]
    for kk, bb, mm, match in bad:
        with pytest.raises(ValueError, match=match):
            beamline(kk, bb, mm)
        with pytest.raises(ValueError, match=match):
            beamline(kk, bb, mm, full=True)
        with pytest.raises(ValueError, match=match):
            beamline.evaluate(kk.numpy(), bb.numpy(), mm.numpy())


def test_wrong_column_counts_single_row(ares) -> None:
    _, beamline = ares
    gen = torch.Generator().manual_seed(4)
    k, b, m = sample_ares(gen, 1)
    for kk in (k[:, :4], torch.cat([k, k[:, :1]], dim=1)):
        with pytest.raises(ValueError, match="knobs must have 5 columns"):
            beamline.evaluate(kk.numpy(), b.numpy(), m.numpy())


# ---------------------------------------------------------------------------- numerics
def test_numpy_and_scalar_paths_agree_with_torch(ares, kitchen_sink) -> None:
    gen = torch.Generator().manual_seed(8)
    for (_, beamline), sample in ((ares, sample_ares), (kitchen_sink, sample_kitchen_sink)):
        k, b, m = sample(gen, 64)
        with torch.no_grad():
            reference = beamline(k, b, m).numpy()
        kn, bn, mn = k.numpy(), b.numpy(), m.numpy()
        batched = beamline.evaluate(kn, bn, mn)
        assert isinstance(batched, np.ndarray) and batched.shape == (64, 4)
        np.testing.assert_allclose(batched, reference, rtol=RTOL_NUMERIC_BACKENDS, atol=0)
        with torch.no_grad():  # without misalignments: the values stored in the segment
            stored = beamline(k, b).numpy()
        np.testing.assert_allclose(
            beamline.evaluate(kn, bn), stored, rtol=RTOL_NUMERIC_BACKENDS, atol=0
        )
        for i in range(8):
            single = beamline.evaluate(kn[i : i + 1], bn[i : i + 1], mn[i : i + 1])
            assert single.shape == (1, 4)
            np.testing.assert_allclose(single[0], reference[i], rtol=RTOL_NUMERIC_BACKENDS, atol=0)
            scalar = beamline.scalar(kn[i].tolist(), bn[i].tolist(), mn[i].tolist())
            assert all(isinstance(v, float) for v in scalar)
            np.testing.assert_allclose(scalar, reference[i], rtol=RTOL_NUMERIC_BACKENDS, atol=0)


def test_pickle_round_trip(ares, kitchen_sink) -> None:
    gen = torch.Generator().manual_seed(9)
    for (_, beamline), sample in ((ares, sample_ares), (kitchen_sink, sample_kitchen_sink)):
        clone = pickle.loads(pickle.dumps(beamline))
        assert clone.knob_names == beamline.knob_names
        assert clone.misalignment_names == beamline.misalignment_names
        k, b, m = sample(gen, 16)
        with torch.no_grad():
            assert torch.equal(clone(k, b, m), beamline(k, b, m))
            assert torch.equal(clone(k, b).cpu(), beamline(k, b).cpu())
            a, c = clone(k, b, m, full=True), beamline(k, b, m, full=True)
        assert torch.equal(a.mu, c.mu) and torch.equal(a.cov, c.cov)
        assert np.array_equal(
            clone.evaluate(k.numpy(), b.numpy(), m.numpy()),
            beamline.evaluate(k.numpy(), b.numpy(), m.numpy()),
        )


def test_strong_focusing_precision() -> None:
    kw = {"dtype": F64}
    segment = cheetah.Segment(
        [
            cheetah.Quadrupole(length=t(1.0), name="Q", **kw),
            cheetah.Drift(length=t(0.5), name="D", **kw),
            cheetah.Marker(name="END"),
        ]
    )
    beamline = compile(segment, [("Q", "k1")], observe="END", species=ELECTRON)
    k = torch.tensor([[400.0], [-400.0]], dtype=F64)  # sqrt|k1| L = 20 rad
    b = sample_incoming(torch.Generator().manual_seed(0), 2)
    assert_agrees(beamline, segment, k, b, torch.empty(2, 2, dtype=F64))


@pytest.mark.parametrize("element", ["quadrupole", "dipole"])
def test_length_knob_with_constant_strength(element: str) -> None:
    kw = {"dtype": F64}
    if element == "quadrupole":
        magnet = cheetah.Quadrupole(length=t(0.2), k1=t(10.0), name="M", **kw)
    else:
        magnet = cheetah.Dipole(length=t(0.5), angle=t(0.1), k1=t(-0.5), name="M", **kw)
    segment = cheetah.Segment(
        [magnet, cheetah.Drift(length=t(1.0), name="D", **kw), cheetah.Marker(name="END")]
    )
    beamline = compile(segment, [("M", "length")], observe="END", misalign=[], species=ELECTRON)
    gen = torch.Generator().manual_seed(0)
    k = uniform(gen, (0.1,), (0.6,), 20)
    assert_agrees(beamline, segment, k, sample_incoming(gen, 20), torch.empty(20, 0, dtype=F64))


def test_dispersion_gradient_finite_at_kappa_minus_one() -> None:
    kw = {"dtype": F64}
    segment = cheetah.Segment(
        [
            cheetah.Dipole(length=t(0.05), k1=t(-1.0), name="B", **kw),
            cheetah.Drift(length=t(1.0), name="D", **kw),
            cheetah.Marker(name="END"),
        ]
    )
    beamline = compile(segment, [("B", "angle")], observe="END")
    k = torch.zeros(1, 1, dtype=F64, requires_grad=True)
    b = sample_incoming(torch.Generator().manual_seed(0), 1)
    out = beamline(k, b, full=True)
    (grad,) = torch.autograd.grad(out.mu.sum() + out.cov.sum(), k)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------- particles
def test_particle_backend_agrees_within_monte_carlo_error(ares) -> None:
    """ParticleBeam tracking (100k particles) vs the fast map.

    With N = 1e5 Gaussian particles the standard error of an rms size is sigma/sqrt(2N)
    = 0.22 % and that of a centroid sigma/sqrt(N) = 0.32 % of sigma; the tolerances
    (sigma within 2 %, mu within 3 % of sigma) are ~9 standard errors.
    """
    segment, fast = ares
    particles = make_beamline(
        segment, ARES_EA_KNOBS, ARES_EA_SCREEN, backend="cheetah-particles", num_particles=100_000
    )
    gen = torch.Generator().manual_seed(10)
    k, b, m = sample_ares(gen, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = particles(k, b, m)
        expected = fast(k, b, m)
    sigma = expected[:, [1, 1, 3, 3]]
    assert ((sampled[:, [1, 3]] - expected[:, [1, 3]]).abs() / expected[:, [1, 3]]).max() < 0.02
    assert ((sampled[:, [0, 2]] - expected[:, [0, 2]]).abs() / sigma[:, [0, 2]]).max() < 0.03
