"""Frontal view: the findings, persistent traits and devices of a study, drawn where the report says.

Every function adds densities to a Canvas in the geometry of a backend.sources.synthetic.geometry.Frame.
"""

from __future__ import annotations

import numpy as np

from backend.sources.synthetic.draw import Canvas, smooth_noise, soft_step
from backend.sources.synthetic.geometry import LOBE_POINT, TIP_BELOW_CARINA, Frame, lung_mask

EFFUSION_HEIGHT = {"small": 0.18, "moderate": 0.32, "large": 0.5}  # fraction of lung height
EDEMA_AMP = {"mild": 0.10, "moderate": 0.17, "severe": 0.26}


def _sides(side: str) -> tuple[str, ...]:
    return ("right", "left") if side == "bilateral" else (side,)


def _lobe_xy(f: Frame, lobe: str, rng: np.random.Generator) -> tuple[float, float]:
    side, u, v = LOBE_POINT[lobe]
    return f.lung_point(side, u + rng.uniform(-0.12, 0.12), v + rng.uniform(-0.05, 0.05))


def draw_findings(c: Canvas, f: Frame, study: dict, rng: np.random.Generator) -> None:
    """Parenchymal, pleural and incidental findings of the study (label -> details in study['findings'])."""
    fd = study["findings"]
    patchy = 0.6 + 0.4 * np.clip(smooth_noise(rng, c.size, 16), -1.5, 1.5)
    if "Lung Lesion" in fd:
        d = fd["Lung Lesion"]
        x, y = _lobe_xy(f, d["lobe"], rng)
        r = d["size_cm"] * f.cm / 2
        c.add_ellipse(x, y, r, r * rng.uniform(0.85, 1.0), 0.34, edge=0.004)
    if "Lung Opacity" in fd:
        d = fd["Lung Opacity"]
        x, y = _lobe_xy(f, d["lobe"], rng)
        sx, sy, amp = {"patchy": (0.05, 0.05, 0.2), "streaky": (0.07, 0.022, 0.22), "hazy": (0.08, 0.08, 0.12)}[
            d["extent"]]
        c.add_gauss(x, y, sx, sy, amp * patchy)
    for label, amp in (("Consolidation", 0.32), ("Pneumonia", 0.22)):
        if label in fd and not (label == "Pneumonia" and "Consolidation" in fd):
            x, y = _lobe_xy(f, fd[label]["lobe"], rng)
            c.add_gauss(x, y, 0.065, 0.06, amp * patchy)
    if "Edema" in fd:
        amp = EDEMA_AMP[fd["Edema"]["severity"]]
        for side in ("right", "left"):
            c.add_gauss(f.xm + f.lat(side) * 0.1, f.carina_y + 0.08, 0.09, 0.13, amp * patchy)
    if "Atelectasis" in fd:
        d = fd["Atelectasis"]
        width = {"linear": 0.007, "subsegmental": 0.009, "platelike": 0.014}[d["kind"]]
        for side in _sides(d["side"]):
            x0, y0 = f.lung_point(side, -0.6, 0.86)
            x1, y1 = f.lung_point(side, 0.65, 0.80)
            c.add_polyline([(x0, y0), (x1, y1)], width, 0.3)
    if "Pleural Effusion" in fd:
        d = fd["Pleural Effusion"]
        for side in _sides(d["side"]):
            _effusion(c, f, side, EFFUSION_HEIGHT[d["size"]])
    if "Pleural Other" in fd:
        d = fd["Pleural Other"]
        for side in _sides(d["side"]):
            _pleural_other(c, f, side, d["kind"], rng)
    if study.get("incidental") == "hiatal hernia":
        hx, hy = f.xm + 0.03, f.ybot - 0.06
        c.add_ellipse(hx, hy, 0.045, 0.035, 0.12)
        c.add_ellipse(hx, hy - 0.012, 0.035, 0.018, -0.22)


def _effusion(c: Canvas, f: Frame, side: str, frac: float) -> None:
    """Fluid filling the base of one lung up to frac x lung height, meniscus rising laterally."""
    lung = lung_mask(c, f, side, edge=0.02)
    u_lat = f.lat(side) * (c.X - f.cx[side]) / f.hw[side]
    level = f.ybot - frac * f.height - 0.05 * np.clip(u_lat, -1.0, 1.2)
    c.img += 0.33 * soft_step(c.Y - level, 0.02) * lung


def _pleural_other(c: Canvas, f: Frame, side: str, kind: str, rng: np.random.Generator) -> None:
    """Pleural thickening (a bright lateral rim) or calcified plaques (bright blobs on the wall)."""
    if kind == "thickening":
        outer, inner = lung_mask(c, f, side), lung_mask(c, f, side, shrink=0.08)
        lateral = f.lat(side) * (c.X - f.cx[side]) > 0.2 * f.hw[side]
        c.img += 0.28 * (outer - inner) * lateral
        return
    for v in rng.uniform(0.3, 0.85, size=3):
        x, y = f.lung_point(side, 0.97, float(v))
        c.add_ellipse(x, y, 0.008, 0.025, 0.45)


