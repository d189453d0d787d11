"""The screen camera and the control room's image processing, batched over environments.

## Image formation
The beam moments ``(mu_x, sigma_x, mu_y, sigma_y)`` on the screen define a Gaussian spot
whose ``signal`` photo-electrons per frame fall on a grid of ``W x H`` output pixels (the
task screen's resolution divided by the camera ``binning``; pixel size times ``binning``),
each pixel receiving the spot's integral over its area. The screen is finite: charge
outside it is lost. A frame pixel reads

    X = clip(round((e + r) / gain + dark_level), 0, 2**bit_depth - 1)   [DN]

with ``e`` Poisson photo-electrons (mean: spot + ``background``) and ``r`` Gaussian read
noise. A processed image is, as in the ARES control room (Kaiser et al., desy-ml/rl-vs-bo,
``backend.py``, ``EADOOCSBackend.capture_clean_screen_image``, ``average=5``): the per-pixel
median of ``frames`` beam frames minus the per-pixel median of ``frames`` background frames
(beam off), clipped to ``[0, 2**16 - 1]``.

## Readout (``method``)
Per axis the processed image is summed into a projection. ``"ares"`` is the control room's
algorithm (the same file, ``EADOOCSBackend.get_beam_parameters``): a ``min_filter`` (5 px)
minimum filter, then a ``uniform_filter`` (5 px) boxcar, both with nearest-edge padding;
the pixels at or above half the filtered maximum; ``mu`` is the centre of the first and last
of them, ``(centre - n / 2) * pixel`` (``y`` positive upwards), and ``sigma = (last -
first) / 2.355 * pixel``. An axis "fails" when more than ``off_screen_fraction`` (0.95) of
its pixels are at or above half maximum; the beam is reported **off the screen when both
axes fail** (``is_beam_on_screen`` there: ``not all(beam_parameter_compute_failed)``).
``"fit"`` fits ``a * exp(-(x - mu)^2 / (2 sigma^2)) + c`` to each (unfiltered) projection
by Levenberg-Marquardt, started from the ``"ares"`` values; ``"moments"`` takes the plain
first and second moments of each projection. The off-screen rule is the same for all three.

Measured behaviour (``tests/envs/test_world_camera.py``, ``docs/worlds.md``): on noise-free,
unclipped spots ``"fit"`` and ``"moments"`` agree with the true moments to well within one
pixel and 2 %; ``"ares"`` reports ``mu`` within one pixel (the published centre convention
puts it half a pixel from the pixel-centre position) but ``sigma`` about 2.1 px too small
(the minimum filter erodes each flank by 2 px, and ``last - first`` counts one pixel less
than the width above half maximum), so it is within 2 % only for ``sigma >~ 110 px``.
Failure modes: a spot cut by the screen edge reads as the part on the screen (centre pulled
inwards, size too small); saturated spots read too wide (the flat top widens the part above
half maximum); with little signal the pedestal of clipped background noise (``sum over a
column of max(0, noise)``) lifts the half-maximum level: sizes read too large, and when the
spot no longer stands out on both axes the beam is reported off the screen.

## Fast path (what the environments use)
Simulating every pixel of ``2 * frames`` frames costs ``2 * frames * W * H`` random numbers
per reading, far too much for thousands of environments. The environments therefore draw
the *projections* directly, with the statistics of the full pipeline:

1. :func:`pixel_table` computes, once per camera, the exact mean ``m(S)`` and variance
   ``v(S)`` of one processed pixel as a function of its spot signal ``S`` [DN]: the
   per-frame distribution (Poisson convolved with Gaussian read noise, rounded, clipped;
   a normal approximation for more than 400 photo-electrons), the distribution of the
   median of ``frames`` frames (the order-statistic formula ``I_F(h, h)``), the difference
   of the beam and background medians, and the clip at 0.
2. A projection sums independent pixels, so by the central limit theorem (``H`` or ``W``
   >= 100 terms) it is Gaussian with mean ``sum m`` and variance ``sum v`` along the summed
   axis. The sums are evaluated on :data:`BLOCKS` (16) blocks of rows/columns covering the
   spot's +-6 sigma on the screen (exact single rows for spots below ~1 px; block averages
   of the pixel-integrated profile otherwise) at :data:`PROFILE_COUNT` (32) nodes of the
   spot profile of the kept axis, and interpolated between them; the rest of the screen
   contributes ``m(0)`` and ``v(0)`` per pixel.
3. One standard normal per projection pixel (from :mod:`accelrl.envs.world.noise`).

What this leaves out: the (weak) correlation of the x and y projections, which share
pixels, and the pixel-to-pixel structure of a single realisation (only its projections
exist). :meth:`Camera.frames` simulates the full pipeline pixel by pixel (for validation,
rendering and particle histograms); the tests check that both give the same readout
statistics (means within 0.5 px), that the projection means equal the per-pixel sums to
2e-4 and the variances to 1.2 %.

Cost per reading: ``~2 * 2 * 32 * 16`` table lookups and ``~40`` passes over the ``W + H``
projection pixels per environment (``docs/worlds.md`` has the measured step times).

Its size (~640 lines): the pixel statistics, the three readouts and :class:`Camera` are one
model whose fast path must match its pixel-by-pixel pipeline, and docstrings (this derivation
above all) are over a quarter of it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from accelrl.envs.world.spec import CameraSpec

#: Number of row (column) blocks of the projection sums.
BLOCKS = 16
#: Half-width of the block window around the spot [sigma].
WINDOW = 6.0
#: Smallest non-zero node of the spot profile (fraction of its maximum).
PROFILE_MIN = 1e-7
#: Number of profile nodes: 0, then geometric from ``PROFILE_MIN`` to 1.
PROFILE_COUNT = 32
PROFILE_NODES = np.concatenate([[0.0], np.geomspace(PROFILE_MIN, 1.0, PROFILE_COUNT - 1)])
_PROFILE_LOG_STEP = math.log(1.0 / PROFILE_MIN) / (PROFILE_COUNT - 2)
#: Spacing of the pixel table in ``sqrt(signal / DN)``.
TABLE_STEP = 0.1
#: Environments per chunk of a reading (arrays of a chunk stay in the CPU cache).
CHUNK = 64
#: Largest photo-electron count whose Poisson distribution is used exactly.
EXACT_POISSON = 400.0
#: FWHM of a Gaussian in units of its sigma, as the control room rounds it.
FWHM_PER_SIGMA = 2.355
#: Clip of the processed image (uint16), as in the control room.
PROCESSED_MAX = 2**16 - 1


# ---------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Pixel grid of the camera image (binned).

    :param width: Pixels along x.
    :param height: Pixels along y (row 0 at the top, ``+y``).
    :param pixel: Output pixel size ``(x, y)`` [m].
    """

    width: int
    height: int
    pixel: tuple[float, float]

    @classmethod
    def of(
        cls, resolution: tuple[int, int], pixel_size: tuple[float, float], binning: int
    ) -> Geometry:
        """The binned grid of a screen of ``resolution`` sensor pixels of ``pixel_size`` [m].

        :raises ValueError: When ``binning`` does not divide the resolution.
        """
        if resolution[0] % binning or resolution[1] % binning:
            raise ValueError(f"binning {binning} does not divide the resolution {resolution}")
        return cls(
            resolution[0] // binning,
            resolution[1] // binning,
            (pixel_size[0] * binning, pixel_size[1] * binning),
        )

    @property
    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the screen [m]."""
        return self.width * self.pixel[0] / 2, self.height * self.pixel[1] / 2


# ---------------------------------------------------------------------------- one pixel
class PixelTable:
    """Mean and variance of one processed pixel vs its spot signal, on a grid uniform in
    ``sqrt(S)`` (fine near 0, where the clipped noise matters, coarser at large signals).

    :param step: Grid spacing in ``sqrt(S / DN)``.
    :param mean: ``m(S_k)`` [DN] at ``S_k = (k * step)**2``.
    :param var: ``v(S_k)`` [DN^2].
    """

    def __init__(self, step: float, mean: np.ndarray, var: np.ndarray) -> None:
        self.step = step
        self.signal = (np.arange(len(mean)) * step) ** 2
        self.mean = mean
        self.var = var
        # single precision: half the memory traffic; m and v are needed to ~1e-6 relative
        self._m, self._dm = mean[:-1].astype(np.float32), np.diff(mean).astype(np.float32)
        self._v, self._dv = var[:-1].astype(np.float32), np.diff(var).astype(np.float32)
        self._last = len(mean) - 2

    def lookup(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(m(s), v(s))`` for signals ``s`` [DN], linear between grid points, constant
        beyond the grid (single precision)."""
        u = np.sqrt(np.maximum(s.astype(np.float32), np.float32(0.0)))
        u *= np.float32(1.0 / self.step)
        np.minimum(u, np.float32(self._last + 1), out=u)
        i = u.astype(np.int32)
        np.minimum(i, self._last, out=i)
        w = u - i
        np.minimum(w, np.float32(1.0), out=w)
        return self._m[i] + w * self._dm[i], self._v[i] + w * self._dv[i]


