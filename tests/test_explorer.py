"""The pair explorer's retrieval (faiss exact inner-product top-k) against a brute-force ranking."""

from __future__ import annotations

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
        assert hit["true_rank"] == int((scores > true).sum()) + 1
        assert hit["n_candidates"] == len(ps.cand_study)
        assert list(hit["top"]["is_true"]) == list(ps.cand_study[order] == studies[i])
