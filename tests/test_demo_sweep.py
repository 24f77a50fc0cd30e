"""The demo job stores each part of its sweep as soon as it is computed, and resumes an interrupted sweep
without recomputing what it stored (small fake embedding sets: no model, no training of an encoder)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from backend.runs import store
from backend.specs import AuditSpec, DemoSpec, DPSpec, EmbedSpec, SourceSpec, SweepSpec
from tests.test_dp import _fake_set

EPSILONS = (0.5, 2.0, 8.0, math.inf)
DATA = {"data_hash": "feedc0de01234567", "n_pairs": 120}


class Stop(Exception):
    pass


def _spec() -> DemoSpec:
    source = SourceSpec(options={"n_patients": 7})
    audit = AuditSpec(embed=EmbedSpec(source=source, model="fake", split="test"), n_bootstrap=5, ks=(1, 5))
    base = DPSpec(source=source, model="fake", audit=audit, epochs=1, batch_size=30, lr=0.01, delta=1e-4, init="random")
    return DemoSpec(audit=audit, sweep=SweepSpec(base=base, epsilons=EPSILONS))


@pytest.fixture()
def fake_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fresh store; the demo's audit already finished; prepare() returns fake embeddings. Returns the list of
    epsilons whose heads were trained (filled as the sweep runs)."""
    import backend.dp.sweep as dp  # where run_sweep looks up prepare and train_heads
    from backend.dp.eval import EvalInputs
    from tests.test_dp import np

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    spec = _spec()
    store.upsert_run(spec.audit.run_id(), "audit", spec.audit.to_json(), "running")
    store.finish_run(spec.audit.run_id(), summary={})
    prompts = np.random.default_rng(0).normal(size=(2, 14, 12)).astype(np.float32)
    train, test = _fake_set(), _fake_set(seed=1)
    test.info = {**(test.info or {}), "inputs": DATA}  # what embed_split records: the source's digest
    monkeypatch.setattr(dp, "prepare", lambda *a, **k: EvalInputs(train, test, None, prompts[0], prompts[1], 10.0))
    trained: list[float] = []
    real = dp.train_heads

    def counting(spec: DPSpec, *args: object, **kwargs: object) -> object:
        trained.append(spec.epsilon)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(dp, "train_heads", counting)
    return trained


def _stored(sweep_id: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    points = store.load_sweep_points(sweep_id)
    ids = [sweep_id, *points["run_id"]]
    metrics = store.load_metrics(ids).drop(columns="run_id").reset_index(drop=True)
    return points, metrics, store.load_probe(ids).drop(columns="run_id").sort_values(["variant", "method", "label"])


def _stop_at(n_points: int):
    """A progress callback that raises when the sweep announces its (n_points + 1)-th DP point."""
    seen = []

    def progress(done: int, total: int, message: str = "") -> None:
        if message.rpartition(": ")[2].startswith("epsilon"):  # "epsilon sweep: epsilon 0.5 (1 of 4)"
            seen.append(message)
            if len(seen) > n_points:
                raise Stop(message)

    return progress


def test_each_sweep_point_is_stored_as_soon_as_it_is_computed(fake_inputs: list[float]) -> None:
    from backend.runs.demo import run_demo

    spec = _spec()
    with pytest.raises(Stop):
        run_demo(spec, _stop_at(2))
    sweep_id = spec.sweep.run_id()
    assert store.get_run(sweep_id)["status"] == "running"  # not finished: two of four points
    points = store.load_sweep_points(sweep_id)
    # the heads retrained without DP (the reference of every DP point) come first, then the grid in order
    assert points["epsilon"].tolist() == [0.5, math.inf] and points["position"].tolist() == [0, 3]
    assert all(store.get_run(p)["status"] == "done" for p in points["run_id"])
    assert len(store.load_privacy(points["run_id"].tolist())) == 2 and len(store.load_metrics(points["run_id"].tolist()))
    own = store.load_metrics(sweep_id)
    assert set(own["variant"]) == {"original"} and len(own)  # the reference is stored before the first point
    assert set(store.load_probe(sweep_id)["variant"]) == {"original"}
    with pytest.raises(store.StoreError, match="finished"):  # a finished run never changes
        store.add_parts(spec.audit.run_id(), metrics={"x": own})


def test_an_interrupted_sweep_resumes_without_recomputing_stored_points(fake_inputs: list[float], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs.demo import run_demo

    spec = _spec()
    sweep_id = spec.sweep.run_id()
    with pytest.raises(Stop):
        run_demo(spec, _stop_at(2))
    store.set_run_status(sweep_id, "failed")  # what the worker records for a job that raised
    assert fake_inputs == [math.inf, 0.5]
    out = run_demo(spec)
    assert fake_inputs == [math.inf, 0.5, 2.0, 8.0]  # only the points that were not stored
    assert out["sweep_run"] == sweep_id and store.get_run(sweep_id)["status"] == "done"
    assert store.get_run(sweep_id)["summary"]["n_points"] == 4
    resumed = _stored(sweep_id)
    assert resumed[0]["epsilon"].tolist() == list(EPSILONS) and resumed[0]["position"].tolist() == [0, 1, 2, 3]
    # the same store as one uninterrupted run
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "again"))
    store.upsert_run(spec.audit.run_id(), "audit", spec.audit.to_json(), "running")
    store.finish_run(spec.audit.run_id(), summary={})
    run_demo(spec)
    once = _stored(sweep_id)
    for a, b in zip(resumed, once, strict=True):
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    run_demo(spec)  # a finished sweep is reused as it is
    assert fake_inputs == [math.inf, 0.5, 2.0, 8.0] * 2


