"""One dataset as the Data page shows it (no Streamlit): the source loaded with its default options, its counts
per split, label prevalence and the attributes side-information pools can match on; LABELS, the 14 findings,
for the pages (which import no source code)."""

from __future__ import annotations

import pandas as pd

from backend import sources
from backend.sources.schema import LABELS as LABELS
from backend.sources.schema import SourceData, known, match_attributes
from backend.specs import MATCH_ATTRIBUTES


def load(name: str, root: str | None = None) -> SourceData:
    """A source loaded from `root` (None: its default folder) with its default options: the pair table, its counts
    and the image reader."""
    return sources.load_source(name, root=root)


def data_summary(pairs: pd.DataFrame, labels: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts per split, label prevalence per split) of a canonical pair table."""
    counts = pairs.groupby("split").agg(pairs=("pair_id", "size"), studies=("study_id", "nunique"),
                                        patients=("patient_id", "nunique")).reset_index()
    prevalence = pairs.groupby("split")[list(labels)].mean().T.reset_index(names="label")
    return counts, prevalence


def match_summary(pairs: pd.DataFrame) -> str:
    """One sentence: the attributes side-information pools (`--match`) can use on this table, how many pairs each
    is known for where some lack it (they are left out of that pool), and the attributes no pair has."""
    can = match_attributes(pairs)
    cannot = [a for a in MATCH_ATTRIBUTES if a not in can]
    name = lambda attrs: ", ".join(a.replace("_", " ") for a in attrs)  # noqa: E731
    partial = [(a, int(known(pairs, a).sum())) for a in can if not known(pairs, a).all()]
    return (f"Side-information pools (audit --match) can match on: {name(can)}."
            + "".join(f" {a.replace('_', ' ').capitalize()} is known for {n:,} of {len(pairs):,} pairs; the others are "
                      "left out of pools matched on it." for a, n in partial)
            + (f" Not on: {name(cannot)} (no pair gives it)." if cannot else "")
            + (" No pair has a finding label: the pathology-matched pool is the random pool on this data."
               if not pairs[list(LABELS)].notna().to_numpy().any() else ""))
