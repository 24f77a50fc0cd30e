"""What the project's own models are trained on, torch-free: DemoConfig (every field part of the cache key),
the `demo` model's config, and the synthetic ladder of demo models (same architecture, increasing degrees of
in-domain specialisation). Listing models, estimating training time and the dashboard read this module
without importing torch; backend.models.demo trains and loads the weights.

The ladder, from weakly to strongly aligned to the default synthetic data's test split (mixed
site A/B styles):
- `demo-weak`: site A style only (the other half of the test split is in site B's templates, vocabulary,
  contrast and noise), 3,000 pairs, 4 epochs (92 steps): little data, short, partly out of style.
- `demo`: the demo as shipped (both sites, 12,000 pairs, 8 epochs, 744 steps); unchanged, its cache key too.
- `demo-strong`: both sites, every train pair of the default 6,000-patient source (18,000 pairs), 12 epochs
  (1,680 steps): more in-domain pairs, longer.
The rungs were chosen by design (data size, style match, length); whether their AUROCs and lifts rise rung
by rung is what `python -m backend ladder` measures. Train patients are never test patients: splits hash
the patient id, and patients are a function of (seed, index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend import settings
from backend.errors import SpecError
from backend.specs import LADDER_RUNGS

TRAIN_VERSION = "demo-train-v2"  # bump when the training code changes what it produces (v2: deterministic, 2 threads, float64 loss)
# Seconds per pair rendered and per training step on a quiet 2-core x86 CPU (2026-11-30): how a demo job splits
# its bar before anything is timed; once training runs, its time left comes from the steps measured here.
TRAIN_TIMES_S = {"step": 1.1, "render_per_pair": 0.004}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo is trained on and how. Every field is part of the cache key."""

    arch: str = "cxr-demo"  # an open_clip config (backend/models/configs/<arch>.json)
    # Patients are a function of (seed, index) and splits of the patient id, so these train patients are
    # never test patients of any synthetic dataset with the same seed.
    source_options: dict[str, Any] = field(default_factory=lambda: {"n_patients": 4500, "seed": 0})
    max_pairs: int = 12000  # cap on training pairs (first pairs of the train split)
    epochs: int = 8  # 744 steps; bench/demo_scan.py: R@1@100 0.067 at 4 epochs, 0.094 at 8, 0.100 at 16 (GPU scan)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    shift_px: int = 4  # random translation augmentation (pixels at model resolution)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "max_pairs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"Demo {name} must be an integer >= 1, got {value!r} (an untrained or empty demo "
                                "model would be cached).")
        if not (self.lr > 0):
            raise SpecError(f"Demo lr must be > 0, got {self.lr!r}.")

    def key(self) -> str:
        blob = json.dumps({"v": TRAIN_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def planned_steps(self) -> int:
        """Training steps when the train split holds at least max_pairs pairs (true of every shipped rung;
        fewer pairs give fewer steps): (max_pairs // batch_size) x epochs."""
        return max(1, self.max_pairs // min(self.batch_size, self.max_pairs)) * self.epochs


DEFAULT_DEMO = DemoConfig()
WEAK_DEMO = DemoConfig(source_options={"n_patients": 4500, "seed": 0, "sites": "A"}, max_pairs=3000, epochs=4)
STRONG_DEMO = DemoConfig(source_options={"n_patients": 6000, "seed": 0}, max_pairs=18000, epochs=12)


@dataclass(frozen=True)
class Rung:
    """One rung of the ladder: a registered model name, its training config and the degree of specialisation."""

    name: str
    config: DemoConfig
    specialisation: str


RUNGS: dict[str, Rung] = {}


def register_rung(rung: Rung) -> None:
    """Add (or replace) a rung; tests register tiny rungs the same way."""
    RUNGS[rung.name] = rung


def get_rung(name: str) -> Rung:
    if name not in RUNGS:
        raise SpecError(f"{name!r} is not a rung of the ladder; rungs: {', '.join(RUNGS)}.")
    return RUNGS[name]


LADDER: tuple[str, ...] = LADDER_RUNGS  # weakest first
for _rung in (
    Rung("demo-weak", WEAK_DEMO, "weakly aligned: site A style only, 3,000 pairs, 4 epochs (92 steps)"),
    Rung("demo", DEFAULT_DEMO, "the demo: both site styles, 12,000 pairs, 8 epochs (744 steps)"),
    Rung("demo-strong", STRONG_DEMO, "strongly aligned: both site styles, 18,000 pairs, 12 epochs (1,680 steps)"),
):
    register_rung(_rung)


def demo_dir(config: DemoConfig = DEFAULT_DEMO) -> Path:
    """Folder of the cached weights of `config` (may not exist yet)."""
    return settings.cache_subdir("models") / f"demo-{config.key()}"


def is_trained(config: DemoConfig) -> bool:
    return (demo_dir(config) / "weights.pt").is_file()
