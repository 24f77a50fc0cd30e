"""The `demo` model: a small open_clip CLIP that the project trains itself, CLIP-style, on the synthetic
source's train split, so that the whole audit runs on a laptop with no download.

DemoConfig and the ladder's rungs are defined torch-free in backend/models/demo_config.py. Training is seeded
and cached: the weights live in settings.cache_subdir("models")/demo-<key>/, where
the key hashes the DemoConfig and TRAIN_VERSION, and are reused by every later run. Images are rendered
once into a uint8 array (n, S, S) and normalised exactly as the model's inference transform does
(grayscale replicated to 3 channels, (x/255 - 0.5) / 0.25), so training and embedding see the same pixels.

The loss is CLIP's symmetric InfoNCE with one change: pairs whose report text is identical (the two views
of one study, or boilerplate normal reports) are all positives of each other, not false negatives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend import settings
from backend.errors import SourceError
from backend.models import file_id
from backend.models.demo_config import DEFAULT_DEMO, TRAIN_TIMES_S, TRAIN_VERSION, DemoConfig, demo_dir, get_rung
from backend.models.digest import state_dict_digest
from backend.models.openclip import LoadedModel, build_architecture, wrap_model
from backend.progress import ProgressLike, null_progress, scaled
from backend.sources import load_source

log = logging.getLogger(__name__)

DEMO_MEAN, DEMO_STD = 0.5, 0.25


def _image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def render_images(read_image: Any, paths: list[str], size: int, progress: ProgressLike) -> np.ndarray:
    """(n, size, size) uint8 grayscale images, resized like the model's transform (bicubic)."""
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        img = read_image(path).convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(img, dtype=np.uint8)
        if (i + 1) % 256 == 0 or i + 1 == len(paths):
            progress(i + 1, len(paths), "training the demo model: rendering its training images")
    return out


def to_model_input(batch_u8: torch.Tensor) -> torch.Tensor:
    """(b, S, S) uint8 -> (b, 3, S, S) float, the demo's normalisation (matches its preprocess)."""
    x = (batch_u8.float() / 255.0 - DEMO_MEAN) / DEMO_STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


def _augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `shift` pixels (edge padding), one offset per batch for speed."""
    if shift <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
    padded = F.pad(x.float(), (shift, shift, shift, shift), mode="replicate")
    size = x.shape[-1]
    return padded[..., shift + dy: shift + dy + size, shift + dx: shift + dx + size]


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over dim 1 from exp, sum and log: torch's own softmax kernels differ in the last bits between
    its AVX2 and AVX-512 builds of them, these element-wise ops and sums do not."""
    shifted = x - x.detach().amax(dim=1, keepdim=True)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, report_ids: torch.Tensor,
                             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch where identical reports are positives of each other, computed in float64
    (a (b, b) matrix: cheap) with _log_softmax, so the loss is the same on every CPU for the same embeddings.

    img, txt: (b, d) L2-normalised; report_ids: (b,) int, equal ids mean identical report text."""
    logits = logit_scale.double() * img.double() @ txt.double().t()
    pos = (report_ids[:, None] == report_ids[None, :]).double()
    target = pos / pos.sum(dim=1, keepdim=True)
    loss_i = -(target * _log_softmax(logits)).sum(dim=1).mean()
    loss_t = -(target * _log_softmax(logits.t())).sum(dim=1).mean()
    return ((loss_i + loss_t) / 2).float()


TRAIN_THREADS = 2  # CPU threads of every demo training: a thread count changes how sums split, so it is fixed


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, **_: Any) -> torch.Tensor:
    """scaled_dot_product_attention without torch's softmax kernel (_log_softmax's reason): the same arithmetic
    on every x86 CPU for the demo's attention layers (no dropout: the demo uses none)."""
    if dropout_p:
        raise ValueError("the demo's reproducible attention has no dropout")
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        n, m = scores.shape[-2:]
        attn_mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = (scores - scores.detach().amax(dim=-1, keepdim=True)).exp()
    return (weights / weights.sum(dim=-1, keepdim=True)) @ v


@contextlib.contextmanager
def reproducible_training(seed: int) -> Iterator[None]:
    """What makes a demo training repeat bit for bit, restored afterwards: deterministic algorithms only,
    TRAIN_THREADS CPU threads, torch's global seed (data order and augmentation draw from their own seeded
    generator), and attention and loss without torch's softmax kernels, whose AVX2 and AVX-512 versions differ in
    the last bits (_attention, _log_softmax). What can still differ between machines: docs/METRICS.md, "The same
    numbers on another machine"; every run records the weights hash it used."""
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    sdpa = F.scaled_dot_product_attention
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(TRAIN_THREADS)
    torch.manual_seed(seed)
    F.scaled_dot_product_attention = _attention  # what nn.MultiheadAttention calls while training
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def _lr_at(step: int, total: int, config: DemoConfig) -> float:
    warm = max(1, int(config.warmup_frac * total))
    if step < warm:
        return config.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return config.lr * 0.5 * (1 + math.cos(math.pi * frac))


def load_training_data(config: DemoConfig, size: int, tokenizer: Any,
                       progress: ProgressLike) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """(images (n, S, S) uint8, tokens (m, ctx) of the distinct reports, report index (n,) int64)."""
    source = load_source("synthetic", **config.source_options)
    train = source.pairs[source.pairs["split"] == "train"].head(config.max_pairs)
    if train.empty:
        raise SourceError(f"The synthetic source {config.source_options} has no training pairs; raise n_patients.")
    images = render_images(source.read_image, train["image_path"].tolist(), size, progress)
    codes, uniques = train["report"].factorize()
    tokens = tokenizer(list(uniques))
    return images, tokens, np.asarray(codes, dtype=np.int64)


