"""Frontal-view geometry of a synthetic study: where the lungs, carina and heart lie (normalised units).

Radiological convention: the patient's RIGHT is on the image LEFT. CM (normalised units per
centimetre) is the thoracic width divided by 28 cm, so stated distances and sizes map to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.sources.synthetic.draw import Canvas, soft_step

HABITUS_WIDTH = {"slender": 0.93, "average": 1.0, "large": 1.05}
HABITUS_TISSUE = {"slender": 0.40, "average": 0.46, "large": 0.54}
# Line tip level relative to the carina, in normalised units (positive = below).
TIP_BELOW_CARINA = {"mid SVC": -0.02, "lower SVC": 0.04, "cavoatrial junction": 0.09, "right atrium": 0.14}
LOBE_POINT = {"RUL": ("right", 0.1, 0.22), "RML": ("right", -0.35, 0.62), "RLL": ("right", 0.25, 0.83),
              "LUL": ("left", 0.1, 0.24), "lingula": ("left", -0.3, 0.6), "LLL": ("left", 0.3, 0.83)}


@dataclass(frozen=True)
class Frame:
    """Frontal geometry of one study (normalised units). Sides are keyed 'right'/'left' (patient sides)."""

    xm: float  # mediastinal midline (shifted by rotation)
    ytop: float
    ybot: float
    cx: dict[str, float]  # lung centres
    hw: dict[str, float]  # lung half-widths
    carina_y: float
    cm: float  # normalised units per centimetre
    heart: tuple[float, float, float, float]  # cx, cy, rx, ry

    @property
    def height(self) -> float:
        return self.ybot - self.ytop

    def lat(self, side: str) -> float:
        """+1 if the patient's `side` is towards the image right (patient left), -1 otherwise."""
        return 1.0 if side == "left" else -1.0

    def lung_point(self, side: str, u_lat: float, v: float) -> tuple[float, float]:
        """A point in a lung: u_lat in [-1, 1] from medial to lateral, v in [0, 1] from apex to base."""
        return self.cx[side] + self.lat(side) * u_lat * self.hw[side], self.ytop + v * self.height


def frontal_frame(patient: dict, study: dict) -> Frame:
    """Compute the geometry of a frontal view from the attributes."""
    wf = HABITUS_WIDTH[patient["habitus"]]
    rot = study["rotation"]
    xm = 0.5 + 0.035 * rot
    ytop = 0.19 if study["frontal"] == "AP" else 0.16
    ybot = ytop + 0.56 * study["inspiration"]
    cx = {"right": xm - 0.17 * wf, "left": xm + 0.17 * wf}
    hw = {"right": 0.145 * wf * (1 + 0.08 * rot), "left": 0.145 * wf * (1 - 0.08 * rot)}
    thoracic = (cx["left"] + hw["left"]) - (cx["right"] - hw["right"])
    mag = 1.08 if study["frontal"] == "AP" else 1.0  # AP projection magnifies the heart
    rx = study["ctr"] * thoracic / 2 * mag
    ry = 0.075 + 0.3 * rx
    heart = (xm + 0.3 * rx, ybot - 0.03 - 0.75 * ry, rx, ry)
    return Frame(xm, ytop, ybot, cx, hw, ytop + 0.25, thoracic / 28.0, heart)


def lung_mask(c: Canvas, f: Frame, side: str, shrink: float = 0.0, edge: float = 0.012) -> np.ndarray:
    """Soft (size, size) mask of one lung; `shrink` in [0, 1) retracts it from the lateral and apical walls
    (the collapsed lung of a pneumothorax)."""
    lat = f.lat(side)
    hw = f.hw[side] * (1 - 0.5 * shrink)
    cx = f.cx[side] - lat * f.hw[side] * 0.5 * shrink
    ytop = f.ytop + shrink * 0.45 * f.height
    u = (c.X - cx) / hw
    cap = 0.32 * f.height  # a rounded (elliptical) apex over the top `cap` of the lung
    apex = np.sqrt(np.clip(1.0 - ((ytop + cap - c.Y) / cap).clip(0.0, None) ** 2, 1e-4, 1.0))
    inside_x = soft_step((1.0 - np.abs(u) / apex) * hw, edge)
    dome = 0.055 * float(np.clip((1.25 - (f.height / 0.56)) / 0.25, 0.3, 1.6))
    ydia = f.ybot - (0.02 if side == "right" else 0.0) - dome * np.clip(1.0 - u * u, 0.0, 1.0)
    return inside_x * soft_step(ydia - c.Y, edge) * soft_step(c.Y - ytop, edge)


