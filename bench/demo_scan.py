"""How strong does the demo model get with more training? Train several DemoConfigs, audit each on the
default synthetic test split, print one row per config.

    python -m bench.demo_scan [--device cuda] [--epochs 4 8 16] [--max-pairs 12000] [--lr 1e-3]
                              [--n-bootstrap 50] [--json OUT]

Each config is trained from its seed on `--device` (the CPU by default, where the cached demo is trained;
a GPU gives statistically equivalent, not identical, weights), then the default synthetic source's test
split is embedded and audited (random and pathology-matched pools, Recall@1, patient-bootstrap CIs).
Use a scratch cache (CXR_CACHE_DIR) so that the scan leaves the real cache alone. This is a tool for
choosing the default DemoConfig, not a speed benchmark: the baseline column is the current default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import torch

from backend.audit import audit_embeddings
from backend.embed.compute import embed_split
from backend.models import demo as demo_train
from backend.specs import AuditSpec, EmbedSpec


def _memoise_training_data() -> None:
    """Render each (source, max_pairs) training set once for the whole scan."""
    original = demo_train.load_training_data
    memo: dict[str, tuple] = {}

    @functools.wraps(original)
    def cached(config, size, tokenizer, progress):
        key = json.dumps([config.source_options, config.max_pairs, size], sort_keys=True)
        if key not in memo:
            memo[key] = original(config, size, tokenizer, progress)
        return memo[key]

    demo_train.load_training_data = cached


def scan_one(config: demo_train.DemoConfig, device: str, n_bootstrap: int) -> dict:
    start = time.perf_counter()
    folder = demo_train.train_demo(config, device=device)
    train_s = time.perf_counter() - start
    info = json.loads((folder / "config.json").read_text())["training"]
    lm = demo_train.load_demo(torch.device(device), config=config, name=f"demo-{config.key()}")  # cached now
    spec = AuditSpec(embed=EmbedSpec(model=lm.name), ks=(1,), n_bootstrap=n_bootstrap)
    es = embed_split(spec.embed, model=lm)
    result = audit_embeddings(es, spec)
    out = {"epochs": config.epochs, "max_pairs": config.max_pairs, "lr": config.lr, "steps": info["steps"],
           "train_s": round(train_s, 1), "final_loss": round(info["final_loss"], 3)}
    for _, row in result.headline().iterrows():
        tag = f"{row['pool_kind']}@{'100' if row['n'] <= 100 else 'max'}"
        out[tag] = f"{row['recall']:.4f} [{row['ci_low']:.4f},{row['ci_high']:.4f}] N={int(row['n'])}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--max-pairs", type=int, nargs="+", default=[demo_train.DEFAULT_DEMO.max_pairs])
    ap.add_argument("--lr", type=float, nargs="+", default=[demo_train.DEFAULT_DEMO.lr])
    ap.add_argument("--n-bootstrap", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    _memoise_training_data()
    rows = []
    for max_pairs in args.max_pairs:
        n_patients = max(demo_train.DEFAULT_DEMO.source_options["n_patients"], int(max_pairs * 0.375) + 1)
        for lr in args.lr:
            for epochs in args.epochs:
                config = dataclasses.replace(demo_train.DEFAULT_DEMO, epochs=epochs, max_pairs=max_pairs, lr=lr,
                                             source_options={"n_patients": n_patients, "seed": 0})
                rows.append(scan_one(config, args.device, args.n_bootstrap))
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
