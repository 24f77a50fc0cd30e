"""Rendering the lateral view of a synthetic study (anterior on the image left, posterior on the right).

A lateral superimposes both lungs, so laterality is lost (as in real radiographs) but heights, sizes and
the anterior/posterior position of findings and devices remain: the ET tube tip still lies
`cm_above_carina` x CM above the carina, effusions fill the posterior costophrenic sulcus up to a height
that grows with their size, sternotomy wires sit on the sternum, a pacemaker lies anteriorly.
"""

from __future__ import annotations

import numpy as np

from backend.sources.synthetic.draw import Canvas, smooth_noise, soft_step
from backend.sources.synthetic.geometry import HABITUS_TISSUE, HABITUS_WIDTH, TIP_BELOW_CARINA

# (x, v): anterior-posterior position and height fraction of each lobe on a lateral
LOBE_LATERAL = {"RUL": (0.52, 0.25), "LUL": (0.47, 0.25), "RML": (0.33, 0.62), "lingula": (0.33, 0.58),
                "RLL": (0.66, 0.8), "LLL": (0.68, 0.82)}
EFFUSION_HEIGHT = {"small": 0.12, "moderate": 0.26, "large": 0.42}


def render_lateral(c: Canvas, patient: dict, study: dict, rng: np.random.Generator) -> None:
    """Draw a lateral radiograph into the canvas (densities)."""
    X, Y = c.X, c.Y
    wf = HABITUS_WIDTH[patient["habitus"]]
    ytop = 0.17
    height = 0.55 * study["inspiration"]
    ybot = ytop + height
    carina = ytop + 0.25
    cm = 0.63 * wf / 28.0
    body = soft_step(1.0 - np.hypot((X - 0.5) / (0.42 * wf), (Y - 0.55) / 0.62), 0.04)
    c.img += HABITUS_TISSUE[patient["habitus"]] * body
    u = (X - 0.52) / 0.28
    cap = 0.3 * height  # rounded apex
    apex = np.sqrt(np.clip(1.0 - ((ytop + cap - Y) / cap).clip(0.0, None) ** 2, 1e-4, 1.0))
    dia = ybot - 0.05 * np.clip(1.0 - (u - 0.2) ** 2, 0.0, 1.0) + 0.03 * np.clip(u, 0.0, 1.0)
    lung = soft_step(1.0 - np.abs(u) / apex, 0.05) * soft_step(dia - Y, 0.012) * soft_step(Y - ytop, 0.012)
    c.img -= 0.32 * lung
    c.img += lung * 0.03 * smooth_noise(rng, c.size, 20)
    c.add_gauss(0.5, carina + 0.07, 0.07, 0.08, 0.12)  # hila
    seg = 0.5 + 0.5 * np.cos(2 * np.pi * (Y - ytop) / 0.05)
    xs = 0.80 + 0.03 * np.sin(np.pi * Y)  # thoracic kyphosis
    c.img += soft_step(0.035 - np.abs(X - xs), 0.01) * (0.10 + 0.08 * seg)
    if patient["degenerative"]:
        c.img += 0.3 * np.exp(-(((X - xs + 0.04) / 0.007) ** 2)) * (seg > 0.85) * (Y > ytop) * (Y < ybot)
    c.add_polyline([(0.15, ytop - 0.02), (0.19, ytop + 0.42)], 0.012, 0.14)  # sternum
    c.add_polyline([(0.42, -0.05), (0.48, carina)], 0.014, -0.12)  # trachea
    hr = 0.11 + (study["ctr"] - 0.45) * 0.5
    c.add_ellipse(0.2 + hr, ybot - 0.13, hr, 0.14, 0.18, edge=0.025)
    _findings(c, study, ytop, height, ybot, cm, lung, rng)
    _hardware(c, patient, study, ytop, ybot, carina, cm, rng)


