"""Embedding throughput of the demo model on the CPU (pairs/s), against a baseline measured in the same run.

    python -m bench.bench_embed [--n-patients 300] [--batch-size 64] [--untrained]

Measures embed_split (batched images, each distinct report embedded once, DataLoader workers when useful)
on the synthetic test split, and the naive baseline (one image and one report at a time, every pair's
report embedded again) on the first pairs, and prints pairs/s for both and their ratio. Uses the cached
demo weights when present; --untrained (or no cached weights) uses random weights of the same architecture,
which embed at the same speed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from backend.embed.compute import embed_split, select_split
from backend.models.demo import DEFAULT_DEMO, DEMO_MEAN, DEMO_STD, demo_dir, load_demo
from backend.models.openclip import build_architecture, wrap_model
from backend.sources import load_source
from backend.specs import EmbedSpec, SourceSpec


def demo_model(untrained: bool):
    if not untrained and (demo_dir(DEFAULT_DEMO) / "weights.pt").is_file():
        return load_demo(torch.device("cpu")), "trained demo"
    torch.manual_seed(0)
    model, tok = build_architecture(DEFAULT_DEMO.arch)
    lm = wrap_model("demo", model, tok, torch.device("cpu"), "untrained", mean=(DEMO_MEAN,) * 3, std=(DEMO_STD,) * 3)
    return lm, "untrained demo architecture"


def naive(lm, source, pairs, n: int) -> float:
    """pairs/s embedding one image and one report at a time."""
    start = time.perf_counter()
    with torch.inference_mode():
        for row in pairs.head(n).itertuples():
            x = lm.preprocess(source.read_image(row.image_path)).unsqueeze(0)
            lm.image_head(lm.encode_image_features(x))
            lm.text_head(lm.encode_text_features(lm.tokenizer([row.report])))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-patients", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--baseline-pairs", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: automatic)")
    ap.add_argument("--untrained", action="store_true")
    args = ap.parse_args()
    lm, what = demo_model(args.untrained)
    options = {"n_patients": args.n_patients, "seed": 0}
    source = load_source("synthetic", **options)
    pairs = select_split(source.pairs, "test")
    spec = EmbedSpec(source=SourceSpec(options=options), model="demo", split="test", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CXR_CACHE_DIR"] = cache  # a fresh cache: measure the work, not a cache hit
        start = time.perf_counter()
        es = embed_split(spec, model=lm, source=source, num_workers=args.workers)
        batched = len(es) / (time.perf_counter() - start)
    base = naive(lm, source, pairs, min(args.baseline_pairs, len(pairs)))
    print(f"model: {what}; torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"test split: {len(pairs)} pairs, {pairs['report'].nunique()} distinct reports")
    print(f"embed_split (batch {args.batch_size}): {batched:8.1f} pairs/s")
    print(f"naive, one pair at a time:  {base:8.1f} pairs/s")
    print(f"ratio: {batched / base:.1f}x")


if __name__ == "__main__":
    main()
