"""A transparent rule-based report labeller for the 14 CheXpert observations.

How it works (small enough to read in one sitting, in the spirit of the CheXpert labeller / NegEx):
1. The report is split into sentences (on . ; ? ! and line breaks).
2. Each label has MENTION patterns (regular expressions over lower-cased text) and a few explicit
   NORMAL patterns ("heart size is normal" is a negative Cardiomegaly mention).
3. Each mention is classified by the words around it in its sentence, NegEx-style:
   - negated when a negation trigger ("no", "without", "negative for", "free of", ...) precedes it
     within the same clause, or a post-trigger ("... is not seen", "... has resolved") follows it;
   - uncertain when an uncertainty trigger ("may", "possible", "cannot be excluded", "versus", ...)
     is in its clause;
   - positive otherwise. A clause ends at "but", "however", "although", "which", "with" ... .
4. Per label: positive if any mention is positive; else uncertain (NaN) if any is uncertain; else 0
   if it was mentioned negatively or not at all (`unmentioned`, default 0.0).
5. No Finding = 1 when no other label except Support Devices is positive or uncertain, else 0.
Optional MeSH terms (OpenI's manual indexing) add positives the text patterns missed.

Values: 1.0 positive, 0.0 negative / not mentioned, NaN uncertain. Labels are in schema.LABELS order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from backend.sources.schema import LABELS

# ---- mention patterns per label (lower-cased text; \b word boundaries) ------------------------------
_MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"enlarged cardiomediastin\w*", r"cardiomediastinal (?:silhouette|contour)s? (?:is |are )?(?:enlarged|widened|prominent)",
        r"widen\w* (?:of the )?mediastin\w*", r"mediastin\w* (?:silhouette |contour )?(?:is |are )?(?:widened|enlarged)",
        r"mediastinal (?:widening|enlargement|prominence)", r"enlarged mediastin\w*",
    ),
    "Cardiomegaly": (
        r"cardiomegaly", r"enlarged (?:heart|cardiac (?:silhouette|size|shadow))", r"heart (?:size )?(?:is |appears )?"
        r"(?:\w+ )?enlarged", r"cardiac (?:silhouette|size|shadow) (?:is |appears )?(?:\w+ )?enlarged",
        r"enlargement of the (?:heart|cardiac silhouette)", r"(?:heart|cardiac) (?:size )?(?:is )?(?:at the )?upper limits? of normal",
    ),
    "Lung Opacity": (
        r"opaci\w*", r"infiltrat\w*", r"air[- ]?space (?:disease|process|opacit\w*)",
        r"(?:increased|airspace|parenchymal|alveolar|patchy|hazy|streaky|ill-defined|confluent) densit(?:y|ies)",
        r"interstitial (?:marking|pattern|prominence|opacit|lung disease|disease)\w*", r"reticula\w*",
        r"scar(?:ring|s)?\b", r"fibros\w*", r"hazy|haziness", r"peribronchial (?:thickening|cuffing)",
        r"(?:lung|pulmonary) (?:marking|markings) (?:are |is )?(?:increased|prominent|coarse\w*)",
    ),
    "Lung Lesion": (
        r"nodul\w*", r"\bmass(?:es)?\b", r"lesions?\b", r"tumou?r", r"neoplas\w*", r"carcinoma", r"cancer",
        r"metasta\w*", r"cavitary",
    ),
    "Edema": (
        r"edema", r"heart failure", r"\bchf\b", r"vascular congestion", r"pulmonary congestion",
        r"(?:pulmonary )?vascular (?:prominence|redistribution|engorgement)", r"cephalization",
        r"indistinct\w* (?:of )?(?:the )?(?:pulmonary )?vasculature",
    ),
    "Consolidation": (r"consolidat\w*",),
    "Pneumonia": (r"pneumonia", r"pneumonitis", r"infecti\w*", r"bronchopneumonia"),
    "Atelectasis": (r"atelecta\w*", r"collapse"),
    "Pneumothorax": (r"pneumothora\w*", r"pneumothoraces"),
    "Pleural Effusion": (
        r"effusions?", r"pleural fluid", r"blunting of the (?:\w+ )?costophrenic", r"costophrenic (?:angle |sulcus )?blunting",
        r"(?:costophrenic|cp) (?:angles?|sulc\w*) (?:is |are )?blunt\w*", r"fluid in the (?:\w+ )?fissure",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|scar\w*|calcifications?|reaction)", r"fibrothorax", r"apical (?:pleural )?(?:cap|capping)",
        r"pleural[- ]parenchymal (?:scar\w*|thickening)",
    ),
    "Fracture": (r"fractur\w*", r"\bfx\b"),
    "Support Devices": (
        r"pacemaker", r"\bpacer\b", r"\bicd\b", r"defibrillator", r"catheter", r"\bpicc\b", r"central (?:venous )?line",
        r"(?:endotracheal|tracheostomy|nasogastric|feeding|chest|enteric|et|ng|og) tubes?", r"\btubes?\b",
        r"\bports?\b", r"port-a-cath", r"\bstents?\b", r"(?:support|medical|cardiac|implant\w*) devices?", r"\bdevices?\b",
        r"(?<!monitor )(?<!ekg )(?<!ecg )\bleads?\b", r"swan[- ]ganz", r"\bdrains?\b", r"\bvalve replacement\b", r"prosthetic valve", r"\blvad\b",
        r"(?:sternotomy|cerclage) wires?", r"\bhardware\b",
    ),
}

# Explicit normal statements: a negative mention of the label (never positive).
_NORMALS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastin\w* (?:silhouette |contours? |size )?(?:is |are )?(?:\w+ )?(?:normal|within normal limits|unremarkable|stable)",
        r"normal (?:cardio)?mediastin\w*", r"(?:heart|cardiac silhouette) and mediastinum (?:are )?(?:\w+ )?(?:normal|within normal limits)",
    ),
    "Cardiomegaly": (
        r"(?:heart|cardiac) (?:size|silhouette|shadow|contour)s? (?:is |are |appears? )?(?:\w+ )?(?:normal|within normal limits|unremarkable|stable)",
        r"normal (?:heart|cardiac) (?:size|silhouette)", r"heart is (?:\w+ )?normal in size", r"normal[- ]sized heart",
        r"(?:heart|cardiac silhouette) and mediastinum (?:are )?(?:\w+ )?(?:normal|within normal limits)",
        r"heart and (?:mediastinum|mediastinal contours?|lungs) (?:are |appear )?(?:\w+ )?(?:normal|within normal limits|unremarkable)",
        r"cardiomediastinal silhouette (?:is )?(?:\w+ )?(?:normal|within normal limits|unremarkable)",
    ),
    "Lung Opacity": (r"lungs? (?:are |is )?(?:\w+ )?clear",),
    "Pleural Effusion": (r"costophrenic (?:angles?|sulci) (?:are |is )?(?:sharp|clear|preserved)",),
}

_PRE_NEG = (
    r"\bno\b", r"\bnot\b", r"\bwithout\b", r"\bnegative for\b", r"\bfree of\b", r"\bclear of\b", r"\babsence of\b",
    r"\brather than\b", r"\bresolution of\b", r"\bresolved\b", r"\bremoval of\b", r"\bexclude[sd]?\b", r"\bnor\b",
    r"\bdenies\b", r"\bnone\b", r"\bnegative\b", r"\bclear\b",
)
_POST_NEG = (
    r"^\W*(?:is|are|has|have|was|were)? ?(?:been )?(?:not (?:seen|identified|present|visualized|evident|demonstrated)|"
    r"absent|resolved|removed|no longer\b|cleared|unlikely)",
)
_UNCERTAIN = (
    r"\bmay\b", r"\bmight\b", r"\bpossibl[ey]\b", r"\bprobabl[ey]\b", r"\bquestionabl[ey]\b", r"\bquestion of\b",
    r"\bsuspicious\b", r"\bsuspect\w*\b", r"\bsuggest\w*\b", r"\bconcern\w*\b", r"\bcannot be (?:excluded|ruled out)",
    r"\bcould\b", r"\bversus\b", r"\bvs\.?\b", r"\bdifferential\b", r"\bconsider\w*\b", r"\bequivocal\b",
    r"\bnot (?:be )?(?:excluded|ruled out)\b", r"\brule out\b", r"\br/o\b", r"\bcan not be excluded\b", r"\buncertain\b",
    r"\bcorrelat\w*\b", r"\bupper limits? of normal\b", r"\bborderline\b", r"\bor\b(?= \w+ (?:pneumonia|atelectasis|effusion|consolidation))",
)
# words that end a trigger's scope (a new clause begins)
_SCOPE_END = re.compile(r"\b(?:but|however|although|though|which|whereas|except|aside from|with|yet|and there is|"
                        r"there is|there are|is seen|are seen)\b")

_SENTENCE_SPLIT = re.compile(r"(?<!\d)[.;?!](?!\d)|\n+")

_COMPILED = {lab: re.compile("|".join(f"(?:{p})" for p in pats)) for lab, pats in _MENTIONS.items()}
_COMPILED_NORMAL = {lab: re.compile("|".join(f"(?:{p})" for p in pats)) for lab, pats in _NORMALS.items()}
_PRE_NEG_RE = re.compile("|".join(_PRE_NEG))
_POST_NEG_RE = re.compile("|".join(_POST_NEG))
_UNCERTAIN_RE = re.compile("|".join(_UNCERTAIN))

# MeSH heading (first part of an OpenI MeSH term, lower-case) -> label it supports as positive
MESH_TO_LABEL: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
    "pulmonary atelectasis": "Atelectasis", "atelectasis": "Atelectasis", "pneumonia": "Pneumonia",
    "pulmonary edema": "Edema", "edema": "Edema", "consolidation": "Consolidation", "fractures, bone": "Fracture",
    "rib fractures": "Fracture", "spinal fractures": "Fracture", "lung/hypoinflation": "",  # not a CheXpert label
    "nodule": "Lung Lesion", "mass": "Lung Lesion", "lung neoplasms": "Lung Lesion", "opacity": "Lung Opacity",
    "infiltrate": "Lung Opacity", "pulmonary disease, chronic obstructive": "", "pacemaker, artificial": "Support Devices",
    "catheters, indwelling": "Support Devices", "implanted medical device": "Support Devices",
    "medical device": "Support Devices", "tube, inserted": "Support Devices", "pleural thickening": "Pleural Other",
}

UNCERTAIN, NEGATIVE, POSITIVE = "uncertain", "negative", "positive"


def split_sentences(text: str) -> list[str]:
    """Lower-cased sentences of a report ('XXXX' de-identification tokens kept as they are)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.lower()) if s.strip()]


