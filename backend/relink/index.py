"""Exact top-k report retrieval: for one image (the pair explorer, faiss inner-product search) and for
every query over the whole database at once (`top_k_all`, the attacker's hand-over list: faiss on the CPU,
blocked matmul + topk in torch on a GPU).

Embeddings are L2-normalised here (defensively), so scores are cosine similarities.
"""

from __future__ import annotations

import numpy as np

from backend.errors import SpecError


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.array(x, dtype=np.float32, copy=True, ndmin=2)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SpecError(f"{name} must be a non-empty (rows, d) array, got shape {np.shape(x)}.")
    if not np.isfinite(arr).all():
        raise SpecError(f"{name} contains NaN or infinite values.")
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norm == 0, 1.0, norm)


class ReportIndex:
    """A reusable exact cosine index over report embeddings (m, d): faiss IndexFlatIP on unit vectors."""

    def __init__(self, report_emb: np.ndarray) -> None:
        import faiss  # imported here so that modules importing backend.relink stay light

        reports = _unit_rows(report_emb, "report_emb")
        self.m, self.d = reports.shape
        self.index = faiss.IndexFlatIP(self.d)
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
        scores, idx = self.index.search(queries, min(int(k), self.m))
        return (idx[0], scores[0]) if single else (idx, scores)


def build_index(report_emb: np.ndarray) -> ReportIndex:
    """Build a ReportIndex once and reuse it for many queries (the explorer)."""
    return ReportIndex(report_emb)


def top_k(query_emb: np.ndarray, report_emb: np.ndarray | ReportIndex, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k reports most similar to one image: query_emb (d,), report_emb (m, d) or a ReportIndex.

    Returns (indices (k,) int64, cosine scores (k,) float32), best first (k capped at m)."""
    index = report_emb if isinstance(report_emb, ReportIndex) else ReportIndex(report_emb)
    return index.search(np.asarray(query_emb, dtype=np.float32).reshape(-1), k)


def top_k_all(query_emb: np.ndarray, report_emb: np.ndarray, k: int, device: str | None = None,
              block_elements: int = 1 << 27, engine: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar reports of every query: (indices (q, k) int64, cosine scores (q, k) float32),
    best first (k capped at m). Exact on both paths: faiss IndexFlatIP on the CPU; on CUDA, blocks of
    queries against all reports (about `block_elements` similarities per block) with torch.topk. Equal
    scores may come in either order."""
    engine = engine or ("faiss" if device is None or str(device) == "cpu" else "torch")
    if engine == "faiss":  # ReportIndex validates and normalises both sides itself
        return ReportIndex(report_emb).search(query_emb, k)
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
