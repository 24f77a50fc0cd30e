"""Writing a synthetic report (findings, impression) from the sampled attributes of one study.

Every stated detail comes from the attributes that the renderer also draws (side, lobe, size, tip
distance, device side, wire count, ...), so the text and the image agree. Boilerplate normal studies
get a verbatim template; other studies get composed sentences in the site's style (backend.sources.synthetic.vocab).
"""

from __future__ import annotations

import numpy as np

from backend.sources.synthetic.vocab import BOILERPLATE, LOBE_NAMES, NEGATABLE, NUMBER_WORDS, ORDINALS, PHRASES

TRAIT_MENTION_P = 0.85  # radiologists mention a known persistent trait most of the time, not always
SEV_ADVERB = {"mild": "mildly", "moderate": "moderately", "marked": "markedly", "severe": "severely"}
CLIP_WORDS = {"right upper quadrant": "right upper quadrant", "left axilla": "left axilla",
              "right axilla": "right axilla", "mediastinum": "mediastinum"}


class _Writer:
    """Picks phrase variants of one site with one random generator."""

    def __init__(self, rng: np.random.Generator, site: str) -> None:
        self.rng, self.site = rng, site

    def say(self, key: str, **fields: object) -> str:
        """One variant of phrase `key`, filled; capitalised keys ({Side}) get capitalised values."""
        variants = PHRASES[self.site].get(key, ())
        if not variants:
            return ""
        text = variants[int(self.rng.integers(len(variants)))]
        full = dict(fields)
        full.update({k.capitalize(): str(v).capitalize() for k, v in fields.items()})
        return text.format(**full)

    def lobe(self, code: str) -> str:
        return LOBE_NAMES[self.site][code]


def _lung_sentences(w: _Writer, f: dict) -> list[str]:
    """Sentences of the parenchymal and pleural findings present in `f` (label -> details)."""
    out = []
    if "Lung Lesion" in f:
        d = f["Lung Lesion"]
        out.append(w.say(d["kind"], cm=f"{d['size_cm']:.1f}", mm=int(round(d["size_cm"] * 10)), lobe=w.lobe(d["lobe"])))
    if "Lung Opacity" in f:
        out.append(w.say("opacity", extent=f["Lung Opacity"]["extent"], lobe=w.lobe(f["Lung Opacity"]["lobe"])))
    if "Consolidation" in f and "Pneumonia" in f:
        out.append(w.say("consol_pneumonia", lobe=w.lobe(f["Consolidation"]["lobe"])))
    elif "Consolidation" in f or "Pneumonia" in f:
        key = "consolidation" if "Consolidation" in f else "pneumonia"
        out.append(w.say(key, lobe=w.lobe(f[key.capitalize()]["lobe"])))
    if "Edema" in f:
        out.append(w.say("edema", sev=f["Edema"]["severity"]))
    if "Atelectasis" in f:
        d = f["Atelectasis"]
        out.append(w.say("atel_bi" if d["side"] == "bilateral" else "atel_uni", side=d["side"], kind=d["kind"]))
    for label, key in (("Pneumothorax", "ptx"), ("Pleural Effusion", "eff")):
        if label in f:
            d = f[label]
            out.append(w.say(f"{key}_bi" if d["side"] == "bilateral" else f"{key}_uni", side=d["side"], size=d["size"]))
    if "Pleural Other" in f:
        d = f["Pleural Other"]
        out.append(w.say(f"{d['kind']}_{'bi' if d['side'] == 'bilateral' else 'uni'}", side=d["side"]))
    return out


def _device_sentences(w: _Writer, devices: list[dict]) -> list[str]:
    out = []
    for d in devices:
        kind = d["kind"]
        if kind == "pacemaker":
            out.append(w.say(kind, side=d["side"], leads=NUMBER_WORDS[d["leads"]], s="s" if d["leads"] > 1 else ""))
        elif kind == "et_tube":
            out.append(w.say(kind, cm=f"{d['cm_above_carina']:.1f}"))
        else:
            out.append(w.say(kind, side=d["side"], tip=d.get("tip", "")))
    return out


def _fracture_sentences(w: _Writer, study: dict) -> list[str]:
    """The patient's fracture, stated in the studies labelled Fracture."""
    fr = study["fracture"]
    if not fr:
        return []
    key = "fracture_healed" if fr["age"] == "healed" else "fracture_indet"
    return [w.say(key, side=fr["side"], rib=ORDINALS[fr["rib"]])]


