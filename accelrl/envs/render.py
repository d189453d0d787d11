"""Draw the screen as an operator sees it: the beam spot, and the target as an ellipse.

Without a camera world the spot is a Gaussian drawn from the reading; with one
(:mod:`accelrl.envs.world.camera`) it is the camera's expected processed image (the mean
over the camera noise of the median/background-subtracted image, saturation included), on
the camera's own pixel grid and colour-scaled to its full scale.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps

_LUT = (colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
_TARGET_RGB = np.array([255, 64, 64], dtype=np.uint8)
_READING_RGB = np.array([255, 255, 255], dtype=np.uint8)


def _draw_marks(
    image: np.ndarray,
    centre: np.ndarray,
    half_extent: tuple[float, float],
    colour: np.ndarray,
    ellipse: bool,
) -> None:
    """Draw ``centre = (mu_x, sigma_x, mu_y, sigma_y)`` [m] on ``image`` in place: its
    1-sigma ellipse (``ellipse``) and a centre cross of +-3 pixels."""
    h, w = image.shape[:2]
    pixel = (2 * half_extent[0] / w, 2 * half_extent[1] / h)
    mx, sx, my, sy = (float(v) for v in centre)
    theta = np.linspace(0, 2 * np.pi, 720)
    lines = [
        (mx + np.linspace(-3, 3, 7) * pixel[0], np.full(7, my)),
        (np.full(7, mx), my + np.linspace(-3, 3, 7) * pixel[1]),
    ]
    if ellipse:
        lines.append(
            (mx + max(sx, pixel[0]) * np.cos(theta), my + max(sy, pixel[1]) * np.sin(theta))
        )
    for px, py in lines:
        cols = ((px + half_extent[0]) / (2 * half_extent[0]) * w).astype(np.int64)
        rows = ((half_extent[1] - py) / (2 * half_extent[1]) * h).astype(np.int64)
        ok = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        image[rows[ok], cols[ok]] = colour


def screen_image(
    reading: np.ndarray,
    target: np.ndarray | None,
    half_extent: tuple[float, float],
    shape: tuple[int, int] = (255, 306),
    on_screen: bool = True,
) -> np.ndarray:
    """RGB image ``[H, W, 3]`` (uint8) of a Gaussian spot on the screen.

    :param reading: ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param target: Target in the same layout, drawn as its 1-sigma ellipse and centre cross.
    :param half_extent: Half width and height of the screen [m].
    :param shape: Image size ``(height, width)`` [px] (default: the ARES screen binned by 8).
    :param on_screen: ``False`` draws an empty (dark) screen.
    """
    h, w = shape
    x = (np.arange(w) + 0.5) / w * 2 * half_extent[0] - half_extent[0]
    y = half_extent[1] - (np.arange(h) + 0.5) / h * 2 * half_extent[1]  # up is +y
    pixel = (2 * half_extent[0] / w, 2 * half_extent[1] / h)
    if on_screen:
        mu_x, sig_x, mu_y, sig_y = (float(v) for v in reading)
        # a spot is at least one pixel wide, as on a camera
        sx, sy = max(sig_x, pixel[0] / 2), max(sig_y, pixel[1] / 2)
        gx = np.exp(-0.5 * ((x - mu_x) / sx) ** 2)
        gy = np.exp(-0.5 * ((y - mu_y) / sy) ** 2)
        intensity = np.outer(gy, gx)
    else:
        intensity = np.zeros((h, w))
    image = _LUT[np.clip((intensity * 255).astype(np.int64), 0, 255)]
    if target is not None:
        _draw_marks(image, np.asarray(target), half_extent, _TARGET_RGB, ellipse=True)
    return image


def camera_image(
    processed: np.ndarray,
    full_scale: float,
    target: np.ndarray | None,
    half_extent: tuple[float, float],
    reading: np.ndarray | None = None,
) -> np.ndarray:
    """RGB image ``[H, W, 3]`` (uint8) of a processed camera image (row 0 at the top).

    :param processed: Image ``[H, W]`` [DN] (e.g. the camera's expected processed image).
    :param full_scale: Value drawn brightest [DN] (the camera's full scale: saturated pixels
        look saturated).
    :param target: Target ``(mu_x, sigma_x, mu_y, sigma_y)`` [m]: red ellipse and cross.
    :param half_extent: Half width and height of the screen [m].
    :param reading: The readout in the same layout: a white centre cross.
    """
    level = np.clip(processed / max(full_scale, 1e-12), 0.0, 1.0)
    image = _LUT[(level * 255).astype(np.int64)]
    if target is not None:
        _draw_marks(image, np.asarray(target), half_extent, _TARGET_RGB, ellipse=True)
    if reading is not None:
        _draw_marks(image, np.asarray(reading), half_extent, _READING_RGB, ellipse=False)
    return image
