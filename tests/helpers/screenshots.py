"""Screenshots of a REAL demo run for the README (docs/screenshots/demo_*.png).

    python -m tests.helpers.screenshots CACHE_DIR [--n-patients N]
    python -m tests.helpers.screenshots EMPTY_DIR --first-start   # what a new user sees: the shipped snapshot

Runs the dashboard's one-button demo job in CACHE_DIR (the store, models and embeddings there are reused:
copy a trained demo model into CACHE_DIR/models to skip the training), waits for it with its progress
printed, then starts the app on that store and saves one screenshot per page from headless chromium.
Nothing here is made up: every number on the screenshots comes from the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tests.helpers.browser_kit import ARGS, CHROMIUM, REPO, no_errors, open_page, running_app, settle

OUT = REPO / "docs" / "screenshots"
PAGES = (("", "overview", "Verdict"), ("data", "data", "Dataset"), ("models_jobs", "models_jobs", "Train the ladder"),
         ("relinkage", "relinkage", "Lift table"), ("explorer", "explorer", "Rank of the true report"),
         ("mitigation", "mitigation", "Privacy budget"), ("utility", "utility", "Transfer"), ("report", "report", "Download the HTML audit report"))
PLOT, TABLE = ".js-plotly-plot .main-svg", "[data-testid='stDataFrame']"
DRAWN = {"relinkage": (PLOT,), "explorer": ("[data-testid='stImage'] img",), "mitigation": (PLOT,),
         "utility": (PLOT, TABLE)}  # what each page must have drawn before its screenshot


def run_demo(n_patients: int | None) -> None:
    from backend.runs import jobs
    from backend.runs.demo import default_demo_spec

    job = jobs.submit(default_demo_spec(n_patients))
    while job.active:
        print(f"\r{100 * job.fraction:5.1f}% {job.message[:90]:90s}", end="", flush=True)
        time.sleep(5)
        job = jobs.get_job(job.job_id)
    print(f"\ndemo job {job.job_id}: {job.status}")
    if job.status != "done":
        raise SystemExit(f"the demo job did not finish: {job.status}\n{job.traceback or ''}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--n-patients", type=int, default=None)
    ap.add_argument("--first-start", action="store_true",
                    help="no demo job: start the app on this (empty) cache with the shipped snapshot")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ["CXR_CACHE_DIR"] = str(args.cache.resolve())
    os.environ["CXR_DEMO_SNAPSHOT"] = "1"
    if not args.first_start:
        run_demo(args.n_patients)
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with running_app(args.cache.resolve()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1300})
        for path, name, wait_text in PAGES:
            page = open_page(context, f"{url}/{path}", wait_text)
            # a page's figures and tables come a second or two after its header (shown as grey skeletons until
            # then): wait for what the page must show, then until no skeleton is left
            for selector in DRAWN.get(name, ()):
                page.locator(selector).first.wait_for(timeout=60_000)
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=60_000)
            settle(page)
            no_errors(page)
            page.screenshot(path=str(OUT / f"demo_{name}.png"), full_page=True)
            print(f"saved {OUT / f'demo_{name}.png'}")
            page.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
