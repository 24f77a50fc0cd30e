"""Sampling the attributes of synthetic patients and studies (the single source of truth that both the
report writer and the image renderer read, so the two modalities always agree).

All attributes are plain JSON-serialisable dicts. Geometry is NOT stored here: the renderer maps the
semantic attributes (side, lobe, size in cm, tip distance in cm, ...) to pixels deterministically.

Patient dict (persistent traits, identical in every study of the patient):
    site, habitus ("slender"|"average"|"large"), scoliosis (None | {"dir": "dextro"|"levo", "deg"}),
    sternotomy_wires (0 or 5-8), clips (None | location), granuloma (None | lobe), degenerative (bool),
    aorta (None|"tortuous"|"calcified"), ctr0 (baseline cardiothoracic ratio), fracture (side, rib, age:
    shown only in studies whose label says Fracture), devices (the patient's device kinds: shown only in
    studies whose label says Support Devices).
Study dict: index, labels (14 ints), frontal ("PA"|"AP"), lateral (bool), rotation (-1..1),
    inspiration (0.82..1.2, lung height factor; stated "low" below 0.9, "hyperexpanded" above 1.12),
    ctr, findings {label: details}, devices [details], fracture (None | the patient's), incidental
    (None | "hyperexpanded" | "hiatal hernia", only for all-zero label vectors), boiler (None or
    template index), img_seed.
"""

from __future__ import annotations

import numpy as np

from backend.sources.schema import LABELS

LOBES: tuple[str, ...] = ("RUL", "RML", "RLL", "LUL", "lingula", "LLL")
STUDIES_PER_PATIENT_P: tuple[float, ...] = (0.40, 0.22, 0.14, 0.10, 0.08, 0.06)  # 1..6 studies
CLIP_SITES: tuple[str, ...] = ("right upper quadrant", "left axilla", "right axilla", "mediastinum")
PICC_TIPS: tuple[str, ...] = ("mid SVC", "lower SVC", "cavoatrial junction", "right atrium")
SIZES: tuple[str, ...] = ("small", "moderate", "large")
NORMAL_ONLY = (1,) + (0,) * 13  # the plain "No Finding" vector
_IDX = {name: i for i, name in enumerate(LABELS)}


def _pick(rng: np.random.Generator, options: tuple | list, p: tuple | list | None = None):
    """One element of `options` (uniform, or with probabilities p summing to 1)."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    # inverse CDF by hand: rng.choice(p=...) validates p on every call and is 10x slower
    u, acc = rng.random(), 0.0
    for option, prob in zip(options, p, strict=True):
        acc += prob
        if u < acc:
            return option
    return options[-1]


def _side(rng: np.random.Generator, bilateral: float = 0.0) -> str:
    return _pick(rng, ("right", "left", "bilateral"), ((1 - bilateral) / 2, (1 - bilateral) / 2, bilateral))


def n_studies(rng: np.random.Generator) -> int:
    """How many studies one patient has (1-6, mean about 2.4)."""
    return 1 + int(rng.choice(len(STUDIES_PER_PATIENT_P), p=STUDIES_PER_PATIENT_P))


def _patient_devices(rng: np.random.Generator) -> list[dict]:
    """The device kinds a patient carries whenever a study of theirs is labelled Support Devices."""
    kind = _pick(rng, ("pacemaker", "icd", "et_tube", "picc", "central_line", "chest_tube"),
                 (0.25, 0.10, 0.20, 0.20, 0.15, 0.10))
    side = _pick(rng, ("right", "left"), (0.3, 0.7) if kind in ("pacemaker", "icd") else (0.5, 0.5))
    devices = [{"kind": kind, "side": side}]
    if kind == "pacemaker":
        devices[0]["leads"] = int(rng.integers(1, 3))
    if kind == "et_tube":
        devices[0]["side"] = "midline"
        if rng.random() < 0.7:
            devices.append({"kind": "ng_tube", "side": "midline"})
        if rng.random() < 0.4:
            devices.append({"kind": "picc", "side": _pick(rng, ("right", "left"))})
    return devices


def sample_patient(rng: np.random.Generator, site: str) -> dict:
    """Persistent traits of one patient (see module docstring)."""
    scol = None
    if rng.random() < 0.12:
        scol = {"dir": _pick(rng, ("dextro", "levo")), "deg": _pick(rng, ("mild", "moderate"), (0.7, 0.3))}
    return {
        "site": site,
        "habitus": _pick(rng, ("slender", "average", "large"), (0.25, 0.5, 0.25)),
        "scoliosis": scol,
        "sternotomy_wires": int(rng.integers(5, 9)) if rng.random() < 0.06 else 0,
        "clips": _pick(rng, CLIP_SITES) if rng.random() < 0.07 else None,
        "granuloma": _pick(rng, LOBES) if rng.random() < 0.10 else None,
        "degenerative": bool(rng.random() < 0.12),
        "aorta": _pick(rng, (None, "tortuous", "calcified"), (0.85, 0.09, 0.06)),
        "ctr0": round(float(rng.uniform(0.40, 0.49)), 3),
        "fracture": {"side": _pick(rng, ("right", "left")), "rib": int(rng.integers(4, 10)),
                     "age": _pick(rng, ("healed", "age-indeterminate"), (0.7, 0.3))},
        "devices": _patient_devices(rng),
    }


def _finding_details(rng: np.random.Generator, labels: np.ndarray) -> dict:
    """Instance details of every positive finding label (label name -> dict)."""
    pos = {name for name, v in zip(LABELS, labels, strict=True) if v}
    out: dict[str, dict] = {}
    if "Enlarged Cardiomediastinum" in pos:
        out["Enlarged Cardiomediastinum"] = {"widen": round(float(rng.uniform(1.5, 1.9)), 2)}
    if "Cardiomegaly" in pos:
        out["Cardiomegaly"] = {"severity": _pick(rng, ("mild", "moderate", "marked"), (0.55, 0.3, 0.15))}
    children = {"Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis"}
    if "Lung Opacity" in pos and not pos & children:
        out["Lung Opacity"] = {"lobe": _pick(rng, LOBES), "extent": _pick(rng, ("patchy", "streaky", "hazy"))}
    if "Lung Lesion" in pos:
        mass = rng.random() < 0.2
        size = rng.uniform(3.0, 6.0) if mass else rng.uniform(0.6, 2.9)
        out["Lung Lesion"] = {"kind": "mass" if mass else "nodule", "size_cm": round(float(size), 1),
                              "lobe": _pick(rng, LOBES)}
    if "Edema" in pos:
        out["Edema"] = {"severity": _pick(rng, ("mild", "moderate", "severe"), (0.55, 0.3, 0.15))}
    lobe = _pick(rng, LOBES, (0.12, 0.12, 0.26, 0.12, 0.12, 0.26))
    if "Consolidation" in pos:
        out["Consolidation"] = {"lobe": lobe}
    if "Pneumonia" in pos:
        out["Pneumonia"] = {"lobe": lobe}
    if "Atelectasis" in pos:
        out["Atelectasis"] = {"side": _side(rng, 0.3), "kind": _pick(rng, ("linear", "subsegmental", "platelike"))}
    if "Pneumothorax" in pos:
        out["Pneumothorax"] = {"side": _side(rng), "size": _pick(rng, SIZES, (0.6, 0.3, 0.1))}
    if "Pleural Effusion" in pos:
        out["Pleural Effusion"] = {"side": _side(rng, 0.35), "size": _pick(rng, SIZES, (0.55, 0.3, 0.15))}
    if "Pleural Other" in pos:
        out["Pleural Other"] = {"side": _side(rng, 0.3), "kind": _pick(rng, ("thickening", "plaques"))}
    return out


def _study_devices(rng: np.random.Generator, patient: dict) -> list[dict]:
    """Per-study positions of the patient's devices (tube distances and line tips change per study)."""
    out = []
    for dev in patient["devices"]:
        d = dict(dev)
        if d["kind"] == "et_tube":
            d["cm_above_carina"] = round(float(rng.uniform(2.0, 7.0)), 1)
        elif d["kind"] in ("picc", "central_line"):
            d["tip"] = _pick(rng, PICC_TIPS, (0.25, 0.3, 0.3, 0.15))
        out.append(d)
    return out


