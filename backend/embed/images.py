"""Image loading at the speed of the model, for real-size radiographs (MIMIC-CXR-JPG: ~2,500 x 3,000 px,
8-bit grayscale JPEG, ~2 MB each).

The reference path (the model's own open_clip transform on a fully decoded PIL image) spends nearly all
of its time decoding 7.7 megapixels that are then thrown away by the resize to 224. Two faster paths give
the same tensor up to a small, tested tolerance (tests/test_images.py: mean cosine >= 0.999 between the
model embeddings of the same files through the reference and the fast path):

- CPU ("fast"): JPEG DCT-domain scaling (PIL `Image.draft`, libjpeg's 1/2, 1/4, 1/8 scaled decode) to the
  smallest scale whose shortest side still holds `MIN_SIDE_FACTOR` x the model's input size; the image stays
  grayscale ("L", one channel) through the resize and the crop and becomes 3 channels only as a tensor;
  PNG and other formats are decoded fully and resized with PIL's `reducing_gap` (box reduction first).
  Resize (shortest side, the model's interpolation, antialiased), centre crop and normalisation follow
  the reference transform's arithmetic (torchvision's Resize/CenterCrop/Normalize on PIL images).
- CUDA ("gpu"): file bytes read by a thread pool one batch ahead, a batch decoded by nvJPEG on the GPU
  (`torchvision.io.decode_jpeg(list, device="cuda")`), then resize (antialiased), crop and normalisation as
  tensor operations on the GPU. Files that are not JPEGs (PNG: CheXpert Plus, OpenI) go through the CPU path
  on the same threads, one batch ahead, beside the GPU's work; a JPEG nvJPEG refuses (16-bit, CMYK, corrupt)
  goes through the CPU path when its batch is decoded, so a batch never fails for one odd file; an unreadable
  file raises ImageReadError naming it. $CXR_GPU_CPU_SHARE (default 0) sends that share of the JPEGs, evenly
  spread by their place in the split (the same files every run), through the CPU path on those threads too, so
  the CPU cores decode while nvJPEG does (nvJPEG alone is the limit at MIMIC-CXR's size); the share is in the
  cache key.

`image_loader()` picks one from $CXR_IMAGE_LOADER (auto | reference | fast | gpu; auto = gpu on CUDA for
file-based sources, else fast). The loader's id is part of the embedding cache key (backend.embed.compute),
so embeddings made by different paths never mix.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from backend.errors import ImageReadError, SpecError
from backend.sources.files import eight_bit, missing_image

LOADERS = ("auto", "reference", "fast", "gpu")
MIN_SIDE_FACTOR = 1.0  # decode at >= the model's input size (1/8 scale for MIMIC-size files): ViT-B/16 cosine 0.99999
_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST}


def image_loader(device: torch.device, file_based: bool) -> str:
    """The loader to use: $CXR_IMAGE_LOADER when set (auto | reference | fast | gpu), else gpu on CUDA
    for file-based sources, fast for other file-based sources, reference for generated images."""
    want = os.environ.get("CXR_IMAGE_LOADER", "auto").strip() or "auto"
    if want not in LOADERS:
        raise SpecError(f"CXR_IMAGE_LOADER={want!r} is not a loader; use one of {list(LOADERS)}.")
    if not file_based:
        return "reference"  # generated (synthetic) images are rendered at model size already
    if want == "auto":
        return "gpu" if device.type == "cuda" else "fast"
    if want == "gpu" and device.type != "cuda":
        raise SpecError("CXR_IMAGE_LOADER=gpu needs a CUDA device; use --device cuda, or CXR_IMAGE_LOADER=fast.")
    return want


def cpu_share() -> float:
    """$CXR_GPU_CPU_SHARE: the share of JPEGs the gpu loader decodes on CPU threads beside nvJPEG (0 <= share < 1)."""
    raw = os.environ.get("CXR_GPU_CPU_SHARE", "").strip() or "0"
    try:
        share = float(raw)
    except ValueError:
        share = -1.0
    if not 0.0 <= share < 1.0:
        raise SpecError(f"CXR_GPU_CPU_SHARE={raw!r} is not a share; use a number from 0 (nvJPEG decodes every JPEG) "
                        "to below 1, e.g. 0.3.")
    return share


def on_cpu(i: int, share: float) -> bool:
    """Whether item i of the split goes through the CPU path under `share`: evenly spread (share 0.25: every 4th
    item), fixed by the item's place, so every run and every chunk or shard layout decodes the same files the
    same way."""
    return math.floor((i + 1) * share) > math.floor(i * share)


@dataclass(frozen=True)
class FastPreprocess:
    """The model's inference transform (shortest-side resize, centre crop, normalise), done fast.

    size: the model's square input size; mean/std per channel; interpolation: bicubic | bilinear | nearest."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_preprocess_id(cls, preprocess_id: str) -> FastPreprocess | None:
        """From a LoadedModel's preprocess_id (the canonical JSON of open_clip's PreprocessCfg); None when the
        transform is one this module does not reproduce (non-square size, resize modes other than
        "shortest", an interpolation PIL does not name), so the caller keeps the reference path."""
        cfg = json.loads(preprocess_id)
        size = cfg.get("size", 224)
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                return None
            size = size[0]
        if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("mode", "RGB") != "RGB":
            return None
        interp = cfg.get("interpolation", "bicubic")
        if interp not in _PIL_RESAMPLE:
            return None
        mean, std = tuple(cfg.get("mean", ())), tuple(cfg.get("std", ()))
        if len(mean) != 3 or len(std) != 3:
            return None
        return cls(int(size), mean, std, interp)  # type: ignore[arg-type]

    @property
    def ident(self) -> str:
        """Part of the embedding cache key."""
        return f"fast-v1:{MIN_SIDE_FACTOR}"

    # ------------------------------------------------------------------ geometry (torchvision's arithmetic)
    def resized(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) after torchvision Resize(size) on the shortest side: the long side int(size * long / short)."""
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def crop_box(self, w: int, h: int) -> tuple[int, int]:
        """(left, top) of torchvision's CenterCrop(size) on a (w, h) image (images at least size x size)."""
        return int(round((w - self.size) / 2.0)), int(round((h - self.size) / 2.0))

    # ------------------------------------------------------------------ CPU path
    def open(self, path: Path) -> Image.Image:
        """The file decoded as 'L' or 'RGB', JPEGs at reduced scale (draft), 16-bit rescaled to 8 bits."""
        try:
            with Image.open(path) as img:
                if img.format == "JPEG":
                    w, h = img.size
                    scale = MIN_SIDE_FACTOR * self.size / min(w, h)
                    if scale < 1.0:
                        img.draft(img.mode if img.mode in ("L", "RGB") else "RGB",
                                  (math.ceil(w * scale), math.ceil(h * scale)))
                img.load()
                return eight_bit(img)
        except FileNotFoundError as exc:
            raise missing_image(path) from exc
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise ImageReadError(f"Image {str(path)!r} is unreadable or corrupt ({exc}); replace or remove it.") from exc

    def from_pil(self, img: Image.Image) -> torch.Tensor:
        """(3, size, size) float32 normalised tensor from an 'L' or 'RGB' image (resize, crop, normalise)."""
        new = self.resized(*img.size)
        if new != img.size:
            gap = 3.0 if img.format != "JPEG" and min(img.size) > 3 * self.size else None
            img = img.resize(new, _PIL_RESAMPLE[self.interpolation], reducing_gap=gap)
        left, top = self.crop_box(*img.size)
        img = img.crop((left, top, left + self.size, top + self.size))
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        chw = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
        return self.normalise(chw.float().div_(255.0))

    def normalise(self, chw: torch.Tensor) -> torch.Tensor:
        """(1 or 3, H, W) floats in [0, 1] -> (3, H, W) normalised (one channel repeated, like L -> RGB)."""
        mean, std = _channel_stats(self.mean, self.std, chw.dtype, chw.device)
        return (chw.expand(3, -1, -1) - mean) / std

    def load(self, path: str | Path) -> torch.Tensor:
        """(3, size, size) tensor of one file through the CPU fast path."""
        return self.from_pil(self.open(Path(path)))

    # ------------------------------------------------------------------ GPU path
    def gpu_batch(self, blobs: Sequence[torch.Tensor | None], paths: Sequence[str | Path],
                  device: torch.device) -> torch.Tensor:
        """(B, 3, size, size) on `device` from raw file bytes (uint8 CPU tensors, 1-D; None = read failed) or
        images the CPU path has already made (3-D float tensors: prefetch_batches' work).

        JPEGs are decoded together by nvJPEG; the rest (and any file nvJPEG refuses) by the CPU path."""
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | None] = [None] * len(paths)
        for i, b in enumerate(blobs):
            if b is not None and b.dim() == 3:
                out[i] = b.to(device, non_blocking=True)
        jpeg = [i for i, b in enumerate(blobs) if b is not None and b.dim() == 1 and b.numel() > 3 and _is_jpeg(b)]
        if jpeg:
            try:
                decoded = decode_jpeg([blobs[i] for i in jpeg], mode=ImageReadMode.UNCHANGED, device=device)
            except RuntimeError:  # one file nvJPEG refuses fails the call: decode them one by one instead
                decoded = [_decode_one(blobs[i], device) for i in jpeg]
            for i, img in zip(jpeg, decoded, strict=True):
                if img is not None and img.shape[0] in (1, 3):
                    out[i] = self._gpu_one(img)
        for i, t in enumerate(out):
            if t is None:
                out[i] = self.load(paths[i]).to(device, non_blocking=True)
        return torch.stack(out)  # type: ignore[arg-type]

    def _gpu_one(self, img: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 on the GPU -> (3, size, size): antialiased resize, centre crop, normalise."""
        h, w = int(img.shape[1]), int(img.shape[2])
        new_w, new_h = self.resized(w, h)
        x = img[None].float().div_(255.0)
        if (new_w, new_h) != (w, h):
            smooth = self.interpolation != "nearest"
            x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode=self.interpolation, antialias=smooth,
                                                align_corners=False if smooth else None)
            x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clamps to 0..255 as well
        left, top = self.crop_box(new_w, new_h)
        x = x[0, :, top:top + self.size, left:left + self.size]
        return self.normalise(x)


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 1, 1) mean and std tensors, made once per device (not two host-to-device copies per image)."""
    return (torch.tensor(mean, dtype=dtype, device=device)[:, None, None],
            torch.tensor(std, dtype=dtype, device=device)[:, None, None])


def _is_jpeg(blob: torch.Tensor) -> bool:
    return bool(blob[0] == 0xFF and blob[1] == 0xD8)


def _starts_as_jpeg(path: str | Path) -> bool:
    """Whether the file begins with JPEG's start-of-image marker (two bytes read; False when it cannot be read,
    so the CPU path raises the error naming it)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\xff\xd8"
    except OSError:
        return False


def _decode_one(blob: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(blob, mode=ImageReadMode.UNCHANGED, device=device)
    except RuntimeError:
        return None


def read_bytes(path: str | Path) -> torch.Tensor | None:
    """The file's bytes as a uint8 tensor (for the GPU decoder), None when it cannot be read (the CPU path
    then raises the named error)."""
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))  # read straight into the array: no copy
    except OSError:
        return None


def prefetch_batches(files: Sequence[str | Path], spans: Sequence[tuple[int, int]], threads: int,
                     fast: FastPreprocess | None = None, share: float = 0.0) -> Iterator[list[torch.Tensor | None]]:
    """For each span (a, b), the batch files[a:b] as gpu_batch takes it, made by a thread pool one batch ahead of
    the consumer (across the ends of chunks, when the spans cover several): file bytes (read_bytes), or with
    `fast` given the CPU path's (3, size, size) image for files that are not JPEGs and for the JPEGs that
    on_cpu(i, share) picks (i: the file's place in `files`, the split). File reads, PIL's decoding and resizing
    release the GIL; threads avoid moving gigabytes of bytes between processes through shared memory."""
    def prepare(i: int) -> torch.Tensor | None:
        if fast is not None and (on_cpu(i, share) or not _starts_as_jpeg(files[i])):
            return fast.load(files[i])  # PNG and other formats (nvJPEG cannot decode them), and the CPU share
        return read_bytes(files[i])

    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending = None
        for a, b in spans:
            nxt = pool.map(prepare, range(a, b))  # submitted now, collected next round
            if pending is not None:
                yield list(pending)
            pending = nxt
        if pending is not None:
            yield list(pending)


def batch_spans(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive batches [a, b) of batch_size items covering [start, stop) (the last one shorter)."""
    return [(a, min(a + batch_size, stop)) for a in range(start, stop, batch_size)]


def prefetch_files(files: Sequence[str | Path], batch_size: int, threads: int, fast: FastPreprocess | None = None,
                   share: float = 0.0) -> Iterator[list[torch.Tensor | None]]:
    """prefetch_batches over consecutive batches of batch_size files."""
    return prefetch_batches(files, batch_spans(0, len(files), batch_size), threads, fast, share)


def describe(loader: str, fast: FastPreprocess | None) -> dict[str, Any]:
    """What the cache key and the run's provenance record about the loader."""
    out = {"loader": loader, "fast": None if fast is None or loader == "reference" else fast.ident}
    share = cpu_share()  # checked on every machine: a mistyped value is named, not ignored
    return {**out, "cpu_share": share} if share and loader == "gpu" else out  # keys without a share unchanged
