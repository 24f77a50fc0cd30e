"""The registered models in words, without importing torch or open_clip: the dashboard lists them on every
page, and backend.models attaches a loader to each entry (one list, so the two never disagree).

An entry's `loader` names the function that builds it ("module:function"); backend.models resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    loader: str  # "module:function" with signature (device, progress=None, **options) -> LoadedModel
    hub: bool = False  # weights come from the Hugging Face hub (unavailable offline unless cached)


_CATALOG: dict[str, ModelEntry] = {}


def register_entry(entry: ModelEntry) -> None:
    """Add (or replace) an entry; backend.models gives it a loader when it is imported."""
    _CATALOG[entry.name] = entry


def list_entries() -> list[ModelEntry]:
    """Every registered model, in registration order (`local:<path>` is accepted besides these)."""
    return list(_CATALOG.values())


def get_entry(name: str) -> ModelEntry | None:
    return _CATALOG.get(name)


for _entry in (
    ModelEntry("demo", "Small CLIP (ViT image tower, 128 px) trained by the project on the synthetic train split",
               "synthetic", "trained on first use (a few minutes on a CPU), cached under <cache>/models",
               "backend.models:_load_demo"),
    ModelEntry("openai-vit-b-16", "OpenAI CLIP ViT-B/16 (general domain)", "general",
               f"Hugging Face hub {OPENAI_B16_REPO} (downloaded once into the HF cache)",
               "backend.models:_load_openai_b16", hub=True),
    ModelEntry("biomedclip", "BiomedCLIP: ViT-B/16 + PubMedBERT trained on PMC-15M figures (biomedical)",
               "biomedical", f"Hugging Face hub {BIOMEDCLIP_REPO} (needs the transformers package)",
               "backend.models:_load_biomedclip", hub=True),
    ModelEntry("chexzero", "CheXzero-style ViT-B/32 CLIP fine-tuned on MIMIC-CXR (chest X-ray)", "chest x-ray",
               f"a local checkpoint: set {CHEXZERO_ENV} or pass checkpoint=PATH", "backend.models:_load_chexzero"),
):
    register_entry(_entry)
