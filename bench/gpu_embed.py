"""GPU image-embedding throughput of a ViT-B/16 (random weights, synthetic images): fp32 vs autocast.

    python -m bench.gpu_embed [--batch-size 256] [--batches 20] [--n-images 512]

Builds open_clip's ViT-B-16 with random weights (no download), renders synthetic chest radiographs at
224 px, and times the image tower through LoadedModel (pre-projection features + head, what embed_split
runs) in float32 and under torch.autocast(float16) (and bfloat16), reporting images/s and the ratio.
Exits cleanly with a message when CUDA is absent.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def images_per_s(lm, batch: torch.Tensor, batches: int, dtype: torch.dtype | None) -> float:
    ctx = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False)
    with torch.inference_mode(), ctx:
        for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
            lm.image_head(lm.encode_image_features(batch))
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            lm.image_head(lm.encode_image_features(batch))
        torch.cuda.synchronize()
    return batches * batch.shape[0] / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--n-images", type=int, default=256, help="distinct synthetic images rendered (tiled)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (nothing measured).")
        return 0
    from backend.models.openclip import build_architecture, wrap_model
    from backend.sources import load_source

    torch.backends.cuda.matmul.allow_tf32 = False  # an honest fp32 baseline
    model, tok = build_architecture("ViT-B-16")
    lm = wrap_model("vit-b-16-random", model, tok, torch.device("cuda"), "random")
    src = load_source("synthetic", n_patients=max(1, args.n_images // 4), seed=0, image_size=224)
    paths = src.pairs["image_path"].tolist()[: args.n_images]
    imgs = torch.stack([lm.preprocess(src.read_image(p)) for p in paths])
    reps = -(-args.batch_size // len(imgs))
    batch = imgs.repeat(reps, 1, 1, 1)[: args.batch_size].to("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}; ViT-B-16 random weights; batch {args.batch_size}; "
          f"{args.batches} batches")
    fp32 = images_per_s(lm, batch, args.batches, None)
    print(f"fp32:             {fp32:9.1f} images/s")
    for name, dtype in (("autocast fp16", torch.float16), ("autocast bf16", torch.bfloat16)):
        rate = images_per_s(lm, batch, args.batches, dtype)
        print(f"{name}:    {rate:9.1f} images/s  ({rate / fp32:.2f}x fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