def _findings(c: Canvas, study: dict, ytop: float, height: float, ybot: float, cm: float, lung: np.ndarray,
              rng: np.random.Generator) -> None:
    fd = study["findings"]
    if "Lung Lesion" in fd:
        d = fd["Lung Lesion"]
        x, v = LOBE_LATERAL[d["lobe"]]
        r = d["size_cm"] * cm / 2
        c.add_ellipse(x + rng.uniform(-0.03, 0.03), ytop + v * height, r, r, 0.26, edge=0.004)
    for label, amp in (("Lung Opacity", 0.15), ("Consolidation", 0.26), ("Pneumonia", 0.18)):
        if label in fd:
            x, v = LOBE_LATERAL[fd[label]["lobe"]]
            c.add_gauss(x, ytop + v * height, 0.07, 0.06, amp)
    if "Edema" in fd:
        c.add_gauss(0.5, ytop + 0.33, 0.12, 0.12, {"mild": 0.08, "moderate": 0.14, "severe": 0.22}[
            fd["Edema"]["severity"]])
    if "Atelectasis" in fd:
        c.add_polyline([(0.45, ybot - 0.07), (0.72, ybot - 0.04)], 0.008, 0.22)
    if "Pleural Effusion" in fd:
        d = fd["Pleural Effusion"]
        frac = EFFUSION_HEIGHT[d["size"]] * (1.2 if d["side"] == "bilateral" else 1.0)
        level = ybot - frac * height - 0.06 * np.clip((c.X - 0.55) / 0.25, 0.0, 1.0)
        c.img += 0.3 * soft_step(c.Y - level, 0.02) * soft_step(c.X - 0.4, 0.06) * lung
    if "Pleural Other" in fd and fd["Pleural Other"]["kind"] == "plaques":
        for v in (0.4, 0.65):
            c.add_ellipse(0.74, ytop + v * height, 0.01, 0.03, 0.35)
    if study.get("incidental") == "hiatal hernia":
        c.add_ellipse(0.58, ybot - 0.07, 0.045, 0.035, 0.12)
        c.add_ellipse(0.58, ybot - 0.082, 0.035, 0.018, -0.22)


def _hardware(c: Canvas, patient: dict, study: dict, ytop: float, ybot: float, carina: float, cm: float,
              rng: np.random.Generator) -> None:
    """Sternotomy wires, clips, granuloma and devices as seen from the side."""
    for i in range(patient["sternotomy_wires"]):
        y = ytop + 0.05 + i * 0.045
        c.add_ellipse(0.155 + 0.04 * (y - ytop + 0.02) / 0.44, y, 0.006, 0.011, 0.55)
    if patient["clips"]:
        x, y = {"right upper quadrant": (0.3, ybot + 0.08), "left axilla": (0.5, ytop + 0.1),
                "right axilla": (0.52, ytop + 0.12), "mediastinum": (0.4, carina + 0.08)}[patient["clips"]]
        for dx, dy in rng.uniform(-0.025, 0.025, size=(4, 2)):
            c.add_polyline([(x + dx, y + dy), (x + dx + 0.01, y + dy + 0.006)], 0.003, 0.7)
    if patient["granuloma"]:
        x, v = LOBE_LATERAL[patient["granuloma"]]
        c.add_ellipse(x, ytop + v * (ybot - ytop), 0.008, 0.008, 0.5, edge=0.003)
    for d in study["devices"]:
        kind = d["kind"]
        if kind == "et_tube":
            t = 1.0 - d["cm_above_carina"] * cm / (carina + 0.05)
            c.add_polyline([(0.42, -0.05), (0.42 + 0.06 * t, -0.05 + t * (carina + 0.05))], 0.0055, 0.5)
        elif kind == "ng_tube":
            c.add_polyline([(0.5, -0.05), (0.56, carina + 0.1), (0.5, ybot + 0.1)], 0.0045, 0.42)
        elif kind in ("picc", "central_line"):
            tip = carina + TIP_BELOW_CARINA[d["tip"]]
            c.add_polyline([(0.45, ytop - 0.05), (0.4, ytop + 0.1), (0.4, tip)], 0.0045, 0.45)
        elif kind == "chest_tube":
            c.add_polyline([(0.55, ybot - 0.02), (0.62, ytop + 0.2), (0.55, ytop + 0.05)], 0.008, 0.4)
        elif kind in ("pacemaker", "icd"):
            big = kind == "icd"
            c.add_box(0.16, ytop + 0.03, 0.016 if big else 0.012, 0.03 if big else 0.022, 0.9)
            c.add_polyline([(0.16, ytop + 0.03), (0.35, carina + 0.05), (0.3, ybot - 0.06)],
                           0.0065 if big else 0.0045, 0.5)
