"""The label prior of the synthetic source: the empirical distribution of 14-label vectors.

Source (derived once, 2026-11-28, then written here because users do not have ../shared):
``../shared/data/openi/chexpert14_labels.json`` -- CheXpert-labeller output for the 3,337 OpenI
(Indiana University) reports that have a FINDINGS section, from the public repository
ginobilinie/xray_report_generation (``open-i/file2label.json``). That file lists labels in
ALPHABETICAL order; the strings below are re-ordered into the CheXpert order of ``schema.LABELS``
(No Finding first, Support Devices last). Every distinct vector is kept with its count (145 vectors,
counts sum to 3,337), so prevalence AND co-occurrence are exactly those of the labeller's output,
including its quirks (254 all-zero vectors; "No Finding" together with Cardiomegaly or Support Devices).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from backend.sources.schema import LABELS

# (14 digits in schema.LABELS order, number of OpenI reports with exactly that vector)
LABEL_VECTOR_COUNTS: tuple[tuple[str, int], ...] = (
    ("10000000000000", 2299), ("00000000000000", 254), ("00100000000000", 108), ("00010000000000", 55), ("00001000000000", 49),
    ("00010001000000", 39), ("00010000100000", 34), ("00000000100000", 32), ("00000001000000", 31), ("00000000001000", 25),
    ("00000000000010", 23), ("00000000010000", 23), ("00011000000000", 23), ("00100100000000", 18), ("10100000000000", 17),
    ("00000100000000", 13), ("00010001100000", 13), ("10000000000001", 12), ("00000000101000", 11), ("10010000000000", 10),
    ("00110000100000", 9), ("00000000000100", 8), ("00100000001000", 8), ("00000000011000", 7), ("00010000101000", 7),
    ("00011001000000", 6), ("00100000100000", 6), ("00100100001000", 6), ("00110000000000", 6), ("00000100001000", 5),
    ("00010001001000", 5), ("00010100000000", 5), ("00011000000100", 5), ("00110100000000", 5), ("00010000001000", 4),
    ("01000000000000", 4), ("00000000000001", 3), ("00000001001000", 3), ("00000001100000", 3), ("00000011000000", 3),
    ("00010001101000", 3), ("00010011000000", 3), ("00010011100000", 3), ("00010101000000", 3), ("00100101000000", 3),
    ("00110101000000", 3), ("00111000000000", 3), ("10001000000000", 3), ("00000000001001", 2), ("00000000010001", 2),
    ("00000100101000", 2), ("00010000000001", 2), ("00010000000100", 2), ("00010000110000", 2), ("00010001000001", 2),
    ("00010011001000", 2), ("00010100000100", 2), ("00010101100000", 2), ("00100000101000", 2), ("00100100100000", 2),
    ("00100100101000", 2), ("00100110010000", 2), ("00110000101000", 2), ("00110001000000", 2), ("00110001101000", 2),
    ("10000000000100", 2), ("10000001000000", 2), ("00000000001100", 1), ("00000000010010", 1), ("00000000010100", 1),
    ("00000000100001", 1), ("00000000100010", 1), ("00000000101001", 1), ("00000000101010", 1), ("00000000110000", 1),
    ("00000000111000", 1), ("00000001100100", 1), ("00000010010000", 1), ("00000010100000", 1), ("00000011000001", 1),
    ("00000011001000", 1), ("00000011100000", 1), ("00000100000100", 1), ("00000100100000", 1), ("00000101000000", 1),
    ("00000101010000", 1), ("00000110000000", 1), ("00001000000001", 1), ("00001000010000", 1), ("00001000101000", 1),
    ("00001001000000", 1), ("00001001100000", 1), ("00001100001000", 1), ("00010000000010", 1), ("00010000001010", 1),
    ("00010000010000", 1), ("00010000111000", 1), ("00010001010000", 1), ("00010010100000", 1), ("00010011101000", 1),
    ("00010100011000", 1), ("00010100100000", 1), ("00010101000100", 1), ("00010101001000", 1), ("00010101010000", 1),
    ("00011000001000", 1), ("00011000011000", 1), ("00011000110000", 1), ("00011010100000", 1), ("00100000000100", 1),
    ("00100000011000", 1), ("00100000100001", 1), ("00100000110000", 1), ("00100001000000", 1), ("00100001101000", 1),
    ("00100100000100", 1), ("00100100010000", 1), ("00100101001000", 1), ("00100111001000", 1), ("00101000000000", 1),
    ("00110000000001", 1), ("00110000001000", 1), ("00110000001100", 1), ("00110000100001", 1), ("00110001000001", 1),
    ("00110001100000", 1), ("00110010101100", 1), ("00110101001000", 1), ("00110111001000", 1), ("00111001000000", 1),
    ("00111100000000", 1), ("00111100001000", 1), ("01000000001000", 1), ("01000000010000", 1), ("01001000000000", 1),
    ("01010000000000", 1), ("01010000100100", 1), ("01010001000000", 1), ("01010101101000", 1), ("01100000000000", 1),
    ("01100000100000", 1), ("01101100000000", 1), ("01110101001000", 1), ("10000000010000", 1), ("10000100000000", 1),
)

PRIOR_TOTAL = 3337


def prior_vectors() -> tuple[np.ndarray, np.ndarray]:
    """The prior as (vectors (m, 14) uint8 in LABELS order, probabilities (m,) float64 summing to 1)."""
    vectors = np.array([[int(ch) for ch in bits] for bits, _ in LABEL_VECTOR_COUNTS], dtype=np.uint8)
    counts = np.array([n for _, n in LABEL_VECTOR_COUNTS], dtype=np.float64)
    return vectors, counts / counts.sum()


def prior_prevalence() -> dict[str, float]:
    """Per-label prevalence implied by the prior (label name -> fraction of studies positive)."""
    vectors, probs = prior_vectors()
    return dict(zip(LABELS, (probs @ vectors).tolist(), strict=True))


def sample_label_chain(rng: np.random.Generator, n_studies: int, repeat: float = 0.6) -> np.ndarray:
    """Label vectors (n_studies, 14) uint8 of one patient's studies, in time order.

    The patient has one 'chronic' vector drawn from the prior; each study repeats it with probability
    `repeat`, else draws a fresh vector from the prior. Both branches draw from the prior, so every
    study's marginal distribution is exactly the prior while a patient's studies stay correlated."""
    vectors, probs = _cached_prior()
    chronic = rng.choice(len(probs), p=probs)
    fresh = rng.choice(len(probs), size=n_studies, p=probs)
    keep = rng.random(n_studies) < repeat
    return vectors[np.where(keep, chronic, fresh)]


@lru_cache(maxsize=1)
def _cached_prior() -> tuple[np.ndarray, np.ndarray]:
    """prior_vectors(), computed once per process (callers must not modify the arrays)."""
    return prior_vectors()
