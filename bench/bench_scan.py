"""Speed of the image checks a source runs at load time: serial vs parallel vs cached.

Writes N small JPEGs into a temporary folder, then times three scans of them with drop_bad_images (what the
csv, MIMIC-CXR and CheXpert Plus sources call): the serial scan (1 thread, no cache: what every load did
before), the parallel first scan (the thread pool, filling an empty cache) and the second scan (same files,
verdicts from the cache). Prints one JSON line with the three times and the ratios against the serial scan.
The cache goes to a temporary folder too, so the real cache is left alone.

    python -m bench.bench_scan [--n 2000] [--size 256] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_jpegs(folder: Path, n: int, size: int) -> list[str]:
    """n grayscale JPEGs (a smooth gradient with noise, roughly like a radiograph's statistics)."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (200.0 / (2 * size))
    rels = []
    for k in range(n):
        arr = np.clip(ramp + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
        rel = f"img/{k // 1000:03d}/{k}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="L").save(folder / rel, quality=90)
        rels.append(rel)
    return rels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images")
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: CXR_IMAGE_CHECK_WORKERS or "
                        "CPU count + 4)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        os.environ["CXR_CACHE_DIR"] = str(Path(tmp) / "cache")  # read on every call: the cache goes here
        from backend import settings
        from backend.sources.files import drop_bad_images

        root = Path(tmp) / "data"
        rels = write_jpegs(root, args.n, args.size)
        pairs = pd.DataFrame({"image_path": rels})
        workers = args.workers or settings.image_check_workers()

        def timed(**kwargs: object) -> float:
            start = time.perf_counter()
            kept, dropped = drop_bad_images(pairs, root, source="bench", **kwargs)  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
            assert dropped == 0 and len(kept) == len(rels)
            return seconds

        serial = timed(workers=1, cache=False)
        parallel_first = timed(workers=workers, cache=True)
        cached_second = timed(workers=workers, cache=True)
    print(json.dumps({
        "n_images": args.n, "size": args.size, "workers": workers, "cpu_count": os.cpu_count(),
        "serial_s": round(serial, 3), "parallel_first_s": round(parallel_first, 3),
        "cached_second_s": round(cached_second, 3),
        "parallel_speedup": round(serial / parallel_first, 2), "cached_speedup": round(serial / cached_second, 2),
    }))


if __name__ == "__main__":
    main()
