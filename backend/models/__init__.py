"""The model registry: one `ModelEntry` per model, torch-free (the dashboard lists them on every page), each
naming the function that builds it ("module:function"), imported only when the model is loaded.

    load_model(name, device=None, progress=None, **options) -> LoadedModel   (backend.models.openclip)

Built-in entries: the project's demo model and its ladder rungs demo-weak and demo-strong (trained by
backend.models.demo, configs in backend.models.demo_config), OpenAI CLIP ViT-B/16 and
BiomedCLIP from the Hugging Face hub, a CheXzero checkpoint, and `local:<path>[#config]` checkpoints. Hub
entries never hang: when offline and the weights are not cached, loading raises ModelUnavailableError at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import ModelUnavailableError
from backend.models.demo_config import RUNGS
from backend.registry import Registry, resolve
from backend.settings import check_device

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OPENAI_B16_REPO = "timm/vit_base_patch16_clip_224.openai"
CHEXZERO_ENV = "CXR_CHEXZERO_CKPT"
LOCAL_PREFIX = "local:"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    domain: str  # "synthetic" | "general" | "biomedical" | "chest x-ray" | "any"
    weights: str  # where the weights come from, in words a user can act on
    loader: str  # "module:function" with signature (device, progress=None, name=..., **options) -> LoadedModel
    hub: bool = False  # weights come from the Hugging Face hub (unavailable offline unless cached)


MODELS: Registry[ModelEntry] = Registry("model", ModelUnavailableError, hint=", or local:<path>[#config]")
register_model = MODELS.register
list_models = MODELS.list


def get_model(name: str) -> ModelEntry:
    """The entry of `name`; `local:<path>[#config]` gives an entry built on the fly."""
    if name.startswith(LOCAL_PREFIX):
        path = name[len(LOCAL_PREFIX):]
        return ModelEntry(name, f"open_clip checkpoint at {path}", "any", path, "backend.models.openclip:load_local")
    return MODELS.get(name)


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}


def file_id(path: str | Path) -> str:
    """The identity of a weights file: the content hash (sha256, 16 hex) of a file up to 256 MB; for a larger one
    its name, size, mtime, inode and ctime (reading it whole would cost seconds at every load; an overwrite in
    place still changes the ctime)."""
    p = Path(path)
    stat = p.stat()
    if stat.st_size > 256 * 2**20:
        return f"{p.name}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_model(name: str) -> None:
    """What can be known of a model before any job starts, without torch: a registered name, or a `local:`
    checkpoint that exists and names its architecture (a file needs #<open_clip config>, a folder its
    open_clip_config.json). ModelUnavailableError saying what to fix otherwise; loading checks the rest."""
    if not name.startswith(LOCAL_PREFIX):
        get_model(name)
        return
    path_text, _, config = name[len(LOCAL_PREFIX):].partition("#")
    path = Path(path_text).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ModelUnavailableError(f"{path} has no open_clip_config.json; use local:<checkpoint file>#<config>.")
        return
    if not path.is_file():
        raise ModelUnavailableError(f"Checkpoint {path} does not exist (from model name {name!r}).")
    if not config:
        raise ModelUnavailableError(f"Name the architecture of {path}: local:{path_text}#<open_clip config>, "
                                    "e.g. #ViT-B-32.")


def local_weights_id(name: str) -> str | None:
    """The weights identity of a `local:<path>[#config]` model without loading it (None for a registered
    model, or when the path is not there: loading it then fails with its own message): the checkpoint file's
    file_id, or for a folder its open_clip_config.json's and every weights file's, joined by '+'."""
    if not name.startswith(LOCAL_PREFIX):
        return None
    path = Path(name[len(LOCAL_PREFIX):].partition("#")[0]).expanduser()
    if path.is_file():
        return file_id(path)
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        weights = sorted(f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        return "+".join(file_id(f) for f in [path / "open_clip_config.json", *weights])
    return None


def load_model(name: str, device: Any = None, progress: Any = None, **options: Any) -> Any:
    """Build model `name` (a LoadedModel: weights, preprocessing, tokenizer and head access) on `device`
    (default: cuda when present). Raises ModelUnavailableError (fast, never hanging) when weights are missing,
    DeviceError when `device` is unknown or not present."""
    check_device(device)
    entry = get_model(name)
    loader = resolve(entry.loader, f"Model {name!r}", ModelUnavailableError)
    return loader(device=device, progress=progress, name=name, **options)


for _entry in (
    ModelEntry("demo", "Small CLIP (ViT image tower, 128 px) trained by the project on the synthetic train split; "
               f"ladder rung 2 of 3, {RUNGS['demo'].specialisation}",
               "synthetic", "trained on first use (about 14 min on a 2-core CPU), cached under <cache>/models",
               "backend.models.demo:load_demo"),
    ModelEntry("demo-weak", f"The demo's architecture; ladder rung 1 of 3, {RUNGS['demo-weak'].specialisation}",
               "synthetic", "trained on first use (about 2 min on a 2-core CPU), cached under <cache>/models",
               "backend.models.demo:load_rung"),
    ModelEntry("demo-strong", f"The demo's architecture; ladder rung 3 of 3, {RUNGS['demo-strong'].specialisation}",
               "synthetic", "trained on first use (about 32 min on a 2-core CPU), cached under <cache>/models",
               "backend.models.demo:load_rung"),
    ModelEntry("openai-vit-b-16", "OpenAI CLIP ViT-B/16 (general domain)", "general",
               f"Hugging Face hub {OPENAI_B16_REPO} (downloaded once into the HF cache)",
               "backend.models.openclip:load_openai_b16", hub=True),
    ModelEntry("biomedclip", "BiomedCLIP: ViT-B/16 + PubMedBERT trained on PMC-15M figures (biomedical)",
               "biomedical", f"Hugging Face hub {BIOMEDCLIP_REPO} (needs the transformers package)",
               "backend.models.openclip:load_biomedclip", hub=True),
    ModelEntry("chexzero", "CheXzero-style ViT-B/32 CLIP fine-tuned on MIMIC-CXR (chest X-ray)", "chest x-ray",
               f"a local checkpoint: set {CHEXZERO_ENV} or pass checkpoint=PATH", "backend.models.openclip:load_chexzero"),
):
    register_model(_entry)
