"""AppTest smoke tests: every page renders without an exception on an empty store and on a seeded one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers.seed import seed_store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["overview", "data", "models_jobs", "relinkage", "explorer", "mitigation", "utility", "report"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeded")
    old = os.environ.get("CXR_CACHE_DIR")
    seed_store(path)
    if old:
        os.environ["CXR_CACHE_DIR"] = old
    return path


def _open(page: str, cache: Path, monkeypatch: pytest.MonkeyPatch, model: str = "demo",
          source: str | None = None) -> AppTest:
    monkeypatch.setenv("CXR_CACHE_DIR", str(cache))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model"] = model  # (AppTest drops sidebar widgets on reruns under st.navigation)
    if source:
        at.session_state["dataset"] = source
    at.run()
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _button(at: AppTest, label: str) -> object:
    return next(b for b in at.button if b.label == label)


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption] + [m.value for m in at.info]
    parts += [m.value for m in at.warning] + [m.value for m in at.title] + [m.value for m in at.subheader]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", [p for p in PAGES if p != "data"])
def test_every_page_on_an_empty_store(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(page, tmp_path, monkeypatch)
    assert at.title, f"{page} shows no title"


def test_overview_on_an_empty_store_offers_one_demo_button(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("overview", tmp_path, monkeypatch)
    assert [b.label for b in at.button] == ["Run the demo audit"]
    assert "2606.02276" in _text(at)


def test_overview_headline_numbers(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("overview", seeded, monkeypatch)
    labels = [m.label for m in at.metric]
    assert any("N=100" in m for m in labels) and any("N=2,000" in m for m in labels)
    assert all(m.value != "n/a" for m in at.metric), [(m.label, m.value) for m in at.metric]
    assert all(m.help for m in at.metric)
    assert not at.button  # no demo button once results exist
    # no "strongest" card (the noisiest maximum of the curve); every DP card names its N and pool
    assert not any(m.label.startswith("Strongest") for m in at.metric) and "strongest re" not in _text(at)
    assert {"R@1 at N=100, random pool", "R@1 at N=1,000, random pool", "R@1 at N=2,000, random pool"} <= set(labels)
    assert all(len(label) <= 30 for label in labels), labels  # a card cuts longer labels
    # a CI chip carries no arrow (it would read as "increasing"); a change keeps its direction
    chips = [m for m in at.metric if m.proto.delta.startswith("95% CI")]
    assert chips and all(m.proto.direction == m.proto.MetricDirection.NONE for m in chips)
    from ui.markup import plain

    assert plain("for the retrained heads (the baseline of every number in this section)") in _text(at)
    assert plain("the study's real-data figures (arXiv 2606.02276, MIMIC-CXR) report about 15x at N=100") in _text(at)


def test_overview_recommendation_answers_the_reviewers_target(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.views import catalog, mitigation
    from backend.views.recommend import Target, recommend
    from ui import markup

    at = _open("overview", seeded, monkeypatch)
    assert "Recommendation: which ε meets your target?" in _text(at)
    # the seeded sweep is nominal and stored without per-query outcomes: nothing meets a certified, conservative target
    assert any(w.value.startswith("No point of this sweep meets it") for w in at.warning)
    at.checkbox(key="rec_certified").uncheck().run()
    at.checkbox(key="rec_conservative").uncheck().run()
    at.slider(key="rec_min_cut").set_value(30).run()
    assert not at.exception
    pts = mitigation.sweep_view(catalog.latest("sweep", "synthetic", "demo")).points
    want = recommend(pts, Target(min_cut=0.3, certified=False, conservative=False))
    shown = [str(w.value) for w in [*at.success, *at.warning]]
    assert markup.plain(want["sentence"]) in shown, shown


def test_relinkage_page_overlays_runs(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import store
    from backend.views import catalog

    at = _open("relinkage", seeded, monkeypatch)
    audits = list(catalog.audit_runs("synthetic")["run_id"])
    picker = at.multiselect(key="overlay_runs")
    assert sorted(picker.value) == sorted(audits)  # default: the newest audit of each model on this dataset
    table = at.dataframe[0].value
    assert {r.split(" · ")[0] for r in table["run"]} == {"demo", "openai-vit-b-16"} and (table["lift"] > 1).all()
    points = store.load_sweep_points(catalog.latest("sweep", "synthetic", "demo"))
    dp = points.sort_values("epsilon")["run_id"].iloc[0]
    picker.set_value([audits[0], dp]).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert any(dp in r and "nominal, per pair" in r for r in table["run"])
    lift = next(c for c in at.get("plotly_chart") if "Lift" in c.proto.spec)
    assert "nominal, per pair" in lift.proto.spec


def test_mitigation_slider_changes_the_numbers(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("mitigation", seeded, monkeypatch)
    first = [m.value for m in at.metric]
    assert "nominal" in _text(at) and "privacy unit: pair" in _text(at)
    options = list(at.select_slider(key="epsilon").options)  # every stored point named, in the slider's order
    assert len(options) >= 3 and f"ε = {' · '.join(options)}." in _text(at)
    at.select_slider(key="epsilon").set_value("8").run()
    assert not at.exception
    assert [m.value for m in at.metric] != first
    at.select_slider(key="epsilon").set_value("inf (no DP)").run()
    assert not at.exception


def test_explorer_shows_ranks_and_shared_words(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("explorer", seeded, monkeypatch)
    assert any("Rank of the true report" in m.label for m in at.metric)
    bodies = [el.proto.body for el in at.get("html")]  # the reports: st.html of escaped text
    assert len(bodies) >= 2
    # only distinctive shared words are marked: the seeded reports are built from a few phrases that most
    # reports share, so none of their words is rare enough (<= 5% of reports) to be marked
    assert not any("<mark>" in b for b in bodies)
    assert "distinctive words" in _text(at)
    assert len(at.get("image")) >= 1
    at.text_input[0].set_value("effusion").run()
    assert not at.exception


def test_utility_report_and_jobs_pages_on_seeded_store(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("utility", seeded, monkeypatch)
    assert len(at.dataframe) >= 2
    options = list(at.select_slider[0].options)  # the DP points, as the slider names them
    assert len(options) >= 2 and f"ε = {' · '.join(options)}." in _text(at)
    at = _open("report", seeded, monkeypatch)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download the HTML audit report", "Download all results of the audit (zip)",
                      "Download all results of the epsilon sweep (zip)"]
    at = _open("models_jobs", seeded, monkeypatch)
    assert "failed" in _text(at) and any("Traceback" in e.label for e in at.expander)


def test_hub_model_offline_shows_a_clear_message(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = _open("models_jobs", seeded, monkeypatch, model="biomedclip")
    assert any("hub" in w.value for w in at.warning)


@pytest.mark.slow
def test_data_page_on_the_synthetic_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("data", tmp_path, monkeypatch)
    assert "SYNTHETIC" in _text(at)
    assert "can match on: labels, view, site, sex, age band, year." in _text(at)  # the side information it gives
    assert not _cut_off_columns(at)  # the sources' descriptions wrap


@pytest.mark.slow
def test_real_demo_pipeline_feeds_every_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo job's code (train a tiny demo, audit, sweep) writes what the pages read (in-process)."""
    import math

    from backend.runs import store
    from backend.runs.demo import run_demo
    from backend.specs import AuditSpec, DemoSpec, DPSpec, EmbedSpec, SourceSpec, SweepSpec
    from tests.helpers.tiny_models import TINY_SOURCE_OPTIONS, register_tiny_models

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    register_tiny_models()
    source = SourceSpec(options={**TINY_SOURCE_OPTIONS, "n_patients": 40})
    audit = AuditSpec(embed=EmbedSpec(source=source, model="demo-tiny", split="test"), n_bootstrap=10)
    spec = DemoSpec(audit=audit, sweep=SweepSpec(base=DPSpec(source=source, model="demo-tiny", epochs=1, batch_size=32,
                                                             audit=audit), epsilons=(2.0, math.inf)))
    seen: list[tuple[int, int]] = []
    out = run_demo(spec, lambda done, total, message="": seen.append((done, total)))
    assert store.get_run(out["audit_run"])["status"] == "done" and out["sweep_run"]
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:], strict=False)), "the demo's bar only moves forward"
    assert seen[-1][0] == seen[-1][1]
    assert len(store.load_sweep_points(out["sweep_run"])) == 2
    for page in ("overview", "relinkage", "mitigation", "utility", "explorer"):
        at = _open(page, tmp_path, monkeypatch, model="demo-tiny")
        assert not at.exception, page
    at = _open("overview", tmp_path, monkeypatch, model="demo-tiny")
    assert [m.value for m in at.metric][1] != "n/a"  # the largest N (the tiny split has N < 100)


