"""Seed a store with realistic finished runs, in the exact contract formats (docs/INTERFACES.md, written
through backend.runs.persist' persist functions like a real worker):
two audited models, a DP epsilon sweep with privacy records, probe rows and transfer, per-query rows,
an embedding file with images for the pair explorer, and a few jobs (done, failed).

`python -m tests.seed DIR` seeds DIR (used by the browser test and for screenshots).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from scipy import stats

from backend import settings
from backend.runs import persist as results
from backend.runs import store
from backend.sources.schema import LABELS
from backend.specs import AuditSpec, DPSpec, EmbedSpec, SourceSpec, SweepSpec

N_GRID = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
EPSILONS = (0.34, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
SOURCE = SourceSpec(name="synthetic", options={"n_patients": 2000})


def relink_rows(seed: int = 0, strength: float = 0.2, n_queries: int = 2000, hard_cap: int = 1000,
                pools: tuple[str, ...] = ("random", "hard"), ks: tuple[int, ...] = (1, 5, 10)) -> pd.DataFrame:
    """Tidy Recall@K(N) rows from a model of per-query beat probabilities p_i ~ Beta(strength, 1);
    smaller strength = a stronger re-linker. Hard pools are harder (p doubled, capped at hard_cap)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(strength, 1.0, size=400)
    rows = []
    for pool in pools:
        for level in ("study", "patient"):
            q = np.clip(p * (2.5 if pool == "hard" else 1.0) * (0.85 if level == "patient" else 1.0), 0, 1)
            for k in ks:
                for n in N_GRID:
                    eff = min(n, hard_cap) if pool == "hard" else n
                    recall = float(np.mean(stats.binom.cdf(k - 1, eff - 1, q))) if eff > k else 1.0
                    half = 1.96 * math.sqrt(max(recall * (1 - recall), 1e-6) / n_queries)
                    chance = min(1.0, k / eff)
                    rows.append({"pool_kind": pool, "level": level, "k": k, "n": n, "recall": recall,
                                 "ci_low": max(0.0, recall - half), "ci_high": min(1.0, recall + half),
                                 "chance": chance, "lift": recall / chance, "effective_n": float(eff)})
    return pd.DataFrame(rows)


