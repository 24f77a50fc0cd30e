"""Image loading of real-size radiographs: the project's loaders (backend.embed.images) against plain PIL.

Writes N synthetic radiograph-like JPEGs of MIMIC-CXR-JPG's size (2,544 x 3,056, 8-bit grayscale, quality
95, ~1.8 MB each) into a temporary folder, then on the same cores (one single-threaded process per core,
each file once, after one warm-up pass that brings the files into the page cache):
  naive   PIL open + full decode + convert("RGB") + bicubic resize of the shortest side to 224 + centre crop
          + tensor + normalise (open_clip's reference transform on a plain decode);
  fast    the project's CPU path (JPEG DCT scaling to >= 224 px, grayscale until the tensor);
and, when CUDA is present:
  gpu     file bytes read by a thread pool, batches decoded by nvJPEG, resize/crop/normalise on the GPU;
  e2e     (--e2e M) ViT-B/16 (random weights, fp16 autocast) embedding M images through the GPU loader,
          file bytes read by a thread pool one batch ahead, features collected as backend.embed.compute does
          (encode_batches: one device-to-host transfer at the end), against the same loop waiting for every
          batch's features on the host (e2e_ratio_vs_per_batch_wait; images/s end to end);
  cosine  mean cosine between ViT-B/16 embeddings of the same files through the reference and each path;
  png     (--png N, CPU) N real-size PNGs through the gpu loader's CPU part: one thread against its read threads.

Usage: python -m bench.bench_loading [--n 24] [--json] [--png 16] [--e2e 4096] [--batch 256] [--cpu-share 0.25 0.4]
Prints one JSON object with --json: naive_images_per_s, images_per_s (fast), ratio, and the CUDA figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

H, W, QUALITY, SIZE = 3056, 2544, 95, 224
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def radiograph(h: int, w: int, seed: int) -> Image.Image:
    """A grayscale image with radiograph-like structure: smooth anatomy, rib-like stripes, film noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.3 * np.sin(6 * x + rng.random() * 6) * np.cos((3 + 2 * rng.random()) * y)
    img += 0.2 * np.exp(-((x - rng.random()) ** 2 + (y - 0.5) ** 2) / 0.05)
    img += 0.08 * np.sin(60 * y + 10 * np.sin(3 * x)) + rng.normal(0, 0.01, size=(h, w))
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")


def _write(args: tuple[str, int]) -> int:
    path, seed = args
    radiograph(H, W, seed).save(path, quality=QUALITY)
    return os.path.getsize(path)


def _write_png(args: tuple[str, int]) -> int:
    path, seed = args
    radiograph(H, W, seed).save(path)
    return os.path.getsize(path)


def _png_figures(folder: str, n: int, threads: int) -> dict:
    """Real-size PNGs (CheXpert Plus and OpenI ship PNGs) through the gpu loader's CPU part: decoded one by one in
    the calling thread (the earlier loader) against the read threads of prefetch_files (now), in this
    process, alternated twice (the best of each); both make the same tensors (checked here)."""
    import torch

    from backend.embed.images import prefetch_files

    files = [str(Path(folder) / f"{i}.png") for i in range(n)]
    with ProcessPoolExecutor(threads) as pool:
        sizes = list(pool.map(_write_png, [(f, 1000 + i) for i, f in enumerate(files)]))
    fast = _fast()
    torch.set_num_threads(1)
    fast.load(files[0])  # warm-up: page cache, imports
    serial = rate = 0.0
    for _ in range(2):  # alternated, the best of two each (the machine's speed drifts)
        start = time.perf_counter()
        one = [fast.load(f) for f in files]
        serial = max(serial, n / (time.perf_counter() - start))
        start = time.perf_counter()
        many = [t for batch in prefetch_files(files, 8, threads, fast) for t in batch]
        rate = max(rate, n / (time.perf_counter() - start))
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))
    return {"png_n": n, "png_mean_file_mb": float(np.mean(sizes)) / 2**20, "png_threads": threads,
            "png_one_thread_images_per_s": serial, "png_read_threads_images_per_s": rate, "png_ratio": rate / serial}