def test_demo_button_launches_the_demo_job_with_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import jobs

    monkeypatch.setenv("CXR_DEMO_N_PATIENTS", "20")
    at = _open("overview", tmp_path, monkeypatch)
    at.button[0].click().run()
    assert not at.exception
    job_id = at.session_state["demo_job"]
    try:
        job = jobs.get_job(job_id)
        assert job.kind == "demo" and job.active and job.pid
        assert at.get("progress"), "the overview shows the job's progress"
        assert json.loads(job.spec)["audit"]["embed"]["source"]["options"] == {"n_patients": 20}
    finally:
        jobs.cancel(job_id, grace_s=0.5, wait=True)
    assert jobs.get_job(job_id).status == "cancelled"


@pytest.mark.parametrize("page", [p for p in PAGES if p != "data"])  # data: no buttons (and a slow source load)
def test_every_button_on_a_seeded_store(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Press each button of the page (a fresh session per button); no exception, no job fails. Jobs run in-process:
    an embed job returns a real EmbeddingSet, as for an already-cached split ("Embed only" used to fail in
    persist_embed: 'The truth value of a DataFrame is ambiguous'); other kinds stay queued."""
    import numpy as np
    import pandas as pd

    from backend.embed.files import EmbeddingSet
    from backend.runs import gpu_queue, jobs, worker

    def cached_split(spec: object, progress: object = None, **_: object) -> EmbeddingSet:
        meta = pd.DataFrame({"pair_id": ["a", "b"], "study_id": ["s1", "s2"]})
        return EmbeddingSet(meta=meta, image_emb=np.eye(2, dtype=np.float32), report_emb=np.eye(2, dtype=np.float32),
                            image_feat=None, text_feat=None, heads={}, path=tmp_path / "embeddings" / "k")

    def spawn_in_process(job_id: str, log_path: Path) -> None:
        if jobs.get_job(job_id).kind == "embed":
            worker.run_worker(job_id)

    monkeypatch.setattr("backend.embed.compute.embed_split", cached_split)
    monkeypatch.setattr(gpu_queue, "spawn_worker", spawn_in_process)
    monkeypatch.setattr(worker.signal, "signal", lambda *a: None)  # the worker's SIGTERM handler: main thread only
    old = os.environ.get("CXR_CACHE_DIR")
    seed_store(tmp_path)
    if old:
        os.environ["CXR_CACHE_DIR"] = old
    n_buttons = len(_open(page, tmp_path, monkeypatch).button)
    for i in range(n_buttons):
        at = _open(page, tmp_path, monkeypatch)
        label = at.button[i].label
        at.button[i].click().run()
        assert not at.exception, (page, label, [e.value for e in at.exception])
        failed = [(j.kind, j.message) for j in jobs.list_jobs() if j.status == "failed" and "seeded" not in j.message]
        assert not failed, (page, label, failed)
        assert not [e for e in at.error if "seeded" not in e.value], (page, label, [e.value for e in at.error])


# ---------------------------------------------------------------- dataset text is never markup

_MARKUP = ("**bold**", "**id**", "![](", "](http", "<img", "<script", "$x$", "`tick`", ":red[", ":material/")


def _live_markup(text: str) -> list[str]:
    """The markup in Markdown `text` that is not backslash-escaped (nor broken by ui.markup.plain's word joiner)."""
    import re

    bare = re.sub(r"\\.", "", text)
    return [m for m in _MARKUP if m in bare]


def _markdown_strings(at: AppTest) -> list[str]:
    """Every string that Streamlit renders as Markdown on this page (bodies, captions, alerts, labels)."""
    out = [str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success", "title",
                                     "subheader") for e in getattr(at, kind)]
    out += [m.label for m in at.metric] + [w.label for w in at.selectbox]
    out += [img.caption for el in at.get("imgs") for img in el.proto.imgs]
    return out


@pytest.fixture()
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A seeded store whose reports and ids hold markup. Its run ids are those of `seeded` (same specs), so the
    caches that ui keeps by run id are cleared."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    path = tmp_path_factory.mktemp("crafted")
    old = os.environ.get("CXR_CACHE_DIR")
    seed_store(path, crafted=True)
    if old:
        os.environ["CXR_CACHE_DIR"] = old
    yield path
    st.cache_data.clear()
    st.cache_resource.clear()


def test_plain_escapes_every_markup() -> None:
    from tests.helpers.seed import CRAFTED_ID, CRAFTED_REPORT
    from ui import markup

    for crafted_text in (CRAFTED_REPORT, CRAFTED_ID):
        assert _live_markup(crafted_text) and not _live_markup(markup.plain(crafted_text))
    text = markup.plain(":material/home: http://h.org www.h.org a@b.c")
    assert text.count("\u2060") == 4  # icon and autolinks broken (they survive backslash escapes)
    assert markup.plain("p001") == "p001" and markup.plain("Pleural effusion small") == "Pleural effusion small"
    assert "<" not in markup.highlighted("<b>x</b> effusion", {"effusion"}).replace("<mark>", "").replace("</mark>", "")


def test_explorer_shows_crafted_reports_and_ids_as_text(crafted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import html

    at = _open("explorer", crafted, monkeypatch)
    for text in _markdown_strings(at):
        assert not _live_markup(text), text
    bodies = [el.proto.body for el in at.get("html")]
    assert bodies and all("<img" not in b and "<script" not in b and "<a " not in b for b in bodies)
    shown = [b.replace("<mark>", "").replace("</mark>", "") for b in bodies]  # the shared words are marked
    assert any(html.escape("<img src=http://10.255.255.1/x.png> <script>alert(1)</script>") in b for b in shown)


@pytest.mark.slow
def test_data_page_shows_crafted_pairs_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.sources
    from tests.helpers.seed import CRAFTED_ID, CRAFTED_REPORT

    real = backend.sources.load_source

    def crafted_source(name: str, **kw: object) -> object:
        data = real(name, n_patients=12)
        for col in ("pair_id", "study_id", "patient_id"):
            data.pairs[col] = data.pairs[col].astype(str) + CRAFTED_ID
        data.pairs["report"] = data.pairs["report"] + " " + CRAFTED_REPORT
        return data

    monkeypatch.setattr(backend.sources, "load_source", crafted_source)
    at = _open("data", tmp_path, monkeypatch)
    for text in _markdown_strings(at):
        assert not _live_markup(text), text
    bodies = [el.proto.body for el in at.get("html")]
    assert len(bodies) >= 1 and all("<img" not in b and "<script" not in b for b in bodies)


@pytest.mark.parametrize("source", ["csv", "openi", "mimic-cxr", "chexpert-plus"])
def test_sources_that_need_a_folder_ask_for_one(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Launching checks the folder by loading the source; its SourceError (the CLI's message) is shown, nothing is
    submitted; a loadable folder goes into the spec."""
    import pandas as pd

    from backend.errors import SourceError
    from backend.runs import gpu_queue, jobs
    from backend.sources import load_source
    from tests.helpers.fixtures_data import write_image
    from ui import markup

    for var in ("CXR_OPENI_ROOT", "CXR_MIMIC_ROOT", "CXR_CHEXPERT_PLUS_ROOT"):
        monkeypatch.delenv(var, raising=False)
    spawned: list[str] = []
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: spawned.append(job_id))
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(SourceError) as cli_error:
        load_source(source, root=missing)
    at = _open("models_jobs", tmp_path, monkeypatch, source=source)
    at.text_input(key=f"root-{source}").set_value(missing).run()
    _button(at, "Embed only").click().run()
    assert not at.exception and not spawned
    assert [e.value for e in at.error] == [markup.plain(str(cli_error.value))]
    if source != "csv":
        return
    data = tmp_path / "csv-data"
    for k in range(4):
        write_image(data / f"img/{k}.png", seed=k)
    pd.DataFrame([{"image_path": f"img/{k}.png", "report": f"Report {k}.", "patient_id": f"P{k // 2}"}
                  for k in range(4)]).to_csv(data / "pairs.csv", index=False)
    at.text_input(key="root-csv").set_value(str(data)).run()
    next(s for s in at.selectbox if s.label == "Split").set_value("all")  # 2 patients: no test split of their own
    _button(at, "Embed only").click().run()
    assert not at.exception and not at.error and len(spawned) == 1, [e.value for e in at.error]
    assert jobs.get_job(spawned[0]).spec.count(str(data)) == 1


def test_the_launch_form_audits_a_pool_matched_on_side_information(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch form adds one side-information pool (the CLI's --match sex+age_band); a dataset that
    does not give a chosen attribute gets a named error and nothing is submitted."""
    import pandas as pd

    from backend.runs import gpu_queue, jobs
    from backend.specs import AuditSpec, spec_from_json
    from tests.helpers.fixtures_data import write_image

    spawned: list[str] = []
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: spawned.append(job_id))
    at = _open("models_jobs", tmp_path, monkeypatch, source="synthetic")
    side = next(m for m in at.multiselect if m.label.startswith("Also a pool matched"))
    side.set_value(["age_band", "sex"])  # inside the form: sent with its submit button
    _button(at, "Embed and audit").click().run()
    assert not at.exception and not at.error and len(spawned) == 1
    spec = spec_from_json(jobs.get_job(spawned[0]).spec)
    assert isinstance(spec, AuditSpec) and spec.match == ("sex+age_band",)  # MATCH_ATTRIBUTES order, one pool

    data = tmp_path / "csv-data"  # no sex column
    for k in range(4):
        write_image(data / f"img/{k}.png", seed=k)
    pd.DataFrame([{"image_path": f"img/{k}.png", "report": f"Report {k}.", "patient_id": f"P{k // 2}"}
                  for k in range(4)]).to_csv(data / "pairs.csv", index=False)
    at = _open("models_jobs", tmp_path, monkeypatch, source="csv")
    at.text_input(key="root-csv").set_value(str(data)).run()
    next(m for m in at.multiselect if m.label.startswith("Also a pool matched")).set_value(["sex"])
    _button(at, "Embed and audit").click().run()
    assert not at.exception and len(spawned) == 1
    assert len(at.error) == 1 and "sex is known for 0 of 4 pairs" in at.error[0].value


# ---------------------------------------------------------------- progress never goes stale


def _running_job(spec: object, *, status: str = "running", done: int = 3, total: int = 10,
                 message: str = "training the heads at ε=1") -> str:
    """A job row as a live worker in another session would leave it (this process's pid, a fresh heartbeat)."""
    import time

    from backend.runs import store

    job_id = f"{spec.run_id()}-other"  # type: ignore[attr-defined]
    store.upsert_run(spec.run_id(), spec.run_id().split("-")[0], spec.to_json(), status)  # type: ignore[attr-defined]
    store.insert_job(job_id, {"run_id": spec.run_id(), "kind": spec.run_id().split("-")[0],  # type: ignore[attr-defined]
                              "spec": spec.to_json(), "status": status, "done": done, "total": total,  # type: ignore[attr-defined]
                              "message": message, "pid": os.getpid(), "created": time.time(), "started": time.time(),
                              "heartbeat": time.time(), "log_path": "", "cancel_requested": False})
    return job_id


def _progress_texts(at: AppTest) -> list[str]:
    return [el.proto.text.replace("\\", "") for el in at.get("progress")]


def _shown(at: AppTest) -> str:
    """The page's Markdown text as the reader sees it (ui.markup.plain's backslash escapes removed)."""
    import re

    return re.sub(r"\\(.)", r"\1", _text(at))


def test_a_second_session_shows_a_running_sweep_as_running(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep (or the demo job's sweep) queued or running in another session is shown with its progress, never as
    "No epsilon sweep yet"."""
    from backend.runs.demo import default_demo_spec
    from backend.specs import DPSpec, SourceSpec, SweepSpec

    _running_job(SweepSpec(base=DPSpec(source=SourceSpec(name="synthetic"), model="demo")))
    for page in ("mitigation", "utility"):
        at = _open(page, tmp_path, monkeypatch)
        text = _shown(at)
        assert "Epsilon sweep running (30%) for demo on synthetic" in text and "No finished epsilon sweep" not in text
        assert any("training the heads at ε=1" in t for t in _progress_texts(at)), _progress_texts(at)
    other = tmp_path / "demo"
    monkeypatch.setenv("CXR_CACHE_DIR", str(other))
    _running_job(default_demo_spec(), done=1, total=4, message="training demo model")
    at = _open("mitigation", other, monkeypatch)
    assert "Epsilon sweep running (25%) for demo on synthetic as part of the demo job" in _shown(at)
    assert "No finished epsilon sweep" not in _shown(at)
    # the case: the demo's audit is stored, its sweep still running; the Overview said "No epsilon sweep yet"
    from backend.runs import store

    third = tmp_path / "audit-done"
    seed_store(third)
    monkeypatch.setenv("CXR_CACHE_DIR", str(third))
    with store.connect() as con:
        con.execute("DELETE FROM runs WHERE kind = 'sweep'")
    _running_job(default_demo_spec(), done=3, total=4, message="sweep point 2 of 7")
    at = _open("overview", third, monkeypatch)
    assert "Epsilon sweep running (75%) for demo on synthetic as part of the demo job" in _shown(at)
    assert "No epsilon sweep yet" not in _shown(at)


def test_a_launched_sweep_shows_its_latest_status_not_queued(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import gpu_queue, store

    # the worker "runs" in the store below
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: None)
    at = _open("mitigation", seeded, monkeypatch)
    _button(at, "Launch sweep").click().run()
    assert not at.exception
    job_id = at.session_state["sweep_job"]
    try:
        assert not [i.value for i in at.info if "queued" in i.value]  # no alert that would outlive the status
        store.update_job(job_id, status="running", pid=os.getpid(), heartbeat=__import__("time").time(), done=2,
                         total=7, message="sweep point 2 of 7")
        at.run()
        assert not at.exception
        assert "running: sweep point 2 of 7" in _progress_texts(at), _progress_texts(at)
        assert not any("queued" in t for t in _progress_texts(at) + [i.value for i in at.info])
        assert "Epsilon sweep running (29%)" in _shown(at)
    finally:
        store.update_job(job_id, status="cancelled")


def test_utility_launches_a_sweep_with_a_transfer_target(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Utility page submits the shown sweep's settings plus a transfer target through the job queue, with a time
    estimate; bad target options are refused with the source's own message before any job starts."""
    from backend.runs import gpu_queue, jobs
    from backend.specs import SourceSpec, spec_from_json
    from tests.helpers.seed import EPSILONS, SOURCE

    spawned: list[str] = []
    monkeypatch.setattr(gpu_queue, "spawn_worker", lambda job_id, log_path: spawned.append(job_id))
    at = _open("utility", seeded, monkeypatch)
    assert "about 2-18 min. 8 evaluations (7 ε points" in _shown(at)  # and the original model; one target
    at.text_input(key="transfer-options-synthetic").set_value("colour=red").run()
    _button(at, "Launch sweep with transfer").click().run()
    assert not at.exception and not spawned and any("colour" in e.value for e in at.error)
    at.text_input(key="transfer-options-synthetic").set_value("sites=B").run()
    _button(at, "Launch sweep with transfer").click().run()
    assert not at.exception and len(spawned) == 1, [e.value for e in at.error]
    try:
        spec = spec_from_json(jobs.get_job(spawned[0]).spec)
        assert spec.base.transfer == (SourceSpec(name="synthetic", options={"sites": "B"}),)
        assert spec.base.source == SOURCE and spec.epsilons == EPSILONS  # the shown sweep's settings
        assert at.get("progress")  # its progress is shown here
    finally:
        jobs.cancel(spawned[0], grace_s=0.1, wait=True)


# ---------------------------------------------------------------- text not cut off


def _cut_off_columns(at: AppTest) -> list[tuple[str, int]]:
    """Table columns whose text is long (> 40 characters) in a table whose rows are too short to wrap it: st.dataframe
    wraps cell text only when row_height > 4rem (64 px); otherwise the cell is cut off at the column's edge."""
    out = []
    for el in at.dataframe:
        for col in el.value.columns:
            longest = el.value[col].astype(str).str.len().max() if len(el.value) else 0
            if longest > 40 and not el.proto.row_height > 64:
                out.append((str(col), int(longest)))
    return out


def test_tables_wrap_long_text_and_labels_fit(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("models_jobs", seeded, monkeypatch)
    assert not _cut_off_columns(at)
    assert any(len(str(v)) > 40 for v in at.dataframe[0].value["weights"])  # there is long text to wrap
    at = _open("relinkage", seeded, monkeypatch)
    pills = {p.label: p for p in at.pills}  # pools and levels as pills: whole names, never chips cut off
    assert set(pills) == {"Pools", "Level"} and not [m for m in at.multiselect if m.label in pills]
    assert pills["Pools"].options == ["pathology-matched", "random pool"]
    pills["Level"].set_value(["study", "patient"]).run()
    assert not at.exception and set(at.dataframe[0].value["level"]) == {"study", "patient"}
    at = _open("mitigation", seeded, monkeypatch)
    assert all(len(m.label) <= 30 for m in at.metric), [m.label for m in at.metric]  # a card cuts longer labels


def test_relinkage_shows_side_information_pools_by_default(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with a pool matched on side information (the demo's sex+age band) draws it without a click."""
    from backend.specs import pool_name
    from tests.helpers.seed import add_side_information

    add_side_information(seed_store(tmp_path))
    at = _open("relinkage", tmp_path, monkeypatch)
    at.multiselect(key="overlay_runs").set_value(["audit-sideinfo"]).run()
    pools = next(p for p in at.pills if p.label == "Pools")
    assert pools.options == ["pathology-matched", "matched on sex, age band", "random pool"]
    assert sorted(pools.value) == ["hard", "matched:sex+age_band", "random"]  # every pool drawn, none clicked
    assert not at.exception and "matched on sex, age band" in {pool_name(p) for p in at.dataframe[0].value["pool"]}


def test_models_and_jobs_shows_each_runs_provenance_and_exports_it(seeded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import provenance, store

    at = _open("models_jobs", seeded, monkeypatch)
    table = next(d.value for d in at.dataframe if "code version" in d.value.columns)
    done = store.list_runs(status="done")
    assert sorted(table["run"]) == sorted(done["run_id"])
    commit = provenance.code_version()[:12]
    assert (table["code version"].str.startswith(commit) | (commit == "unknown")).all()
    started = pd.to_datetime(table["started (UTC)"]).astype("int64") // 10**9
    finished = pd.to_datetime(table["finished (UTC)"]).astype("int64") // 10**9
    assert (started <= finished).all()
    assert at.selectbox(key="export_run").value == table["run"].iloc[0]
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download all results of this run (zip)" in labels


def test_overview_verdict_names_side_information_members_and_caveats(
        tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.views import catalog, report, verdict
    from tests.helpers.seed import add_side_information

    add_side_information(seed_store(tmp_path))
    at = _open("overview", tmp_path, monkeypatch)
    v = verdict.verdict("audit-sideinfo", catalog.latest("sweep", "synthetic", "demo"))
    lines = {x["key"]: x for x in v["lines"]}
    metrics = {m.label: m for m in at.metric}
    side = lines["matched:sex+age_band_100"]
    assert metrics["Side info: N=100"].value == f"{side['lift']:.1f}x"
    # what the attacker gains, beside the lift: the absolute Recall@1 and the pool it is read in
    assert metrics["Side info: N=100"].proto.delta == (f"R@1 {side['random']['recall']:.3f}→{side['recall']:.3f} "
                                                       f"in {side['effective_n']:,.0f}")
    gap = lines["members_100"]
    assert metrics["Members gap, N=100"].value == f"{gap['delta']:+.4f}"
    assert f"{gap['delta_low']:+.4f}" in metrics["Members gap, N=100"].proto.delta
    caveats = next(e for e in at.expander if e.label.startswith("Privacy caveats"))
    shown = "\n".join(m.value for m in caveats.markdown)
    assert len(report.CAVEATS) == shown.count("\n- ") + 1 and "Only the projection heads are private" in shown


@pytest.mark.parametrize("damage", ["truncated database", "cache under a file"])
def test_a_damaged_store_or_unusable_cache_is_named_on_the_page_not_a_traceback(
        damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sidebar and the snapshot banner read the store before the page does: a damaged database or a cache
    that cannot be written gives the named message (what happened, what to do) and no exception box."""
    from backend import settings
    from backend.runs import store

    cache = tmp_path / "cache"
    if damage == "truncated database":
        monkeypatch.setenv("CXR_CACHE_DIR", str(cache))
        for i in range(300):
            store.upsert_run(f"r{i}", "selftest", "{}" + "x" * 5000, "done")
        with open(settings.db_path(), "r+b") as fh:
            fh.truncate(1024 * 1024)
        expected = "damaged or unreadable"
    else:
        (tmp_path / "a-file").write_text("x")
        cache = tmp_path / "a-file" / "cache"
        expected = "cannot be created or written"
    monkeypatch.setenv("CXR_CACHE_DIR", str(cache))
    monkeypatch.setenv("CXR_DEMO_SNAPSHOT", "1")
    import streamlit as st

    st.cache_data.clear()  # a fresh server: nothing cached from the tests before
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model"] = "demo"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [str(e.value) for e in [*at.error, *at.warning]]
    assert any(expected in text for text in shown), shown


def test_a_database_under_100_studies_gets_one_card_per_pool_not_two(fresh_cache: Path) -> None:
    """With every N below 100 the N=100 point is the largest N: the Overview shows it once per pool."""
    from types import SimpleNamespace

    from backend.runs import persist
    from backend.specs import AuditSpec, EmbedSpec
    from tests.helpers.seed import SOURCE, relink_rows

    spec = AuditSpec(embed=EmbedSpec(source=SOURCE, model="demo"))
    rows = relink_rows(0, 0.2)
    rows = rows[rows["n"] <= 40]
    persist.persist_audit(spec.run_id(), spec, SimpleNamespace(rows=rows, per_query=None, embedding_path=None,
                                                               summary={}), "cpu")
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model"] = "demo"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    cards = [label for label in labels if label.startswith("N=")]
    n_max = int(rows["n"].max())
    assert sorted(cards) == [f"N={n_max}, pathology-matched", f"N={n_max}, random pool"], labels


def test_the_launch_form_checks_model_bootstrap_pools_and_split_before_any_job(tmp_path: Path) -> None:
    """What the form can know before a job starts is refused with the command line's message: a missing or
    unnamed checkpoint, too few resamples, a year pool on MIMIC, an empty split of a csv data set."""
    import pandas as pd

    from backend.errors import RelinkError
    from backend.specs import AuditSpec, EmbedSpec, SourceSpec
    from backend.views import launch
    from tests.helpers.fixtures_data import write_image

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    data = tmp_path / "csv"
    for i in range(4):
        write_image(data / f"img/{i}.png", seed=i)
    pd.DataFrame([{"image_path": f"img/{i}.png", "report": f"Report {i}.", "patient_id": f"P{i}", "split": "train"}
                  for i in range(4)]).to_csv(data / "pairs.csv", index=False)
    csv = SourceSpec(name="csv", root=str(data))
    cases = [
        (EmbedSpec(model=f"local:{tmp_path / 'missing.pt'}#ViT-B-32"), "does not exist"),
        (EmbedSpec(model=f"local:{ckpt}"), "Name the architecture"),
        (EmbedSpec(model="no-such-model"), "no-such-model"),
        (AuditSpec(embed=EmbedSpec(model="demo"), n_bootstrap=10), "too few for a 95% CI"),
        (AuditSpec(embed=EmbedSpec(source=SourceSpec(name="mimic-cxr", root=str(tmp_path)), model="demo"),
                   match=("sex+year",)), "shifts each patient's dates"),
        (AuditSpec(embed=EmbedSpec(source=csv, model="demo", split="test")), "no pairs in the test split"),
    ]
    for spec, message in cases:
        with pytest.raises(RelinkError, match=message):
            launch.check_launch(spec)
    launch.check_launch(AuditSpec(embed=EmbedSpec(source=csv, model="demo", split="train")))
    launch.check_launch(EmbedSpec(model=f"local:{ckpt}#ViT-B-32"))


def test_the_data_page_takes_the_folder_of_a_folder_based_source(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A csv data set is shown once its folder is named on the page (it used to say 'pass --root', which the page
    does not offer)."""
    import pandas as pd

    from tests.helpers.fixtures_data import write_image

    data = tmp_path / "csv"
    for i in range(6):
        write_image(data / f"img/{i}.png", seed=i)
    pd.DataFrame([{"image_path": f"img/{i}.png", "report": f"Report {i}.", "patient_id": f"P{i}"}
                  for i in range(6)]).to_csv(data / "pairs.csv", index=False)
    monkeypatch.delenv("CXR_CSV_ROOT", raising=False)
    at = _open("data", tmp_path / "cache", monkeypatch, source="csv")
    assert "Name the folder of the csv dataset" in _text(at) and not at.metric
    at.text_input(key="root-csv").set_value(str(data)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric}["pairs"] == "6"
