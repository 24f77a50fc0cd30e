"""Jobs run real detached workers (`python -m backend worker JOB_ID`) on the tiny selftest kind."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.errors import JobError
from backend.runs import gpu_queue, jobs, store, worker
from backend.runs.demo import default_demo_spec
from backend.sources.inputs import data_inputs, file_sources
from backend.specs import AuditSpec, DemoSpec, DPSpec, EmbedSpec, SelfTestSpec, SourceSpec, SweepSpec, spec_from_json

pytestmark = pytest.mark.usefixtures("fresh_cache")  # every test here gets a cache of its own


def _wait(job_id: str, until: tuple[str, ...], timeout: float = 60.0) -> jobs.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get_job(job_id)
        if job.status in until:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {jobs.get_job(job_id).status}; log:\n{jobs.read_log(job)}")


def test_specs_round_trip_through_json() -> None:
    sweep = SweepSpec(base=DPSpec(source=SourceSpec(options={"n_patients": 50}), transfer=(SourceSpec(name="x"),)),
                      epsilons=(1.0, math.inf))
    for spec in (sweep, AuditSpec(embed=EmbedSpec(model="m")), SelfTestSpec(steps=2), default_demo_spec(30),
                 DemoSpec(sweep=None)):
        back = spec_from_json(spec.to_json())
        assert back == spec and back.run_id() == spec.run_id()


def test_worker_runs_detached_with_progress_and_resubmit_returns_the_finished_run() -> None:
    spec = SelfTestSpec(steps=8, delay_s=0.25)
    job = jobs.submit(spec)
    assert job.status in ("queued", "running") and job.pid
    seen_progress = 0
    deadline = time.monotonic() + 60
    while jobs.get_job(job.job_id).active and time.monotonic() < deadline:
        seen_progress = max(seen_progress, jobs.get_job(job.job_id).done)
        time.sleep(0.1)
    done = jobs.get_job(job.job_id)
    assert done.status == "done", jobs.read_log(done)
    assert 0 < seen_progress <= 8 and done.done == 8 and done.heartbeat and done.device == "cpu"
    assert os.getsid(0) != _sid_or_none(done.pid)  # it ran in its own session
    assert store.get_run(spec.run_id())["summary"] == {"steps": 8, "tag": ""}
    again = jobs.submit(spec)
    assert again.job_id == done.job_id and again.status == "done"
    assert len(store.list_jobs(run_id=spec.run_id())) == 1  # nothing recomputed


def _sid_or_none(pid: int | None) -> int | None:
    try:
        return os.getsid(pid) if pid else None
    except ProcessLookupError:
        return None


def test_running_identical_spec_returns_the_running_job() -> None:
    spec = SelfTestSpec(steps=20, delay_s=0.2, tag="dup")
    first = jobs.submit(spec)
    second = jobs.submit(spec)
    assert second.job_id == first.job_id
    jobs.cancel(first.job_id, grace_s=5, wait=True)


def test_cancel_stops_the_worker_at_its_next_progress_call() -> None:
    job = jobs.submit(SelfTestSpec(steps=200, delay_s=0.1, tag="cancel"))
    _wait(job.job_id, ("running",))
    time.sleep(0.5)
    out = jobs.cancel(job.job_id, grace_s=10, wait=True)
    out = _wait(out.job_id, ("cancelled",), timeout=40)
    assert out.done < 200 and "cancel" in out.message
    assert store.get_run(job.run_id)["status"] == "cancelled"


def test_cancel_terminates_a_worker_that_ignores_the_flag() -> None:
    job = jobs.submit(SelfTestSpec(steps=2, delay_s=30, tag="stuck"))  # no progress call for 30 s
    _wait(job.job_id, ("running",))
    t0 = time.monotonic()
    jobs.cancel(job.job_id, grace_s=0.5, wait=True)
    out = _wait(job.job_id, ("cancelled",), timeout=40)
    assert time.monotonic() - t0 < 10 and out.status == "cancelled"


def test_failing_job_records_its_traceback_and_can_be_resubmitted() -> None:
    spec = SelfTestSpec(steps=3, delay_s=0.01, fail_at=1)
    job = _wait(jobs.submit(spec).job_id, ("failed",))
    assert "ValueError" in job.traceback and "fail_at" not in job.message and "step 1" in job.message
    assert "Traceback" in jobs.read_log(job)
    again = jobs.submit(spec)
    assert again.job_id != job.job_id  # a failed run is retried, not returned


def test_killed_worker_shows_as_stale() -> None:
    job = jobs.submit(SelfTestSpec(steps=100, delay_s=0.2, tag="kill"))
    running = _wait(job.job_id, ("running",))
    os.killpg(running.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while jobs.pid_alive(running.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.job_id in jobs.refresh()
    stale = jobs.get_job(job.job_id)
    assert stale.status == "stale" and "gone" in stale.message
    assert store.get_run(job.run_id)["status"] == "stale"


def test_silent_worker_is_stale_after_the_heartbeat_window() -> None:
    store.upsert_run("selftest-x", "selftest", "{}", "running")
    store.insert_job("j-silent", {"run_id": "selftest-x", "kind": "selftest", "status": "running",
                                  "pid": os.getpid(), "created": 0.0, "heartbeat": time.time() - 1000})
    assert jobs.refresh() == ["j-silent"]


def test_missing_module_fails_that_job_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import kinds as job_kinds

    kind = job_kinds.JobKind("nowhere", SelfTestSpec, "backend.not_written_yet:run", "backend.runs.persist:persist_selftest",
                             "test only", uses_torch=False)
    with pytest.raises(JobError, match="not_written_yet"):
        kind.resolve()
    with pytest.raises(JobError, match="No job"):
        jobs.get_job("no-such-job")


def test_cli_lists_and_cancels_jobs(capsys: pytest.CaptureFixture) -> None:
    from backend.__main__ import main

    assert main(["jobs"]) == 0 and "no jobs yet" in capsys.readouterr().out
    job = jobs.submit(SelfTestSpec(steps=100, delay_s=0.1, tag="cli"))
    _wait(job.job_id, ("running",))
    assert main(["jobs"]) == 0 and job.job_id in capsys.readouterr().out
    assert main(["cancel", job.job_id, "--grace", "10"]) == 0
    assert _wait(job.job_id, ("cancelled",), timeout=40).status == "cancelled"
    assert main(["cancel", "no-such-job"]) == 2  # a clear one-line error, no traceback
    assert "No job" in capsys.readouterr().err


def test_the_same_spec_submitted_from_two_processes_at_once_runs_once(fresh_cache: Path) -> None:
    code = ("import sys, time; from backend.runs import jobs; from backend.specs import SelfTestSpec\n"
            "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
            "print(jobs.submit(SelfTestSpec(steps=30, delay_s=0.1, tag='race')).job_id, flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    start = str(time.time() + 3.0)  # both start submitting at the same moment, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", code, start], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1, outs
    run_id = SelfTestSpec(steps=30, delay_s=0.1, tag="race").run_id()
    assert len(store.list_jobs(run_id=run_id)) == 1  # one worker
    job = _wait(ids.pop(), ("done", "failed"))
    assert job.status == "done", jobs.read_log(job)


def _write_csv(root: Path, report: str) -> None:
    import pandas as pd

    from tests.helpers.fixtures_data import write_image

    for i in range(6):
        write_image(root / f"img/{i}.png", seed=i)
    pd.DataFrame([{"image_path": f"img/{i}.png", "patient_id": f"P{i // 2}", "report": f"{report} {i // 2}."}
                  for i in range(6)]).to_csv(root / "pairs.csv", index=False)


def _submit_and_work(spec: object) -> jobs.Job:
    """Submit `spec` and, when a worker is due, run it here in this process."""
    job = jobs.submit(spec)
    if job.status == "queued":
        assert worker.run_worker(job.job_id) == 0, jobs.read_log(job)
    return jobs.get_job(job.job_id)


def test_resubmitting_a_file_based_spec_recomputes_only_when_the_data_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers.tiny_models import register_tiny_models

    register_tiny_models()
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: None)  # the worker runs here, in-process
    data = tmp_path / "data"
    _write_csv(data, "Small effusion")
    spec = EmbedSpec(source=SourceSpec(name="csv", root=str(data)), model="tiny-random", split="all", batch_size=8)

    first = _submit_and_work(spec)
    run = store.get_run(spec.run_id())
    assert first.status == "done" and run["status"] == "done"
    inputs = run["summary"]["inputs"]
    assert inputs["data_hash"] and inputs["n_pairs"] == 6
    same = _submit_and_work(spec)  # the data did not change: the finished run is reused
    assert same.job_id != first.job_id and same.status == "done" and "unchanged" in same.message
    assert store.get_run(spec.run_id())["finished"] == run["finished"]
    _write_csv(data, "No effusion")  # the user edits the report text
    changed = _submit_and_work(spec)
    rerun = store.get_run(spec.run_id())
    assert changed.status == "done" and "unchanged" not in changed.message
    assert rerun["summary"]["inputs"]["data_hash"] != inputs["data_hash"] and rerun["finished"] > run["finished"]
    assert rerun["artifacts"]["embeddings"] != run["artifacts"]["embeddings"]
    selftest = SelfTestSpec(steps=1, delay_s=0.0, tag="no-files")  # no file-based source: no worker on resubmit
    assert data_inputs(selftest) is None and file_sources(spec) == [spec.source]


def test_a_local_checkpoint_overwritten_in_place_is_recomputed_not_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One identity for "the same inputs": a `local:` checkpoint overwritten under the same name changes the run's
    weights identity, so resubmitting recomputes (as the command line, whose embedding key holds the weights,
    does); unchanged weights reuse the finished run."""
    import torch

    from backend.models.openclip import build_architecture

    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: None)  # the worker runs here
    ckpt = tmp_path / "model.pt"

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        torch.save(build_architecture("cxr-demo-tiny")[0].state_dict(), ckpt)

    save(0)
    spec = EmbedSpec(source=SourceSpec(options={"n_patients": 6, "seed": 1, "image_size": 64}),
                     model=f"local:{ckpt}#cxr-demo-tiny", split="all", batch_size=8)

    first = _submit_and_work(spec)
    run = store.get_run(spec.run_id())
    weights = run["summary"]["inputs"]["weights"]
    assert first.status == "done" and list(weights) == [spec.model] and weights[spec.model]
    same = _submit_and_work(spec)
    assert same.status == "done" and "unchanged" in same.message
    save(1)  # overwritten in place, same name
    changed = _submit_and_work(spec)
    rerun = store.get_run(spec.run_id())
    assert changed.status == "done" and "unchanged" not in changed.message
    assert rerun["summary"]["inputs"]["weights"][spec.model] != weights[spec.model]
    assert rerun["artifacts"]["embeddings"] != run["artifacts"]["embeddings"]


