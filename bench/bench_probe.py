"""The linear probe of one sweep evaluation: scikit-learn (the CPU path) against the torch Newton solver on the
device (the GPU path of backend.probe.linear_probe), on features the size of the demo's train split.

Both fit the same 14 L2 logistic regressions to the same optimum; the script prints the largest difference of
their decision values and the ratio of the times measured in this process.

    python -m bench.bench_probe [--n 18000] [--d 128] [--test 5000] [--device cuda] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from backend.probe import fit_probe, newton_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=18000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--labels", type=int, default=14)
    ap.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(args.n, args.d)) @ rng.normal(size=(args.d, args.d))
    x = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)  # L2-normalised, as the probe sees them
    y = np.stack([(x @ rng.normal(size=args.d) + rng.normal(size=args.n) > rng.normal()).astype(np.float64)
                  for _ in range(args.labels)], axis=1)
    y[rng.random(y.shape) < 0.1] = np.nan
    test = x[:args.test].astype(np.float64)

    def sklearn_all() -> np.ndarray:
        out = np.empty((len(test), args.labels))
        for j in range(args.labels):
            keep = ~np.isnan(y[:, j])
            out[:, j] = fit_probe(x[keep], y[keep, j]).decision_function(test)
        return out

    def timed(fn):  # best of repeats
        best, value = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            value = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best, value

    base_s, ref = timed(sklearn_all)
    fast_s, got = timed(lambda: newton_probes(x, y, test, 1.0, device))
    out = {"n": args.n, "d": args.d, "labels": args.labels, "device": device,
           "sklearn_s": base_s, "torch_s": fast_s, "speedup": base_s / fast_s,
           "max_abs_diff": float(np.abs(got - ref).max())}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.labels} probes on {args.n} x {args.d}: scikit-learn {base_s:.2f} s, torch on {device} "
              f"{fast_s:.2f} s ({out['speedup']:.1f}x), decision values differ by at most {out['max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()
