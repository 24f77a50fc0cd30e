"""Vectorised drawing primitives for the synthetic radiographs (numpy only, no per-pixel Python loops).

Coordinates are normalised: x from 0 (image left) to 1 (image right), y from 0 (top) to 1 (bottom),
whatever the pixel size. Intensities are densities: higher is brighter (bone, fluid, metal), lower is
darker (air). Small objects are drawn inside their bounding box only, so a study with many devices
still renders in a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


class Canvas:
    """A float32 density image (size, size) with the pixel-centre coordinate grids X, Y (both (size, size)).

    `jitter` = (dx, dy, scale) moves the patient in the field of view (positioning varies per exposure)."""

    def __init__(self, size: int, jitter: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> None:
        dx, dy, scale = jitter
        axis = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.size = size
        self.xs = (axis - 0.5 - dx) / scale + 0.5  # the normalised patient coordinate of each column
        self.ys = (axis - 0.5 - dy) / scale + 0.5
        self.X, self.Y = np.meshgrid(self.xs, self.ys)
        self.img = np.zeros((size, size), dtype=np.float32)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Row and column slices of the pixels whose coordinates fall in [x0, x1] x [y0, y1]."""
        c0, c1 = np.searchsorted(self.xs, [x0, x1])
        r0, r1 = np.searchsorted(self.ys, [y0, y1])
        return slice(int(r0), int(r1)), slice(int(c0), int(c1))

    def add_ellipse(self, cx: float, cy: float, rx: float, ry: float, amp: float, edge: float = 0.006) -> None:
        """Add `amp` inside the ellipse, with a soft edge about `edge` wide."""
        rows, cols = self.box(cx - rx - edge, cx + rx + edge, cy - ry - edge, cy + ry + edge)
        X, Y = self.X[rows, cols], self.Y[rows, cols]
        d = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)
        self.img[rows, cols] += amp * np.clip((1.0 - d) * min(rx, ry) / edge + 0.5, 0.0, 1.0)

    def add_gauss(self, cx: float, cy: float, sx: float, sy: float, amp: float | np.ndarray) -> None:
        """Add an axis-aligned Gaussian blob (amp may be a full-size array, e.g. patchy texture)."""
        rows, cols = self.box(cx - 3 * sx, cx + 3 * sx, cy - 3 * sy, cy + 3 * sy)
        g = np.exp(-0.5 * (((self.X[rows, cols] - cx) / sx) ** 2 + ((self.Y[rows, cols] - cy) / sy) ** 2))
        a = amp[rows, cols] if isinstance(amp, np.ndarray) else amp
        self.img[rows, cols] += a * g

    def add_polyline(self, pts: Sequence[tuple[float, float]], width: float, amp: float) -> None:
        """Add a tube or wire of half-width `width` through the points (soft profile)."""
        # The maximum over segments, not the sum, so that the joints are not doubly bright.
        layer = np.zeros_like(self.img)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
            pad = 2 * width
            rows, cols = self.box(min(x0, x1) - pad, max(x0, x1) + pad, min(y0, y1) - pad, max(y0, y1) + pad)
            X, Y = self.X[rows, cols], self.Y[rows, cols]
            vx, vy = x1 - x0, y1 - y0
            t = np.clip(((X - x0) * vx + (Y - y0) * vy) / max(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
            d = np.hypot(X - (x0 + t * vx), Y - (y0 + t * vy))
            layer[rows, cols] = np.maximum(layer[rows, cols], np.exp(-((d / width) ** 2)))
        self.img += amp * layer

    def add_box(self, cx: float, cy: float, rx: float, ry: float, amp: float) -> None:
        """Add a rounded rectangle (a device generator)."""
        rows, cols = self.box(cx - rx - 0.01, cx + rx + 0.01, cy - ry - 0.01, cy + ry + 0.01)
        d = (np.abs(self.X[rows, cols] - cx) / rx) ** 4 + (np.abs(self.Y[rows, cols] - cy) / ry) ** 4
        self.img[rows, cols] += amp * np.clip((1.0 - d) * 4.0, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 noise with about `cells` blobs per side, roughly N(0, 1) at each pixel."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    out = np.asarray(up, dtype=np.float32)
    return out / max(float(out.std()), 1e-6)


def soft_step(v: np.ndarray, width: float) -> np.ndarray:
    """0 for v << 0, 1 for v >> 0, linear over [-width/2, width/2] (a soft inside-test)."""
    return np.clip(v / width + 0.5, 0.0, 1.0)