def probe_rows(seed: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for method, base in (("linear", 0.84), ("zero-shot", 0.71)):
        aurocs = np.clip(base + shift + rng.normal(0, 0.05, len(LABELS)), 0.5, 0.99)
        for label, auc in zip(LABELS, aurocs, strict=True):
            rows.append({"method": method, "label": label, "auroc": auc, "ci_low": auc - 0.03, "ci_high": auc + 0.03,
                         "n_pos": float(rng.integers(20, 400))})
        macro = float(aurocs.mean())
        rows.append({"method": method, "label": "macro", "auroc": macro, "ci_low": macro - 0.015,
                     "ci_high": macro + 0.015, "n_pos": np.nan})
    return pd.DataFrame(rows)


REPORT_BITS = {
    "Cardiomegaly": "The heart is enlarged.", "Pleural Effusion": "Small left pleural effusion.",
    "Edema": "Mild interstitial edema.", "Pneumothorax": "Small apical right pneumothorax.",
    "Atelectasis": "Bibasilar atelectasis.", "Support Devices": "Right IJ catheter tip in the SVC.",
    "Lung Opacity": "Patchy right lower lobe opacity.", "Fracture": "Healed left rib fractures.",
}


def _image(rng: np.random.Generator, labels: dict[str, float], size: int = 256) -> Image.Image:
    img = Image.new("L", (size, size), 20)
    draw = ImageDraw.Draw(img)
    w = int(size * (0.22 + 0.08 * rng.random()))
    for cx in (size * 0.3, size * 0.7):  # two lungs
        draw.ellipse([cx - w / 2, size * 0.15, cx + w / 2, size * 0.85], fill=int(60 + 30 * rng.random()))
    heart = size * (0.18 if labels.get("Cardiomegaly") == 1 else 0.12)
    draw.ellipse([size * 0.5 - heart, size * 0.45, size * 0.5 + heart, size * 0.75], fill=170)
    if labels.get("Pleural Effusion") == 1:
        draw.rectangle([size * 0.2, size * 0.72, size * 0.4, size * 0.85], fill=150)
    return img.filter(ImageFilter.GaussianBlur(3))


# Hostile dataset text: a dataset's reports and ids are data, never markup. `crafted=True` puts these
# into every report and id, so that each page shows them; the browser test checks they stay inert text.
CRAFTED_REPORT = ("**bold** _em_ :red[red] :material/home: $\\color{red}{x}$ `tick` [a link](http://example.invalid/l) "
                  "![](http://example.invalid/b.png) <img src=http://10.255.255.1/x.png> <script>alert(1)</script> "
                  "<a href=http://example.invalid/a>html link</a> www.example.invalid")
CRAFTED_ID = "**id**`<img src=http://10.255.255.1/i.png>`![](http://example.invalid/i.png)$x$"


def write_pairs(run_dir: Path, n_pairs: int = 60, seed: int = 0, crafted: bool = False) -> Path:
    """An embedding npz (the --save-embeddings keys, plus image_path, view) with PNG images; with `crafted`,
    every report and id also holds markup (CRAFTED_REPORT, CRAFTED_ID)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = (rng.random((n_pairs, len(LABELS))) < 0.2).astype(np.float32)
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).astype(np.float32)
    reports, paths = [], []
    for i in range(n_pairs):
        row = dict(zip(LABELS, labels[i], strict=True))
        bits = [REPORT_BITS[name] for name in REPORT_BITS if row[name] == 1]
        reports.append(" ".join(bits) or "No acute cardiopulmonary abnormality. Lungs are clear.")
        path = run_dir / f"img_{i:03d}.png"
        _image(rng, row).save(path)
        paths.append(str(path))
    d = 16
    report_emb = rng.normal(size=(n_pairs, d)).astype(np.float32)
    image_emb = report_emb + rng.normal(scale=0.8, size=(n_pairs, d)).astype(np.float32)
    for arr in (report_emb, image_emb):
        arr /= np.linalg.norm(arr, axis=1, keepdims=True)
    tag = CRAFTED_ID if crafted else ""
    if crafted:
        reports = [f"{r}\n{CRAFTED_REPORT}" for r in reports]
    patient = [f"p{i // 3:03d}{tag}" for i in range(n_pairs)]
    out = run_dir / "embeddings.npz"
    np.savez(out, image_emb=image_emb, report_emb=report_emb,
             pair_id=np.array([f"pair{i:03d}{tag}" for i in range(n_pairs)]),
             study_id=np.array([f"s{i:03d}{tag}" for i in range(n_pairs)]), patient_id=np.array(patient),
             labels=labels, report=np.array(reports), image_path=np.array(paths),
             view=np.array(["PA" if i % 2 == 0 else "LATERAL" for i in range(n_pairs)]))
    return out


def _per_query(npz: Path) -> pd.DataFrame:
    data = np.load(npz)
    sims = data["image_emb"] @ data["report_emb"].T
    true = np.diag(sims)
    beaters = (sims > true[:, None]).sum(1)
    return pd.DataFrame({"pair_id": data["pair_id"], "rank_full": beaters + 1, "beaters": beaters,
                         "ties": np.zeros(len(true), dtype=int)})


def _probe_result_rows(seed: int, shift: float, targets: tuple[str, ...]) -> pd.DataFrame:
    """Probe rows as backend.dp's DPResult.probe_rows: + target, method linear-probe|zero-shot, features."""
    parts = []
    for i, target in enumerate(targets):
        for features in ("projected", "frozen"):
            rows = probe_rows(seed + 7 * i, shift if features == "projected" else 0.0)
            rows["method"] = rows["method"].replace({"linear": "linear-probe"})
            parts.append(rows.assign(target=target, features=features, n_neg=100.0, excluded=False, reason=""))
    return pd.concat(parts, ignore_index=True)


def _dp_result(spec: DPSpec, label: str, strength: float, shift: float, privacy: dict) -> SimpleNamespace:
    """A stand-in for backend.dp.DPResult with the same attributes and row formats."""
    rows = pd.concat([relink_rows(0, strength).assign(target="in-domain"),
                      relink_rows(5, strength * 1.4, pools=("random",)).assign(target="synthetic-site-B")])
    return SimpleNamespace(spec=spec, label=label, privacy=privacy, relink_rows=rows,
                           relink_summary={"n_queries": 2000}, probe_rows=_probe_result_rows(10, shift,
                                                                                             ("in-domain", "synthetic-site-B")))


def seed_store(cache_dir: Path | None = None, crafted: bool = False) -> dict[str, str]:
    """Write finished runs into the store at CXR_CACHE_DIR (or `cache_dir`) through the same persist
    functions the job worker uses; returns their run ids. `crafted`: reports and ids hold markup (write_pairs)."""
    if cache_dir is not None:
        import os

        os.environ["CXR_CACHE_DIR"] = str(cache_dir)
    ids = {}
    for model, strength, seed in (("demo", 0.12, 0), ("openai-vit-b-16", 0.35, 1)):
        spec = AuditSpec(embed=EmbedSpec(source=SOURCE, model=model))
        npz = write_pairs(store.runs_dir(spec.run_id()), seed=seed, crafted=crafted)
        result = SimpleNamespace(rows=relink_rows(seed, strength), per_query=_per_query(npz), embedding_path=str(npz),
                                 summary={"n_queries": 2000, "n_candidates": 1400, "n_patients": 700,
                                          "median_rank": 9.0})
        results.persist_audit(spec.run_id(), spec, result, "cpu")
        ids[f"audit:{model}"] = spec.run_id()
    base = DPSpec(source=SOURCE, model="demo", audit=AuditSpec(embed=EmbedSpec(source=SOURCE, model="demo")))
    sweep = SweepSpec(base=base, epsilons=EPSILONS)
    out = [_dp_result(base, "original", 0.12, 0.0, {"epsilon": math.inf, "guarantee": "none",
                                                     "objective": "original"})]
    for point in sweep.points():
        eps = point.epsilon
        finite = math.isfinite(eps)
        privacy = {"target_epsilon": eps, "epsilon": eps * 0.98 if finite else eps, "delta": 6e-6,
                   "noise_multiplier": 1.2 / eps if finite else 0.0, "sample_rate": 0.05, "steps": 100,
                   "max_grad_norm": 1.0, "accountant": "rdp", "objective": "in-batch", "privacy_unit": "pair",
                   "guarantee": "nominal" if finite else "none"}
        out.append(_dp_result(point, "dp" if finite else "retrained", 0.135 + (0.25 / (1 + eps) if finite else 0.0),
                              -0.04 / (1 + eps) if finite else 0.0, privacy))
    store.upsert_run(sweep.run_id(), "sweep", sweep.to_json(), "running")
    results.persist_sweep(sweep.run_id(), sweep, out, "cpu")
    ids["sweep"] = sweep.run_id()
    now = time.time()
    for status, tb in (("done", ""), ("failed", "Traceback (most recent call last):\n  ...\nValueError: seeded")):
        job_id = f"{ids['audit:demo']}-{status}"
        store.insert_job(job_id, {"run_id": ids["audit:demo"], "kind": "audit", "spec": "{}", "status": status,
                                  "done": 10, "total": 10, "created": now - 60, "finished": now,
                                  "message": "done" if status == "done" else "ValueError: seeded example failure",
                                  "traceback": tb, "device": "cpu", "log_path": "", "cancel_requested": False})
    return ids


def add_side_information(ids: dict[str, str]) -> dict[str, str]:
    """Add to a seeded store an audit of the demo model with a side-information pool ("matched:sex+age_band", 1.3x
    the random pool's recall) and members against non-members on every point of the sweep (point i: gap 0.01 i,
    CI gap -0.02 to gap + 0.02 + 0.001 N); returns `ids` with "audit:sideinfo"."""
    rows = store.load_metrics(ids["audit:demo"]).query("variant == 'model'").drop(columns=["run_id", "variant"])
    matched = rows[rows["pool_kind"] == "random"].assign(pool_kind="matched:sex+age_band")
    matched = matched.assign(recall=(matched["recall"] * 1.3).clip(upper=1.0), ci_low=matched["ci_low"] * 1.2,
                             ci_high=(matched["ci_high"] * 1.4).clip(upper=1.0))
    matched = matched.assign(lift=matched["recall"] / matched["chance"])
    store.upsert_run("audit-sideinfo", "audit", store.get_run(ids["audit:demo"])["spec"], "running")
    store.finish_run("audit-sideinfo", metrics={"model": pd.concat([rows, matched], ignore_index=True)})
    pts = store.load_sweep_points(ids["sweep"])
    for i, run_id in enumerate(pts["run_id"]):
        members = [{"n": n, "member_recall": 0.3 / n ** 0.5 + 0.01 * i, "member_ci_low": 0.0, "member_ci_high": 1.0,
                    "nonmember_recall": 0.3 / n ** 0.5, "nonmember_ci_low": 0.0, "nonmember_ci_high": 1.0,
                    "gap": 0.01 * i, "gap_ci_low": 0.01 * i - 0.02, "gap_ci_high": 0.01 * i + 0.02 + 0.001 * n}
                   for n in (10, 50, 100, 200)]
        summary = store.get_run(run_id)["summary"]
        store.finish_run(run_id, summary={**summary, "members": members}, keep_parts=True)
    ids["audit:sideinfo"] = "audit-sideinfo"
    return ids


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--crafted"]
    target = Path(args[0]) if args else settings.cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(seed_store(target, crafted="--crafted" in sys.argv[1:]))
