"""How the CPU loaders' DataLoader workers serve a job of several chunks: a fresh DataLoader per chunk with whole
model batches as a worker's unit (the earlier scheduling) against one DataLoader for all the chunks whose workers each
take a piece of every batch (backend.embed.compute.loader_batches and batch_pieces, now).

Embedding runs in chunks of CHUNK_SIZE items (512) in model batches (64): with whole batches as the unit a chunk
has 8, so at most 8 workers work and the chunk's last round runs on few of them; and every chunk started its
workers again. Each item here costs a fixed wait (--item-ms, default 20 ms: time.sleep, about one real-size JPEG
through the CPU fast path on one core, or a read from a slow disk), so the figure is the scheduling alone and
does not depend on the cores of the machine running it; on a machine with more cores than workers decoding
scales the same way. Both ways give the same batches (checked). Prints one JSON line: seconds per chunk for
each way, the ratio, and the ideal (items x item time / workers).

    python -m bench.bench_pieces [--workers 7 15] [--batch 64] [--chunks 4] [--item-ms 20]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from torch.utils.data import DataLoader, Dataset

from backend.embed.compute import CHUNK_SIZE, loader_batches
from backend.embed.images import batch_spans


class _Slow(Dataset):
    def __init__(self, n: int, item_s: float) -> None:
        self.n, self.item_s = n, item_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(self.item_s)
        return torch.full((3, 4, 4), float(i))


def _before(data: Dataset, n_chunks: int, batch: int, workers: int) -> list[torch.Tensor]:
    """A fresh DataLoader per chunk, whole batches per worker (the earlier scheduling)."""
    out: list[torch.Tensor] = []
    for c in range(n_chunks):
        chunk = torch.utils.data.Subset(data, range(c * CHUNK_SIZE, (c + 1) * CHUNK_SIZE))
        out += list(DataLoader(chunk, batch_size=batch, num_workers=workers))
    return out


def _now(data: Dataset, n_chunks: int, batch: int, workers: int) -> list[torch.Tensor]:
    return list(loader_batches(data, batch_spans(0, n_chunks * CHUNK_SIZE, batch), workers, pin=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[7, 15])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=4, help="chunks per job (each way run twice, alternated)")
    parser.add_argument("--item-ms", type=float, default=20.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*worker processes.*")  # more workers than this machine's cores
    n = args.chunks * CHUNK_SIZE
    data = _Slow(n, args.item_ms / 1000.0)
    want = [[float(i) for i in range(a, a + args.batch)] for a in range(0, n, args.batch)]
    out: dict = {"chunk": CHUNK_SIZE, "chunks": args.chunks, "batch": args.batch, "item_ms": args.item_ms}
    for workers in args.workers:
        best = {"before": float("inf"), "now": float("inf")}
        for _ in range(2):
            for name, run in (("before", _before), ("now", _now)):
                start = time.perf_counter()
                got = run(data, args.chunks, args.batch, workers)
                best[name] = min(best[name], (time.perf_counter() - start) / args.chunks)
                assert [b[:, 0, 0, 0].tolist() for b in got] == want
        out[f"workers_{workers}"] = {"before_s_per_chunk": best["before"], "now_s_per_chunk": best["now"],
                                     "ratio": best["before"] / best["now"],
                                     "ideal_s_per_chunk": CHUNK_SIZE * args.item_ms / 1000.0 / workers}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
