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

from tests.helpers.browser_kit import (
    ARGS,
    CHROMIUM,
    REPO,
    cut_off,
    no_errors,
    open_page,
    seeded_app,
    settle,
    slide_epsilon,
)

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
    page.get_by_text("N=100, random pool").first.wait_for(timeout=60_000)
    settle(page)
    assert "2606.02276" in page.inner_text("body")
    _shot(page, "overview.png")

    page.goto(f"{url}/relinkage")
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    settle(page)
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 3
    no_errors(page)
    assert not cut_off(page)  # the pool names in full ("pathology-matched" was cut off)
    _shot(page, "relinkage.png")

    timings = slide_epsilon(page, url)
    (cache / "slider_ms.json").write_text(json.dumps(timings))
    medians = {k: statistics.median(v) for k, v in timings.items()}
    print(f"\nepsilon slider update (ms): {timings}; medians {medians}")
    _shot(page, "mitigation.png")
    assert not cut_off(page)  # the sweep form's epsilon chips in full
    # goal: 300 ms; the hard limit leaves room for a CI machine shared with other jobs
    assert medians["full"] < 1500, timings

    page.goto(f"{url}/explorer")
    page.get_by_text("Rank of the true report").wait_for(timeout=60_000)
    settle(page)
    page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)
    page.get_by_text("distinctive words shared").first.wait_for(timeout=30_000)
    assert page.locator("mark").count() == 0  # the seeded reports share only common words (in > 5% of reports)
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


PAGES = (("", "The threat."), ("data", "Sample pairs"), ("models_jobs", "seeded example failure"), ("relinkage", "Lift table"),
         ("explorer", "Rank of the true report"), ("mitigation", "Privacy budget"), ("utility", "Transfer"),
         ("report", "Download the HTML audit report"))
_MARKUP_JS = """() => ({
  imgs: [...document.querySelectorAll('img')].map(e => e.src).filter(s => !s.startsWith(location.origin)
        && !s.startsWith('data:') && !s.startsWith('blob:')),
  links: [...document.querySelectorAll('a[href]')].map(e => e.href)
         .filter(h => h.includes('example.invalid') || h.includes('10.255.255.1')),
  katex: document.querySelectorAll('.katex, .katex-html, math').length,
  strong: [...document.querySelectorAll('strong, b, em')].map(e => e.textContent)
          .filter(t => ['bold', 'id', 'em'].includes(t.trim())),
  scripts: [...document.querySelectorAll('script')].filter(e => e.textContent.includes('alert(1)')).length,
})"""


def test_dataset_text_is_never_markup_and_nothing_leaves_the_app(tmp_path_factory: pytest.TempPathFactory,
                                                                  browser: object) -> None:
    """Reports and ids holding Markdown, HTML, LaTeX, backticks, links and image beacons are shown
    as text on every page, and the browser asks no host but the app's own for anything."""
    from tests.helpers.seed import CRAFTED_ID, CRAFTED_REPORT

    cache = tmp_path_factory.mktemp("crafted-cache")
    with seeded_app(cache, crafted=True) as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1500})
        page = context.new_page()
        origin = url.removeprefix("http://")
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url) if r.url.split("/")[:3] != ["http:", "", origin]
                and not r.url.startswith(("data:", "blob:")) else None)
        bodies = {}
        for path, text in PAGES:
            page.goto(f"{url}/{path}")
            page.get_by_text(text).first.wait_for(timeout=120_000)
            settle(page)
            page.wait_for_timeout(500)
            if path == "models_jobs":  # the seeded failed job shows its "Traceback" expander
                assert page.locator("[data-testid='stException']").count() == 0
            else:
                no_errors(page)
            found = page.evaluate(_MARKUP_JS)
            assert not any(found.values()), (path, found)
            bodies[path] = page.inner_text("body").replace("\u2060", "")  # ui.markup.plain's invisible word joiners
        assert not outside, sorted(set(outside))
        shown = bodies["explorer"]
        for literal in ("**bold** _em_ :red[red] :material/home: $\\color{red}{x}$ `tick`",
                        "<img src=http://10.255.255.1/x.png>", "<script>alert(1)</script>", "![](http://example.invalid/b.png)"):
            assert literal in shown and literal in CRAFTED_REPORT, literal
        assert CRAFTED_ID in shown  # in the image caption, the retrieved reports' study ids, the selectbox
        context.close()
