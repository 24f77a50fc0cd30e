"""Job commands: `worker JOB_ID` (what the dashboard launches), `jobs` (list), `cancel JOB_ID`."""

from __future__ import annotations

import argparse
import datetime as dt

from backend import settings

# backend.runs.jobs and backend.runs.worker (and with them DuckDB) are imported inside each command: the
# headless audit/dp/sweep commands, which register beside these, need neither.


def _worker(args: argparse.Namespace) -> int:
    from backend.runs import worker

    return worker.run_worker(args.job_id)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _list(args: argparse.Namespace) -> int:
    with settings.reading_only():  # listing writes nothing: a read-only copy of the cache will do
        return _list_reading(args)


def _list_reading(args: argparse.Namespace) -> int:
    from backend.runs import jobs
    rows = jobs.list_jobs(limit=args.limit)
    if not rows:
        print("no jobs yet")
        return 0
    print(f"{'job':<32} {'status':<10} {'progress':>9} {'device':<12} {'created':<19} message")
    for job in rows:
        pct = f"{100 * job.fraction:5.1f}%"
        print(f"{job.job_id:<32} {job.status:<10} {pct:>9} {job.device[:12]:<12} {_when(job.created):<19} "
              f"{job.message}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from backend.runs import jobs

    job = jobs.cancel(args.job_id, grace_s=args.grace, wait=True)
    job = jobs.get_job(job.job_id)
    print(f"{job.job_id}: {job.status}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one stored job (launched by the dashboard; detached)")
    p.add_argument("job_id")
    p.set_defaults(func=_worker)
    p = sub.add_parser("jobs", help="list recent jobs with status and progress")
    p.add_argument("--limit", type=int, default=30)
    p.set_defaults(func=_list)
    p = sub.add_parser("cancel", help="cancel a running job (terminated after a grace period)")
    p.add_argument("job_id")
    p.add_argument("--grace", type=float, default=5.0, help="seconds to wait before SIGTERM")
    p.set_defaults(func=_cancel)
