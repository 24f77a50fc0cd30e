"""The pair explorer's retrieval (faiss exact inner-product top-k) against a brute-force ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from backend.views.explorer import PairSet, retrieve


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_retrieve_matches_brute_force_ranking() -> None:
    rng = np.random.default_rng(4)
    n, d = 60, 16
    studies = np.array([f"s{i // 2}" for i in range(n)])  # two images per study share one report
    image_emb, report_emb = _unit(rng.normal(size=(n, d))), _unit(rng.normal(size=(n, d)))
    first = ~pd.Series(studies).duplicated().to_numpy()
    meta = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "study_id": studies,
                         "patient_id": [f"P{i // 4}" for i in range(n)], "report": [f"report {s}" for s in studies]})
    ps = PairSet("run-x", meta, image_emb, report_emb[first], studies[first], meta["report"].to_numpy()[first])
    for i in (0, 7, 33):
        hit = retrieve(ps, f"p{i}", k=6)
        scores = ps.cand_emb.astype(np.float64) @ image_emb[i].astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:6]
        assert list(hit["top"]["study_id"]) == list(ps.cand_study[order])
        np.testing.assert_allclose(hit["top"]["score"], scores[order], atol=1e-5)
        true = scores[ps.cand_study == studies[i]].max()
        patient_of = {s: f"P{j // 4}" for j, s in enumerate(studies)}
        others = [sc for s, sc in zip(ps.cand_study, scores, strict=True)
                  if s != studies[i] and patient_of[s] != meta.at[i, "patient_id"]]  # same patient: not a distractor
        assert hit["true_rank"] == 1 + sum(sc > true for sc in others) + sum(sc == true for sc in others) / 2
        assert hit["n_candidates"] == len(others) + 1
        assert list(hit["top"]["is_true"]) == list(ps.cand_study[order] == studies[i])


def test_ties_count_half_and_only_distinctive_words_are_shared() -> None:
    from backend.views.explorer import document_frequencies, shared_words

    d = 4
    image = np.array([[1, 0, 0, 0]] * 3, dtype=np.float32)
    reports = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)  # s1 ties with the true s0
    meta = pd.DataFrame({"pair_id": ["p0", "p1", "p2"], "study_id": ["s0", "s1", "s2"], "patient_id": ["A", "B", "C"],
                         "report": ["clear lungs azygos", "clear lungs", "effusion"]})
    ps = PairSet("r", meta, image, reports, meta["study_id"].to_numpy(), meta["report"].to_numpy())
    assert retrieve(ps, "p0", k=2)["true_rank"] == 1.5 and d == image.shape[1]
    freq = document_frequencies(["clear lungs azygos", "clear lungs", "clear effusion", "clear heart"])
    assert freq["clear"] == 1.0 and freq["azygos"] == 0.25
    assert shared_words("Clear lungs, azygos fissure", "clear azygos lobe", freq, max_df=0.3) == {"azygos"}
    assert shared_words("Clear lungs, azygos fissure", "clear azygos lobe") == {"clear", "azygos"}


def test_an_image_path_is_the_datasets_never_the_apps_folder(tmp_path, monkeypatch) -> None:
    """A csv dataset whose image is `assets/icon.png`: the explorer shows the dataset's image, not the app's own
    icon found from the app's working folder; after the data changes, the page can say so."""
    from PIL import Image

    from backend.runs import store
    from backend.sources import load_source
    from backend.views.explorer import data_changed_since, read_image

    repo = Path(__file__).resolve().parent.parent
    assert (repo / "assets" / "icon.png").is_file()
    monkeypatch.chdir(repo)  # where the app runs
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    (data / "assets").mkdir(parents=True)
    Image.new("L", (9, 7), color=200).save(data / "assets" / "icon.png")
    pd.DataFrame([{"image_path": "assets/icon.png", "report": "No effusion.", "patient_id": "P1"}]).to_csv(
        data / "pairs.csv", index=False)
    source = load_source("csv", root=str(data))
    assert read_image("assets/icon.png", source).size == (9, 7)  # the dataset's, not the app's icon
    store.upsert_run("audit-x", "audit", "{}", "running")
    store.finish_run("audit-x", summary={"inputs": {"data_hash": source.digest()}})
    assert not data_changed_since("audit-x", source)
    Image.new("L", (9, 7), color=10).save(data / "assets" / "icon.png")
    assert data_changed_since("audit-x", load_source("csv", root=str(data)))
