"""Jobs on the pages: submitting a spec (after checking that its dataset loads), one job's row with its progress,
the job list, and the live notes that follow a job computing a page's run (from any session or the command line)
and rerun the page when its result is stored."""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from backend.errors import RelinkError
from backend.runs import jobs
from backend.specs import SourceSpec
from backend.views import catalog, launch, status
from ui.markup import plain, show_error


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


def source_loads(spec: SourceSpec, match: tuple[str, ...] = ()) -> bool:
    """Check a dataset before a launch (launch.check_source: it loads, and gives every attribute the pools of
    `match` are matched on); on failure show the error and return False."""
    return _checked(lambda: launch.check_source(spec, match), f"Checking the {spec.name} dataset ...")


def launch_ok(spec: Any) -> bool:
    """Check a job's spec before it is submitted (launch.check_launch: the model, the bootstrap, the pools, the data
    set and its split); on failure show the error and return False."""
    return _checked(lambda: launch.check_launch(spec), "Checking the model and the dataset ...")


def _checked(check: Any, what: str) -> bool:
    try:
        with st.spinner(what):
            check()
    except RelinkError as exc:
        show_error(exc)
        return False
    return True


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
