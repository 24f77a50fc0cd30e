"""Rendering one synthetic frontal (PA/AP) radiograph from a study's attributes; `render` dispatches views.

Radiological convention: the patient's RIGHT is on the image LEFT. Geometry follows the stated text:
the ET tube tip lies `cm_above_carina` x CM above the carina, a nodule of s cm has diameter s x CM at
its stated lobe, effusion height grows with its stated size, devices sit on their stated side, the
heart's width is ctr x thoracic width, positive rotation shifts the mediastinum to the image right.
CM (normalised units per centimetre) is the thoracic width divided by 28 cm.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from backend.sources.synthetic.draw import Canvas, smooth_noise, soft_step
from backend.sources.synthetic.frontal_parts import draw_devices, draw_findings, draw_traits
from backend.sources.synthetic.geometry import HABITUS_TISSUE, HABITUS_WIDTH, Frame, frontal_frame, lung_mask
from backend.sources.synthetic.lateral import render_lateral

# Site styles: (gain, offset, gamma, noise sd, blur radius in px at 128, heel gradient)
SITE_STYLE = {"A": (1.05, 0.0, 1.0, 0.025, 0.0, 0.0), "B": (0.78, 0.14, 0.75, 0.055, 0.7, 0.10)}


def render_frontal(c: Canvas, patient: dict, study: dict, rng: np.random.Generator) -> None:
    """Draw a frontal radiograph into the canvas (densities; styled later by `render`)."""
    f = frontal_frame(patient, study)
    X, Y = c.X, c.Y
    bw = (0.40 if patient["habitus"] != "large" else 0.46) * HABITUS_WIDTH[patient["habitus"]]
    neck = np.clip((Y - 0.02) / 0.14, 0.0, 1.0)
    body_hw = 0.09 + (bw - 0.09) * np.sqrt(neck)
    c.img += HABITUS_TISSUE[patient["habitus"]] * soft_step(body_hw - np.abs(X - 0.5), 0.02)
    ptx = study["findings"].get("Pneumothorax")
    texture = smooth_noise(rng, c.size, 22)
    for side in ("right", "left"):
        lung = lung_mask(c, f, side)
        c.img -= 0.33 * lung
        aerated = lung
        if ptx and ptx["side"] in (side, "bilateral"):
            shrink = {"small": 0.22, "moderate": 0.38, "large": 0.55}[ptx["size"]]
            aerated = lung_mask(c, f, side, shrink)
            c.img -= 0.10 * (lung - aerated)  # lucent rim without lung markings
            rim = aerated * (1 - aerated) * 4
            c.img += 0.22 * rim * lung  # the visceral pleural line
        hx = f.xm + f.lat(side) * 0.08
        hilum = np.exp(-(((X - hx) / 0.09) ** 2 + ((Y - f.carina_y - 0.06) / 0.12) ** 2))
        c.img += aerated * (0.11 * hilum + 0.035 * texture * (0.5 + hilum))
    _draw_ribs(c, f)
    _draw_central(c, f, patient, study)
    draw_findings(c, f, study, rng)
    draw_traits(c, f, patient, study, rng)
    draw_devices(c, f, study)


def _draw_ribs(c: Canvas, f: Frame) -> None:
    """Posterior ribs (equally spaced bands, so deeper inspiration shows more ribs) and clavicles."""
    spacing = 0.056
    for side in ("right", "left"):
        u = (c.X - f.cx[side]) / f.hw[side]
        phase = (c.Y - f.ytop + 0.03 - 0.05 * u * u) / spacing
        near = phase - np.round(phase)
        band = np.exp(-((near * spacing / 0.0075) ** 2)) * (np.abs(u) < 1.15) * (phase > -0.5) * (phase < 10.5)
        c.img += 0.085 * band * soft_step(f.ybot + 0.03 - c.Y, 0.03)
        x_out = f.cx[side] + f.lat(side) * 1.05 * f.hw[side]
        c.add_polyline([(f.xm + f.lat(side) * 0.03, f.ytop + 0.015), (x_out, f.ytop - 0.045)], 0.011, 0.11)


def _draw_central(c: Canvas, f: Frame, patient: dict, study: dict) -> None:
    """Mediastinum, spine (with scoliosis), trachea, heart and aortic knob."""
    X, Y = c.X, c.Y
    scol = patient["scoliosis"]
    amp = 0.0 if not scol else (0.025 if scol["deg"] == "mild" else 0.05) * (-1 if scol["dir"] == "dextro" else 1)
    xs = f.xm + amp * np.sin(np.pi * np.clip((Y - 0.1) / 0.75, 0.0, 1.0))
    seg = 0.5 + 0.5 * np.cos(2 * np.pi * (Y - f.ytop) / 0.045)
    spine = soft_step(0.022 - np.abs(X - xs), 0.008)
    c.img += spine * (0.07 + 0.05 * seg)
    if patient["degenerative"]:
        spur = np.exp(-(((np.abs(X - xs) - 0.026) / 0.006) ** 2)) * (seg > 0.85) * (Y > f.ytop) * (Y < f.ybot)
        c.img += 0.28 * spur
    widen = study["findings"].get("Enlarged Cardiomediastinum", {}).get("widen", 1.0)
    c.add_gauss(f.xm + 0.01, f.carina_y - 0.03, 0.035 * widen, 0.09, 0.10 + 0.06 * (widen - 1))
    c.add_polyline([(f.xm, 0.0), (f.xm, f.carina_y)], 0.012, -0.12)
    for side in ("right", "left"):
        c.add_polyline([(f.xm, f.carina_y), (f.xm + f.lat(side) * 0.06, f.carina_y + 0.05)], 0.008, -0.08)
    hx, hy, rx, ry = f.heart
    c.add_ellipse(hx, hy, rx, ry, 0.20, edge=0.025)
    aorta = patient["aorta"]
    kx, ky, kr = f.xm + 0.055, f.carina_y - 0.07, 0.03
    if aorta == "tortuous":
        kx, kr = kx + 0.02, 0.04
    c.add_ellipse(kx, ky, kr, kr, 0.18, edge=0.01)
    if aorta == "calcified":
        c.add_polyline([(kx - kr * 0.7, ky - kr * 0.7), (kx, ky - kr), (kx + kr * 0.7, ky - kr * 0.7)], 0.004, 0.4)


def _style(img: np.ndarray, site: str, rng: np.random.Generator) -> Image.Image:
    """Site contrast, gamma, noise, blur and per-exposure variation; returns a PIL 'L' image."""
    gain, offset, gamma, noise, blur, heel = SITE_STYLE[site]
    size = img.shape[0]
    v = (1.0 - np.exp(-2.0 * np.clip(img, 0.0, None))) ** gamma  # film-like soft saturation
    v = v * gain * rng.normal(1.0, 0.06) + offset + rng.normal(0.0, 0.03)
    v += heel * np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None]
    v += rng.normal(0.0, noise, size=v.shape).astype(np.float32)
    out = Image.fromarray((np.clip(v, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), mode="L")
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur * size / 128))
    return out


def render(attrs: dict, view: str, size: int) -> Image.Image:
    """The 'L' image (size x size) of one view ('PA', 'AP' or 'LATERAL') of a study; deterministic."""
    patient, study = attrs["patient"], attrs["study"]
    rng = np.random.default_rng([study["img_seed"], 2 if view == "LATERAL" else 1])
    c = Canvas(size, (rng.normal(0, 0.015), rng.normal(0, 0.015), rng.uniform(0.96, 1.04)))
    if view == "LATERAL":
        render_lateral(c, patient, study, rng)
    else:
        render_frontal(c, patient, study, rng)
    return _style(c.img, patient["site"], rng)
