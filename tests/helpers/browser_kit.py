"""Browser helpers shared by tests/test_browser.py and bench/bench_slider.py: start the app on a seeded
store, open pages, wait for Streamlit to settle, move the epsilon slider and time the update."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
BAD_TEXT = ("held by another process", "Traceback", "StoreError", "IOException")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "CXR_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), **(extra or {})}


@contextlib.contextmanager
def seeded_app(cache: Path, crafted: bool = False) -> Iterator[str]:
    """Seed a store in `cache` (tests/helpers/seed.py; `crafted`: reports and ids hold markup), run the app on it,
    yield its URL; stop it afterwards."""
    subprocess.run([sys.executable, "-m", "tests.helpers.seed", str(cache), *(["--crafted"] if crafted else [])],
                   cwd=REPO, env=_env(cache), check=True, capture_output=True)
    with running_app(cache) as url:
        yield url


@contextlib.contextmanager
def running_app(cache: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run the app on the store in `cache` (CXR_CACHE_DIR; `env` adds variables), yield its URL; stop it after."""
    port = free_port()
    log = open(cache / "streamlit.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=_env(cache, env), stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"streamlit did not start:\n{(cache / 'streamlit.log').read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def open_page(context: object, url: str, wait_text: str) -> object:
    page = context.new_page()
    page.goto(url)
    page.get_by_text(wait_text).first.wait_for(timeout=60_000)
    settle(page)
    return page


def settle(page: object) -> None:
    """Wait until Streamlit has finished its run (no running indicator)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def no_errors(page: object) -> None:
    body = page.inner_text("body")
    assert not [t for t in BAD_TEXT if t in body], body[:2000]
    assert page.locator("[data-testid='stException']").count() == 0


def cut_off(page: object) -> list[str]:
    """Chips and pills in the page's main area whose text does not fit (a multiselect's tag row or a pills row
    that overflows its box hides the end of a name)."""
    return page.evaluate("""() => [...document.querySelectorAll(
        '[data-testid="stMain"] [data-testid="stMultiSelectTagsContainer"], [data-testid="stMain"] .stButtonGroup, '
        + '[data-testid="stMain"] .stButtonGroup > div')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.slice(0, 80))""")


def screen_state(page: object) -> list[str]:
    """What a slide must change: the metric values and the recall chart's title."""
    return page.evaluate(_STATE_JS)


_STATE_JS = ("() => [...document.querySelectorAll('[data-testid=stMetricValue]')].map(e => e.innerText)"
             ".concat([...document.querySelectorAll('.js-plotly-plot .gtitle')].map(e => e.textContent))")


def slide_epsilon(page: object, url: str, keys: list[str] | None = None) -> dict[str, list[float]]:
    """Move the epsilon slider with the keyboard; time from the key press until the numbers changed
    ("numbers") and until the recall chart was redrawn too ("full")."""
    page.goto(f"{url}/mitigation")
    page.locator(".js-plotly-plot .gtitle").first.wait_for(timeout=60_000)
    settle(page)
    thumb = page.locator("[data-testid='stSlider'] input").first
    out: dict[str, list[float]] = {"numbers": [], "full": []}
    for key in keys or ["ArrowRight"] * 4 + ["ArrowLeft"] * 3 + ["ArrowRight"] * 3:
        before = screen_state(page)
        n_metrics = page.locator("[data-testid='stMetricValue']").count()
        thumb.focus()
        t0 = time.perf_counter()
        thumb.press(key)
        page.wait_for_function(f"(before) => ({_STATE_JS})()[0] !== before[0]", arg=before, timeout=30_000,
                               polling="raf")
        out["numbers"].append(round((time.perf_counter() - t0) * 1000, 1))
        page.wait_for_function(
            f"([before, n]) => {{ const v = ({_STATE_JS})(); return v.length === before.length && "
            "v.some((x, i) => i >= n && x !== before[i] && x.startsWith('Recall@1 at')); }",
            arg=[before, n_metrics], timeout=30_000, polling="raf")
        out["full"].append(round((time.perf_counter() - t0) * 1000, 1))
        settle(page)
    no_errors(page)
    return out
