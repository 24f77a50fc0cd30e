"""Epsilon-slider update time in a real browser (Debian chromium, headless, software rendering).

    python -m bench.bench_slider [--moves 40]

Seeds a store (tests/helpers/seed.py), starts the app, opens the Mitigation page and moves the epsilon slider with
the keyboard `--moves` times. Two times per move, from the key press:
  numbers  until the metric values changed (the Streamlit round trip: the baseline),
  full     until the figure (recall curves beside the frontier) was redrawn too.
Prints median and 90th percentile of each and the ratio full / numbers: what the plotly redraw adds on
top of the round trip, measured in the same browser session. The goal is a full update under 300 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from tests.helpers.browser_kit import ARGS, CHROMIUM, seeded_app, slide_epsilon


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=40)
    args = ap.parse_args()
    if not CHROMIUM.is_file():
        print("/usr/bin/chromium is missing (apt-get install chromium): nothing measured.")
        return 0
    from playwright.sync_api import sync_playwright

    # the seeded grid has 7 points: 6 steps right and 6 back, repeatedly, so every move changes the point
    keys = (["ArrowRight"] * 6 + ["ArrowLeft"] * 6) * (args.moves // 12 + 1)
    with tempfile.TemporaryDirectory() as tmp, seeded_app(Path(tmp)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1400, "height": 1500}).new_page()
        slide_epsilon(page, url, ["ArrowRight", "ArrowLeft"])  # warm-up: first figure render, caches
        t = slide_epsilon(page, url, keys[:args.moves])
        browser.close()
    for name in ("numbers", "full"):
        v = sorted(t[name])
        print(f"{name:8s} median {statistics.median(v):6.0f} ms   p90 {v[int(0.9 * (len(v) - 1))]:6.0f} ms   "
              f"({len(v)} moves)")
    print(f"full / numbers (median): {statistics.median(t['full']) / statistics.median(t['numbers']):.2f}x; "
          f"goal: full under 300 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