def frame_cdf(cam: CameraSpec, electrons: float) -> tuple[int, np.ndarray]:
    """Distribution of one frame pixel receiving ``electrons`` photo-electrons on average.

    :return: ``(x0, F)`` with ``F[k] = P(X <= x0 + k)`` [DN]; ``F`` is 0 below ``x0`` (up
        to 1e-30) and 1 at its last entry.
    """
    full = cam.full_scale
    g, dark, sr = cam.gain, cam.dark_level, cam.read_noise
    spread = math.sqrt((electrons if cam.shot_noise else 0.0) + sr**2)
    lo = math.floor(dark + (electrons - 12.0 * spread) / g - 2.0)
    hi = math.ceil(dark + (electrons + 12.0 * spread) / g + 2.0)
    lo = min(max(lo, 0), full)
    x = np.arange(lo, max(min(hi, full), lo) + 1)
    t = (x + 0.5 - dark) * g  # X <= x  <=>  e + r < t
    if not cam.shot_noise:
        F = special.ndtr((t - electrons) / sr) if sr > 0 else (electrons < t).astype(float)
    elif electrons <= EXACT_POISSON:
        k = np.arange(0, math.ceil(electrons + 12.0 * math.sqrt(electrons) + 25.0) + 1)
        pmf = stats.poisson.pmf(k, electrons)
        if sr > 0:
            F = special.ndtr((t[:, None] - k[None, :]) / sr) @ pmf
        else:
            F = stats.poisson.cdf(np.ceil(t) - 1.0, electrons)
    else:  # normal approximation of Poisson + read noise (+ the lattice spacing of counts)
        F = special.ndtr((t - electrons) / math.sqrt(electrons + sr**2 + 1.0 / 12.0))
    F = np.clip(np.asarray(F, dtype=np.float64), 0.0, 1.0)
    F[-1] = 1.0  # the full scale, or 12 standard deviations above the mean
    return int(x[0]), F


