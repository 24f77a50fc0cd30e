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

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend import settings
from backend.errors import SourceError
from backend.models import file_id
from backend.models.demo_config import DEFAULT_DEMO, TRAIN_VERSION, DemoConfig, demo_dir, get_rung
from backend.models.openclip import LoadedModel, build_architecture, wrap_model
from backend.progress import ProgressLike, null_progress
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
            progress(i + 1, len(paths), "rendering training images")
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


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, report_ids: torch.Tensor,
                             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch where identical reports are positives of each other.

    img, txt: (b, d) L2-normalised; report_ids: (b,) int, equal ids mean identical report text."""
    logits = logit_scale * img @ txt.t()
    pos = (report_ids[:, None] == report_ids[None, :]).float()
    target = pos / pos.sum(dim=1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


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

    device: where the training steps run. The default is the CPU: the same seed gives the same weights on the
    same CPU family, while another CPU family (other SIMD kernels in torch's float32 arithmetic) or a GPU trains
    statistically equivalent, not bit-identical, weights."""
    progress = progress or null_progress
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    model, tokenizer = build_architecture(config.arch)
    size = _image_size(model)
    images, tokens, report_idx = load_training_data(config, size, tokenizer, progress)
    n = len(images)
    steps_per_epoch = max(1, n // min(config.batch_size, n))
    total = steps_per_epoch * config.epochs
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images_t, report_t = torch.from_numpy(images).to(dev), torch.from_numpy(report_idx).to(dev)
    tokens = tokens.to(dev)
    model.to(dev).train()
    start, losses, step = time.time(), [], 0
    for _epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen).to(dev)
        for b in range(steps_per_epoch):
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
            progress(step, total, f"training demo model (loss {np.mean(losses[-20:]):.3f})")
    return _save(model.cpu(), config, {"n_pairs": n, "n_reports": len(tokens), "steps": total, "device": str(dev),
                                       "seconds": round(time.time() - start, 1),
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
