"""The `synthetic` source: SYNTHETIC chest radiographs and reports (not real patients), the embedded default.

    load_source("synthetic", n_patients=6000, seed=0, image_size=128, sites=("A", "B"))

A deterministic (seeded) generator carrying both kinds of signal a re-linkage audit measures:
- label level: 14-label vectors drawn from the empirical OpenI CheXpert-labeller distribution
  (backend.sources.synthetic.prior), each positive finding drawn in the image and stated in the report, with negations;
- instance level: laterality, sizes (nodule cm, effusion and pneumothorax size), ET tube tip cm above the
  carina, PICC / central line side and tip, pacemaker / ICD side and leads, sternotomy wire count, clips,
  granuloma lobe, heart size, rotation, inspiration, view (a study has a frontal and usually a lateral
  image: two pairs sharing one report and study_id);
- patient level: 1-6 studies per patient whose persistent traits (habitus, scoliosis, sternotomy
  wires, clips, granuloma, degenerative spine, aorta; the same rib fracture and devices whenever the
  label says so) recur;
- verbatim boilerplate normal reports repeated across studies;
- two site styles, "synthetic-A" and "synthetic-B" (report templates and vocabulary, image contrast,
  gamma, noise and blur); a patient belongs to one site. The `site` column holds "synthetic-A" /
  "synthetic-B"; the `sites` option takes "A" / "B".

Images are rendered lazily: image_path is "synthetic://<seed>/<pair_id>" and `read_image` renders the
PIL "L" image from the study's attributes, stored as JSON in the extra column `synth_attrs` (keys
"patient" and "study", see backend.sources.synthetic.attrs; not named `attrs`, which pandas reserves).

Side information (backend.sources.synthetic.demographics): the columns `sex` (F/M, per patient),
`age` (years at the study; it grows with the year), `age_band` (schema.AGE_BANDS: 18-39, 40-59, 60-79, 80+)
and `year` (2010-2022, never decreasing over a patient's studies), drawn from a random stream of their own so
every other column, image and report is what it was before they existed. The images and reports do NOT encode
sex, age or year: a pool matched on them is only smaller (fewer same-group distractors), which a model cannot
exploit beyond that.

The default size (6,000 patients) gives about 14,300 studies, 25,700 pairs and 2,800 test studies
(seed 0: 14,318 / 25,660 / 2,829). Patient i depends only on (seed, i), so a smaller n_patients is a
prefix of a larger one, and the split depends only on the patient id: the train split of 3,000 patients
never overlaps the test split of 6,000.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from backend.errors import ImageReadError, SourceError
from backend.sources import SourceInfo, register_source
from backend.sources.schema import LABELS, SourceData, age_band, apply_section_policy, assign_split, finalize_pairs
from backend.sources.synthetic.attrs import n_studies, sample_patient, sample_study
from backend.sources.synthetic.demographics import sample_demographics
from backend.sources.synthetic.prior import sample_label_chain
from backend.sources.synthetic.render import render
from backend.sources.synthetic.text import compose

log = logging.getLogger(__name__)

DEFAULT_N_PATIENTS = 6000
SITE_STYLES = ("A", "B")
SCHEME = "synthetic://"
# Peak memory while the pair table is built, per patient (tracemalloc, 1,000 patients: ~9.9 KB, ~11.5 KB with
# the side information columns; rounded up).
BYTES_PER_PATIENT = 12_000


def physical_memory() -> int | None:
    """Total physical memory in bytes, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(n_patients: int) -> None:
    """SourceError when building n_patients would need more memory than this machine has (with the estimate)."""
    need, have = int(n_patients) * BYTES_PER_PATIENT, physical_memory()
    if have is not None and need > have:
        raise SourceError(f"synthetic: n_patients={n_patients:,} needs about {need / 2**30:,.1f} GiB to build the pair "
                          f"table ({BYTES_PER_PATIENT / 1000:g} kB per patient), more than this machine's "
                          f"{have / 2**30:,.1f} GiB; use at most {have // BYTES_PER_PATIENT:,} (default "
                          f"{DEFAULT_N_PATIENTS:,}).")


DESCRIPTION = "SYNTHETIC chest radiographs and reports (not real patients); the embedded default, works offline."


def _check_options(n_patients: object, seed: object, image_size: object, sites: object) -> tuple[str, ...]:
    """Validate the options; returns the site styles as a tuple of 'A'/'B' ('synthetic-A' is accepted too)."""
    if not isinstance(n_patients, int | np.integer) or n_patients < 1:
        raise SourceError(f"synthetic: n_patients must be a positive integer, got {n_patients!r}.")
    check_fits(int(n_patients))
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise SourceError(f"synthetic: seed must be a non-negative integer, got {seed!r}.")
    if not isinstance(image_size, int | np.integer) or not 16 <= image_size <= 2048:
        raise SourceError(f"synthetic: image_size must be an integer from 16 to 2048 pixels, got {image_size!r}.")
    # a string from a command line ("B", "A,B" or "A+B") or a sequence of names
    names = tuple(re.split(r"[,+\s]+", sites.strip())) if isinstance(sites, str) else tuple(sites)  # type: ignore[arg-type]
    names = tuple(str(s).removeprefix("synthetic-") for s in names)
    bad = [s for s in names if s not in SITE_STYLES]
    if not names or bad:
        raise SourceError(f"synthetic: unknown site style(s) {bad or names!r}; choose from {SITE_STYLES}.")
    return tuple(dict.fromkeys(names))


