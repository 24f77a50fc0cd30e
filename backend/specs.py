"""Frozen dataclasses for every job. The canonical JSON of a spec (sorted keys, no whitespace) is
hashed into its run id, which is also its cache key: the same spec always maps to the same run.

Add a field with a default to extend a spec; never rename one (old run ids would change meaning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from backend.errors import SpecError


def _plain(value: Any) -> Any:
    """A JSON-ready copy: dataclasses to dicts, tuples to lists, inf/nan to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["kind"] = type(value).__name__
        return out
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


class SpecMixin:
    """Canonical JSON, run id and a round trip through JSON for every spec."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def run_id(self) -> str:
        """`<kind>-<12 hex>`: short, stable, unique per spec."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
        return f"{type(self).__name__.removesuffix('Spec').lower()}-{digest}"


@dataclass(frozen=True)
class SourceSpec(SpecMixin):
    """Which pairs: a registered source, its root folder and options, and the section policy."""

    name: str = "synthetic"
    root: str | None = None
    section_policy: str = "findings+impression"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbedSpec(SpecMixin):
    """Embed one split of a source with one model (image and report embeddings + pre-projection features)."""

    source: SourceSpec = field(default_factory=SourceSpec)
    model: str = "demo"
    split: str = "test"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test", "all"):
            raise SpecError(f"Unknown split {self.split!r}; use train, val, test or all.")
        if self.batch_size < 1:
            raise SpecError(f"batch_size must be >= 1, got {self.batch_size}.")


POOL_KINDS: tuple[str, ...] = ("random", "hard")


@dataclass(frozen=True)
class AuditSpec(SpecMixin):
    """Measure re-linkage on one embedding run."""

    embed: EmbedSpec = field(default_factory=EmbedSpec)
    pools: tuple[str, ...] = POOL_KINDS
    ks: tuple[int, ...] = (1, 5, 10)
    include_same_patient: bool = False
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [p for p in self.pools if p not in POOL_KINDS]
        if bad:
            raise SpecError(f"Unknown pool kind(s) {bad}; use {', '.join(POOL_KINDS)}.")
        if not self.ks or min(self.ks) < 1:
            raise SpecError(f"Every K must be a positive integer, got {self.ks}.")
        if self.n_bootstrap < 0:
            raise SpecError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}.")


OBJECTIVES: tuple[str, ...] = ("in-batch", "public-negatives")
PRIVACY_UNITS: tuple[str, ...] = ("pair", "patient")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")


@dataclass(frozen=True)
class DPSpec(SpecMixin):
    """Train the projection heads over frozen encoders (DP-SGD, or non-private when epsilon is inf),
    then audit and probe the test split; optionally evaluate transfer on other sources."""

    source: SourceSpec = field(default_factory=SourceSpec)
    model: str = "demo"
    epsilon: float = 0.34  # math.inf: non-private retraining with the same schedule
    delta: float = 6e-6
    objective: str = "in-batch"
    privacy_unit: str = "pair"
    max_grad_norm: float = 1.0
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    init: str = "model"  # "model": start from the model's own heads; "random"
    accountant: str = "rdp"
    public_bank: SourceSpec | None = None  # negatives for "public-negatives"; None -> OpenI when present
    transfer: tuple[SourceSpec, ...] = ()
    audit: AuditSpec = field(default_factory=AuditSpec)  # pools/ks/bootstrap for the evaluation
    seed: int = 0
    n_negatives: int = 256  # public-negatives: bank reports drawn per step as negatives

    def __post_init__(self) -> None:
        if not (self.epsilon > 0):
            raise SpecError(f"epsilon must be > 0 (use inf for no DP), got {self.epsilon}.")
        if not (0 < self.delta < 1):
            raise SpecError(f"delta must lie in (0, 1), got {self.delta}.")
        if not (self.max_grad_norm > 0):
            raise SpecError(f"max_grad_norm (clipping) must be > 0, got {self.max_grad_norm}.")
        if self.objective not in OBJECTIVES:
            raise SpecError(f"Unknown objective {self.objective!r}; use {', '.join(OBJECTIVES)}.")
        if self.privacy_unit not in PRIVACY_UNITS:
            raise SpecError(f"Unknown privacy unit {self.privacy_unit!r}; use {', '.join(PRIVACY_UNITS)}.")
        if self.accountant not in ACCOUNTANTS:
            raise SpecError(f"Unknown accountant {self.accountant!r}; use {', '.join(ACCOUNTANTS)}.")
        if self.epochs < 1 or self.batch_size < 1 or not (self.lr > 0):
            raise SpecError("epochs and batch_size must be >= 1 and lr > 0.")
        if self.n_negatives < 1:
            raise SpecError(f"n_negatives must be >= 1, got {self.n_negatives}.")
        if self.optimizer not in ("adam", "sgd") or self.init not in ("model", "random"):
            raise SpecError(f"optimizer must be adam or sgd and init model or random, got {self.optimizer!r}, {self.init!r}.")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


DEFAULT_EPSILONS: tuple[float, ...] = (0.34, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)


@dataclass(frozen=True)
class SweepSpec(SpecMixin):
    """One DPSpec per epsilon in the grid (everything else shared)."""

    base: DPSpec = field(default_factory=DPSpec)
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS

    def points(self) -> list[DPSpec]:
        return [dataclasses.replace(self.base, epsilon=e) for e in self.epsilons]
