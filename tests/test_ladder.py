"""The model ladder: rungs registered torch-free with their own cache keys (the demo's unchanged), each
rung trains reproducibly on a tiny setting, the comparison table equals the stored rows, the ladder CLI prints
its JSON on a tiny setting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.runs import store
from backend.specs import AuditSpec, EmbedSpec, LadderSpec, ProbeSpec, SourceSpec
from backend.views import catalog, compare, launch, status
from tests.helpers.tiny_models import TINY_RUNGS, TINY_SOURCE_OPTIONS, register_tiny_models

REPO = Path(__file__).resolve().parent.parent
DEMO_KEY = "e2445b985a54"  # the demo's cache key (TRAIN_VERSION demo-train-v2: reproducible training); cached demos depend on it


def test_registry_lists_the_rungs_without_importing_torch() -> None:
    code = ("import json, sys; from backend.models import list_models; from backend.models.demo_config import RUNGS, "
            "DEFAULT_DEMO; from backend.runs.ladder import ladder_estimate; from backend.specs import LadderSpec; "
            "est = ladder_estimate(LadderSpec()); "
            "print(json.dumps([[m.name for m in list_models()], {n: [r.config.key(), r.config.planned_steps()] for n, r "
            "in RUNGS.items()}, DEFAULT_DEMO.key(), est['seconds'], sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'open_clip'))]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    names, rungs, demo_key, seconds, heavy = json.loads(out)
    assert heavy == []
    assert names[0] == "demo" and {"demo-weak", "demo-strong"} <= set(names)
    assert demo_key == DEMO_KEY and rungs["demo"][0] == DEMO_KEY
    assert len({key for key, _ in rungs.values()}) == len(rungs), "each rung has its own cache folder"
    steps = [rungs[n][1] for n in ("demo-weak", "demo", "demo-strong")]
    assert steps == [92, 744, 1680] and steps == sorted(steps)
    assert seconds >= sum(steps) * 1.1  # nothing cached in a fresh folder: every rung's training is counted
    listing = subprocess.run([sys.executable, "-m", "backend", "models"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    for name in ("demo-weak", "demo-strong"):
        assert f"{name} " in listing and "ladder rung" in listing


@pytest.mark.parametrize("name", list(TINY_RUNGS))
def test_each_rung_trains_reproducibly_on_the_cpu(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed -> byte-identical weights (two trainings into two cache folders); the rungs differ from each other."""
    import torch

    from backend.models.demo import train_demo

    config = TINY_RUNGS[name]
    weights, files = [], []
    for i in range(2):
        monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / f"c{i}"))
        folder = train_demo(config)
        assert folder.name == f"demo-{config.key()}"
        files.append((folder / "weights.pt").read_bytes())
        weights.append(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    assert files[0] == files[1], "the saved weights file differs between two trainings with the same seed"
    a, b = weights
    assert list(a) == list(b)
    for key in a:
        assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
    other = TINY_RUNGS["demo-tiny" if name != "demo-tiny" else "demo-weak-tiny"]
    assert other.key() != config.key()


def _curve(n: int, recall: float, pool: str = "random") -> dict:
    return {"pool_kind": pool, "level": "study", "k": 1, "n": n, "recall": recall, "ci_low": recall * 0.8,
            "ci_high": recall * 1.2, "chance": 1 / n, "lift": recall * n, "effective_n": float(n), "capped_frac": 0.0}


def _seed_audit(model: str, recalls: dict[int, float], source: SourceSpec) -> str:
    spec = AuditSpec(embed=EmbedSpec(source=source, model=model), n_bootstrap=7)
    rows = pd.DataFrame([_curve(n, r) for n, r in recalls.items()] + [_curve(100, 0.5, "hard")])
    store.upsert_run(spec.run_id(), "audit", spec.to_json(), "running")
    store.finish_run(spec.run_id(), metrics={"model": rows})
    return spec.run_id()


def _probe_rows(linear: float, zero: float) -> pd.DataFrame:
    rows = []
    for method, v in (("linear-probe", linear), ("zero-shot", zero)):
        rows.append({"target": "in-domain", "method": method, "features": "projected", "label": "macro", "auroc": v,
                     "ci_low": v - 0.02, "ci_high": v + 0.03, "n_pos": 10})
        rows.append({"target": "in-domain", "method": method, "features": "projected", "label": "Edema", "auroc": 0.9,
                     "ci_low": 0.8, "ci_high": 0.95, "n_pos": 4})
    rows.append({"target": "in-domain", "method": "linear-probe", "features": "frozen", "label": "macro", "auroc": 0.99,
                 "ci_low": 0.98, "ci_high": 1.0, "n_pos": 10})
    return pd.DataFrame(rows)


def test_comparison_table_equals_the_stored_rows(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs.persist import persist_probe

    source = SourceSpec(options={"n_patients": 50})
    weak = _seed_audit("m-weak", {10: 0.3, 100: 0.05, 700: 0.004}, source)
    strong = _seed_audit("m-strong", {10: 0.6, 100: 0.2, 700: 0.02}, source)
    probe = ProbeSpec(source=source, model="m-strong", n_bootstrap=7)
    store.upsert_run(probe.run_id(), "probe", probe.to_json(), "running")
    persist_probe(probe.run_id(), probe, _probe_rows(0.71, 0.63), "cpu")
    other = ProbeSpec(source=SourceSpec(options={"n_patients": 99}), model="m-weak")  # another dataset: not used
    persist_probe(other.run_id(), other, _probe_rows(0.5, 0.5), "cpu")

    table = compare.model_comparison([weak, strong]).set_index("model")
    stored = store.load_metrics([weak, strong])
    for model, run_id in (("m-weak", weak), ("m-strong", strong)):
        r = table.loc[model]
        rows = stored[(stored["run_id"] == run_id) & (stored["pool_kind"] == "random")].set_index("n")
        for tag, n in (("100", 100), ("max", 700)):
            assert r[f"n_{tag}"] == n
            assert r[f"recall_{tag}"] == rows.loc[n, "recall"] and r[f"lift_{tag}"] == rows.loc[n, "lift"]
            assert r[f"recall_{tag}_low"] == rows.loc[n, "ci_low"] and r[f"recall_{tag}_high"] == rows.loc[n, "ci_high"]
            assert r[f"lift_{tag}_low"] == pytest.approx(rows.loc[n, "ci_low"] * n)
            assert r[f"lift_{tag}_high"] == pytest.approx(rows.loc[n, "ci_high"] * n)
    probes = store.load_probe(probe.run_id())
    macro = probes[(probes["variant"] == "model") & (probes["label"] == "macro")].set_index("method")
    s = table.loc["m-strong"]
    assert (s["linear"], s["linear_low"], s["linear_high"]) == tuple(macro.loc["linear", ["auroc", "ci_low", "ci_high"]])
    assert (s["zero_shot"], s["zero_shot_low"]) == tuple(macro.loc["zero-shot", ["auroc", "ci_low"]])
    assert s["probe_run"] == probe.run_id() and s["linear"] == 0.71  # not the frozen-feature probe (0.99)
    w = table.loc["m-weak"]
    assert pd.isna(w["probe_run"]) and w["probe_from"] == "not measured" and math.isnan(w["linear"]) and math.isnan(w["zero_shot"])
    shown = compare.comparison_display(table.reset_index()).set_index("Model")
    assert shown.loc["m-weak", "Linear-probe AUROC [95% CI]"] == "not measured"
    assert shown.loc["m-strong", "Zero-shot AUROC [95% CI]"] == "0.630 [0.610, 0.660]"
    assert shown.loc["m-strong", "Lift at N=100 [95% CI]"] == "20.0x [16.0, 24.0] at N=100"
    assert shown.loc["m-weak", "Lift at the largest N [95% CI]"] == "2.8x [2.2, 3.4] at N=700"


def test_ladder_cli_on_a_tiny_setting_prints_the_json(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from backend.__main__ import main

    register_tiny_models()
    rungs = list(TINY_RUNGS)
    options = [f"{k}={v}" for k, v in {**TINY_SOURCE_OPTIONS, "n_patients": 40}.items()]
    args = ["ladder", "--rungs", *rungs, *sum((["--source-option", o] for o in options), []), "--n-bootstrap", "50"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "ladder" and [r["model"] for r in doc["rungs"]] == rungs
    for rec in doc["rungs"]:
        assert {"model", "specialisation", "config_key", "steps", "audit_run", "probe_run", "linear_probe_auroc",
                "zero_shot_auroc", "lift_n100", "lift_largest_n"} <= set(rec)
        assert rec["config_key"] == TINY_RUNGS[rec["model"]].key()
        assert store.get_run(rec["audit_run"])["status"] == "done" and store.get_run(rec["probe_run"])["status"] == "done"
        for key in ("lift_n100", "lift_largest_n"):
            assert {"n", "recall", "lift", "lift_ci_low", "lift_ci_high"} <= set(rec[key])
            assert rec[key]["lift_ci_low"] <= rec[key]["lift_ci_high"] and rec[key]["lift"] >= 0
        assert rec["probe_from"] == "probe run"
        for key in ("linear_probe_auroc", "zero_shot_auroc"):
            assert rec[key] is None or {"auroc", "ci_low", "ci_high"} <= set(rec[key])
    spec = LadderSpec(rungs=tuple(rungs), source=SourceSpec(options={**TINY_SOURCE_OPTIONS, "n_patients": 40}),
                      n_bootstrap=50)
    assert all(p["trained"] and p["audited"] and p["probed"] for p in launch.ladder_estimate(spec)["plan"])
    assert launch.ladder_estimate(spec)["seconds"] == 0  # everything stored: a second run recomputes nothing
    table = compare.model_comparison([r["audit_run"] for r in doc["rungs"]])
    assert np.allclose(table["lift_max"], [r["lift_largest_n"]["lift"] for r in doc["rungs"]])


@pytest.mark.parametrize("page", ["overview", "relinkage"])
def test_pages_show_the_comparison_table(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a seeded store (two audited models; the demo's AUROCs from its sweep's original-model reference)."""
    from tests.helpers.seed import seed_store
    from tests.test_pages import _open

    seed_store(tmp_path)
    at = _open(page, tmp_path, monkeypatch)
    tables = [t.value for t in at.dataframe if "Zero-shot AUROC [95% CI]" in t.value.columns]
    assert len(tables) == 1, page
    shown = tables[0].set_index("Model")
    assert shown.loc["openai-vit-b-16", "Linear-probe AUROC [95% CI]"] == "not measured"
    assert shown.loc["demo", "AUROCs from"] == "epsilon sweep's original model"
    expected = compare.comparison_display(compare.model_comparison(
        list(catalog.audit_runs("synthetic")["run_id"]))).set_index("Model")
    assert shown.loc["demo"].equals(expected.loc["demo"])


def test_models_page_offers_the_ladder_with_an_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_pages import _open

    at = _open("models_jobs", tmp_path, monkeypatch)
    assert any("Train the ladder" == b.label for b in at.button)
    text = " ".join(c.value for c in at.caption).replace("\\", "")  # ui.markup.plain escapes markdown
    assert "92 steps x 1.1 s" in text and "1,680 steps" in text  # nothing cached: every rung's training counted


def test_the_rungs_probe_equals_the_probe_command(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model_probe (the ladder's) gives exactly the probe rows of `python -m backend probe` (original_result)."""
    from backend.dp import model_probe, original_result
    from backend.dp.eval import prepare
    from backend.specs import DPSpec

    register_tiny_models()
    spec = DPSpec(source=SourceSpec(options={**TINY_SOURCE_OPTIONS, "n_patients": 40}), model="demo-tiny",
                  audit=AuditSpec(n_bootstrap=5))
    ours = model_probe(spec)
    theirs = original_result(spec, prepare(spec, need_bank=False)).probe_rows
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
    assert {"linear-probe", "zero-shot"} <= set(ours["method"])


def test_a_running_ladder_job_is_shown_as_a_pending_audit(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import gpu_queue, jobs

    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: None)  # stays queued: no worker
    spec = LadderSpec(rungs=("demo-weak", "demo"), n_bootstrap=3)
    job = jobs.submit(spec)
    assert job.kind == "ladder" and job.active
    assert [j.job_id for j in status.running_jobs("audit", "synthetic", None)] == [job.job_id]
    assert [j.job_id for j in status.running_jobs("audit", "synthetic", "demo-weak")] == [job.job_id]
    assert status.running_jobs("audit", "synthetic", "openai-vit-b-16") == []
    assert status.running_jobs("audit", "openi", None) == []
    assert "model ladder job" in status.pending_text("audit", job, "synthetic", "demo-weak")
    for rung in spec.rungs:  # every rung's audit stored: nothing is pending any more
        audit = spec.audit(rung)
        store.upsert_run(audit.run_id(), "audit", audit.to_json(), "running")
        store.finish_run(audit.run_id(), metrics={"model": pd.DataFrame([_curve(10, 0.5)])})
    assert status.running_jobs("audit", "synthetic", None) == []
    jobs.cancel(job.job_id, grace_s=0.1, wait=True)


def test_the_ladder_job_runs_in_a_worker_and_stores_each_rung(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job path (kind, worker, persist) on two tiny rungs; the bar only moves forward; resubmitting reuses it."""
    from backend.runs import gpu_queue, jobs, worker
    from backend.runs.ladder import run_ladder

    register_tiny_models()
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: None)
    monkeypatch.setattr(worker.signal, "signal", lambda *a: None)
    spec = LadderSpec(rungs=("demo-weak-tiny", "demo-tiny"), n_bootstrap=3,
                      source=SourceSpec(options={**TINY_SOURCE_OPTIONS, "n_patients": 40}), probe=False)
    job = jobs.submit(spec)
    assert worker.run_worker(job.job_id) == 0, jobs.read_log(jobs.get_job(job.job_id))
    done = jobs.get_job(job.job_id)
    assert done.status == "done" and done.done == done.total
    summary = store.get_run(spec.run_id())["summary"]
    assert [r["model"] for r in summary["rungs"]] == list(spec.rungs)
    assert all(r["probe_run"] is None for r in summary["rungs"])
    table = compare.model_comparison([r["audit_run"] for r in summary["rungs"]])
    assert (table["probe_from"] == "not measured").all()  # probe=False: the table says so
    assert jobs.submit(spec).status == "done"
    seen: list[int] = []
    run_ladder(spec, lambda d, t, m="": seen.append(d))  # everything stored: nothing recomputed, bar to the end
    assert seen == sorted(seen) and seen[-1] == 1000
