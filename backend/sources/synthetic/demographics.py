"""Side information of the synthetic patients: sex, age and study year, for side-information pools.

Drawn from a stream of their own, `default_rng([seed, index, DEMOGRAPHICS_STREAM])`, separate from the
patient's main stream `default_rng([seed, index])` that draws everything else: adding them left every other
column, every report text and every image of the source byte-identical (tests/test_synthetic.py pins that).

Neither the image nor the report depends on them: the renderer draws no sex or age cues, and no report
mentions sex, age or a date. Matching a pool on them therefore only shrinks the effective pool (fewer
distractors of the same group); a model cannot read them from the data it links. In real data the image does
carry sex and age (and reports sometimes the date), so the synthetic lift of such a pool is a lower bound.

- sex: "F" or "M" with equal probability, the same in every study of a patient.
- age: at the first study 18 + 77 x Beta(2.6, 2.0) years, rounded (mean about 61, mode about 65: adult chest
  radiograph cohorts skew towards 50-80), clipped to 18-95; it grows with the study year.
- year: each later study 0-3 years after the one before (probabilities 0.4, 0.3, 0.2, 0.1), so later studies
  are never earlier; the first study's year uniform over the years that let the last one fall in 2010-2022
  (a longer history than 12 years is cut at 2022).
"""

from __future__ import annotations

import numpy as np

DEMOGRAPHICS_STREAM = 0x64656D6F  # the word "demo": the third entropy word of the demographics stream
YEARS: tuple[int, int] = (2010, 2022)
AGES: tuple[int, int] = (18, 95)
_GAPS, _GAP_P = (0, 1, 2, 3), (0.4, 0.3, 0.2, 0.1)


def sample_demographics(seed: int, index: int, n_studies: int) -> tuple[str, list[int], list[int]]:
    """(sex, age at each study, year of each study) of patient number `index` (studies in time order)."""
    rng = np.random.default_rng([seed, index, DEMOGRAPHICS_STREAM])
    sex = "F" if rng.random() < 0.5 else "M"
    age0 = int(np.clip(round(AGES[0] + (AGES[1] - AGES[0]) * rng.beta(2.6, 2.0)), *AGES))
    offsets = np.cumsum([0, *rng.choice(_GAPS, size=n_studies - 1, p=_GAP_P)])
    first = int(rng.integers(YEARS[0], max(YEARS[0], YEARS[1] - int(offsets[-1])) + 1))
    years = [min(first + int(o), YEARS[1]) for o in offsets]
    ages = [min(age0 + y - years[0], AGES[1]) for y in years]
    return sex, ages, years
