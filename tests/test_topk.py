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


class _GpuIndex:
    """faiss's GpuIndexFlatIP as the CPU build can stand it in: the same calls, served by IndexFlatIP."""

    made: list[int] = []

    def __new__(cls, resources: object, d: int, config: object):
        import faiss

        cls.made.append(config.device)
        return faiss.IndexFlatIP(d)


def _faiss_with_gpu(monkeypatch: pytest.MonkeyPatch, gpus: int = 1) -> list[str]:
    """The installed faiss-cpu with faiss-gpu's names added (one GPU seen); returns the log of GPU-to-CPU copies."""
    import types

    import faiss

    import backend.relink.index as index

    copies: list[str] = []
    fake = types.SimpleNamespace(
        IndexFlatIP=faiss.IndexFlatIP, get_num_gpus=lambda: gpus, StandardGpuResources=object,
        GpuIndexFlatConfig=lambda: types.SimpleNamespace(device=-1), GpuIndexFlatIP=_GpuIndex,
        index_gpu_to_cpu=lambda idx: copies.append("cpu") or idx)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    index._gpu_resources.cache_clear()
    monkeypatch.setattr(index, "GPU_MAX_K", 5)
    _GpuIndex.made.clear()
    return copies


def test_the_cpu_build_falls_back_to_the_cpu_index() -> None:
    import faiss

    from backend.relink.index import ReportIndex, faiss_gpu, flat_ip_index

    if hasattr(faiss, "GpuIndexFlatIP") and faiss.get_num_gpus() > 0:
        pytest.skip("faiss with GPU support and a GPU: the fallback is not taken here")
    assert faiss_gpu(None) is None and faiss_gpu("cuda:0") is None
    assert type(flat_ip_index(8, "cuda")) is faiss.IndexFlatIP
    assert ReportIndex(np.eye(4), "cuda").on_gpu is False


def test_the_gpu_index_gives_the_cpu_index_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.relink.index import ReportIndex, faiss_gpu, top_k_all

    rng = np.random.default_rng(9)
    q, r = rng.standard_normal((31, 12)), rng.standard_normal((150, 12))
    want_idx, want_scores = _brute(q, r, 7)
    cpu_idx, cpu_scores = ReportIndex(r, "cpu").search(q, 7)  # the real CPU index, before faiss-gpu's names appear
    copies = _faiss_with_gpu(monkeypatch)
    assert faiss_gpu("cpu") is None and faiss_gpu("cuda:1") is None  # CPU asked; a GPU the machine lacks
    assert faiss_gpu(None) == 0 and faiss_gpu("cuda") == 0
    gpu = ReportIndex(r, "cuda:0")
    assert gpu.on_gpu and _GpuIndex.made == [0]
    idx, scores = gpu.search(q, 4)
    np.testing.assert_array_equal(idx, want_idx[:, :4])
    np.testing.assert_array_equal(idx, cpu_idx[:, :4])
    np.testing.assert_allclose(scores, want_scores[:, :4], atol=1e-5)
    assert copies == []
    idx, _ = gpu.search(q, 7)  # k past the GPU's limit: the same vectors searched on the CPU
    assert copies == ["cpu"]
    np.testing.assert_array_equal(idx, want_idx)
    # the top-k export on a CUDA device takes faiss's GPU index (no torch on a GPU here) for k within its limit
    idx, scores = top_k_all(q, r, 3, device="cuda")
    assert _GpuIndex.made == [0, 0]
    np.testing.assert_array_equal(idx, want_idx[:, :3])
    np.testing.assert_array_equal(scores, cpu_scores[:, :3])