def test_a_queued_sweep_job_resumes_per_stored_point_like_the_demo(fake_inputs: list[float]) -> None:
    """The "sweep" job kind (the Mitigation page's launch, a transfer sweep): stopped after two points and
    submitted again, it trains only the points it had not stored, then finishes the run with all four."""
    from backend.runs.kinds import get_job_kind

    kind = get_job_kind("sweep")
    sweep = _spec().sweep
    with pytest.raises(Stop):
        kind.resolve()(sweep, _stop_at(2))
    store.set_run_status(sweep.run_id(), "failed")  # what the worker records for a job that raised
    assert fake_inputs == [math.inf, 0.5]
    result = kind.resolve()(sweep, None)
    kind.resolve_persist()(sweep.run_id(), sweep, result, "cpu")
    assert fake_inputs == [math.inf, 0.5, 2.0, 8.0]  # only the points that were not stored
    run = store.get_run(sweep.run_id())
    assert run["status"] == "done" and run["summary"]["n_points"] == 4
    assert store.load_sweep_points(sweep.run_id())["epsilon"].tolist() == list(EPSILONS)


def test_the_sweep_and_each_point_record_the_data_they_were_computed_from(fake_inputs: list[float]) -> None:
    """Provenance: a sweep's points and the sweep itself name the data hash of their source (as audits do), both
    when stored part by part (the demo job) and all at once (persist_sweep)."""
    from backend.dp import run_sweep
    from backend.runs import persist
    from backend.runs.demo import run_demo

    spec = _spec()
    run_demo(spec)
    sweep_id = spec.sweep.run_id()
    points = store.load_sweep_points(sweep_id)["run_id"].tolist()
    assert len(points) == len(EPSILONS)
    for rid in [sweep_id, *points]:
        prov = store.get_provenance(rid)
        assert (prov["data_hash"], prov["n_pairs"]) == (DATA["data_hash"], DATA["n_pairs"]), rid
    other = SweepSpec(base=spec.sweep.base, epsilons=(1.0, math.inf))
    store.upsert_run(other.run_id(), "sweep", other.to_json(), "running")
    results = run_sweep(other)
    assert all(r.inputs == DATA for r in results) and results[0].to_dict()["inputs"] == DATA
    persist.persist_sweep(other.run_id(), other, results, "cpu")
    assert store.get_run(other.run_id())["summary"]["inputs"] == DATA


@pytest.mark.parametrize("n_points", [1, 3])
def test_the_pages_show_a_running_sweeps_stored_points(fake_inputs: list[float], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, n_points: int) -> None:
    from backend.runs.demo import run_demo
    from backend.views import catalog, mitigation
    from tests.test_pages import _open, _text

    spec = _spec()
    with pytest.raises(Stop):
        run_demo(spec, _stop_at(n_points))
    sweep_id = spec.sweep.run_id()
    assert catalog.latest("sweep", "synthetic", "fake") == sweep_id  # a running sweep with stored points
    assert mitigation.sweep_progress(sweep_id) == ("running", n_points, 4)
    view = mitigation.sweep_view(sweep_id)
    assert len(view.points) == n_points and len(view.original)
    for page in ("mitigation", "utility", "overview"):
        at = _open(page, tmp_path, monkeypatch, model="fake")
        assert not at.exception, page
    assert f"{n_points} of 4 points stored" in _text(_open("mitigation", tmp_path, monkeypatch, model="fake"))


