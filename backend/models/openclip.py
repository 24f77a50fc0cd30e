"""open_clip models as `LoadedModel`s: the building blocks (wrap_model, build_architecture, preprocessing)
and the loaders of the hub models, a CheXzero-style checkpoint and `local:<path>` checkpoints, each with
access to pre-projection features and projection heads (backend/models/towers.py). The registry that names
these loaders is backend/models/__init__.py; the demo model's loader is backend/models/demo.py.

Hub entries never hang: the local Hugging Face cache is checked first; when offline
(HF_HUB_OFFLINE=1 or CXR_OFFLINE=1) and the weights are not cached, `load_model` raises
ModelUnavailableError at once, saying how to make the weights available.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.model import build_model_from_openai_state_dict
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from backend.errors import ModelUnavailableError
from backend.models import (
    BIOMEDCLIP_REPO,
    CHEXZERO_ENV,
    LOCAL_PREFIX,
    OPENAI_B16_REPO,
    check_model,
    file_id,
    hub,
    local_weights_id,
)
from backend.models.digest import state_dict_digest
from backend.models.towers import HeadSlot, image_head_slot, text_head_slot

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
open_clip.add_model_config(CONFIG_DIR)  # registers the project's architectures (cxr-demo, ...) by JSON


@dataclass
class LoadedModel:
    """A model ready to embed.

    model        the open_clip model (eval mode, on `device`)
    preprocess   PIL image -> (3, H, W) float tensor (the model's own transform; "L" becomes RGB)
    tokenizer    list[str] -> (b, context_length) int64 tensor
    weights_id   identifies the weights (content hash or hub revision): part of every cache key
    weights_hash the state_dict digest of the weights as loaded (backend.models.digest; computed on first use)
    preprocess_id  canonical JSON of the preprocessing configuration: part of every cache key
    image_head, text_head  nn.Linear copies of the projection heads: features -> embedding (pre L2 norm)
    """

    name: str
    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    weights_id: str
    preprocess_id: str
    image_slot: HeadSlot
    text_slot: HeadSlot
    image_head: nn.Linear = field(init=False)
    text_head: nn.Linear = field(init=False)

    def __post_init__(self) -> None:
        self.image_head = self.image_slot.as_linear().eval()
        self.text_head = self.text_slot.as_linear().eval()

    @functools.cached_property
    def weights_hash(self) -> str:
        """The weights hash every run records (backend.models.digest.state_dict_digest of the loaded model)."""
        return state_dict_digest(self.model.state_dict())

    def encode_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) preprocessed images -> (b, d_img_pre) pre-projection features."""
        with self.image_slot.swapped():
            return self.model.encode_image(images)

    def encode_text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, context_length) tokens -> (b, d_txt_pre) pre-projection features."""
        with self.text_slot.swapped():
            return self.model.encode_text(tokens)

    def head_arrays(self) -> dict[str, Any]:
        """The heads as numpy (see EmbeddingSet.heads): image_w (d_img_pre, d), image_b (d,) or None, ..."""

        def parts(head: nn.Linear) -> tuple[np.ndarray, np.ndarray | None]:
            w = head.weight.detach().float().cpu().numpy().T.copy()
            b = None if head.bias is None else head.bias.detach().float().cpu().numpy().copy()
            return w, b

        image_w, image_b = parts(self.image_head)
        text_w, text_b = parts(self.text_head)
        return {"image_w": image_w, "image_b": image_b, "text_w": text_w, "text_b": text_b, "kind": "linear"}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device; None means cuda when present, else cpu."""
    return torch.device(device) if device is not None else default_device()


# ---------------------------------------------------------------- building blocks

def preprocess_of(model: nn.Module, **overrides: Any) -> tuple[Callable[[Any], torch.Tensor], str]:
    """(the model's inference transform, canonical JSON of its config), with optional overrides."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    cfg.setdefault("size", model.visual.image_size)
    cfg.update(overrides)
    pp = PreprocessCfg(**cfg)
    transform = image_transform_v2(pp, is_train=False)
    ident = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in vars(pp).items()}, sort_keys=True)
    return transform, ident


def wrap_model(name: str, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
               device: str | torch.device | None, weights_id: str, **preprocess_overrides: Any) -> LoadedModel:
    """A LoadedModel from an open_clip model (moved to `device`, default cuda when present; fp32, eval mode)."""
    device = as_device(device)
    model = model.float().to(device).eval()
    preprocess, preprocess_id = preprocess_of(model, **preprocess_overrides)
    return LoadedModel(name=name, model=model, preprocess=preprocess, tokenizer=tokenizer, device=device,
                       weights_id=weights_id, preprocess_id=preprocess_id,
                       image_slot=image_head_slot(model.visual), text_slot=text_head_slot(model))


def build_architecture(config: str, device: str | torch.device = "cpu") -> tuple[nn.Module, Callable]:
    """An open_clip architecture (built-in or project JSON config) with random weights, and its tokenizer."""
    with quiet_open_clip():
        model = open_clip.create_model(config, pretrained=None, device=device, pretrained_text=False)
        return model, open_clip.get_tokenizer(config)


class _QuietOpenClip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Hide open_clip's step-by-step INFO lines (it logs on the root logger) and its "initialized randomly"
    warning where random init is intended (weights follow); other warnings and errors still show."""
    flt = _QuietOpenClip()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