def _clause_before(sentence: str, start: int) -> str:
    """The part of the sentence before a mention that is still in the same clause."""
    before = sentence[:start]
    ends = list(_SCOPE_END.finditer(before))
    return before[ends[-1].end():] if ends else before


def _clause_after(sentence: str, end: int) -> str:
    after = sentence[end:]
    stop = _SCOPE_END.search(after)
    return after[: stop.start()] if stop else after


def classify_mention(sentence: str, start: int, end: int) -> str:
    """'negative', 'uncertain' or 'positive' for the mention sentence[start:end] (NegEx-style)."""
    # the mention itself may hold a trigger ("heart is not enlarged", "heart size at the upper limits of normal")
    before = _clause_before(sentence, start) + " " + sentence[start:end]
    after = _clause_after(sentence, end)
    if _PRE_NEG_RE.search(before) or _POST_NEG_RE.search(after):
        return NEGATIVE
    if _UNCERTAIN_RE.search(before) or _UNCERTAIN_RE.search(after):
        return UNCERTAIN
    return POSITIVE


def mentions(text: str) -> dict[str, list[str]]:
    """Every label's mention classes in a report, e.g. {'Cardiomegaly': ['negative'], ...}."""
    found: dict[str, list[str]] = {}
    for sentence in split_sentences(text):
        for label, regex in _COMPILED_NORMAL.items():
            if regex.search(sentence):
                found.setdefault(label, []).append(NEGATIVE)
        for label, regex in _COMPILED.items():
            for m in regex.finditer(sentence):
                if label in _COMPILED_NORMAL and _inside_normal(sentence, label, m.start()):
                    continue
                found.setdefault(label, []).append(classify_mention(sentence, m.start(), m.end()))
    return found


