"""The whole-database top-k export: faiss (CPU) and torch (the GPU's path, run here on the CPU) against a
brute-force sort, the per-query table against an independent ranking, and the CLI command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backend.__main__ import main
from backend.audit import TOPK_COLUMNS, top_k_table
from backend.embed.compute import embed_split
from backend.models import load_model
from backend.relink.index import top_k_all
from backend.specs import EmbedSpec, SourceSpec
from tests.helpers.tiny_models import TINY_SOURCE_OPTIONS, register_tiny_models

register_tiny_models()


def _brute(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = qn.astype(np.float64) @ rn.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


@pytest.mark.parametrize("engine", ["faiss", "torch"])
def test_top_k_all_equals_brute_force(engine: str) -> None:
    rng = np.random.default_rng(4)
    q, r = rng.standard_normal((57, 16)), rng.standard_normal((203, 16))
    want_idx, want_scores = _brute(q, r, 7)
    idx, scores = top_k_all(q, r, 7, device="cpu", engine=engine, block_elements=1000)  # several blocks
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    idx_all, _ = top_k_all(q, r[:5], 7, engine=engine)  # k capped at the number of reports
    assert idx_all.shape == (57, 5)


def test_top_k_table_ranks_each_query(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    es = embed_split(EmbedSpec(source=SourceSpec(options=TINY_SOURCE_OPTIONS), model="tiny-random", split="all",
                               batch_size=8), device="cpu", num_workers=0)
    table = top_k_table(es, 5, "cpu")
    assert list(table.columns) == list(TOPK_COLUMNS) and len(table) == 5 * len(es)
    studies = es.meta.drop_duplicates("study_id")
    i = 3  # one query, ranked independently over the distinct studies' reports
    sim = es.report_emb[studies.index.to_numpy()] @ es.image_emb[i]
    want = studies["study_id"].astype(str).to_numpy()[np.argsort(-sim, kind="stable")[:5]]
    got = table[table["pair_id"] == str(es.meta["pair_id"].iloc[i])].sort_values("rank")
    assert list(got["candidate_study_id"]) == list(want)
    assert (got["is_true_report"] == (got["candidate_study_id"] == str(es.meta["study_id"].iloc[i]))).all()
    assert table.groupby("pair_id")["rank"].apply(lambda s: list(s) == [1, 2, 3, 4, 5]).all()


def test_cli_writes_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "top.parquet"
    env = {"CXR_CACHE_DIR": str(tmp_path / "c"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    args = ["topk", "--source-option", "n_patients=30", "--source-option", "image_size=64", "--model",
            "local:nowhere", "--k", "3", "--out", str(out)]
    monkeypatch.setenv("CXR_CACHE_DIR", env["CXR_CACHE_DIR"])  # the refusals in this process, the run in a child
    assert main(args[:-1] + [str(tmp_path)]) == 2 and "is a folder" in capsys.readouterr().err
    assert main(args) == 2 and "nowhere" in capsys.readouterr().err and not out.exists()
    cmd = [sys.executable, "-m", "backend", *args]
    ckpt = tmp_path / "tiny.pt"  # a real model the child process can load: tiny-random's weights, saved
    torch.save(load_model("tiny-random", device="cpu").model.state_dict(), ckpt)
    cmd[cmd.index("local:nowhere")] = f"local:{ckpt}#cxr-demo-tiny"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_parquet(out)
    assert list(table.columns) == list(TOPK_COLUMNS) and set(table["rank"]) == {1, 2, 3}
    assert "true report within the top 3" in done.stdout
