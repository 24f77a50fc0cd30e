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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backend import settings
from backend.embed import EmbeddingSet
from backend.embed.compute import embed_split, select_split
from backend.models import load_model
from backend.progress import ProgressLike, null_progress
from backend.relink import relink_curves
from backend.relink.index import top_k_all
from backend.relink.rows import CURVE_COLUMNS
from backend.sources import check_match, check_matchable, load_source
from backend.sources.schema import match_coverage
from backend.specs import MATCH_PREFIX, AuditSpec, to_plain

if TYPE_CHECKING:
    from backend.distributed import Ranks


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


def match_codes(es: EmbeddingSet, attributes: list[str]) -> np.ndarray:
    """(n, c) float matrix whose rows are equal exactly when two pairs agree on every attribute: "labels" is the
    14-label vector (NaN as 0, as the pathology-matched pool counts it); other attributes are columns of the
    pair table, which the pairs passed here must all have (the others are left out first: match_coverage).
    The engine takes a study's attributes from its first pair."""
    parts = []
    for name in attributes:
        if name == "labels":
            parts.append(np.nan_to_num(es.labels().astype(np.float64), nan=0.0))
        else:
            parts.append(pd.factorize(es.meta[name].astype(str), sort=True)[0][:, None].astype(np.float64))
    return np.concatenate(parts, axis=1)


def audit_embeddings(es: EmbeddingSet, spec: AuditSpec, progress: ProgressLike | None = None, *,
                     n_grid: tuple[int, ...] | None = None, ranks: Ranks | None = None) -> AuditResult:
    """Re-linkage curves of an already embedded split under the pools/Ks/bootstrap of `spec`; n_grid: the pool
    sizes N (default: the 1-2-5 grid up to the split's largest pool); ranks: a torchrun rank's place (each counts
    its share of the queries; every rank returns the one-process result)."""

    meta = es.meta
    result = relink_curves(
        es.image_emb, es.report_emb, meta["study_id"].to_numpy(), meta["patient_id"].to_numpy(),
        meta["report"].to_numpy(), es.labels(), pools=tuple(spec.pools), ks=tuple(spec.ks),
        include_same_patient=spec.include_same_patient, n_bootstrap=spec.n_bootstrap, seed=spec.seed,
        progress=progress or null_progress, pair_id=meta["pair_id"].to_numpy(), n_grid=n_grid, ranks=ranks)
    rows = result.rows
    coverage = check_matchable(spec.embed.source.name, meta, spec.match)
    for match in spec.match:  # side-information pools: the pathology-matched engine on attribute groups, over the
        sub = es.subset(match_coverage(meta, match))  # pairs whose attributes are known (the others left out)
        m = sub.meta
        matched = relink_curves(
            sub.image_emb, sub.report_emb, m["study_id"].to_numpy(), m["patient_id"].to_numpy(),
            m["report"].to_numpy(), match_codes(sub, match.split("+")), pools=("hard",), ks=tuple(spec.ks),
            include_same_patient=spec.include_same_patient, n_bootstrap=spec.n_bootstrap, seed=spec.seed,
            pair_id=m["pair_id"].to_numpy(), n_grid=n_grid, ranks=ranks).rows
        matched = matched[matched["pool_kind"] == "hard"].assign(pool_kind=MATCH_PREFIX + match)
        rows = pd.concat([rows, matched], ignore_index=True)
    counts = {"pairs": len(meta), "studies": int(meta["study_id"].nunique()),
              "patients": int(meta["patient_id"].nunique()), "distinct_reports": int(meta["report"].nunique()),
              "dropped": source_drops(es.info.get("source_stats") or {}),
              "labelled_pairs": int((~np.isnan(es.labels())).any(axis=1).sum()),
              **({"matched_pools": coverage} if coverage else {})}
    inputs = {"data_hash": "", "n_pairs": len(meta), **(es.info.get("inputs") or {})}
    if es.info.get("key"):
        inputs["embedding_key"] = es.info["key"]
    return AuditResult(spec=spec, rows=rows, summary=dict(result.summary), per_query=result.per_query,
                       embedding_path=str(es.path) if es.path else None, counts=counts, inputs=inputs)