def _inside_normal(sentence: str, label: str, pos: int) -> bool:
    return any(n.start() <= pos < n.end() for n in _COMPILED_NORMAL[label].finditer(sentence))


def _mesh_positives(mesh: Iterable[str]) -> set[str]:
    out = set()
    for term in mesh:
        parts = [p.strip().lower() for p in term.split("/")]
        if "borderline" in parts:  # an uncertain finding, not a positive
            continue
        for key in (parts[0], "/".join(parts[:2])):
            label = MESH_TO_LABEL.get(key)
            if label:
                out.add(label)
    return out


def label_report(text: str, mesh: Iterable[str] = (), unmentioned: float = 0.0) -> np.ndarray:
    """The (14,) float32 label vector of one report in LABELS order (1 / 0 / NaN uncertain).

    mesh: optional MeSH terms (OpenI), each adding a positive for the label it names."""
    found = mentions(text or "")
    vec = np.full(len(LABELS), unmentioned, dtype=np.float32)
    mesh_pos = _mesh_positives(mesh)
    for i, label in enumerate(LABELS):
        classes = found.get(label, [])
        if POSITIVE in classes or label in mesh_pos:
            vec[i] = 1.0
        elif UNCERTAIN in classes:
            vec[i] = np.nan
        elif classes:
            vec[i] = 0.0
    nf = LABELS.index("No Finding")
    others = [i for i, lab in enumerate(LABELS) if lab not in ("No Finding", "Support Devices")]
    vec[nf] = 0.0 if any(vec[i] == 1.0 or np.isnan(vec[i]) for i in others) else 1.0
    return vec


def label_reports(texts: Iterable[str], mesh: Iterable[Iterable[str]] | None = None,
                  unmentioned: float = 0.0) -> np.ndarray:
    """(n, 14) float32 labels for many reports (see label_report)."""
    texts = list(texts)
    meshes = list(mesh) if mesh is not None else [()] * len(texts)
    if not texts:
        return np.zeros((0, len(LABELS)), dtype=np.float32)
    return np.stack([label_report(t, m, unmentioned) for t, m in zip(texts, meshes, strict=True)])