# ---------------------------------------------------------------- loaders

def load_openai_b16(device: torch.device | None, progress: Any = None, **_: Any) -> LoadedModel:
    hub.require_cached("openai-vit-b-16", OPENAI_B16_REPO, hub.OPEN_CLIP_WEIGHTS,
                       url_file=Path("~/.cache/clip/ViT-B-16.pt").expanduser())
    with hub.translate_errors("openai-vit-b-16"), quiet_open_clip():
        model = open_clip.create_model("ViT-B-16", pretrained="openai", device="cpu")
    with quiet_open_clip():
        tokenizer = open_clip.get_tokenizer("ViT-B-16")
    return wrap_model("openai-vit-b-16", model, tokenizer, device,
                      weights_id="ViT-B-16/openai")


def load_biomedclip(device: torch.device | None, progress: Any = None, **_: Any) -> LoadedModel:
    hub.require_cached("biomedclip", BIOMEDCLIP_REPO, ("open_clip_config.json",))
    hub.require_cached("biomedclip", BIOMEDCLIP_REPO, hub.OPEN_CLIP_WEIGHTS)
    hub.require_module("biomedclip", "transformers", "its PubMedBERT text tower is a Hugging Face model")
    name = f"hf-hub:{BIOMEDCLIP_REPO}"
    with hub.translate_errors("biomedclip"), quiet_open_clip():
        model = open_clip.create_model(name, device="cpu")
        tokenizer = open_clip.get_tokenizer(name)
    return wrap_model("biomedclip", model, tokenizer, device, weights_id=f"{BIOMEDCLIP_REPO}")


# CheXzero normalises 0-255 grayscale with these constants (rajpurkarlab/CheXzero, data_process.py)
CHEXZERO_MEAN, CHEXZERO_STD = 101.48761 / 255, 83.43944 / 255


def load_chexzero(device: torch.device | None, progress: Any = None, checkpoint: str | None = None,
                   **_: Any) -> LoadedModel:
    path = checkpoint or os.environ.get(CHEXZERO_ENV)
    if not path:
        raise ModelUnavailableError(
            f"chexzero needs a local checkpoint: set {CHEXZERO_ENV}=/path/to/best_64_....pt (a CheXzero "
            "ViT-B/32 state dict from github.com/rajpurkarlab/CheXzero) or pass checkpoint=PATH.")
    if not Path(path).is_file():
        raise ModelUnavailableError(f"chexzero checkpoint {path} does not exist; fix {CHEXZERO_ENV} or checkpoint=.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model = build_model_from_openai_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ModelUnavailableError(f"{path} is not an OpenAI-CLIP-format (CheXzero) state dict: {exc}") from exc
    tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
    mean, std = (CHEXZERO_MEAN,) * 3, (CHEXZERO_STD,) * 3
    return wrap_model("chexzero", model, tokenizer, device, weights_id=file_id(path), mean=mean, std=std,
                      size=model.visual.image_size)


def load_local(device: torch.device | None, progress: Any = None, name: str = "", **_: Any) -> LoadedModel:
    check_model(name)  # exists, names its architecture
    path, _, config = name[len(LOCAL_PREFIX):].partition("#")
    p = Path(path).expanduser()
    if p.is_dir():
        with hub.translate_errors(name, str(p)), quiet_open_clip():
            model = open_clip.create_model(f"local-dir:{p}", device="cpu")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{p}")
        return wrap_model(name, model, tokenizer, device, weights_id=local_weights_id(name))
    if open_clip.get_model_config(config) is None:
        raise ModelUnavailableError(f"Unknown open_clip config {config!r}; see open_clip.list_models().")
    with hub.translate_errors(name, str(p)), quiet_open_clip():
        model = open_clip.create_model(config, pretrained=str(p), device="cpu", pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(config)
    return wrap_model(name, model, tokenizer, device, weights_id=file_id(p))
