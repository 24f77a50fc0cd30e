"""Speed of the synthetic source: table generation (pairs/s) and lazy rendering (ms per image).

Baseline measured in the same run: decoding the same images from PNG bytes in memory (what a source of
real images pays per image at least), so the printed ratio says what rendering on demand costs extra.

    .venv/bin/python -m bench.bench_synthetic [--patients 2300] [--images 200] [--size 128]
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from backend.sources import load_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2300, help="about 10,000 pairs at 2,300 patients")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    data = load_source("synthetic", n_patients=args.patients, image_size=args.size)
    seconds = time.perf_counter() - start
    pairs = data.pairs
    print(f"generate: {len(pairs)} pairs, {data.stats['studies']} studies, {data.stats['patients']} patients "
          f"in {seconds:.2f} s = {len(pairs) / seconds:,.0f} pairs/s ({seconds / len(pairs) * 1e4:.2f} s per 10,000)")

    for label, subset in (("frontal", pairs[pairs["view"] != "LATERAL"]), ("lateral", pairs[pairs["view"] == "LATERAL"])):
        paths = list(subset["image_path"].iloc[: args.images])
        start = time.perf_counter()
        images = [data.read_image(p) for p in paths]
        render_ms = (time.perf_counter() - start) / len(paths) * 1e3
        blobs = []
        for image in images:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            blobs.append(buf.getvalue())
        start = time.perf_counter()
        for blob in blobs:
            Image.open(io.BytesIO(blob)).load()
        decode_ms = (time.perf_counter() - start) / len(blobs) * 1e3
        print(f"render {label}: {render_ms:.2f} ms per {args.size}px image; PNG decode baseline {decode_ms:.3f} ms; "
              f"ratio {render_ms / decode_ms:.1f}x")


if __name__ == "__main__":
    main()
