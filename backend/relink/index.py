"""Exact top-k report retrieval: for one image (the pair explorer, faiss inner-product search) and for
every query over the whole database at once (`top_k_all`, the attacker's hand-over list).

The index is faiss's exact flat inner-product index, chosen by `flat_ip_index`: on a GPU (GpuIndexFlatIP) when the
installed faiss has GPU support (faiss-gpu, the `gpu` extra) and a GPU is present, on the CPU (IndexFlatIP)
otherwise. Without faiss-gpu, `top_k_all` on a CUDA device runs blocked matmuls + topk in torch instead.

Embeddings are L2-normalised here (defensively), so scores are cosine similarities.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from backend.errors import SpecError

GPU_MAX_K = 2048  # the largest k faiss's GPU indexes search; larger k is searched on the CPU (or by torch)


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.array(x, dtype=np.float32, copy=True, ndmin=2)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SpecError(f"{name} must be a non-empty (rows, d) array, got shape {np.shape(x)}.")
    if not np.isfinite(arr).all():
        raise SpecError(f"{name} contains NaN or infinite values.")
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norm == 0, 1.0, norm)


def faiss_gpu(device: str | None = None) -> int | None:
    """The GPU number faiss's GPU index should use for `device` ("cuda", "cuda:N", None: GPU 0 when present), or
    None for the CPU index: `device` is "cpu", the installed faiss has no GPU support (faiss-cpu) or sees no GPU."""
    import faiss  # imported here so that modules importing backend.relink stay light

    if device is not None and not str(device).startswith("cuda"):
        return None
    if not hasattr(faiss, "GpuIndexFlatIP") or faiss.get_num_gpus() < 1:
        return None
    gpu = int(str(device).partition(":")[2] or 0) if device is not None else 0
    return gpu if gpu < faiss.get_num_gpus() else None


@functools.cache
def _gpu_resources(gpu: int) -> Any:
    """One faiss StandardGpuResources per GPU for the process (its scratch memory and streams; costly to make)."""
    import faiss

    return faiss.StandardGpuResources()


def flat_ip_index(d: int, device: str | None = None) -> Any:
    """An empty exact inner-product index of dimension d: faiss.GpuIndexFlatIP on GPU faiss_gpu(device) when there is
    one, faiss.IndexFlatIP on the CPU otherwise. Both search exhaustively: the same neighbours up to float32
    round-off in the scores (tests/test_topk.py)."""
    import faiss

    gpu = faiss_gpu(device)
    if gpu is None:
        return faiss.IndexFlatIP(d)
    config = faiss.GpuIndexFlatConfig()
    config.device = gpu
    return faiss.GpuIndexFlatIP(_gpu_resources(gpu), d, config)


class ReportIndex:
    """A reusable exact cosine index over report embeddings (m, d): faiss's flat inner-product index on unit vectors,
    on a GPU when faiss can use one (flat_ip_index; device "cpu" keeps it on the CPU)."""

    def __init__(self, report_emb: np.ndarray, device: str | None = None) -> None:
        reports = _unit_rows(report_emb, "report_emb")
        self.m, self.d = reports.shape
        self.index = flat_ip_index(self.d, device)
        self.on_gpu = faiss_gpu(device) is not None
        self.index.add(reports)

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k reports for each query (q, d) or (d,): (indices (q, k) int64, scores (q, k) float32),
        best first; k is capped at m. A single (d,) query gives (k,) arrays."""
        single = np.ndim(query_emb) == 1
        queries = _unit_rows(query_emb, "query_emb")
        if queries.shape[1] != self.d:
            raise SpecError(f"query_emb has dimension {queries.shape[1]} but the reports have {self.d}.")
        if int(k) < 1:
            raise SpecError(f"k must be >= 1, got {k}.")
        k = min(int(k), self.m)
        index = self.index
        if self.on_gpu and k > GPU_MAX_K:  # beyond what the GPU index selects: the same vectors on the CPU
            import faiss

            index = faiss.index_gpu_to_cpu(self.index)
        scores, idx = index.search(queries, k)
        return (idx[0], scores[0]) if single else (idx, scores)


def build_index(report_emb: np.ndarray, device: str | None = None) -> ReportIndex:
    """Build a ReportIndex once and reuse it for many queries (the explorer); on a GPU when faiss can use one."""
    return ReportIndex(report_emb, device)


def top_k(query_emb: np.ndarray, report_emb: np.ndarray | ReportIndex, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k reports most similar to one image: query_emb (d,), report_emb (m, d) or a ReportIndex.

    Returns (indices (k,) int64, cosine scores (k,) float32), best first (k capped at m)."""
    index = report_emb if isinstance(report_emb, ReportIndex) else ReportIndex(report_emb)
    return index.search(np.asarray(query_emb, dtype=np.float32).reshape(-1), k)


def top_k_all(query_emb: np.ndarray, report_emb: np.ndarray, k: int, device: str | None = None,
              block_elements: int = 1 << 27, engine: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar reports of every query: (indices (q, k) int64, cosine scores (q, k) float32),
    best first (k capped at m). Exact on every path: faiss's flat index on the CPU, and on a CUDA device its GPU
    index when faiss has GPU support (faiss-gpu) and k <= GPU_MAX_K, else blocks of queries against all reports
    (about `block_elements` similarities per block) with torch.topk. Equal scores may come in either order.
    engine: "faiss" or "torch" to choose (default: as above)."""
    on_cuda = device is not None and str(device).startswith("cuda")
    if engine is None:
        engine = "faiss" if not on_cuda or (faiss_gpu(device) is not None and int(k) <= GPU_MAX_K) else "torch"
    if engine == "faiss":  # ReportIndex validates and normalises both sides itself
        return ReportIndex(report_emb, device if on_cuda else "cpu").search(query_emb, k)
    queries, reports = _unit_rows(query_emb, "query_emb"), _unit_rows(report_emb, "report_emb")
    if queries.shape[1] != reports.shape[1]:
        raise SpecError(f"query_emb has dimension {queries.shape[1]} but the reports have {reports.shape[1]}.")
    if int(k) < 1:
        raise SpecError(f"k must be >= 1, got {k}.")
    k = min(int(k), reports.shape[0])
    import torch

    dev = torch.device(device or "cpu")
    rep = torch.from_numpy(reports).to(dev)
    rows = max(1, block_elements // reports.shape[0])
    idx = np.empty((queries.shape[0], k), np.int64)
    scores = np.empty((queries.shape[0], k), np.float32)
    with torch.inference_mode():
        for a in range(0, queries.shape[0], rows):
            sim = torch.from_numpy(queries[a:a + rows]).to(dev) @ rep.T
            top = torch.topk(sim, k, dim=1)
            scores[a:a + rows], idx[a:a + rows] = top.values.cpu().numpy(), top.indices.cpu().numpy()
    return idx, scores