def _hold_db(seconds: float) -> subprocess.Popen:
    """Another process (like a DuckDB shell) holding the results database for `seconds`."""
    from backend import settings

    # The job's worker writes its heartbeat and progress: the holder retries while a write holds the file.
    code = ("import duckdb, sys, time\nend = time.time() + 60\nwhile True:\n    try:\n"
            "        c = duckdb.connect(sys.argv[1]); break\n    except duckdb.IOException:\n"
            "        if time.time() > end: raise\n        time.sleep(0.05)\n"
            "print('held', flush=True); time.sleep(float(sys.argv[2])); c.close()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(settings.db_path()), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_job_keeps_computing_while_another_process_holds_the_database() -> None:
    spec = SelfTestSpec(steps=12, delay_s=0.5, tag="held")
    job = jobs.submit(spec)
    _wait(job.job_id, ("running",))
    holder = _hold_db(store.LOCK_TIMEOUT_S + 4)  # longer than any one write waits
    holder.wait(timeout=60)
    done = _wait(job.job_id, ("done", "failed", "stale"), timeout=90)
    assert done.status == "done", (done.message, jobs.read_log(done))
    assert store.get_run(spec.run_id())["summary"] == {"steps": 12, "tag": "held"}
    assert "waiting and retrying" in jobs.read_log(done) or "not recorded" in jobs.read_log(done)


def test_a_result_that_cannot_be_written_is_kept_and_imported_later(fresh_cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: None)
    spec = SelfTestSpec(steps=2, delay_s=0.0, tag="pending")
    job = jobs.submit(spec)
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.3)
    monkeypatch.setattr(worker, "RESULT_WRITE_TIMEOUT_S", 1.0)
    holder = _hold_db(30)
    try:
        worker._save_result({"job_id": job.job_id, "run_id": job.run_id, "kind": "selftest", "spec": spec.to_json(),
                           "result": {"steps": 2, "tag": "pending"}, "device": "cpu", "inputs": None}, spec)
        kept = fresh_cache / "jobs" / f"{job.job_id}.pending.pkl"
        assert kept.is_file()
        with pytest.raises(store.DatabaseBusy):
            jobs.refresh()  # still held: the file stays for the next try
        assert kept.is_file()
    finally:
        holder.kill()
        holder.wait()
    assert jobs.refresh() == []  # imported first, so the job is done rather than stale
    assert not kept.exists()
    back = jobs.get_job(job.job_id)
    assert back.status == "done" and "imported" in back.message
    assert store.get_run(spec.run_id())["summary"] == {"steps": 2, "tag": "pending"}


