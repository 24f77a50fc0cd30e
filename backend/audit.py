"""The headless audit: source -> embeddings (resumable, cached) -> re-linkage curves -> AuditResult.

`AuditResult.to_json()` is the command line's --json file: the full spec, counts, versions, the
summary and every curve point as a tidy record (pool_kind, level, k, n, recall, ci_low, ci_high,
chance, lift, effective_n), the same rows the dashboard's store keeps.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pandas as pd

from backend import settings
from backend.embed import EmbeddingSet
from backend.embed.compute import embed_split
from backend.progress import ProgressLike, null_progress
from backend.relink import relink_curves
from backend.relink.rows import CURVE_COLUMNS
from backend.specs import AuditSpec, to_plain


@dataclass
class AuditResult:
    """What run_audit returns. rows: tidy DataFrame (relink.rows.ROW_COLUMNS); per_query: one row per query image."""

    spec: AuditSpec
    rows: pd.DataFrame
    summary: dict[str, Any]
    per_query: pd.DataFrame
    embedding_path: str | None
    counts: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # data_hash (the source's table and image files), n_pairs
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def headline(self, k: int = 1, level: str = "study") -> pd.DataFrame:
        """Recall@k and lift at N=100 and at the largest N, per pool kind (what a README quotes)."""
        return headline(self.rows, k=k, level=level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "audit", "run_id": self.spec.run_id(), "created": self.created, "spec": self.spec.to_dict(),
            "counts": self.counts, "inputs": self.inputs, "versions": versions(), "summary": to_plain(self.summary, canonical=False),
            "embedding_path": self.embedding_path, "headline": records(self.headline()),
            "rows": records(self.rows),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON-ready records (numpy scalars to Python, NaN/inf to None)."""
    return [to_plain(r, canonical=False) for r in df.to_dict(orient="records")]


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "torch", "open_clip_torch", "faiss-cpu", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def headline(rows: pd.DataFrame, k: int = 1, level: str = "study", n_ref: int = 100) -> pd.DataFrame:
    """Per pool kind: the point at N = n_ref (or the largest N below it) and at the largest N."""
    sel = rows[(rows["k"] == k) & (rows["level"] == level)]
    out = []
    for pool, grp in sel.groupby("pool_kind", sort=False):
        grp = grp.sort_values("n")
        near = grp[grp["n"] <= n_ref]
        picks = ([near.iloc[-1]] if len(near) else []) + [grp.iloc[-1]]
        for point in {int(p["n"]): p for p in picks}.values():
            out.append({"pool_kind": pool, **{c: point[c] for c in CURVE_COLUMNS if c != "pool_kind" and c in point}})
    return pd.DataFrame(out, columns=list(CURVE_COLUMNS))


def audit_embeddings(es: EmbeddingSet, spec: AuditSpec, progress: ProgressLike | None = None, *,
                     n_grid: tuple[int, ...] | None = None) -> AuditResult:
    """Re-linkage curves of an already embedded split under the pools/Ks/bootstrap of `spec`; n_grid: the pool
    sizes N (default: the 1-2-5 grid up to the split's largest pool)."""

    meta = es.meta
    result = relink_curves(
        es.image_emb, es.report_emb, meta["study_id"].to_numpy(), meta["patient_id"].to_numpy(),
        meta["report"].to_numpy(), es.labels(), pools=tuple(spec.pools), ks=tuple(spec.ks),
        include_same_patient=spec.include_same_patient, n_bootstrap=spec.n_bootstrap, seed=spec.seed,
        progress=progress or null_progress, pair_id=meta["pair_id"].to_numpy(), n_grid=n_grid)
    counts = {"pairs": len(meta), "studies": int(meta["study_id"].nunique()),
              "patients": int(meta["patient_id"].nunique()), "distinct_reports": int(meta["report"].nunique())}
    inputs = {"data_hash": "", "n_pairs": len(meta), **(es.info.get("inputs") or {})}
    if es.info.get("key"):
        inputs["embedding_key"] = es.info["key"]
    return AuditResult(spec=spec, rows=result.rows, summary=dict(result.summary), per_query=result.per_query,
                       embedding_path=str(es.path) if es.path else None, counts=counts, inputs=inputs)


def run_audit(spec: AuditSpec, progress: ProgressLike | None = None, *, device: str | None = None,
              embeddings: EmbeddingSet | None = None) -> AuditResult:
    """Embed spec.embed (cached/resumable; trains the demo model on first use) and measure re-linkage.

    Raises DeviceError before any work when `device` is unknown or not present."""
    settings.check_device(device)
    es = embeddings if embeddings is not None else embed_split(spec.embed, progress, device=device)
    return audit_embeddings(es, spec, progress)