def median_pmf(cam: CameraSpec, electrons: float) -> tuple[int, np.ndarray]:
    """``(x0, p)``: distribution of the per-pixel median of ``cam.frames`` frames [DN]."""
    x0, F = frame_cdf(cam, electrons)
    h = (cam.frames + 1) // 2
    G = special.betainc(h, h, F) if cam.frames > 1 else F
    return x0, np.diff(np.concatenate([[0.0], G]))


def processed_moments(cam: CameraSpec, signal_dn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of a processed pixel (median beam frames minus median
    background frames, clipped at 0) for spot signals ``signal_dn`` [DN]."""
    b0, pb = median_pmf(cam, cam.background)
    means, variances = [], []
    for s in np.asarray(signal_dn, dtype=np.float64):
        a0, pa = median_pmf(cam, cam.background + s * cam.gain)
        pd = np.convolve(pa, pb[::-1])
        d = np.arange(len(pd)) + (a0 - (b0 + len(pb) - 1))
        v = np.clip(d, 0, PROCESSED_MAX).astype(np.float64)
        m = float(pd @ v)
        means.append(m)
        variances.append(max(float(pd @ (v * v)) - m * m, 0.0))
    return np.array(means), np.array(variances)


@functools.lru_cache(maxsize=32)
def pixel_table(cam: CameraSpec) -> PixelTable:
    """The :class:`PixelTable` of a camera (cached per camera): exact moments on a grid up to
    eight standard deviations of the frame noise past saturation."""
    g = cam.gain
    s_sat = max(cam.full_scale - cam.dark_level - cam.background / g, 0.0)
    noise_sat = math.sqrt((cam.background + s_sat * g) * cam.shot_noise + cam.read_noise**2) / g
    top = s_sat + 8.0 * max(noise_sat, 0.5) + 2.0
    n = int(math.ceil(math.sqrt(top) / TABLE_STEP)) + 2
    mean, var = processed_moments(cam, (np.arange(n) * TABLE_STEP) ** 2)
    return PixelTable(TABLE_STEP, mean, var)


# ---------------------------------------------------------------------------- profiles
def _cdf(edges: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian CDF at ``edges`` ([n] or [B, n]) for each row of ``mu``/``sigma`` ([B]).

    Through ``erf`` (``ndtr`` is several times slower); differences of far-tail values
    lose their relative precision, which only concerns fractions below 1e-16."""
    scale = (1.0 / math.sqrt(2.0)) / sigma[:, None]
    return 0.5 + 0.5 * special.erf((edges - mu[:, None]) * scale)


def _window(
    centre: np.ndarray, width: np.ndarray, n: float | np.ndarray, blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """First pixel and block size (integers, [px]) of ``blocks`` blocks covering the part of
    ``centre +- (WINDOW * width + 1)`` that lies on the ``n`` pixels of the screen."""
    lo = np.clip(np.floor(centre - WINDOW * width - 1.0), 0.0, n)
    hi = np.clip(np.ceil(centre + WINDOW * width + 1.0), 0.0, n)
    return lo, np.maximum(1.0, np.ceil((hi - lo) / blocks))


# ---------------------------------------------------------------------------- filters
def _window_stack(p: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """``p`` [B, n] padded by its edge values for a centred window of ``size``."""
    left = size // 2  # scipy's centring: the window of pixel j is [j - left, j - left + size)
    n = p.shape[1]
    out = np.empty((p.shape[0], n + size - 1))
    out[:, left : left + n] = p
    out[:, :left] = p[:, :1]
    out[:, left + n :] = p[:, -1:]
    return out, n


def minimum_filter(p: np.ndarray, size: int) -> np.ndarray:
    """Minimum over a centred window of ``size`` along the last axis, nearest-edge padding
    (``scipy.ndimage.minimum_filter1d(p, size, mode="nearest")`` row by row)."""
    padded, n = _window_stack(p, size)
    out = padded[:, :n].copy()
    for k in range(1, size):
        np.minimum(out, padded[:, k : k + n], out=out)
    return out


def uniform_filter(p: np.ndarray, size: int) -> np.ndarray:
    """Mean over a centred window of ``size`` along the last axis, nearest-edge padding
    (``scipy.ndimage.uniform_filter1d(p, size, mode="nearest")`` row by row)."""
    padded, n = _window_stack(p, size)
    out = padded[:, :n].copy()
    for k in range(1, size):
        out += padded[:, k : k + n]
    return out * (1.0 / size)


# ---------------------------------------------------------------------------- readout
@dataclass(frozen=True)
class AxisReading:
    """One axis of a readout, in pixel units of the projection index.

    :param centre: Beam centre [px] (index coordinate: pixel ``j`` spans ``[j, j + 1)``).
    :param sigma: Beam size [px].
    :param failed: More than the off-screen fraction of pixels above half maximum.
    """

    centre: np.ndarray
    sigma: np.ndarray
    failed: np.ndarray


def fwhm_axis(
    p: np.ndarray, min_size: int = 5, uniform_size: int = 5, fraction: float = 0.95
) -> AxisReading:
    """The control room's FWHM algorithm on projections ``p`` [B, n] (see the module
    documentation): centre ``first + (last - first) / 2`` and ``sigma = (last - first) /
    2.355`` of the pixels at or above half the filtered maximum."""
    f = uniform_filter(minimum_filter(p, min_size), uniform_size)
    above = f >= 0.5 * f.max(axis=1, keepdims=True)
    n = p.shape[1]
    first = np.argmax(above, axis=1)
    last = n - 1 - np.argmax(above[:, ::-1], axis=1)
    fwhm = (last - first).astype(np.float64)
    failed = above.sum(axis=1) > fraction * n
    return AxisReading(first + fwhm / 2.0, fwhm / FWHM_PER_SIGMA, failed)


def moments_axis(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain first and second moments of projections ``p`` [B, n]: ``(centre, sigma)``
    [px, index coordinate; pixel centres at ``j + 0.5``]; ``(n / 2, 0)`` for an empty one."""
    n = p.shape[1]
    x = np.arange(n) + 0.5
    total = p.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    mu = np.where(total > 0, (p @ x) / safe, n / 2.0)
    var = np.where(total > 0, np.einsum("bn,bn->b", p, (x[None, :] - mu[:, None]) ** 2) / safe, 0.0)
    return mu, np.sqrt(np.maximum(var, 0.0))


def fit_axis(
    p: np.ndarray, centre: np.ndarray, sigma: np.ndarray, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt fits of ``a exp(-(x - mu)^2 / (2 s^2)) + c`` to projections ``p``
    [B, n] (pixel centres ``x = j + 0.5``), started at ``centre``, ``sigma`` [px] with ``c``
    the median of the projection and ``a`` its maximum above that.

    Parameters are kept in ``a >= 0``, ``-n <= mu <= 2n``, ``0.3 <= s <= 2n`` [px].

    :return: ``(mu, s)`` [px, index coordinate]; a fit that does not improve on its start
        returns the start.
    """
    B, n = p.shape
    x = np.arange(n) + 0.5
    c = np.median(p, axis=1)
    lo = np.array([0.0, -float(n), np.log(0.3), -np.inf])
    hi = np.array([np.inf, 2.0 * n, np.log(2.0 * n), np.inf])
    theta = np.stack(
        [np.maximum(p.max(axis=1) - c, 1e-12), centre, np.log(np.maximum(sigma, 0.5)), c],
        axis=1,
    )
    theta = np.minimum(np.maximum(theta, lo), hi)

    def evaluate(th: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = np.exp(th[:, 2:3])
        u = (x - th[:, 1:2]) / s
        e = np.exp(-0.5 * u * u)
        r = p - (th[:, 0:1] * e + th[:, 3:4])
        return r, e, u, np.einsum("bn,bn->b", r, r)

    r, e, u, cost = evaluate(theta)
    lam = np.full(B, 1e-3)
    eye = np.eye(4)
    for _ in range(iterations):
        a, s = theta[:, 0:1], np.exp(theta[:, 2:3])
        cols = (e, a * e * u / s, a * e * u * u, None)  # d/da, d/dmu, d/dlog(s), d/dc = 1
        A = np.empty((B, 4, 4))
        g = np.empty((B, 4))
        for i in range(4):
            ci = cols[i]
            g[:, i] = r.sum(axis=1) if ci is None else np.einsum("bn,bn->b", ci, r)
            for j in range(i, 4):
                cj = cols[j]
                if ci is None and cj is None:
                    v = np.full(B, float(n))
                elif cj is None:
                    v = ci.sum(axis=1)
                else:
                    v = np.einsum("bn,bn->b", ci, cj)
                A[:, i, j] = A[:, j, i] = v
        diag = np.einsum("bii->bi", A)
        damped = A + (lam[:, None, None] * diag[:, :, None] + 1e-12) * eye
        step = np.linalg.solve(damped, g[:, :, None])[:, :, 0]
        trial = np.minimum(np.maximum(theta + step, lo), hi)
        r_t, e_t, u_t, cost_t = evaluate(trial)
        better = np.isfinite(cost_t) & (cost_t < cost)
        theta = np.where(better[:, None], trial, theta)
        r = np.where(better[:, None], r_t, r)
        e = np.where(better[:, None], e_t, e)
        u = np.where(better[:, None], u_t, u)
        cost = np.where(better, cost_t, cost)
        lam = np.clip(np.where(better, lam * 0.3, lam * 10.0), 1e-9, 1e9)
    return theta[:, 1], np.exp(theta[:, 2])


# ---------------------------------------------------------------------------- camera
class Camera:
    """A camera on a screen: image formation and readout for a batch of beams.

    :param spec: The camera.
    :param resolution: Screen resolution in sensor pixels ``(x, y)``.
    :param pixel_size: Sensor pixel size on the screen ``(x, y)`` [m].
    :param screen_binning: The task screen's binning, used when ``spec.binning`` is None.
    """

    def __init__(
        self,
        spec: CameraSpec,
        resolution: tuple[int, int],
        pixel_size: tuple[float, float],
        screen_binning: int = 1,
    ) -> None:
        self.spec = spec
        binning = spec.binning if spec.binning is not None else screen_binning
        self.geometry = geo = Geometry.of(resolution, pixel_size, binning)
        self.table = pixel_table(spec)
        self.amplitude = spec.signal / spec.gain  # DN of the whole spot
        self._m0, self._v0 = (float(a[0]) for a in self.table.lookup(np.zeros(1)))
        W, H, L = geo.width, geo.height, len(PROFILE_NODES)
        self._cols = np.arange(W + 1, dtype=np.float64)
        self._rows_idx = np.arange(H + 1, dtype=np.float64)
        #: projection pixel -> 0 (x) or 1 (y), and its offset into the [2, L] node table
        self._segment = np.concatenate([np.zeros(W, np.int64), np.ones(H, np.int64)])
        self._segment_offset = self._segment * L
        self._node_inv = 1.0 / np.diff(PROFILE_NODES)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the image [px]."""
        return self.geometry.height, self.geometry.width

    @property
    def noise_size(self) -> int:
        """Standard normals one reading of one environment needs (``W + H``)."""
        return self.geometry.width + self.geometry.height

    # ------------------------------------------------------------------ geometry helpers
    def _pixel_units(self, beam: np.ndarray) -> tuple[np.ndarray, ...]:
        """Centres and widths of the beams in column/row index coordinates [px]."""
        geo = self.geometry
        px, py = geo.pixel
        tiny = 1e-3  # px: a spot is never narrower than a thousandth of a pixel
        cx = geo.width / 2 + beam[:, 0] / px
        cy = geo.height / 2 - beam[:, 2] / py
        sx = np.maximum(beam[:, 1] / px, tiny)
        sy = np.maximum(beam[:, 3] / py, tiny)
        return cx, sx, cy, sy

    def profiles(self, beam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractions of each spot per column ``[B, W]`` and per row ``[B, H]``."""
        cx, sx, cy, sy = self._pixel_units(beam)
        gx = np.diff(_cdf(np.arange(self.geometry.width + 1.0), cx, sx), axis=1)
        gy = np.diff(_cdf(np.arange(self.geometry.height + 1.0), cy, sy), axis=1)
        return np.maximum(gx, 0.0), np.maximum(gy, 0.0)

    # ------------------------------------------------------------------ fast path
    def _moments_both(self, beam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance ``[B, W + H]`` of both projections (x then y) [DN, DN^2].

        One ``erf`` call for all pixel and block edges, one table lookup for both axes."""
        geo = self.geometry
        W, H, Q, L = geo.width, geo.height, BLOCKS, len(PROFILE_NODES)
        B = len(beam)
        cx, sx, cy, sy = self._pixel_units(beam)
        # blocks of rows (for the x projection) and of columns (for the y projection)
        centre = np.stack([cy, cx], axis=1)  # [B, 2]: the summed axis of each projection
        width = np.stack([sy, sx], axis=1)
        start, size = _window(centre, width, np.array([H, W], dtype=np.float64), Q)
        edges = start[:, :, None] + size[:, :, None] * np.arange(Q + 1)  # [B, 2, Q + 1]
        edges = np.minimum(np.maximum(edges, 0.0), np.array([H, W], dtype=np.float64)[:, None])
        # standardised edges of columns, rows, row blocks, column blocks -> one erf
        arg = np.empty((B, W + H + 2 + 2 * (Q + 1)))
        inv_x, inv_y = 1.0 / (np.sqrt(2.0) * sx), 1.0 / (np.sqrt(2.0) * sy)
        arg[:, : W + 1] = (self._cols[None, :] - cx[:, None]) * inv_x[:, None]
        arg[:, W + 1 : W + H + 2] = (self._rows_idx[None, :] - cy[:, None]) * inv_y[:, None]
        o = W + H + 2
        arg[:, o : o + Q + 1] = (edges[:, 0] - cy[:, None]) * inv_y[:, None]
        arg[:, o + Q + 1 :] = (edges[:, 1] - cx[:, None]) * inv_x[:, None]
        cdf = special.erf(arg)  # 2 * CDF - 1
        g = np.empty((B, W + H))
        np.subtract(cdf[:, 1 : W + 1], cdf[:, :W], out=g[:, :W])
        np.subtract(cdf[:, W + 2 : W + H + 2], cdf[:, W + 1 : W + H + 1], out=g[:, W:])
        g *= 0.5
        np.maximum(g, 0.0, out=g)
        w = np.diff(edges, axis=2)  # [B, 2, Q]
        mass = np.empty((B, 2, Q))
        np.subtract(cdf[:, o + 1 : o + Q + 1], cdf[:, o : o + Q], out=mass[:, 0])
        np.subtract(cdf[:, o + Q + 2 :], cdf[:, o + Q + 1 : o + 2 * Q + 1], out=mass[:, 1])
        gbar = np.maximum(0.5 * mass / np.maximum(w, 1.0), 0.0)
        far = np.array([H, W], dtype=np.float64) - w.sum(axis=2)  # [B, 2]
        # projection sums at the profile nodes: phi [B, 2, L]
        gmax = np.stack([g[:, :W].max(axis=1), g[:, W:].max(axis=1)], axis=1)
        sig = (
            (self.amplitude * gmax)[:, :, None, None] * PROFILE_NODES[:, None] * gbar[:, :, None, :]
        )
        m, v = self.table.lookup(sig)
        phi_m = (np.einsum("bklq,bkq->bkl", m, w) + (far * self._m0)[:, :, None]).reshape(-1)
        phi_v = (np.einsum("bklq,bkq->bkl", v, w) + (far * self._v0)[:, :, None]).reshape(-1)
        # interpolation at every pixel's profile fraction r (geometric nodes: index from log r)
        gsafe = np.where(gmax > 0, gmax, 1.0)
        r = g * (1.0 / gsafe)[:, self._segment]
        k = np.log(np.maximum(r, PROFILE_MIN) * (1.0 / PROFILE_MIN)) * (1.0 / _PROFILE_LOG_STEP)
        i = np.minimum(k.astype(np.int64) + (r >= PROFILE_MIN), L - 2)
        nodes = PROFILE_NODES
        t = np.minimum(np.maximum((r - nodes[i]) * self._node_inv[i], 0.0), 1.0)
        flat = i + (np.arange(B) * (2 * L))[:, None] + self._segment_offset
        lo_m, lo_v = phi_m[flat], phi_v[flat]
        return lo_m + t * (phi_m[flat + 1] - lo_m), lo_v + t * (phi_v[flat + 1] - lo_v)

    def mean_projections(
        self, beam: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean and variance of the x projection ``[B, W]`` and the y projection ``[B, H]``
        of the processed image of beams ``[B, 4]`` [m]: ``(mx, vx, my, vy)`` [DN, DN^2]."""
        W = self.geometry.width
        mean, var = self._moments_both(beam)
        return mean[:, :W], var[:, :W], mean[:, W:], var[:, W:]

    def projections(self, beam: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Projections of one processed image per beam: ``(px [B, W], py [B, H])`` [DN].

        :param beam: ``[B, 4]`` ``(mu_x, sigma_x, mu_y, sigma_y)`` on the screen [m].
        :param z: Standard normals ``[B, W + H]`` (the reading's noise).
        """
        mean, var = self._moments_both(beam)
        p = np.maximum(mean + np.sqrt(var) * z, 0.0)
        W = self.geometry.width
        return p[:, :W], p[:, W:]

    def readout(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Beam parameters from projections with the camera's ``method``.

        :return: ``(reading [B, 4] (mu_x, sigma_x, mu_y, sigma_y) [m], on_screen [B])``.
        """
        spec, geo = self.spec, self.geometry
        ax = fwhm_axis(px, spec.min_filter, spec.uniform_filter, spec.off_screen_fraction)
        ay = fwhm_axis(py, spec.min_filter, spec.uniform_filter, spec.off_screen_fraction)
        on = ~(ax.failed & ay.failed)
        if spec.method == "ares":
            cx, sx, cy, sy = ax.centre, ax.sigma, ay.centre, ay.sigma
        elif spec.method == "moments":
            (cx, sx), (cy, sy) = moments_axis(px), moments_axis(py)
        else:
            cx, sx = fit_axis(px, ax.centre + 0.5, ax.sigma)
            cy, sy = fit_axis(py, ay.centre + 0.5, ay.sigma)
        pxs, pys = geo.pixel
        reading = np.stack(
            [
                (cx - geo.width / 2) * pxs,
                sx * pxs,
                (geo.height / 2 - cy) * pys,
                sy * pys,
            ],
            axis=1,
        )
        return reading, on

    def read(self, beam: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`projections` then :meth:`readout`, in chunks of :data:`CHUNK` beams.

        :return: ``(reading [B, 4] [m], on_screen [B])``.
        """
        if len(beam) <= CHUNK:
            return self.readout(*self.projections(beam, z))
        parts = [
            self.readout(*self.projections(beam[i : i + CHUNK], z[i : i + CHUNK]))
            for i in range(0, len(beam), CHUNK)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # ------------------------------------------------------------------ full pipeline
    def signal_image(self, beam: np.ndarray) -> np.ndarray:
        """Mean spot signal per pixel ``[B, H, W]`` [DN] of Gaussian beams ``[B, 4]`` [m]."""
        gx, gy = self.profiles(beam)
        return self.amplitude * gy[:, :, None] * gx[:, None, :]

    def expected_image(self, beam: np.ndarray) -> np.ndarray:
        """Expected processed image ``[B, H, W]`` [DN] of beams ``[B, 4]`` [m]: the mean over
        the camera noise of each processed pixel (pedestal, saturation and all)."""
        m, _ = self.table.lookup(self.signal_image(beam))
        return m.astype(np.float64)

    def signal_from_particles(
        self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Mean spot signal per pixel ``[B, H, W]`` [DN] of particle clouds: a histogram of
        the particle positions ``x``, ``y`` ``[B, N]`` [m] on the screen (particles off the
        screen are lost), scaled so that a whole cloud carries the camera's ``signal``.

        :param weights: Macro-particle weights ``[B, N]`` (default: equal).
        """
        geo = self.geometry
        B, N = x.shape
        col = np.floor(x / geo.pixel[0] + geo.width / 2).astype(np.int64)
        row = np.floor(geo.height / 2 - y / geo.pixel[1]).astype(np.int64)
        inside = (col >= 0) & (col < geo.width) & (row >= 0) & (row < geo.height)
        w = np.ones((B, N)) if weights is None else np.asarray(weights, dtype=np.float64)
        w = w / w.sum(axis=1, keepdims=True)
        flat = (np.arange(B)[:, None] * geo.height + row) * geo.width + col
        counts = np.bincount(flat[inside], weights=w[inside], minlength=B * geo.height * geo.width)
        return self.amplitude * counts.reshape(B, geo.height, geo.width)

    def frames(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The full pipeline, pixel by pixel: ``frames`` beam and background frames with shot
        and read noise, ADC rounding and saturation, per-pixel medians, difference, clip.

        :param signal: Mean spot signal per pixel ``[B, H, W]`` [DN] (:meth:`signal_image`
            or :meth:`signal_from_particles`).
        :param rng: Generator of the noise.
        :return: Processed images ``[B, H, W]`` [DN], as the control room computes them.
        """
        spec = self.spec

        def median(electrons: np.ndarray) -> np.ndarray:
            shots = []
            for _ in range(spec.frames):
                e = rng.poisson(electrons).astype(np.float64) if spec.shot_noise else electrons
                if spec.read_noise > 0:
                    e = e + rng.normal(0.0, spec.read_noise, electrons.shape)
                x = np.floor(e / spec.gain + spec.dark_level + 0.5)
                shots.append(np.clip(x, 0, spec.full_scale))
            return np.median(np.stack(shots), axis=0)

        background = np.full(signal.shape, spec.background)
        beam = median(background + signal * spec.gain)
        dark = median(background)
        return np.clip(beam - dark, 0, PROCESSED_MAX)

    def readout_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`readout` of processed images ``[B, H, W]`` (their projections)."""
        return self.readout(images.sum(axis=1), images.sum(axis=2))
