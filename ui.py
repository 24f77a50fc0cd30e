"""Shared Streamlit widgets and cached loaders for the pages (the only module besides app.py and app_pages/
that imports streamlit). Data comes from backend.views; no SQL, no ML here.

Caching: a finished run never changes (DESIGN.md section 5), so loaders keyed by a finished run id use
st.cache_data without expiry; lists of runs and jobs change and are read fresh (or with a short ttl).
No database connection is ever cached.
"""

from __future__ import annotations

import html
import math
import re
import string
import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from backend.errors import RelinkError
from backend.runs import jobs
from backend.runs.snapshot import import_snapshot
from backend.specs import SourceSpec
from backend.views import catalog, compare, data, explorer, launch, mitigation, status
from backend.views import verdict as verdict_view
from backend.views.definitions import DEFINITIONS

DEFAULT_SOURCE = catalog.DEFAULT_SOURCE


# ---------------------------------------------------------------- cached loaders


@st.cache_data(ttl=2, show_spinner=False)
def source_names() -> list[str]:
    return catalog.source_names()


@st.cache_data(ttl=2, show_spinner=False)
def model_names() -> list[str]:
    return catalog.model_names()


@st.cache_data(ttl=2, show_spinner=False)
def headline(source: str, model: str) -> dict[str, Any]:
    return verdict_view.headline(source, model)


@st.cache_data(ttl=2, show_spinner=False)
def verdict(audit_id: str, sweep_id: str | None) -> dict[str, Any]:
    return verdict_view.verdict(audit_id, sweep_id)


@st.cache_data(ttl=2, show_spinner=False)
def audit_runs(source: str) -> pd.DataFrame:
    return catalog.audit_runs(source)


@st.cache_data(ttl=2, show_spinner=False)
def latest(kind: str, source: str, model: str | None) -> str | None:
    return catalog.latest(kind, source, model)


