"""The same spec gives the same numbers: the weights hash (an independent sha256 of the tensors), demo training that
repeats bit for bit in one process, in another process and under torch's AVX2 kernels, two recomputes of one
audit giving identical rows, every run recording its weights hash and runs of other weights kept apart; the
training's progress moves forward step by step with a time left from measured steps."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from backend.models.digest import state_dict_digest
from backend.specs import AuditSpec, EmbedSpec, SourceSpec
from tests.helpers.tiny_models import TINY_DEMO, TINY_SOURCE_OPTIONS, register_tiny_models

register_tiny_models()

REPO = Path(__file__).resolve().parent.parent


def _independent_digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def test_the_weights_hash_reads_names_dtypes_shapes_and_bytes() -> None:
    g = torch.Generator().manual_seed(0)
    state = {"b.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(4, generator=g),
             "c": torch.arange(6, dtype=torch.int64)}
    assert state_dict_digest(state) == _independent_digest(state)
    assert state_dict_digest({k: v.clone() for k, v in reversed(state.items())}) == state_dict_digest(state)
    bumped = {**state, "a.bias": state["a.bias"].clone()}
    bumped["a.bias"][0] = torch.nextafter(bumped["a.bias"][0], torch.tensor(1e9))  # one bit
    assert state_dict_digest(bumped) != state_dict_digest(state)
    assert state_dict_digest({**state, "c": state["c"].reshape(2, 3)}) != state_dict_digest(state)  # shape
    assert state_dict_digest({**state, "c": state["c"].to(torch.int32)}) != state_dict_digest(state)  # dtype


_CHILD = """
import json, os, sys, tempfile
os.environ["CXR_CACHE_DIR"] = tempfile.mkdtemp()
import torch
from backend.models.demo import train_demo
from tests.helpers.tiny_models import TINY_DEMO
folder = train_demo(TINY_DEMO)
print(json.dumps({"hash": json.loads((folder / "config.json").read_text())["training"]["weights_hash"],
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def test_demo_training_repeats_bit_for_bit_in_one_process_another_and_under_avx2_kernels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trainings in this process, then one in a child process on torch's AVX2 kernels with OpenBLAS's Haswell
    kernels (another CPU family's arithmetic, emulated): the same weights hash, which the saved file matches."""
    from backend.models.demo import train_demo

    hashes = []
    torch.set_num_threads(1)  # the caller's thread count does not reach the training (restored afterwards)
    for i in range(2):
        monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / f"c{i}"))
        folder = train_demo(TINY_DEMO)
        recorded = json.loads((folder / "config.json").read_text())["training"]["weights_hash"]
        assert recorded == _independent_digest(torch.load(folder / "weights.pt", weights_only=True))
        hashes.append(recorded)
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()
    assert hashes[0] == hashes[1]
    if not torch.backends.cpu.get_cpu_capability().startswith(("AVX2", "AVX512")):
        pytest.skip("this CPU has no AVX2: torch has no other kernels to switch to")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["capability"] == "AVX2"
    assert child["hash"] == hashes[0]


def test_training_progress_moves_forward_step_by_step_with_a_measured_time_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.models.demo import train_demo

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    calls: list[tuple[int, int, str]] = []
    train_demo(TINY_DEMO, lambda done, total, message="": calls.append((done, total, message)))
    fractions = [d / t for d, t, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # rendering, then training: never back
    steps = [m for _, _, m in calls if " s a step here" in m]
    n_steps = TINY_DEMO.planned_steps()
    assert len(steps) == n_steps and f"step {n_steps} of {n_steps}" in steps[-1]
    assert all(m.startswith("training the demo model") for _, _, m in calls)
    render_end = max(d / t for d, t, m in calls if "rendering" in m)
    assert render_end < 0.5  # the tiny config renders 96 pairs and trains 6 steps: most of the bar is training


def test_the_time_left_is_the_mean_measured_step_time_times_the_steps_left() -> None:
    from backend.models.demo import step_message

    text = step_message(10, 100, [1.0] * 5 + [2.0] * 20, 0.5)  # the last 20 steps: 2.0 s each
    assert "2.00 s a step" in text and "about 3 min 00 s left" in text  # 90 steps x 2 s


@pytest.fixture()
def tiny_audit(fresh_cache: Path) -> AuditSpec:
    return AuditSpec(embed=EmbedSpec(source=SourceSpec(options=TINY_SOURCE_OPTIONS), model="demo-tiny"), n_bootstrap=5)


def test_two_recomputes_of_one_spec_give_identical_rows_and_record_the_weights_hash(
        tiny_audit: AuditSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each recompute in an empty cache: the demo model trained again, the split embedded again."""
    from backend.audit import run_audit

    results = []
    for i in range(2):
        monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / f"r{i}"))
        results.append(run_audit(tiny_audit))
    pd.testing.assert_frame_equal(results[0].rows, results[1].rows)
    folder = next((tmp_path / "r0" / "models").glob("demo-*"))
    weights = _independent_digest(torch.load(folder / "weights.pt", weights_only=True))
    assert results[0].inputs["weights_hash"] == results[1].inputs["weights_hash"] == weights


def test_runs_of_other_weights_are_other_data(fresh_cache: Path) -> None:
    """A run's identity holds its weights hash: the pages never pair an audit with a sweep of other weights, and a
    finished run is not reused for inputs of other weights; runs that predate the hash are compared as before."""
    from backend.runs import store
    from backend.runs.inputs import same_inputs
    from backend.views import catalog

    spec = '{"embed": {"source": {"name": "synthetic", "options": {}}}}'
    for rid, weights in (("audit-a", "aaaa"), ("audit-b", "bbbb"), ("audit-c", "aaaa"), ("audit-old", None)):
        store.upsert_run(rid, "audit", spec, "running")
        store.finish_run(rid, summary={"inputs": {"data_hash": "d1", **({"weights_hash": weights} if weights else {})}})
    ident = {r: catalog.data_identity(r) for r in ("audit-a", "audit-b", "audit-c", "audit-old")}
    assert not catalog.same_data(ident["audit-a"], ident["audit-b"])
    assert catalog.same_data(ident["audit-a"], ident["audit-c"]) and catalog.same_data(ident["audit-a"], ident["audit-old"])
    assert catalog.same_data(ident["audit-a"], ident["audit-b"], weights=False)  # the model comparison: same data
    assert not same_inputs({"data_hash": "d1", "weights_hash": "aaaa"}, {"data_hash": "d1", "weights_hash": "bbbb"})
    assert same_inputs({"data_hash": "d1", "weights_hash": "aaaa"}, {"data_hash": "d1", "weights_hash": "aaaa"})


def test_other_pages_name_the_demo_jobs_training_stage() -> None:
    from backend.runs.job_records import Job
    from backend.views.status import pending_text

    job = Job(job_id="demo-1", run_id="demo-x", kind="demo", status="running", done=740, total=1000,
              message="training the demo model: step 300 of 744, 3.10 s a step here, about 22 min 56 s left")
    text = pending_text("audit", job, "synthetic", "demo")
    assert text.startswith("The demo job is training the demo model: step 300 of 744") and "Audit running" not in text
    job.message = "auditing the demo model: embedding images"
    assert pending_text("audit", job, "synthetic", "demo").startswith("Audit running (74%)")