def sample_study(rng: np.random.Generator, patient: dict, labels: np.ndarray, index: int,
                 boiler_p: float = 0.25, n_boiler: int = 8) -> dict:
    """Attributes of study number `index` of a patient, given its 14-label vector (uint8)."""
    has_devices = bool(labels[_IDX["Support Devices"]])
    acute = bool(labels[[_IDX[k] for k in ("Edema", "Pneumothorax", "Consolidation")]].any())
    frontal = "AP" if rng.random() < (0.6 if has_devices or acute else 0.08) else "PA"
    findings = _finding_details(rng, labels)
    ctr = min(patient["ctr0"] + float(rng.normal(0.0, 0.01)), 0.52)
    if "Cardiomegaly" in findings:
        lo, hi = {"mild": (0.55, 0.59), "moderate": (0.59, 0.65), "marked": (0.65, 0.72)}[
            findings["Cardiomegaly"]["severity"]]
        ctr = float(rng.uniform(lo, hi))
    inspiration = float(np.clip(rng.normal(1.0, 0.08), 0.82, 1.10))
    # An all-zero vector (the labeller found nothing, not even "No Finding"): give it a finding outside
    # the 14 labels, as real reports of that kind have (hyperexpansion, hiatal hernia).
    incidental = None
    if not labels.any():
        incidental = _pick(rng, ("hyperexpanded", "hiatal hernia"))
        if incidental == "hyperexpanded":
            inspiration = float(rng.uniform(1.14, 1.2))
    normal = tuple(int(v) for v in labels) == NORMAL_ONLY
    # Boilerplate (verbatim, Zipf-like template frequencies) only for plain normal studies.
    boiler = None
    if normal and rng.random() < boiler_p:
        weights = 1.0 / np.sqrt(np.arange(1, n_boiler + 1))
        boiler = int(rng.choice(n_boiler, p=weights / weights.sum()))
    return {
        "index": index,
        "labels": [int(v) for v in labels],
        "frontal": frontal,
        "lateral": bool(rng.random() < (0.85 if frontal == "PA" else 0.35)),
        "rotation": round(float(np.clip(rng.normal(0.0, 0.45), -1.0, 1.0)), 2),
        "inspiration": round(inspiration, 3),
        "ctr": round(ctr, 3),
        "incidental": incidental,
        "findings": findings,
        "devices": _study_devices(rng, patient) if has_devices else [],
        "fracture": patient["fracture"] if labels[_IDX["Fracture"]] else None,
        "boiler": boiler,
        "img_seed": int(rng.integers(0, 2**31 - 1)),
    }