def draw_traits(c: Canvas, f: Frame, patient: dict, study: dict, rng: np.random.Generator) -> None:
    """Persistent traits: sternotomy wires, surgical clips, granuloma; and the patient's rib fracture."""
    for i in range(patient["sternotomy_wires"]):
        c.add_ellipse(f.xm, f.carina_y - 0.07 + i * 0.045, 0.015, 0.008, 0.5, edge=0.003)
    if patient["clips"]:
        x, y = {"right upper quadrant": (f.cx["right"], f.ybot + 0.08),
                "left axilla": (f.cx["left"] + 1.05 * f.hw["left"], f.ytop + 0.12),
                "right axilla": (f.cx["right"] - 1.05 * f.hw["right"], f.ytop + 0.12),
                "mediastinum": (f.xm + 0.05, f.carina_y + 0.08)}[patient["clips"]]
        for dx, dy, ang in rng.uniform(-0.025, 0.025, size=(4, 3)):
            a = ang * 40  # a random orientation
            c.add_polyline([(x + dx, y + dy), (x + dx + 0.012 * np.cos(a), y + dy + 0.012 * np.sin(a))], 0.003, 0.7)
    if patient["granuloma"]:
        x, y = _lobe_xy(f, patient["granuloma"], rng)
        c.add_ellipse(x, y, 0.009, 0.009, 0.6, edge=0.003)
    fr = study["fracture"]
    if fr:
        # the rib band `rib - 1` of _draw_ribs, at its lateral arc (u = 0.75)
        u = 0.75
        x = f.cx[fr["side"]] + f.lat(fr["side"]) * u * f.hw[fr["side"]]
        y = f.ytop - 0.03 + 0.05 * u * u + (fr["rib"] - 1) * 0.056
        if fr["age"] == "healed":
            c.add_ellipse(x, y, 0.016, 0.012, 0.3)
        else:
            c.add_polyline([(x, y - 0.015), (x + 0.004, y + 0.015)], 0.004, -0.25)
            c.add_ellipse(x + 0.01, y + 0.004, 0.01, 0.008, 0.18)


def draw_devices(c: Canvas, f: Frame, study: dict) -> None:
    """Tubes, lines and cardiac devices on their stated sides, tips at their stated positions."""
    hx, hy, rx, ry = f.heart
    for d in study["devices"]:
        kind, side = d["kind"], d["side"]
        lat = f.lat(side) if side in ("right", "left") else 1.0
        if kind == "et_tube":
            tip = f.carina_y - d["cm_above_carina"] * f.cm
            c.add_polyline([(f.xm, -0.05), (f.xm, tip)], 0.0055, 0.55)
            c.add_ellipse(f.xm, tip, 0.008, 0.006, 0.3)
        elif kind == "ng_tube":
            c.add_polyline([(f.xm + 0.008, -0.05), (f.xm + 0.012, f.carina_y + 0.1),
                            (f.xm + 0.06, f.ybot + 0.02), (f.xm + 0.13, f.ybot + 0.09)], 0.0045, 0.45)
        elif kind in ("picc", "central_line"):
            tip = f.carina_y + TIP_BELOW_CARINA[d["tip"]]
            svc = (f.xm - 0.035, f.ytop + 0.08)
            start = ([(0.5 + lat * 0.55, f.ytop + 0.1), (f.cx[side], f.ytop + 0.02)] if kind == "picc"
                     else [(f.xm + lat * 0.07, -0.05)])
            c.add_polyline(start + [svc, (svc[0], tip)], 0.0045, 0.5)
        elif kind == "chest_tube":
            pts = [f.lung_point(side, 1.25, 0.9), f.lung_point(side, 0.6, 0.75), f.lung_point(side, 0.2, 0.15)]
            c.add_polyline(pts, 0.008, 0.42)
        elif kind in ("pacemaker", "icd"):
            gx, gy = f.cx[side] + lat * 0.35 * f.hw[side], f.ytop + 0.02
            big = kind == "icd"
            c.add_box(gx, gy, 0.032 if big else 0.024, 0.024 if big else 0.018, 0.9)
            ra = (f.xm - 0.04, hy - ry + 0.03)
            rv = (hx + 0.35 * rx, hy + 0.6 * ry)
            via = (f.xm - 0.03, f.carina_y + 0.03)
            c.add_polyline([(gx, gy), via, rv], 0.0065 if big else 0.0045, 0.5)
            if d.get("leads", 1) > 1:
                c.add_polyline([(gx, gy + 0.01), via, ra], 0.0045, 0.5)