def test_the_demo_bar_gives_each_part_its_measured_share(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar's shares are the parts' measured times for what is left to do (no training share when the
    weights are cached, none for stored parts), so that elapsed x (1 - f) / f estimates the time left from the start."""
    from backend.models.demo_config import DEFAULT_DEMO, demo_dir
    from backend.runs.demo import DEMO_TIMES_S, default_demo_spec, demo_plan

    spec = default_demo_spec()
    t = DEMO_TIMES_S
    n_results = len(spec.sweep.points()) + 1  # the grid and the original model's reference
    assert demo_plan(spec) == {"train": DEFAULT_DEMO.planned_steps() * t["step"] + DEFAULT_DEMO.max_pairs
                               * t["render_per_pair"], "audit": t["audit"], "sweep_prep": t["sweep_prep"],
                               "points": n_results * t["point"]}
    demo_dir(DEFAULT_DEMO).mkdir(parents=True)
    (demo_dir(DEFAULT_DEMO) / "weights.pt").write_bytes(b"cached")
    assert demo_plan(spec)["train"] == 0.0
    store.upsert_run(spec.audit.run_id(), "audit", spec.audit.to_json(), "running")
    store.finish_run(spec.audit.run_id(), summary={})
    assert demo_plan(spec) == {"train": 0.0, "audit": 0.0, "sweep_prep": t["sweep_prep"],
                               "points": n_results * t["point"]}


def test_runs_stored_from_other_demo_weights_are_computed_again(fresh_cache: Path) -> None:
    """The demo retrained under the same spec (e.g. a new training recipe): the audit and the sweep stored from the
    old weights (their recorded weights hash differs from the cached model's) are planned and computed again;
    with the same weights, or a run that recorded none, they are kept."""
    import json

    from backend.models.demo_config import DEFAULT_DEMO, demo_dir
    from backend.runs.demo import default_demo_spec, demo_plan, to_compute, trained_weights_hash

    spec = default_demo_spec()
    folder = demo_dir(DEFAULT_DEMO)
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"cached")
    (folder / "config.json").write_text(json.dumps({"training": {"weights_hash": "new"}}))
    assert trained_weights_hash(folder) == "new" and trained_weights_hash(fresh_cache) is None
    for run_id, kind in ((spec.audit.run_id(), "audit"), (spec.sweep.run_id(), "sweep")):
        store.upsert_run(run_id, kind, "{}", "running")
        store.finish_run(run_id, summary={"inputs": {"weights_hash": "old"}})
    assert to_compute(spec.audit.run_id(), "new") and to_compute(spec.sweep.run_id(), "new")
    assert not to_compute(spec.audit.run_id(), "old") and not to_compute(spec.audit.run_id(), None)
    plan = demo_plan(spec)
    assert plan["train"] == 0.0 and plan["audit"] > 0 and plan["points"] > 0
    (folder / "config.json").write_text(json.dumps({"training": {"weights_hash": "old"}}))
    assert demo_plan(spec) == {"train": 0.0, "audit": 0.0, "sweep_prep": 0.0, "points": 0.0}


def test_the_sweep_bar_gives_its_preparation_the_share_asked_for(fake_inputs: list[float]) -> None:
    from backend.dp import run_sweep

    seen: list[tuple[int, str]] = []
    run_sweep(_spec().sweep, lambda done, total, message="": seen.append((round(1000 * done / total), message)),
              prep_share=0.7)
    first = next(done for done, message in seen if message == "original model's heads")
    assert first == 700
    points = [done for done, message in seen if message.startswith("epsilon")]
    assert points == sorted(points) and points[0] > 700 and seen[-1][0] == 1000


def test_recompute_demo_is_a_command_whose_estimate_computes_nothing(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """The Overview's Recompute is `python -m backend recompute-demo`; --estimate prints the plan (the demo's run
    ids and each part's estimated seconds) and stores nothing."""
    import json

    from backend.__main__ import main
    from backend.runs.demo import default_demo_spec

    assert main(["recompute-demo", "--n-patients", "30", "--estimate"]) == 0
    plan = json.loads(capsys.readouterr().out)
    spec = default_demo_spec(30)
    assert plan["audit_run"] == spec.audit.run_id() and plan["sweep_run"] == spec.sweep.run_id()
    assert plan["estimated_seconds"]["audit"] > 0 and plan["estimated_seconds"]["points"] > 0
    assert store.get_run(spec.audit.run_id()) is None