def test_a_finished_job_shows_a_full_bar_when_its_last_progress_write_was_skipped() -> None:
    """Seen in CI: a selftest of 150 steps finished as "done 149" (its last throttled progress write never landed)."""
    store.insert_job("j-149", {"run_id": "selftest-149", "kind": "selftest", "status": "running", "done": 149,
                               "total": 150, "message": "step 149"})
    store.complete_job("j-149", "done")
    job = jobs.get_job("j-149")
    assert (job.status, job.done, job.total, job.message) == ("done", 150, 150, "done") and job.finished


def test_a_throttled_progress_message_reaches_the_store_with_the_next_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A phase that announces itself right after another progress call (inside the throttle interval) and then
    computes for long without another call must still show its own message, not the previous one; once the work
    has ended, nothing overwrites the job's final message."""
    import threading

    monkeypatch.setattr(worker, "PROGRESS_INTERVAL_S", 3600.0)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.05)
    store.upsert_run("selftest-msg", "selftest", "{}", "running")
    store.insert_job("j-msg", {"run_id": "selftest-msg", "kind": "selftest", "status": "running", "message": "running"})
    unwritten, stop = worker._Unwritten(), threading.Event()
    progress = worker._progress_writer("j-msg", unwritten)
    progress(1, 10, "embedding the train split")
    progress(2, 10, "training the heads at epsilon 1")  # throttled: kept for the heartbeat
    assert store.get_job("j-msg")["message"] == "embedding the train split"
    beat = threading.Thread(target=worker._heartbeat, args=("j-msg", stop, unwritten), daemon=True)
    beat.start()
    try:
        deadline = time.monotonic() + 20
        while store.get_job("j-msg")["message"] != "training the heads at epsilon 1" and time.monotonic() < deadline:
            time.sleep(0.05)
        row = store.get_job("j-msg")
        assert row["message"] == "training the heads at epsilon 1" and row["done"] == 2
        progress(3, 10, "late progress")  # throttled, then the work ends (failed)
        unwritten.close()
        store.update_job("j-msg", status="failed", message="ValueError: boom")
        time.sleep(0.5)  # several heartbeats
        assert store.get_job("j-msg")["message"] == "ValueError: boom"
    finally:
        stop.set()
        beat.join(5)