def source_drops(stats: dict[str, Any]) -> dict[str, int]:
    """What the source left out before splitting, by reason, from its stats: every `dropped_<reason>` count
    (empty report, missing report ...) and unreadable images (`skipped_images`) when there were any (a source
    that did not check its images reports none, which does not mean there were none)."""
    out = {key.removeprefix("dropped_"): int(n) for key, n in stats.items() if key.startswith("dropped_")}
    if int(stats.get("skipped_images") or 0) > 0:
        out["unreadable_image"] = int(stats["skipped_images"])
    return out


def run_audit(spec: AuditSpec, progress: ProgressLike | None = None, *, device: str | None = None,
              embeddings: EmbeddingSet | None = None, ranks: Ranks | None = None) -> AuditResult:
    """Embed spec.embed (cached/resumable; trains the demo model on first use) and measure re-linkage; with `ranks`
    (a torchrun group, backend.distributed) both steps are shared among the ranks.

    Raises DeviceError before any work when `device` is unknown or not present."""
    settings.check_device(device)
    check_match(spec.embed.source.name, spec.match)  # before any embedding
    if embeddings is not None:
        return audit_embeddings(embeddings, spec, progress, ranks=ranks)
    source = load_source(spec.embed.source.name, root=spec.embed.source.root,
                         section_policy=spec.embed.source.section_policy, **spec.embed.source.options)
    check_matchable(spec.embed.source.name, select_split(source.pairs, spec.embed.split), spec.match)
    lm = load_model(spec.embed.model, device=device, progress=progress)  # trains the demo model on first use
    es = embed_split(spec.embed, progress, device=device, model=lm, source=source, ranks=ranks)
    result = audit_embeddings(es, spec, progress, ranks=ranks)
    result.inputs["weights_hash"] = lm.weights_hash  # what identifies the weights this run used
    return result


TOPK_COLUMNS: tuple[str, ...] = ("pair_id", "study_id", "patient_id", "rank", "candidate_study_id",
                                 "candidate_patient_id", "score", "is_true_report", "is_same_patient")


def top_k_table(es: EmbeddingSet, k: int, device: str | None = None) -> pd.DataFrame:
    """Every query image's k best-scoring candidate reports over the whole database of the split: what an
    attacker holding the images and the report database would hand over. One row per (query, rank),
    columns TOPK_COLUMNS; candidates are the split's distinct studies (one report each), ranked by cosine
    similarity, the patient's own other studies included (flagged), ties in either order."""
    meta = es.meta
    first = ~meta["study_id"].duplicated().to_numpy()
    cand = meta.loc[first, ["study_id", "patient_id"]].reset_index(drop=True)
    idx, scores = top_k_all(es.image_emb, es.report_emb[first], k, device)
    kk = idx.shape[1]
    rep = np.repeat(np.arange(len(meta)), kk)
    c_study = cand["study_id"].to_numpy(dtype=object)[idx.ravel()]
    c_patient = cand["patient_id"].to_numpy(dtype=object)[idx.ravel()]
    q_study = meta["study_id"].to_numpy(dtype=object)[rep]
    q_patient = meta["patient_id"].to_numpy(dtype=object)[rep]
    out = pd.DataFrame({
        "pair_id": meta["pair_id"].to_numpy(dtype=object)[rep], "study_id": q_study, "patient_id": q_patient,
        "rank": np.tile(np.arange(1, kk + 1), len(meta)), "candidate_study_id": c_study,
        "candidate_patient_id": c_patient, "score": scores.ravel(),
        "is_true_report": c_study == q_study, "is_same_patient": c_patient == q_patient})
    for col in ("pair_id", "study_id", "patient_id", "candidate_study_id", "candidate_patient_id"):
        out[col] = out[col].astype(str)
    return out[list(TOPK_COLUMNS)]
