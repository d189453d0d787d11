"""Fidelity of the compiled fast map against Cheetah's ParameterBeam tracking on ARES-EA.

Draws random ARES-EA cases (quadrupoles +-72 1/m^2, steerers +-6.1782 mrad; incoming beams
80-160 MeV, centroids +-1 mm / +-0.1 mrad, sizes 10-500 um / 1-50 urad, bunch length
1-50 um, energy spread 1e-4..1e-3; quadrupole and screen misalignments +-400 um), evaluates
them with ``accelrl.physics.compile`` (float64, default arguments, as the environments use
it) and with Cheetah itself (``ParameterBeam.from_parameters`` + ``Segment.track``, batched
in chunks), and prints the maximum and median relative deviation per quantity:

* centroids over ``max(|mu|, sigma)`` of the reference (a centroid near zero is measured on
  the scale of the beam size);
* rms sizes over themselves;
* covariance entries ``cov_ij`` over ``sqrt(cov_ii cov_jj)``.

Target (DESIGN.md): max relative deviation < 1e-9. Ends with exactly one line of JSON.

    python benchmarks/fidelity.py [--cases 10000] [--seed 0] [--chunk 1000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import cheetah  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from accelrl.physics import (  # noqa: E402
    ARES_EA_KNOBS,
    ARES_EA_SCREEN,
    INCOMING,
    ares_ea_segment,
    compile,
)

F64 = torch.float64
KNOB_LOW = (-72.0, -72.0, -6.1782e-3, -72.0, -6.1782e-3)
KNOB_HIGH = (72.0, 72.0, 6.1782e-3, 72.0, 6.1782e-3)
INCOMING_LOW = (80e6, -1e-3, -1e-4, -1e-3, -1e-4, 10e-6, 1e-6, 10e-6, 1e-6, 1e-6, 1e-4)
INCOMING_HIGH = (160e6, 1e-3, 1e-4, 1e-3, 1e-4, 500e-6, 50e-6, 500e-6, 50e-6, 50e-6, 1e-3)
MISALIGNMENT = 400e-6  # [m]


def sample(rng: np.random.Generator, n: int, misalignment_columns: int):
    """Knobs ``[n, 5]``, incoming beams ``[n, 11]`` and misalignments ``[n, M]`` (float64)."""
    knobs = rng.uniform(KNOB_LOW, KNOB_HIGH, (n, len(KNOB_LOW)))
    incoming = rng.uniform(INCOMING_LOW, INCOMING_HIGH, (n, len(INCOMING_LOW)))
    misalignments = rng.uniform(-MISALIGNMENT, MISALIGNMENT, (n, misalignment_columns))
    return (torch.from_numpy(a) for a in (knobs, incoming, misalignments))


def cheetah_moments(
    segment: cheetah.Segment,
    misaligned: list[str],
    k: torch.Tensor,
    b: torch.Tensor,
    m: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu [B, 6], cov [B, 6, 6])`` read on the ARES-EA screen by Cheetah's own tracking.

    The elements up to the screen are tracked with vectorised knobs and misalignments; the
    screen's misalignment is subtracted from the centroid as ``Screen.get_read_beam()`` does
    (Cheetah 0.8's screen cannot broadcast a vectorised misalignment itself).
    """
    flat = copy.deepcopy(segment.flattened())
    by_name = {e.name: e for e in flat.elements}
    for i, (name, attribute) in enumerate(ARES_EA_KNOBS):
        setattr(by_name[name], attribute, k[:, i])
    offset = torch.zeros(len(b), 2, dtype=F64)
    for i, name in enumerate(misaligned):
        if name == ARES_EA_SCREEN:
            offset = m[:, 2 * i : 2 * i + 2]
        else:
            by_name[name].misalignment = m[:, 2 * i : 2 * i + 2]
    upstream = flat.subcell(end=ARES_EA_SCREEN, include_end=False)
    beam = cheetah.ParameterBeam.from_parameters(
        **{name: b[:, i] for i, name in enumerate(INCOMING)}, dtype=F64
    )
    out = upstream.track(beam)
    mu = out.mu[..., :6].clone()
    mu[:, 0] -= offset[:, 0]
    mu[:, 2] -= offset[:, 1]
    return mu, out.cov[..., :6, :6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="random cases (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    parser.add_argument("--chunk", type=int, default=1000, help="Cheetah batch size")
    args = parser.parse_args()
    if args.cases < 1 or args.chunk < 1:
        parser.error("--cases and --chunk must be >= 1")
    torch.set_num_threads(1)

    segment = ares_ea_segment()
    beamline = compile(segment, ARES_EA_KNOBS, observe=ARES_EA_SCREEN)
    rng = np.random.default_rng(args.seed)
    k, b, m = sample(rng, args.cases, len(beamline.misalignment_names))

    with torch.no_grad():  # warm-up: torch's one-time kernel initialisation is not timed
        beamline(k[:2], b[:2], m[:2])
        beamline(k[:2], b[:2], m[:2], full=True)
    cheetah_moments(segment, beamline.misaligned, k[:2], b[:2], m[:2])

    t_fast = t_ref = 0.0
    transverse_dev, mu_dev, cov_dev = [], [], []
    for start in range(0, args.cases, args.chunk):
        kc, bc, mc = (x[start : start + args.chunk] for x in (k, b, m))
        t0 = time.perf_counter()
        with torch.no_grad():
            fast = beamline(kc, bc, mc)
            fast_full = beamline(kc, bc, mc, full=True)
        t1 = time.perf_counter()
        mu, cov = cheetah_moments(segment, beamline.misaligned, kc, bc, mc)
        t2 = time.perf_counter()
        t_fast += t1 - t0
        t_ref += t2 - t1

        sigma = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        ref = torch.stack([mu[:, 0], sigma[:, 0], mu[:, 2], sigma[:, 2]], dim=-1)
        scale = torch.stack(
            [
                torch.maximum(mu[:, 0].abs(), sigma[:, 0]),
                sigma[:, 0],
                torch.maximum(mu[:, 2].abs(), sigma[:, 2]),
                sigma[:, 2],
            ],
            dim=-1,
        )
        transverse_dev.append((fast - ref).abs() / scale)
        mu_dev.append((fast_full.mu - mu).abs() / torch.maximum(mu.abs(), sigma))
        cov_dev.append(
            ((fast_full.cov - cov).abs() / (sigma[:, :, None] * sigma[:, None, :])).flatten(1)
        )

    transverse = torch.cat(transverse_dev)
    rows = [
        (name, transverse[:, i]) for i, name in enumerate(("mu_x", "sigma_x", "mu_y", "sigma_y"))
    ]
    rows.append(("centroid (6)", torch.cat(mu_dev).flatten()))
    rows.append(("covariance (6x6)", torch.cat(cov_dev).flatten()))

    print(f"ARES-EA, {args.cases} random cases (seed {args.seed}), float64, 1 thread")
    print(f"fast map {t_fast:.3f} s, Cheetah ParameterBeam {t_ref:.3f} s (batches of {args.chunk})")
    print(f"{'quantity':<18}{'max rel. dev.':>15}{'median rel. dev.':>19}")
    for name, dev in rows:
        print(f"{name:<18}{dev.max().item():>15.3e}{dev.median().item():>19.3e}")
    worst = max(dev.max().item() for _, dev in rows)
    print(f"target < 1e-9: {'met' if worst < 1e-9 else 'NOT met'}")
    print(json.dumps({"max_rel_dev": worst, "cases": args.cases}))


if __name__ == "__main__":
    main()
