"""persist functions turn a job's real result objects into finished runs (backend/runs/persist.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.embed.files import EmbeddingSet
from backend.runs import persist, store
from backend.specs import EmbedSpec


def test_persist_embed_takes_a_real_embedding_set(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An EmbeddingSet's meta is a DataFrame (no truth value): embedding an already-cached split used to fail
    with 'The truth value of a DataFrame is ambiguous'."""
    n, d = 5, 4
    meta = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "study_id": [f"s{i}" for i in range(n)]})
    es = EmbeddingSet(meta=meta, image_emb=np.zeros((n, d), np.float32), report_emb=np.zeros((n, d), np.float32),
                      image_feat=None, text_feat=None, heads={}, path=tmp_path / "embeddings" / "key")
    spec = EmbedSpec()
    run_id = spec.run_id()
    store.upsert_run(run_id, "embed", spec.to_json(), "running")
    persist.persist_embed(run_id, spec, es, "cpu")
    run = store.get_run(run_id)
    assert run["status"] == "done" and run["summary"]["n_pairs"] == n
    assert run["artifacts"]["embeddings"] == str(tmp_path / "embeddings" / "key")