@st.cache_data(show_spinner=False, max_entries=64)
def relink_rows(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Finished runs only: cached for good."""
    return catalog.relink_rows(list(run_ids), variant="model")


@st.cache_data(ttl=2, show_spinner=False)
def overlay_runs() -> pd.DataFrame:
    return compare.overlay_runs()


@st.cache_data(show_spinner=False, max_entries=64)
def run_rows(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Finished runs only: cached for good."""
    return compare.run_rows(list(run_ids))


@st.cache_data(ttl=2, show_spinner=False)
def provenance_table() -> pd.DataFrame:
    return status.provenance_table()


@st.cache_data(ttl=2, show_spinner=False, max_entries=16)
def model_comparison(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """The side-by-side table of audited models (a probe may be stored after the audit: short ttl)."""
    return compare.model_comparison(list(run_ids))


def comparison_table(run_ids: tuple[str, ...]) -> None:
    """Per audited model: linear-probe and zero-shot macro AUROC and lift at N=100 and the largest N, with CIs."""
    table = model_comparison(run_ids)
    if table.empty:
        return
    ci = "95% CI from a bootstrap over patients."
    st.dataframe(compare.comparison_display(table), hide_index=True, row_height=WRAP_ROW_HEIGHT, column_config={
        "Run": st.column_config.TextColumn(width="large", help="model · data · for a DP run its ε, guarantee and "
                                                               "privacy unit · run id"),
        "Linear-probe AUROC [95% CI]": st.column_config.TextColumn(help=DEFINITIONS["auroc"] + " " + ci),
        "Zero-shot AUROC [95% CI]": st.column_config.TextColumn(
            help="Zero-shot: per finding, cosine with a positive minus a negative prompt. " + ci),
        "Lift at N=100 [95% CI]": st.column_config.TextColumn(
            help=DEFINITIONS["lift"] + " Random pool, study level, Recall@1; at N=100 or the largest N "
                 "below it. " + ci),
        "Lift at the largest N [95% CI]": st.column_config.TextColumn(
            help=DEFINITIONS["lift"] + " At the largest pool the split allows (the whole database). " + ci),
        "AUROCs from": st.column_config.TextColumn(
            help="A probe run (the model ladder's, or a probe job), else the original-model reference of an epsilon "
                 "sweep on the same data; 'not measured' when neither is stored."),
    })


def sweep_view(sweep_id: str) -> mitigation.SweepView:
    """A sweep, read from the store once per process (again when a running sweep stored another point); the
    epsilon slider only re-renders."""
    return _sweep_view(sweep_id, mitigation.sweep_progress(sweep_id))


@st.cache_data(show_spinner=False, max_entries=16)
def _sweep_view(sweep_id: str, version: tuple[str, int, int]) -> mitigation.SweepView:
    return mitigation.sweep_view(sweep_id)


@st.cache_data(show_spinner=False, max_entries=16)
def members_table(sweep_id: str) -> tuple[pd.DataFrame, dict]:
    """Members against non-members stored with a finished sweep (empty when it did not measure them)."""
    return mitigation.members_table(sweep_id)


@st.cache_data(show_spinner=False, max_entries=16)
def sweep_spec(sweep_id: str | None) -> Any:
    """The SweepSpec of a finished sweep (its settings, for a new launch), or None."""
    return launch.sweep_spec(sweep_id)


def mitigation_figures(sweep_id: str, audit_id: str | None) -> dict[str, Any]:
    """Epsilon label -> the figure of recall curves beside the frontier, built once per sweep (and each time a
    running sweep stored another point) so that the slider only swaps prebuilt figures (building one costs
    ~0.1 s of plotly validation). Read-only."""
    return _mitigation_figures(sweep_id, audit_id, mitigation.sweep_progress(sweep_id))


@st.cache_resource(show_spinner="Preparing the sweep's figures ...", max_entries=8)
def _mitigation_figures(sweep_id: str, audit_id: str | None, version: tuple[str, int, int]) -> dict[str, Any]:
    from backend.views import figures

    view = _sweep_view(sweep_id, version)
    pts = view.points
    original = relink_rows((audit_id,)) if audit_id else None
    ref = mitigation.reference_point(pts)
    ref_run = str(ref["run_id"]) if ref is not None else None
    out = {}
    for p in pts.itertuples():
        label = mitigation.epsilon_label(p.epsilon)
        curves = mitigation.mitigation_curves(view, p.run_id, ref_run, original, mitigation.series_label(p.epsilon))
        out[label] = figures.mitigation_view(curves, pts, float(p.epsilon), title=f"Recall@1 at ε={label}")
    return out


@st.cache_resource(show_spinner="Loading the run's embeddings ...", max_entries=4)
def pair_set(run_id: str) -> explorer.PairSet:
    return explorer.load_pairs(run_id)


@st.cache_resource(show_spinner="Loading the source to read images ...", max_entries=2)
def run_source(run_id: str) -> Any:
    return explorer.load_run_source(run_id)


@st.cache_resource(show_spinner="Loading the dataset ...", max_entries=3)
def source_data(name: str) -> Any:
    """A loaded source (pair table + image reader) with default options; read-only, so shared."""
    return data.load(name)


def source_loads(name: str, root: str | None, match: tuple[str, ...] = ()) -> bool:
    """Check the source in `root` before a launch (launch.check_source: it loads, and gives every attribute the
    pools of `match` are matched on); on failure show the error and return False."""
    try:
        with st.spinner(f"Checking the {name} dataset ..."):
            launch.check_source(SourceSpec(name=name, root=root), match)
    except RelinkError as exc:
        show_error(exc)
        return False
    return True


def source_tables(name: str) -> tuple[pd.DataFrame, dict[str, int]]:
    loaded = source_data(name)
    return loaded.pairs, dict(loaded.stats)


def run_source_image(name: str, image_path: str) -> Any:
    return explorer.read_image(image_path, source_data(name))


@st.cache_data(show_spinner=False)
def device_summary() -> str:
    return launch.device_summary()


def pair_image(run_id: str, image_path: str) -> Any:
    """An explorer image: a file on disk directly, else through the run's (cached) source."""
    if Path(image_path).is_file():
        return explorer.read_image(image_path)
    return explorer.read_image(image_path, run_source(run_id))


# ---------------------------------------------------------------- navigation, sidebar and small widgets

# No icons: ":material/...:" icons make every page load fetch a font from a CDN (tests/test_browser.py fails on
# any request to a host other than the app's), and emoji render as empty boxes where no emoji font is installed.
PAGE_SPECS: tuple[tuple[str, str], ...] = (
    ("app_pages/overview.py", "Overview"),
    ("app_pages/data.py", "Data"),
    ("app_pages/models_jobs.py", "Models and jobs"),
    ("app_pages/relinkage.py", "Re-linkage"),
    ("app_pages/explorer.py", "Pair explorer"),
    ("app_pages/mitigation.py", "Mitigation"),
    ("app_pages/utility.py", "Utility and transfer"),
    ("app_pages/report.py", "Report"),
)


def pages() -> list[Any]:
    """The dashboard's pages, registered explicitly (the first is the default)."""
    return [st.Page(path, title=title, default=i == 0) for i, (path, title) in enumerate(PAGE_SPECS)]


def selection() -> tuple[str, str]:
    """(dataset, model) chosen in app.py's sidebar, for a page. Pages live in app_pages/ (not pages/, which
    would switch Streamlit to its old auto-discovered multipage mode), so every run goes through app.py."""
    return st.session_state["selection"]




def sidebar() -> tuple[str, str]:
    """The shared dataset and model selectors (kept in session state across pages)."""
    with st.sidebar:
        st.markdown("### Audit target")
        sources = source_names()
        source = st.selectbox("Dataset", sources, key="dataset",
                              help="The de-identified image-report pairs under audit. 'synthetic' is generated here "
                                   "(no patient data).")
        models = model_names()
        model = st.selectbox("Model", models, key="model",
                             help="; ".join(f"{k}: {v}" for k, v in catalog.known_models().items()))
        st.caption(f"Jobs run on: {device_summary()}")
    return source, model


# st.dataframe wraps the text of a cell only when its rows are taller than 4rem (64 px): then long descriptions show
# in full on up to three lines instead of being cut off at the column's edge.
WRAP_ROW_HEIGHT = 72


def metric(label: str, value: float | None, definition: str, fmt: str = "{:.1f}x", delta: str | None = None,
           delta_color: str = "inverse") -> None:
    """A number with its definition on hover; 'n/a' when absent."""
    shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
    st.metric(label, shown, delta=delta, help=definition, delta_color=delta_color)


def slider_points(labels: list[str], note: str) -> None:
    """Name every point of an epsilon slider under it (the slider shows only the chosen one; labels are numbers
    made by mitigation.epsilon_label, never dataset text)."""
    st.caption(f"Drag along the stored points, left to right: ε = {' · '.join(labels)}. {note}")


def guarantee_badge(guarantee: str, privacy_unit: str, objective: str) -> None:
    color = {"certified": "green", "nominal": "orange"}.get(guarantee, "gray")
    st.markdown(f":{color}-badge[{plain(guarantee or 'no DP')}] :blue-badge[privacy unit: {plain(privacy_unit or '?')}] "
                f":gray-badge[objective: {plain(objective or '?')}]",
                help=DEFINITIONS.get(guarantee, "Epsilon = inf: heads retrained without DP (the baseline)."))


# ---------------------------------------------------------------- data text is never markup
# Reports, ids and messages come from datasets and jobs: they are shown as text, never interpreted as Markdown,
# LaTeX, colour directives, icons or HTML (a report holding ![](http://host/x.png) must not make the browser
# fetch anything). Two ways: ui.plain() for the parameters that Streamlit renders as Markdown (captions, alerts,
# image captions, labels), ui.text_block() (st.html of escaped text) for report bodies.

_MD_PUNCT = re.compile(f"([{re.escape(string.punctuation)}])")
_WJ = "\u2060"  # word joiner: invisible, breaks the patterns that Markdown plugins find in plain text nodes


def plain(value: object) -> str:
    """`value` as Markdown that renders as exactly its text: every ASCII punctuation backslash-escaped (no
    emphasis, links, images, code spans, LaTeX, :color[...] directives, HTML), and an invisible word joiner
    where a pattern in a plain text node would still become markup (:material/icon:, bare URLs, emails)."""
    text = _MD_PUNCT.sub(r"\\\1", str(value))
    for pattern, joined in _AUTOMARKUP:
        text = pattern.sub(joined, text)
    return text


_AUTOMARKUP = tuple((re.compile(p, re.IGNORECASE), j) for p, j in (
    (r"(\\:)(material)", r"\1" + _WJ + r"\2"),  # :material/icon: (escaped colons still reach the icon plugin)
    (r"(\\:)(\\/\\/)", r"\1" + _WJ + r"\2"),  # scheme://host autolinks
    (r"(www)(\\\.)", r"\1" + _WJ + r"\2"),  # www.host autolinks
    (r"(\\@)", _WJ + r"\1"),  # user@host autolinks
))


def highlighted(text: str, words: set[str]) -> str:
    """HTML with the shared words marked; every segment escaped (for st.html, which runs no Markdown)."""
    return "".join(f"<mark>{html.escape(seg)}</mark>" if hit else html.escape(seg)
                   for seg, hit in explorer.highlight_segments(text, words))


def text_block(text: str, words: set[str] | None = None, *, container: Any = None) -> None:
    """Data text (a report) shown as text, line breaks kept, `words` marked; never Markdown or live HTML."""
    body = highlighted(str(text), words or set())
    (container or st).html(f'<div class="cxr-text" style="white-space:pre-wrap;overflow-wrap:anywhere">{body}</div>')


def show_error(exc: Exception) -> None:
    st.error(plain(str(exc) if isinstance(exc, RelinkError) else f"{type(exc).__name__}: {exc}"))


def submit(spec: Any) -> jobs.Job | None:
    """Submit a spec; show what happened (finished earlier / running / started)."""
    try:
        job = jobs.submit(spec)
    except RelinkError as exc:
        show_error(exc)
        return None
    if job.status == "done":
        st.success(f"Already computed: run {plain(job.run_id)} (nothing recomputed).")
        st.cache_data.clear()
    else:  # a toast, not an alert: the job's status changes, and its live progress is shown by the page
        st.toast(f"Job {plain(job.job_id)} submitted; its progress is shown on this page and on Models and jobs.")
    return job


def job_row(job: jobs.Job, *, show_cancel: bool = True) -> None:
    """One job: status, progress bar, device, cancel, log and traceback."""
    cols = st.columns([3, 5, 1.2, 1.4], vertical_alignment="center")
    cols[0].markdown(f"**{plain(job.kind)}** {plain(job.job_id or job.run_id)}  \n"
                     f"{plain(job.status)} · {plain(job.device or 'device ?')}")
    text = f"{job.done}/{job.total} {job.message}" if job.total else job.message
    cols[1].progress(job.fraction, text=plain(text[:120]))
    if job.pid:
        cols[2].caption(f"pid {job.pid}")
    cols[1].caption(status.job_times(job.started or job.created, job.finished if not job.active else None,
                                     job.fraction, time.time())["text"])
    if show_cancel and job.active and job.job_id and cols[3].button("Cancel", key=f"cancel-{job.job_id}", width="stretch"):
        jobs.cancel(job.job_id)
        st.toast(f"Cancel requested for {job.job_id}")
    if job.status in ("failed", "stale"):
        st.error(plain(job.message or job.status))
    if job.traceback:
        with st.expander("Traceback"):
            st.code(job.traceback, language="text")
    log_text = jobs.read_log(job, max_chars=8000)
    if log_text:
        with st.expander("Log"):
            st.code(log_text, language="text")


def any_active_jobs() -> bool:
    try:
        return any(job.active for job in jobs.list_jobs(limit=20))
    except RelinkError:
        return False


def active_job_id(kind: str) -> str | None:
    """The newest queued or running job of a kind (launched from any session or the command line)."""
    try:
        return next((j.job_id for j in jobs.list_jobs(limit=20) if j.kind == kind and j.active), None)
    except RelinkError:
        return None


def job_list(limit: int = 20) -> list[jobs.Job]:
    try:
        recent = jobs.list_jobs(limit=limit)
    except RelinkError as exc:
        show_error(exc)
        return []
    if not recent:
        st.caption("No jobs yet.")
    for job in recent:
        job_row(job)
    return recent


def pending_note(kind: str, source: str | None, model: str | None, shown_run: str | None) -> str | None:
    """When a job (of any session, or the command line) is computing a run of `kind` for this dataset and model,
    say so with its live progress, and rerun the page once when a new run is stored or the job ends. Returns
    the id of that queued or running job, else None. `shown_run`: the run id the page shows now (None: none)."""
    try:
        running = status.running_jobs(kind, source, model)
    except RelinkError:
        return None
    if not running:
        return None
    job_id = running[0].job_id

    @st.fragment(run_every=2.0)
    def _note() -> None:
        try:
            job, latest_run = jobs.get_job(job_id), catalog.latest(kind, source, model)
        except RelinkError:
            return
        if job.active:
            st.info(plain(status.pending_text(kind, job, source, model)))
            st.progress(job.fraction, text=plain(f"{job.status}: {job.message}"[:150]))
            st.caption(status.job_times(job.started or job.created, None, job.fraction, time.time())["text"])
        flag = f"pending-{job_id}-{latest_run}-{job.active}"
        if (latest_run != shown_run or not job.active) and not st.session_state.get(flag):
            st.session_state[flag] = True
            st.cache_data.clear()
            st.rerun(scope="app")

    _note()
    return job_id


def poll_seconds() -> float:
    """How often a job list refreshes itself: every 2 s while a job is active, else every 10 s (so that a job
    started from another session or the command line appears without a click)."""
    return 2.0 if any_active_jobs() else 10.0


def _stored_runs(source: str, model: str) -> tuple[str | None, str | None]:
    return catalog.latest("audit", source, model), catalog.latest("sweep", source, model)


def watch_job(job_id: str, stored_for: tuple[str, str] | None = None) -> None:
    """A progress bar that refreshes itself every second while the job is active; the page reruns when the job
    is done and, with `stored_for` = (dataset, model), as soon as a new audit or sweep of theirs is stored."""
    try:
        shown = _stored_runs(*stored_for) if stored_for else None
    except RelinkError:
        shown = None

    @st.fragment(run_every=1.0)
    def _watch() -> None:
        job = jobs.get_job(job_id)  # read fresh every second: the shown status and message are the latest
        st.progress(job.fraction, text=plain(f"{job.status}: {job.message}"[:150]))
        st.caption(status.job_times(job.started or job.created, job.finished if not job.active else None,
                                    job.fraction, time.time())["text"])
        if job.status == "failed":
            st.error(f"The job failed: {plain(job.message)}")
            with st.expander("Traceback"):
                st.code(job.traceback, language="text")
        elif job.status == "done" and not st.session_state.get(f"reloaded-{job_id}"):
            st.session_state[f"reloaded-{job_id}"] = True
            st.cache_data.clear()
            st.rerun(scope="app")
        if shown is not None and job.active:
            try:
                now = _stored_runs(*stored_for)
            except RelinkError:
                return
            if now != shown and not st.session_state.get(f"stored-{job_id}-{now}"):
                st.session_state[f"stored-{job_id}-{now}"] = True
                st.cache_data.clear()
                st.rerun(scope="app")

    _watch()


# ---------------------------------------------------------------- the shipped demo snapshot


@st.cache_resource(show_spinner="Loading the precomputed demo results ...")
def ensure_snapshot() -> list[str]:
    """Import the shipped demo snapshot into the store once per server process (a no-op when it is there)."""
    try:
        return import_snapshot()
    except RelinkError as exc:  # e.g. the store is held by another process: the pages say so themselves
        st.warning(f"The precomputed demo results could not be loaded: {exc}")
        return []


@st.cache_data(ttl=2, show_spinner=False)
def snapshot_note(source: str, model: str) -> dict[str, Any] | None:
    """The snapshot provenance of what the pages show for (source, model), or None for computed runs."""
    return status.snapshot_note(catalog.latest("audit", source, model))


def snapshot_banner(source: str, model: str) -> None:
    """On every page: say that the numbers shown are the shipped, precomputed demo results."""
    note = snapshot_note(source, model)
    if note:
        st.info(f"Precomputed snapshot - recompute on this machine (Overview). These demo results were computed "
                f"by this project's own code ({note.get('code_version', '?')[:12]}, {note.get('made', '?')[:10]}) "
                "and shipped with it; a run on this machine replaces them on every page.")