def test_the_first_progress_message_is_written_on_a_machine_booted_moments_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monotonic clock of a new container or VM starts near 0: the first progress call must still reach the
    store at once (a throttle that measured from 0 held it back for the whole first interval after boot)."""
    import itertools

    ticks = itertools.count()
    monkeypatch.setattr(worker, "PROGRESS_INTERVAL_S", 3600.0)
    monkeypatch.setattr(worker.time, "monotonic", lambda: 60.0 + next(ticks) * 1e-3)  # booted a minute ago
    store.upsert_run("selftest-boot", "selftest", "{}", "running")
    store.insert_job("j-boot", {"run_id": "selftest-boot", "kind": "selftest", "status": "running", "message": ""})
    progress = worker._progress_writer("j-boot", worker._Unwritten())
    progress(1, 10, "embedding the test split")
    row = store.get_job("j-boot")
    assert row["message"] == "embedding the test split" and row["done"] == 1
    progress(2, 10, "still embedding")  # inside the interval: throttled
    assert store.get_job("j-boot")["done"] == 1


# ---------------------------------------------------------------- one job per GPU (fake GPU indices on CPUs)


def _gpu_jobs(monkeypatch: pytest.MonkeyPatch, devices: str, gate: Path, *specs: SelfTestSpec) -> list[jobs.Job]:
    """Submit selftest-gpu jobs on fake GPUs; each holds its GPU until the test creates gate/<its tag>."""
    gate.mkdir(exist_ok=True)
    monkeypatch.setenv("CXR_JOB_DEVICES", devices)
    monkeypatch.setenv("CXR_SELFTEST_GATE", str(gate))
    return [jobs.submit(spec, kind="selftest-gpu") for spec in specs]


def test_job_devices_come_from_the_env_or_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_JOB_DEVICES", " 2, 3,2 ")
    assert gpu_queue.job_devices() == ["2", "3"]
    monkeypatch.setenv("CXR_JOB_DEVICES", "none")
    assert gpu_queue.job_devices() == []
    monkeypatch.delenv("CXR_JOB_DEVICES")
    monkeypatch.setattr(gpu_queue, "_gpu_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_queue.job_devices() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,-1,0")  # CUDA stops at an invalid entry
    assert gpu_queue.job_devices() == ["3", "1"]
    monkeypatch.setattr(gpu_queue, "_gpu_count", lambda: 0)  # a CPU machine: no queue, whatever the env says
    assert gpu_queue.job_devices() == []


def test_one_job_per_gpu_the_third_waits_in_line_and_starts_when_a_gpu_frees(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from backend.__main__ import main

    gate = tmp_path / "gate"
    specs = [SelfTestSpec(steps=2, delay_s=0.05, tag=f"gpu{i}") for i in range(3)]
    first, second, third = _gpu_jobs(monkeypatch, "0,1", gate, *specs)
    assert {first.device, second.device} == {"cuda:0", "cuda:1"} and first.pid and second.pid
    assert third.status == "queued" and third.waiting and not third.pid and "1 of 1 in line" in third.message
    assert main(["jobs"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(third.job_id))
    assert "queued" in listed and "1 of 1 in line" in listed
    torch_free = jobs.submit(SelfTestSpec(steps=1, delay_s=0.0, tag="no-gpu"))  # never queued
    assert torch_free.pid and not torch_free.waiting
    _wait(second.job_id, ("running",))
    (gate / "gpu0").touch()  # the first job finishes; its worker (no refresh() here) starts the third on its GPU
    assert _wait(first.job_id, ("done", "failed")).status == "done"
    started = _wait(third.job_id, ("running", "done", "failed"))
    assert started.device.startswith(first.device) and jobs.get_job(second.job_id).status == "running"
    seen_overlap = []
    (gate / "gpu1").touch()
    (gate / "gpu2").touch()
    deadline = time.monotonic() + 60
    while any(jobs.get_job(j.job_id).active for j in (second, third)) and time.monotonic() < deadline:
        held = [j.gpu for j in map(jobs.get_job, (first.job_id, second.job_id, third.job_id)) if j.gpu]
        seen_overlap += [held] if len(held) != len(set(held)) else []
        time.sleep(0.05)
    assert not seen_overlap  # never two jobs on one GPU
    done = [jobs.get_job(j.job_id) for j in (first, second, third)]
    assert [j.status for j in done] == ["done"] * 3, [jobs.read_log(j) for j in done]
    assert done[2].device == done[0].device and done[2].started >= done[0].finished
    for job, spec in zip(done, specs, strict=True):  # each worker saw only its own GPU
        assert store.get_run(spec.run_id())["summary"]["visible_devices"] == job.device.removeprefix("cuda:")
        assert store.get_run(spec.run_id())["device"] == job.device


def test_a_killed_worker_frees_its_gpu_and_a_waiting_job_can_be_cancelled(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    specs = (SelfTestSpec(steps=2, delay_s=0.1, tag="held"), SelfTestSpec(steps=2, delay_s=0.1, tag="next"),
             SelfTestSpec(steps=2, delay_s=0.1, tag="dropped"))
    gate = tmp_path / "gate"
    held, nxt, dropped = _gpu_jobs(monkeypatch, "7", gate, *specs)  # "held" never passes its gate
    (gate / "next").touch()
    running = _wait(held.job_id, ("running",))
    assert running.device == "cuda:7" and nxt.waiting and dropped.waiting and "2 of 2" in dropped.message
    assert jobs.cancel(dropped.job_id).status == "cancelled"  # at once: it has no worker
    assert store.get_run(dropped.run_id)["status"] == "cancelled"
    assert jobs.refresh() == [] and "1 of 1 in line" in jobs.get_job(nxt.job_id).message  # places rewritten
    os.killpg(running.pid, signal.SIGKILL)  # kill -9: the worker cannot start the next job itself
    deadline = time.monotonic() + 10
    while jobs.pid_alive(running.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.refresh() == [held.job_id]  # the poll marks it stale and hands its GPU to the next in line
    assert jobs.get_job(held.job_id).status == "stale" and jobs.get_job(nxt.job_id).device == "cuda:7"
    done = _wait(nxt.job_id, ("done", "failed", "stale"))
    assert done.status == "done", jobs.read_log(done)
    assert store.get_run(specs[1].run_id())["summary"]["visible_devices"] == "7"
    assert jobs.get_job(dropped.job_id).pid is None  # the cancelled one never ran