def _trait_sentences(w: _Writer, patient: dict) -> list[str]:
    """Persistent traits, each mentioned with probability TRAIT_MENTION_P."""
    out = []
    mention = lambda: w.rng.random() < TRAIT_MENTION_P  # noqa: E731
    if patient["sternotomy_wires"] and mention():
        out.append(w.say("sternotomy", n=NUMBER_WORDS[patient["sternotomy_wires"]]))
    if patient["clips"] and mention():
        out.append(w.say("clips", loc=CLIP_WORDS[patient["clips"]]))
    if patient["granuloma"] and mention():
        out.append(w.say("granuloma", lobe=w.lobe(patient["granuloma"])))
    if patient["scoliosis"] and mention():
        out.append(w.say("scoliosis", deg=patient["scoliosis"]["deg"], dir=patient["scoliosis"]["dir"]))
    if patient["degenerative"] and mention():
        out.append(w.say("degenerative"))
    return out


def _heart_sentences(w: _Writer, patient: dict, study: dict) -> list[str]:
    f = study["findings"]
    if "Cardiomegaly" in f:
        sev = f["Cardiomegaly"]["severity"]
        out = [w.say("heart_enlarged", sev=sev, sevly=SEV_ADVERB[sev])]
    else:
        out = [w.say("heart_normal")]
    out.append(w.say("mediastinum_wide" if "Enlarged Cardiomediastinum" in f else "mediastinum_normal"))
    if patient["aorta"]:
        out.append(w.say(f"aorta_{patient['aorta']}"))
    return out


def _technique_sentences(w: _Writer, patient: dict, study: dict) -> list[str]:
    out = [w.say(f"view_{study['frontal']}{'_lat' if study['lateral'] else ''}") or
           (w.say("view_AP") if study["frontal"] == "AP" else "")]
    if patient["habitus"] == "large":
        out.append(w.say("habitus_large"))
    if abs(study["rotation"]) > 0.5:
        out.append(w.say("rotated", side="left" if study["rotation"] > 0 else "right"))
    if study["inspiration"] < 0.9:
        out.append(w.say("low_volumes"))
    if study["incidental"]:
        out.append(w.say(study["incidental"]))
    return out


def _negations(w: _Writer, study: dict, labels: dict[str, int]) -> str:
    absent = [word for needed, word in NEGATABLE[w.site] if not any(labels[label] for label in needed)]
    if len(absent) < 2:
        return ""
    fields = dict(zip("abc", absent[:3], strict=False))
    variants = [v for v in PHRASES[w.site]["neg"] if ("{c}" in v) == (len(absent) >= 3)]
    return variants[int(w.rng.integers(len(variants)))].format(**fields)


def compose(rng: np.random.Generator, patient: dict, study: dict, label_names: tuple[str, ...]) -> tuple[str, str]:
    """(findings, impression) of one study in its patient's site style."""
    site = patient["site"]
    if study["boiler"] is not None:
        return BOILERPLATE[site][study["boiler"]]
    w = _Writer(rng, site)
    labels = dict(zip(label_names, study["labels"], strict=True))
    lung = _lung_sentences(w, study["findings"])
    devices = _device_sentences(w, study["devices"])
    heart = _heart_sentences(w, patient, study)
    technique = _technique_sentences(w, patient, study)
    traits = _trait_sentences(w, patient)
    fracture = _fracture_sentences(w, study)
    negation = _negations(w, study, labels)
    clear = [] if lung else [w.say("lungs_clear")]
    bones = [] if study["fracture"] or rng.random() < 0.5 else [w.say("bones_ok")]
    if site == "A":
        parts = technique + heart + clear + lung + [negation] + devices + fracture + traits + bones
    else:
        parts = technique + devices + clear + lung + [negation] + heart + fracture + traits + bones
    findings = " ".join(p for p in parts if p)
    return findings, _impression(w, study, labels, heart, lung + fracture, devices)


def _impression(w: _Writer, study: dict, labels: dict[str, int], heart: list[str], lung: list[str],
                devices: list[str]) -> str:
    """Restates up to two key findings; a 'No Finding' study ends with the site's normal phrase."""
    f = study["findings"]
    cardio = [s for s, label in zip(heart, ("Cardiomegaly", "Enlarged Cardiomediastinum"), strict=False) if label in f]
    main = (lung + cardio + devices)[:2]
    if labels["No Finding"]:
        return " ".join(main + [w.say("impr_normal")])
    if not main and study["incidental"]:
        main = [w.say(study["incidental"])]
    return " ".join(main or [w.say("impr_normal")])