def _patient_rows(seed: int, index: int, sites: tuple[str, ...]) -> list[dict]:
    """All pair rows of patient number `index` (a function of (seed, index) only, not of n_patients)."""
    rng = np.random.default_rng([seed, index])
    site = sites[int(rng.integers(len(sites)))]
    patient = sample_patient(rng, site)
    k = n_studies(rng)
    labels = sample_label_chain(rng, k)
    patient_id = f"syn{seed}-p{index:06d}"
    sex, ages, years = sample_demographics(seed, index, k)  # a stream of their own: nothing above changes
    rows = []
    for j in range(k):
        study = sample_study(rng, patient, labels[j], j)
        findings, impression = compose(rng, patient, study, LABELS)
        attrs = json.dumps({"patient": patient, "study": study}, separators=(",", ":"))
        study_id = f"{patient_id}-s{j + 1}"
        for view in (study["frontal"], "LATERAL") if study["lateral"] else (study["frontal"],):
            pair_id = f"{study_id}-{view.lower()}"
            row = {"pair_id": pair_id, "study_id": study_id, "patient_id": patient_id,
                   "image_path": f"{SCHEME}{seed}/{pair_id}", "view": view, "findings": findings,
                   "impression": impression, "site": f"synthetic-{site}", "synth_attrs": attrs,
                   "sex": sex, "age": ages[j], "age_band": age_band(ages[j]), "year": years[j]}
            row.update(zip(LABELS, (float(v) for v in study["labels"]), strict=True))
            rows.append(row)
    return rows


def generate_pairs(n_patients: int = DEFAULT_N_PATIENTS, seed: int = 0,
                   sites: tuple[str, ...] = SITE_STYLES) -> pd.DataFrame:
    """The raw pair table (canonical columns except report/split, plus `synth_attrs`), one row per image."""
    rows = [row for i in range(n_patients) for row in _patient_rows(seed, i, sites)]
    return pd.DataFrame(rows)


def _stats(pairs: pd.DataFrame, dropped: int) -> dict[str, int]:
    stats = {"synthetic": 1, "pairs": len(pairs), "studies": int(pairs["study_id"].nunique()),
             "patients": int(pairs["patient_id"].nunique()), "dropped_empty_report": dropped}
    for split in ("train", "val", "test"):
        part = pairs[pairs["split"] == split]
        stats[f"{split}_pairs"] = len(part)
        stats[f"{split}_studies"] = int(part["study_id"].nunique())
        stats[f"{split}_patients"] = int(part["patient_id"].nunique())
    for site, part in pairs.groupby("site"):
        stats[f"{site}_studies"] = int(part["study_id"].nunique())
    return stats


def make_reader(pairs: pd.DataFrame, seed: int, image_size: int) -> Callable[[str], Image.Image]:
    """read_image for a synthetic table: 'synthetic://<seed>/<pair_id>' -> PIL 'L' image (size x size)."""
    lookup = dict(zip(pairs["pair_id"], zip(pairs["synth_attrs"], pairs["view"], strict=True), strict=True))
    prefix = f"{SCHEME}{seed}/"

    def read_image(image_path: str) -> Image.Image:
        if not str(image_path).startswith(prefix):
            raise ImageReadError(f"{image_path!r} is not an image of this synthetic dataset (expected "
                                 f"'{prefix}<pair_id>'); load the synthetic source with the seed it came from.")
        pair_id = str(image_path)[len(prefix):]
        if pair_id not in lookup:
            raise ImageReadError(f"Synthetic pair {pair_id!r} is not in this dataset; load it with the same "
                                 "n_patients and seed as the table that listed it.")
        attrs, view = lookup[pair_id]
        return render(json.loads(attrs), view, image_size)

    return read_image


def load_synthetic(root: str | None = None, section_policy: str = "findings+impression", *,
                   n_patients: int = DEFAULT_N_PATIENTS, seed: int = 0, image_size: int = 128,
                   sites: tuple[str, ...] | list[str] | str = SITE_STYLES, **unknown: object) -> SourceData:
    """Generate the synthetic pair table (see module docstring); `root` is ignored (nothing on disk)."""
    if unknown:
        raise SourceError(f"synthetic: unknown option(s) {sorted(unknown)}; use n_patients, seed, image_size, sites.")
    styles = _check_options(n_patients, seed, image_size, sites)
    raw = generate_pairs(int(n_patients), int(seed), styles)
    raw["report"] = ""
    patients = raw["patient_id"].drop_duplicates()
    split_of = dict(zip(patients, assign_split(patients), strict=True))
    raw["split"] = raw["patient_id"].map(split_of)
    pairs, dropped = apply_section_policy(raw, section_policy)
    pairs = finalize_pairs(pairs, "synthetic")
    stats = _stats(pairs, dropped)
    log.info("synthetic: %d patients, %d studies, %d pairs (seed %d)", stats["patients"], stats["studies"],
             stats["pairs"], seed)
    return SourceData(name="synthetic", pairs=pairs, read_image=make_reader(pairs, int(seed), int(image_size)),
                      root=None, stats=stats)


register_source(SourceInfo(name="synthetic", description=DESCRIPTION, loader=load_synthetic, needs_root=False))
