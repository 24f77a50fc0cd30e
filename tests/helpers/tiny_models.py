"""Tiny models for the embed/audit tests: random weights (no training) and a seconds-long demo training."""

from __future__ import annotations

from typing import Any

import torch

from backend.models import ModelEntry, register_model
from backend.models.demo import DemoConfig, load_demo
from backend.models.demo_config import Rung, register_rung
from backend.models.openclip import build_architecture, wrap_model

TINY_DEMO = DemoConfig(arch="cxr-demo-tiny", source_options={"n_patients": 40, "seed": 0}, max_pairs=96,
                       epochs=2, batch_size=32)
# The ladder on a tiny setting: the same three degrees of specialisation as demo-weak / demo / demo-strong
# (site A only, fewer pairs, shorter; the demo recipe; more pairs, longer), each trained in seconds.
TINY_WEAK = DemoConfig(arch="cxr-demo-tiny", source_options={"n_patients": 40, "seed": 0, "sites": "A"}, max_pairs=48,
                       epochs=1, batch_size=32)
TINY_STRONG = DemoConfig(arch="cxr-demo-tiny", source_options={"n_patients": 60, "seed": 0}, max_pairs=160, epochs=3,
                         batch_size=32)
TINY_RUNGS: dict[str, DemoConfig] = {"demo-weak-tiny": TINY_WEAK, "demo-tiny": TINY_DEMO, "demo-strong-tiny": TINY_STRONG}
TINY_SOURCE_OPTIONS: dict[str, Any] = {"n_patients": 12, "seed": 3, "image_size": 64}


def load_tiny_random(device: torch.device, progress: Any = None, **_: Any):
    torch.manual_seed(0)
    model, tokenizer = build_architecture("cxr-demo-tiny")
    return wrap_model("tiny-random", model, tokenizer, device, weights_id="tiny-random-seed0",
                      mean=(0.5,) * 3, std=(0.25,) * 3)


def load_demo_tiny(device: torch.device, progress: Any = None, **_: Any):
    return load_demo(device, progress, config=TINY_DEMO, name="demo-tiny")


def register_tiny_models() -> None:
    """Register `tiny-random` (untrained cxr-demo-tiny), `demo-tiny` (demo recipe, seconds of training) and the tiny
    ladder's rungs demo-weak-tiny, demo-tiny, demo-strong-tiny (models and rungs)."""
    register_model(ModelEntry("tiny-random", "untrained cxr-demo-tiny (tests)", "synthetic", "random",
                              "tests.helpers.tiny_models:load_tiny_random"))
    register_model(ModelEntry("demo-tiny", "demo recipe on a tiny config (tests)", "synthetic", "trained",
                              "tests.helpers.tiny_models:load_demo_tiny"))
    for name, config in TINY_RUNGS.items():
        register_rung(Rung(name, config, f"tiny rung ({config.max_pairs} pairs, {config.epochs} epochs; tests)"))
        if name != "demo-tiny":
            register_model(ModelEntry(name, f"ladder rung on a tiny config (tests): {config.max_pairs} pairs", "synthetic",
                                      "trained", "backend.models.demo:load_rung"))


def load_broken(device: torch.device, progress: Any = None, **_: Any):
    """A model whose weights cannot be loaded (tests of failure paths in other processes)."""
    from backend.errors import ModelUnavailableError

    raise ModelUnavailableError("tiny-broken: these weights are missing on purpose (test)")