def _preprocess_id() -> str:
    return json.dumps({"size": SIZE, "mode": "RGB", "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                       "resize_mode": "shortest", "fill_color": 0}, sort_keys=True)


@functools.cache
def _reference():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(size=SIZE), is_train=False)


def _naive_one(path: str) -> tuple[int, ...]:
    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB")
    return tuple(_reference()(rgb).shape)


@functools.cache
def _fast():
    from backend.embed.images import FastPreprocess

    fast = FastPreprocess.from_preprocess_id(_preprocess_id())
    assert fast is not None
    return fast


def _fast_one(path: str) -> tuple[int, ...]:
    return tuple(_fast().load(path).shape)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core, as DataLoader workers run (no oversubscription)


def _rate(fn, files: list[str], workers: int) -> float:
    with ProcessPoolExecutor(workers, initializer=_one_thread) as pool:
        list(pool.map(fn, files[:workers]))  # start the workers and import their modules before timing
        start = time.perf_counter()
        list(pool.map(fn, files))
        return len(files) / (time.perf_counter() - start)


def _cuda_figures(files: list[str], e2e: int, batch: int, shares: list[float]) -> dict:
    import torch

    from backend.embed.images import read_bytes

    dev = torch.device("cuda")
    fast = _fast()
    out: dict = {"device": torch.cuda.get_device_name(0)}
    paths = [Path(f) for f in files]
    with ThreadPoolExecutor(16) as pool:
        blobs = list(pool.map(read_bytes, paths))
    fast.gpu_batch(blobs[:4], paths[:4], dev)  # warm-up (nvJPEG handles, kernels)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        blobs = list(pool.map(read_bytes, paths))
    x = fast.gpu_batch(blobs, paths, dev)
    torch.cuda.synchronize()
    out["gpu_images_per_s"] = len(files) / (time.perf_counter() - start)
    out["gpu_decode_only_images_per_s"] = _decode_rate(fast, blobs, paths, dev)  # nvJPEG + resize (no model)
    out["gpu_nvjpeg_alone_images_per_s"] = _decode_rate(fast, blobs, paths, dev, resize=False)  # the resize's share

    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).to(dev).eval()
    ref = _reference()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        def emb(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(model.encode_image(t.to(dev)).float(), dim=-1)
        n_cos = min(len(files), 16)
        e_ref = emb(torch.stack([ref(Image.open(f).convert("RGB")) for f in files[:n_cos]]))
        e_fast = emb(torch.stack([fast.load(f) for f in files[:n_cos]]))
        e_gpu = emb(x[:n_cos])
        out["cosine_fast_vs_reference"] = float((e_ref * e_fast).sum(-1).mean())
        out["cosine_gpu_vs_reference"] = float((e_ref * e_gpu).sum(-1).mean())
        out["cosine_between_images"] = float((e_ref * e_ref.roll(1, 0)).sum(-1).mean())
        if e2e:
            out.update(_e2e(model, fast, blobs, paths, dev, e2e, batch, shares))
    return out


def _e2e(model, fast, blobs, paths, dev, n: int, batch: int, shares: list[float]) -> dict:
    """ViT-B/16 features of n images (the files cycled) end to end, several times in this process: the baseline
    waits for each batch's features on the host (the project's earlier loop); the project's loop
    (backend.embed.compute.encode_batches) brings them over once at the end, so nvJPEG decodes batch i+1 on its
    own stream while the model runs on batch i; then the same with each CPU share (CXR_GPU_CPU_SHARE: that share
    of the JPEGs decoded by the CPU path on the read threads, beside nvJPEG)."""
    import torch

    from backend.embed.compute import encode_batches
    from backend.embed.images import prefetch_files

    cyc, threads = [paths[i % len(paths)] for i in range(n)], max(4, (os.cpu_count() or 1) - 1)

    def batches(share: float):
        for i, chunk in enumerate(prefetch_files(cyc, batch, threads, fast, share)):
            yield fast.gpu_batch(chunk, cyc[i * batch:(i + 1) * batch], dev)

    def per_batch_wait() -> np.ndarray:
        return np.concatenate([model.encode_image(b).float().cpu().numpy() for b in batches(0.0)])

    runs = [("per_batch_wait", per_batch_wait), ("", lambda: encode_batches(batches(0.0), model.encode_image))]
    runs += [(f"cpu_share_{s:g}", lambda s=s: encode_batches(batches(s), model.encode_image)) for s in shares if s]
    out: dict = {"e2e_images": n, "e2e_read_threads": threads, "e2e_batch": batch}
    feats = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        model.encode_image(fast.gpu_batch(blobs[:batch], paths[:batch], dev))  # warm-up at the full batch
        torch.cuda.synchronize()
        for name, run in runs:
            start = time.perf_counter()
            feats[name] = run()
            torch.cuda.synchronize()
            out["e2e_vit_b16_images_per_s" + (f"_{name}" if name else "")] = n / (time.perf_counter() - start)
    base = out["e2e_vit_b16_images_per_s_per_batch_wait"]
    for key in [k for k in out if k.startswith("e2e_vit_b16_images_per_s") and not k.endswith("per_batch_wait")]:
        out[key.replace("e2e_vit_b16_images_per_s", "e2e_ratio") + "_vs_per_batch_wait"] = out[key] / base
    out["e2e_max_abs_diff"] = float(np.abs(feats[""] - feats["per_batch_wait"]).max())  # same kernels: expect 0
    for name in feats:
        if name.startswith("cpu_share"):  # the CPU path's share: within the loaders' tolerance, not equal
            a, b = feats[name], feats[""]
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            out[f"e2e_min_cosine_{name}_vs_gpu"] = float(cos.min())
    return out


def _decode_rate(fast, blobs, paths, dev, resize: bool = True) -> float:
    """Images/s of gpu_batch (nvJPEG + resize, crop, normalise) on batches of 64, or of nvJPEG alone."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    start = time.perf_counter()
    for a in range(0, len(blobs), 64):
        if resize:
            fast.gpu_batch(blobs[a:a + 64], paths[a:a + 64], dev)
        else:
            decode_jpeg(blobs[a:a + 64], mode=ImageReadMode.UNCHANGED, device=dev)
    torch.cuda.synchronize()
    return len(blobs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="real-size JPEGs to write and load (default 24)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    parser.add_argument("--e2e", type=int, default=0, help="CUDA only: images to embed end to end with ViT-B/16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cpu-share", type=float, nargs="*", default=[0.25, 0.4],
                        help="CUDA e2e only: CXR_GPU_CPU_SHARE values to time beside 0 (default 0.25 0.4)")
    parser.add_argument("--png", type=int, default=0, help="also time N real-size PNGs: the gpu loader's read "
                        "threads against one thread (CPU; default 0: skipped)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-loading-") as tmp:
        files = [str(Path(tmp) / f"{i}.jpg") for i in range(args.n)]
        with ProcessPoolExecutor(args.workers) as pool:
            sizes = list(pool.map(_write, [(f, i) for i, f in enumerate(files)]))
        naive = _rate(_naive_one, files, args.workers)
        fast = _rate(_fast_one, files, args.workers)
        out = {"n": args.n, "width": W, "height": H, "quality": QUALITY, "mean_file_mb": float(np.mean(sizes)) / 2**20,
               "workers": args.workers, "cpus": os.cpu_count(), "naive_images_per_s": naive, "images_per_s": fast,
               "ratio": fast / naive}
        if args.png:
            out.update(_png_figures(tmp, args.png, args.workers))
        import torch

        if torch.cuda.is_available():
            out.update(_cuda_figures(files, args.e2e, args.batch, args.cpu_share))
            out["gpu_ratio_vs_naive"] = out["gpu_images_per_s"] / naive
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
