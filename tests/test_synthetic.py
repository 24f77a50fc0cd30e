"""The synthetic source: determinism, schema, splits, size, label prior, text-image agreement, boilerplate,
persistent traits, site styles, speed. Measurements on images use pixel statistics only (never the
renderer's geometry), and label prevalence is checked against an independent recount of the real file."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from backend.errors import ImageReadError, SourceError
from backend.sources import get_source, list_sources, load_source
from backend.sources.schema import LABELS, PAIR_COLUMNS
from backend.sources.synthetic.vocab import BOILERPLATE

# The alphabetical order of ../shared/data/openi/chexpert14_labels.json (its README says so).
ALPHABETICAL = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                "Pneumothorax", "Support Devices")


@pytest.fixture(scope="module")
def default() -> tuple:
    """The default-size dataset and the seconds it took to generate."""
    start = time.perf_counter()
    data = load_source("synthetic")
    return data, time.perf_counter() - start


@pytest.fixture(scope="module")
def small():
    return load_source("synthetic", n_patients=60, seed=3)


def _studies(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs.drop_duplicates("study_id")


def _pixels(data, image_path: str) -> np.ndarray:
    return np.asarray(data.read_image(image_path), dtype=np.float32)


def test_registered_as_synthetic_and_labelled_synthetic() -> None:
    info = get_source("synthetic")
    assert info in list_sources() and not info.needs_root
    assert "SYNTHETIC" in info.description


def test_same_seed_same_table_and_image_bytes_other_seed_differs(small) -> None:
    again = load_source("synthetic", n_patients=60, seed=3)
    pd.testing.assert_frame_equal(small.pairs, again.pairs)
    for path in small.pairs["image_path"].iloc[:4]:
        assert small.read_image(path).tobytes() == again.read_image(path).tobytes()
    other = load_source("synthetic", n_patients=60, seed=4)
    assert list(other.pairs["report"]) != list(small.pairs["report"])
    a = small.read_image(small.pairs["image_path"].iloc[0])
    b = other.read_image(other.pairs["image_path"].iloc[0])
    assert a.tobytes() != b.tobytes()


def test_a_patient_does_not_depend_on_how_many_are_generated(small) -> None:
    bigger = load_source("synthetic", n_patients=90, seed=3).pairs
    pd.testing.assert_frame_equal(bigger.iloc[: len(small.pairs)].reset_index(drop=True), small.pairs)


def test_canonical_schema_and_views(small) -> None:
    pairs = small.pairs
    assert tuple(pairs.columns[: len(PAIR_COLUMNS)]) == PAIR_COLUMNS
    assert "synth_attrs" in pairs.columns
    assert set(np.unique(pairs[list(LABELS)].to_numpy())) <= {0.0, 1.0}
    assert set(pairs["view"]) <= {"PA", "AP", "LATERAL"}
    assert pairs["image_path"].str.fullmatch(r"synthetic://3/syn3-p\d{6}-s\d-(pa|ap|lateral)").all()
    per_study = pairs.groupby("study_id").agg(reports=("report", "nunique"), frontal=("view", lambda v: (v != "LATERAL").sum()))
    assert (per_study["reports"] == 1).all() and (per_study["frontal"] == 1).all()
    assert (pairs.groupby("study_id").size() == 2).any()  # frontal + lateral share one report
    image = small.read_image(pairs["image_path"].iloc[0])
    assert image.mode == "L" and image.size == (128, 128)
    tiny = load_source("synthetic", n_patients=2, image_size=64)
    assert tiny.read_image(tiny.pairs["image_path"].iloc[0]).size == (64, 64)
    assert (pairs["report"] == pairs["findings"] + " " + pairs["impression"]).all()
    only_impression = load_source("synthetic", n_patients=60, seed=3, section_policy="impression").pairs
    assert (only_impression["report"] == small.pairs["impression"]).all()


def test_splits_are_patient_disjoint_and_stats_match_the_table(default) -> None:
    data, _ = default
    pairs = data.pairs
    assert (pairs.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(pairs["split"]) == {"train", "val", "test"}
    studies = _studies(pairs)
    assert data.stats["pairs"] == len(pairs) and data.stats["studies"] == len(studies)
    assert data.stats["patients"] == pairs["patient_id"].nunique()
    assert data.stats["test_studies"] == (studies["split"] == "test").sum()
    assert data.stats["dropped_empty_report"] == 0 and data.stats["synthetic"] == 1


def test_default_size_leaves_at_least_2000_test_studies(default) -> None:
    data, _ = default
    test_studies = _studies(data.pairs).query("split == 'test'")
    assert len(test_studies) >= 2000


def test_generation_speed(default) -> None:
    data, seconds = default
    per_10k = seconds / len(data.pairs) * 10_000
    print(f"synthetic: {len(data.pairs)} pairs in {seconds:.1f} s ({per_10k:.1f} s per 10,000 pairs)")
    assert per_10k < 60


def _prevalence_tolerance(p: np.ndarray, n: int) -> np.ndarray:
    # 4 binomial sigmas, inflated x2 in variance because a patient's studies share labels, + a small floor
    return 4 * np.sqrt(2 * p * (1 - p) / n) + 0.003


def test_label_prevalence_matches_an_independent_recount_of_the_openi_labels(default, openi_dir) -> None:
    path = openi_dir / "chexpert14_labels.json"
    if not path.is_file():
        pytest.skip("chexpert14_labels.json is absent")
    raw = np.array(list(json.loads(path.read_text()).values()), dtype=float)
    reference = raw[:, [ALPHABETICAL.index(name) for name in LABELS]]
    studies = _studies(default[0].pairs)
    got = studies[list(LABELS)].to_numpy()
    want = reference.mean(axis=0)
    assert np.all(np.abs(got.mean(axis=0) - want) <= _prevalence_tolerance(want, len(studies)))
    # co-occurrence, e.g. Cardiomegaly with Edema, Lung Opacity with Atelectasis
    for a, b in (("Cardiomegaly", "Edema"), ("Lung Opacity", "Atelectasis"), ("Lung Opacity", "Pneumonia")):
        ia, ib = LABELS.index(a), LABELS.index(b)
        joint_want = float((reference[:, ia] * reference[:, ib]).mean())
        joint_got = float((got[:, ia] * got[:, ib]).mean())
        assert abs(joint_got - joint_want) <= _prevalence_tolerance(np.array(joint_want), len(studies))


def test_label_prevalence_matches_the_embedded_prior(default) -> None:
    from backend.sources.synthetic.prior import LABEL_VECTOR_COUNTS

    counts = np.array([n for _, n in LABEL_VECTOR_COUNTS], dtype=float)
    vectors = np.array([[int(c) for c in bits] for bits, _ in LABEL_VECTOR_COUNTS], dtype=float)
    assert counts.sum() == 3337
    want = counts @ vectors / counts.sum()
    studies = _studies(default[0].pairs)
    got = studies[list(LABELS)].to_numpy().mean(axis=0)
    assert np.all(np.abs(got - want) <= _prevalence_tolerance(want, len(studies)))
    assert 0.6 < got[LABELS.index("No Finding")] < 0.8


def test_reports_state_positive_findings_and_never_negate_them(default) -> None:
    studies = _studies(default[0].pairs)
    checks = {  # label -> (words that state it, words a negation of it would use)
        "Pleural Effusion": (r"effusion", r"\b[Nn]o\b[^.]*effusion"),
        "Pneumothorax": (r"pneumothora", r"\b[Nn]o\b[^.]*pneumothorax"),
        "Edema": (r"edema", r"\b[Nn]o\b[^.]*edema"),
        "Consolidation": (r"[Cc]onsolidation", r"\b[Nn]o\b[^.]*(?:focal airspace|focal consolidation)"),
        "Lung Lesion": (r"nodul|mass", r"\b[Nn]o\b[^.]*(?:nodul|mass)"),
    }
    for label, (stated, negated) in checks.items():
        positive = studies[studies[label] == 1]["report"]
        assert len(positive) > 20, label
        assert positive.str.contains(stated).all(), label
        assert not positive.str.contains(negated).any(), label


def test_device_drawn_on_the_side_the_report_states(default) -> None:
    data, _ = default
    frontal = data.pairs[data.pairs["view"] != "LATERAL"]
    pattern = re.compile(r"(Left|Right)-sided (pacemaker|pacer device|ICD|AICD)")
    hits = 0
    checked = 0
    for report, path in zip(frontal["report"], frontal["image_path"], strict=True):
        match = pattern.search(report)
        if not match:
            continue
        a = _pixels(data, path)
        s = a.shape[0]
        upper = a[: int(0.4 * s)] >= np.percentile(a, 99.5)  # the brightest pixels: metal
        image_left, image_right = upper[:, : int(0.4 * s)].sum(), upper[:, int(0.6 * s):].sum()
        # the patient's left is on the image right
        hits += bool(image_right > image_left) if match.group(1) == "Left" else bool(image_left > image_right)
        checked += 1
        if checked == 40:
            break
    assert checked >= 20 and hits >= 0.9 * checked


def _lung_row_fraction(a: np.ndarray) -> float:
    """Fraction of rows that are dark (lung) in vertical strips through both lungs."""
    s = a.shape[1]
    profile = np.concatenate([a[:, int(0.22 * s): int(0.3 * s)], a[:, int(0.7 * s): int(0.78 * s)]], axis=1).mean(1)
    lo, hi = np.percentile(profile, 5), np.percentile(profile, 95)
    return float((profile < (lo + hi) / 2).mean())


def test_stated_lung_volume_matches_lung_height(default) -> None:
    data, _ = default
    pa = data.pairs[(data.pairs["view"] == "PA") & (data.pairs["site"] == "synthetic-A")]
    low = pa[pa["report"].str.contains("Low lung volumes")].head(20)
    high = pa[pa["report"].str.contains("hyperexpanded")].head(20)
    assert len(low) >= 10 and len(high) >= 10
    low_h = [_lung_row_fraction(_pixels(data, p)) for p in low["image_path"]]
    high_h = [_lung_row_fraction(_pixels(data, p)) for p in high["image_path"]]
    assert np.mean(high_h) > np.mean(low_h) + 0.1


def test_verbatim_boilerplate_reports_repeat(default) -> None:
    studies = _studies(default[0].pairs)
    counts = Counter(studies["report"])
    most_common_text, most_common_n = counts.most_common(1)[0]
    assert most_common_n >= 50
    templates = {" ".join(pair) for site in BOILERPLATE.values() for pair in site}
    assert most_common_text in templates
    repeated = sum(n for n in counts.values() if n > 1) / len(studies)
    assert 0.1 < repeated < 0.6  # OpenI: 24% of its 3,851 studies share their text with another; this source about 21%


def test_persistent_traits_recur_across_a_patients_studies(default) -> None:
    studies = _studies(default[0].pairs)
    per_patient = studies.groupby("patient_id").size()
    assert (per_patient >= 2).mean() > 0.4 and per_patient.max() == 6
    # the wire count a report states is the same in every study of the patient that states it
    counts = studies["report"].str.extract(r"(?:with (\w+) intact wires|\((\w+) wires\))").bfill(axis=1)[0]
    stated = studies.assign(wires=counts).dropna(subset=["wires"])
    multi = stated.groupby("patient_id")["wires"].agg(["nunique", "size"])
    assert (multi["size"] >= 2).sum() >= 10 and (multi["nunique"] == 1).all()
    # and the generator's persistent traits are identical across a patient's studies
    traits = studies["synth_attrs"].map(lambda s: json.dumps(json.loads(s)["patient"], sort_keys=True))
    assert (studies.assign(t=traits).groupby("patient_id")["t"].nunique() == 1).all()


def test_both_sites_present_and_differ_in_image_statistics(default) -> None:
    data, _ = default
    frontal = data.pairs[data.pairs["view"] == "PA"]
    assert set(data.pairs["site"]) == {"synthetic-A", "synthetic-B"}
    stats = {}
    for site in ("synthetic-A", "synthetic-B"):
        images = [_pixels(data, p) for p in frontal.loc[frontal["site"] == site, "image_path"].head(30)]
        stats[site] = (np.mean([a.mean() for a in images]), np.mean([np.abs(np.diff(a, axis=1)).mean() for a in images]))
    (mean_a, texture_a), (mean_b, texture_b) = stats["synthetic-A"], stats["synthetic-B"]
    assert mean_b - mean_a > 8  # site B: brighter (offset, gamma)
    assert abs(texture_b - texture_a) > 0.5  # and a different noise / blur texture
    only_a = load_source("synthetic", n_patients=20, sites=("A",)).pairs
    assert set(only_a["site"]) == {"synthetic-A"}
    assert set(load_source("synthetic", n_patients=20, sites="B").pairs["site"]) == {"synthetic-B"}
    assert set(load_source("synthetic", n_patients=20, sites="A,B").pairs["site"]) == {"synthetic-A", "synthetic-B"}


def test_bad_options_and_bad_paths_say_what_to_do(small) -> None:
    with pytest.raises(SourceError, match="unknown option"):
        load_source("synthetic", n_patient=10)
    with pytest.raises(SourceError, match="site style"):
        load_source("synthetic", n_patients=5, sites=("C",))
    with pytest.raises(SourceError, match="n_patients"):
        load_source("synthetic", n_patients=0)
    with pytest.raises(ImageReadError, match="same n_patients and seed"):
        small.read_image("synthetic://3/syn3-p999999-s1-pa")
    with pytest.raises(ImageReadError, match="seed it came from"):
        small.read_image("synthetic://4/syn4-p000000-s1-pa")
