"""The main flow in a real browser (Debian chromium through playwright) on a seeded store: the recall
curves, the epsilon slider (its update time is measured), the pair explorer, the report download, two
sessions at once and a job running while pages are browsed. Saves screenshots to docs/screenshots/."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.browser_kit import ARGS, CHROMIUM, REPO, no_errors, open_page, seeded_app, settle, slide_epsilon

SHOTS = REPO / "docs" / "screenshots"

pytestmark = [pytest.mark.browser, pytest.mark.slow]
playwright_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.is_file():
    pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    cache = tmp_path_factory.mktemp("browser-cache")
    with seeded_app(cache) as url:
        yield url, cache


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def _shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    # "seeded_": the numbers come from tests/helpers/seed.py (made up, realistic shapes), not from a measurement.
    page.screenshot(path=str(SHOTS / f"seeded_{name}"), full_page=True)


def test_main_flow(server: tuple[str, Path], browser: object) -> None:
    url, cache = server
    context = browser.new_context(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
    page = open_page(context, url, "The threat.")
    page.get_by_text("Lift at N=100, no mitigation").wait_for(timeout=60_000)
    settle(page)
    assert "2606.02276" in page.inner_text("body")
    _shot(page, "overview.png")

    page.goto(f"{url}/relinkage")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    settle(page)
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 3
    no_errors(page)
    _shot(page, "relinkage.png")

    timings = slide_epsilon(page, url)
    (cache / "slider_ms.json").write_text(json.dumps(timings))
    medians = {k: statistics.median(v) for k, v in timings.items()}
    print(f"\nepsilon slider update (ms): {timings}; medians {medians}")
    _shot(page, "mitigation.png")
    # goal: 300 ms; the hard limit leaves room for a CI machine shared with other jobs
    assert medians["full"] < 1500, timings

    page.goto(f"{url}/explorer")
    page.get_by_text("Rank of the true report").wait_for(timeout=60_000)
    settle(page)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)
    page.locator("mark").first.wait_for(timeout=30_000)
    no_errors(page)
    _shot(page, "explorer.png")

    page.goto(f"{url}/data")
    page.get_by_text("Sample pairs").wait_for(timeout=120_000)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=60_000)
    settle(page)
    assert "SYNTHETIC" in page.inner_text("body")
    no_errors(page)
    _shot(page, "data.png")

    page.goto(f"{url}/report")
    button = page.get_by_role("button", name="Download the HTML audit report")
    button.wait_for(timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        button.click()
    html = Path(info.value.path()).read_text()
    assert "Recall@1" in html and "Full specifications" in html and "plotly" in html.lower()
    context.close()




def test_two_sessions_while_a_job_runs(server: tuple[str, Path], browser: object) -> None:
    url, cache = server
    env = {**os.environ, "CXR_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    code = ("from backend.runs import jobs; from backend.specs import SelfTestSpec; "
            "print(jobs.submit(SelfTestSpec(steps=150, delay_s=0.15, tag='browser')).job_id)")
    job_id = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            check=True).stdout.strip()
    contexts = [browser.new_context(viewport={"width": 1300, "height": 1300}) for _ in range(2)]
    pages = [open_page(c, f"{url}/models_jobs", "Jobs") for c in contexts]
    for path, text in (("relinkage", "Lift table"), ("mitigation", "Privacy budget"), ("explorer", "Rank of the true"),
                       ("utility", "Transfer"), ("", "The threat.")):
        for page in pages:  # both sessions on the same page at once, while the worker writes progress
            page.goto(f"{url}/{path}")
        for page in pages:
            page.get_by_text(text).first.wait_for(timeout=60_000)
            settle(page)
            no_errors(page)
    pages[0].goto(f"{url}/models_jobs")
    pages[0].get_by_text(job_id).first.wait_for(timeout=60_000)
    settle(pages[0])
    _shot(pages[0], "jobs.png")
    check = ("import sys; from backend.runs import jobs; j = jobs.get_job(sys.argv[1]); print(j.status, j.done)")
    deadline = time.monotonic() + 120
    status = ""
    while time.monotonic() < deadline:
        status = subprocess.run([sys.executable, "-c", check, job_id], cwd=REPO, env=env, capture_output=True,
                                text=True).stdout.strip()
        if status.startswith(("done", "failed", "stale")):
            break
        time.sleep(0.5)
    assert status == "done 150", status
    for c in contexts:
        c.close()