def train_demo(config: DemoConfig = DEFAULT_DEMO, progress: ProgressLike | None = None,
               device: str | torch.device = "cpu") -> Path:
    """Train the demo model from scratch and save it; returns the folder (weights.pt, config.json).

    device: where the training steps run. The default is the CPU: the same seed gives bit-identical weights on one
    machine (reproducible_training), while another CPU family (torch's softmax kernels in the attention layers) or
    a GPU trains statistically equivalent, not bit-identical, weights; config.json records their weights hash.
    progress: rendering, then one call per step with the time left from the measured step times."""
    progress = progress or null_progress
    dev = torch.device(device)
    with reproducible_training(config.seed):
        return _train(config, progress, dev)


def step_message(step: int, total: int, seconds: list[float], loss: float) -> str:
    """The progress message of training step `step` of `total`: the time left from the mean of the last (up to 20)
    measured step times on this machine."""
    recent = seconds[-20:]
    per_step = sum(recent) / len(recent) if recent else TRAIN_TIMES_S["step"]
    left = per_step * (total - step)
    return (f"training the demo model: step {step} of {total}, {per_step:.2f} s a step here, "
            f"about {left // 60:.0f} min {left % 60:02.0f} s left (loss {loss:.3f})")


def _train(config: DemoConfig, progress: ProgressLike, dev: torch.device) -> Path:
    model, tokenizer = build_architecture(config.arch)
    size = _image_size(model)
    steps_planned = config.planned_steps()
    render_s, train_s = config.max_pairs * TRAIN_TIMES_S["render_per_pair"], steps_planned * TRAIN_TIMES_S["step"]
    split = int(round(1000 * render_s / (render_s + train_s)))  # the bar's share of rendering (of 1000)
    images, tokens, report_idx = load_training_data(config, size, tokenizer, scaled(progress, 0, split, 1000))
    n = len(images)
    steps_per_epoch = max(1, n // min(config.batch_size, n))
    total = steps_per_epoch * config.epochs
    steps = scaled(progress, split, 1000 - split, 1000)  # training fills the rest of the bar, step by step
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images_t, report_t = torch.from_numpy(images).to(dev), torch.from_numpy(report_idx).to(dev)
    tokens = tokens.to(dev)
    model.to(dev).train()
    start, losses, step, step_s = time.time(), [], 0, []
    steps(0, total, f"training the demo model: {total} steps")
    for _epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen).to(dev)
        for b in range(steps_per_epoch):
            t0 = time.perf_counter()
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, config)
            x = _augment(to_model_input(images_t[idx]), config.shift_px, gen)
            img = model.encode_image(x, normalize=True)
            # encode each distinct report of the batch once (boilerplate normals repeat a lot)
            uniq, inverse = torch.unique(report_t[idx], return_inverse=True)
            txt = model.encode_text(tokens[uniq], normalize=True)[inverse]
            loss = multi_positive_clip_loss(img, txt, report_t[idx], model.logit_scale.exp().clamp(max=100))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            step_s.append(time.perf_counter() - t0)
            steps(step, total, step_message(step, total, step_s, float(np.mean(losses[-20:]))))
    model = model.cpu()
    return _save(model, config, {"weights_hash": state_dict_digest(model.state_dict()), "n_pairs": n,
                                 "n_reports": len(tokens), "steps": total, "device": str(dev),
                                 "seconds": round(time.time() - start, 1), "threads": TRAIN_THREADS,
                                 "final_loss": float(np.mean(losses[-20:]))})


def _save(model: torch.nn.Module, config: DemoConfig, log_info: dict[str, Any]) -> Path:
    """Write weights and config atomically (a half-written folder is never taken for a finished one)."""
    final = demo_dir(config)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), tmp / "weights.pt")
    meta = {"config": dataclasses.asdict(config), "train_version": TRAIN_VERSION, "training": log_info}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if final.exists():  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(final)
    log.info("demo model trained: %s (%s)", final, log_info)
    return final


def prepare_demo(progress: ProgressLike | None = None, config: DemoConfig = DEFAULT_DEMO,
                 device: str | torch.device = "cpu") -> Path:
    """The folder of the demo's weights, training them first (on `device`) when they are not cached."""
    settings.check_device(device)
    folder = demo_dir(config)
    if (folder / "weights.pt").is_file():
        return folder
    log.info("training the demo model (first use; cached afterwards in %s)", folder)
    return train_demo(config, progress, device)


def load_demo(device: torch.device, progress: ProgressLike | None = None, config: DemoConfig = DEFAULT_DEMO,
              name: str = "demo", **_: Any) -> LoadedModel:
    """The trained demo model as a LoadedModel (training it first when needed)."""
    folder = prepare_demo(progress, config)
    model, tokenizer = build_architecture(config.arch)
    model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    mean, std = (DEMO_MEAN,) * 3, (DEMO_STD,) * 3
    return wrap_model(name, model, tokenizer, device, weights_id=file_id(folder / "weights.pt"), mean=mean, std=std)


def load_rung(device: torch.device, progress: ProgressLike | None = None, name: str = "demo", **_: Any) -> LoadedModel:
    """A rung of the ladder (backend.models.demo_config.RUNGS) by its model name, training it first when needed."""
    return load_demo(device, progress, config=get_rung(name).config, name=name)
