"""Frozen dataclasses for every job. The canonical JSON of a spec (sorted keys, no whitespace) is
hashed into its run id, which is also its cache key: the same spec always maps to the same run.

Add a field with a default to extend a spec; never rename one (old run ids would change meaning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from backend.errors import SpecError


def to_plain(value: Any, *, canonical: bool = True) -> Any:
    """A JSON-ready copy: dataclasses to dicts (with their "kind"), tuples and arrays to lists, numpy
    scalars to Python. canonical=True (spec JSON, hashed into run ids): dict keys sorted, inf/nan as the
    strings "inf"/"-inf"/"nan". canonical=False (result JSON): key order kept, inf/nan as None (strict JSON
    has no NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_plain(getattr(value, f.name), canonical=canonical) for f in dataclasses.fields(value)
               if not (f.metadata.get("omit_default") and getattr(value, f.name) == f.default)}
        out["kind"] = type(value).__name__
        return out
    if isinstance(value, dict):
        items = sorted(value.items()) if canonical else value.items()
        return {str(k): to_plain(v, canonical=canonical) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, canonical=canonical) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy arrays and scalars, without importing numpy
        return to_plain(value.tolist(), canonical=canonical)
    if isinstance(value, float) and not math.isfinite(value):
        if not canonical:
            return None
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


class SpecMixin:
    """Canonical JSON, run id and a round trip through JSON for every spec."""

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def run_id(self) -> str:
        """`<kind>-<12 hex>`: short, stable, unique per spec."""
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
        return f"{type(self).__name__.removesuffix('Spec').lower()}-{digest}"



MIN_BOOTSTRAP = 50  # fewer resamples: the 2.5th and 97.5th percentiles rest on one or two of them


def check_resampling(n_bootstrap: int, seed: int) -> None:
    """A spec's bootstrap: 0 (no CIs) or more resamples, and a seed numpy's generator takes (an integer >= 0).
    SpecError otherwise. The floor of MIN_BOOTSTRAP is the command line's and the dashboard's (check_ci_floor):
    tests and benchmarks may use fewer."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 0:
        raise SpecError(f"n_bootstrap must be an integer >= 0 (0: no confidence intervals), got {n_bootstrap!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise SpecError(f"seed must be an integer >= 0, got {seed!r}.")


def check_ci_floor(n_bootstrap: int) -> None:
    """What a user asks for: 0 (no CIs) or at least MIN_BOOTSTRAP resamples, else SpecError saying why."""
    if 0 < n_bootstrap < MIN_BOOTSTRAP:
        raise SpecError(f"{n_bootstrap} bootstrap resamples are too few for a 95% CI: its 2.5th and 97.5th "
                        f"percentiles would rest on one or two resamples (the interval can even miss its own "
                        f"estimate). Use at least {MIN_BOOTSTRAP} (default 200), or 0 for no CIs.")

def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value), the value read as JSON when it parses (numbers, true/false, lists), else kept
    as text: a source option as the command line (--source-option, --transfer name:k=v) and the dashboard take it."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"Option {text.strip()!r} is not KEY=VALUE (e.g. n_patients=500, or sites=B).")
    if raw.strip().lower() in ("true", "false"):  # True/FALSE as well as JSON's true/false
        return key.strip(), raw.strip().lower() == "true"
    try:
        return key.strip(), json.loads(raw.strip())
    except json.JSONDecodeError:
        return key.strip(), raw.strip()


def parse_options(options: str | Iterable[str]) -> dict[str, Any]:
    """'key=value, key=value' (one text, split at commas) or ['key=value', ...] (one option each, as repeated
    --source-option flags give them: a value may hold commas) -> a dict of parse_option's pairs."""
    parts = options.split(",") if isinstance(options, str) else options
    return dict(parse_option(part) for part in parts if part.strip())

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


POOL_NAMES: dict[str, str] = {  # every pool kind of the engine, with the one name the pages and reports use
    "random": "random pool", "hard": "pathology-matched", "full": "full database"}
POOL_KINDS: tuple[str, ...] = ("random", "hard")  # the kinds an audit measures (full: the explorer's whole database)
MATCH_ATTRIBUTES: tuple[str, ...] = ("labels", "view", "site", "sex", "age_band", "year")  # what a pool can match on
MATCH_PREFIX = "matched:"  # pool_kind of a side-information pool: "matched:sex+age_band"


def pool_name(kind: str) -> str:
    """The one display name of a pool kind, side-information pools included ("matched on sex, age band")."""
    if kind.startswith(MATCH_PREFIX):
        return "matched on " + ", ".join(a.replace("_", " ") for a in kind[len(MATCH_PREFIX):].split("+"))
    return POOL_NAMES.get(kind, kind)


@dataclass(frozen=True)
class AuditSpec(SpecMixin):
    """Measure re-linkage on one embedding run."""

    embed: EmbedSpec = field(default_factory=EmbedSpec)
    pools: tuple[str, ...] = POOL_KINDS
    ks: tuple[int, ...] = (1, 5, 10)
    include_same_patient: bool = False
    n_bootstrap: int = 200
    seed: int = 0
    # side-information pools: each entry a "+"-joined attribute set (e.g. "sex+age_band", "labels+view"); a field
    # added later, so it is left out of the canonical JSON (and the run id) while empty
    match: tuple[str, ...] = field(default=(), metadata={"omit_default": True})

    def __post_init__(self) -> None:
        bad_match = [m for m in self.match if not m or any(a not in MATCH_ATTRIBUTES for a in m.split("+"))]
        if bad_match:
            raise SpecError(f"Cannot match pools on {bad_match}; use attributes from {', '.join(MATCH_ATTRIBUTES)} "
                            "joined by '+', e.g. sex+age_band.")
        bad = [p for p in self.pools if p not in POOL_KINDS]
        if bad:
            raise SpecError(f"Unknown pool kind(s) {bad}; use {', '.join(POOL_KINDS)}.")
        if not self.ks or min(self.ks) < 1:
            raise SpecError(f"Every K must be a positive integer, got {self.ks}.")
        check_resampling(self.n_bootstrap, self.seed)


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
        if not (self.max_grad_norm > 0) or not math.isfinite(self.max_grad_norm):
            raise SpecError(f"max_grad_norm (clipping) must be a finite number > 0, got {self.max_grad_norm}.")
        if self.objective not in OBJECTIVES:
            raise SpecError(f"Unknown objective {self.objective!r}; use {', '.join(OBJECTIVES)}.")
        if self.privacy_unit not in PRIVACY_UNITS:
            raise SpecError(f"Unknown privacy unit {self.privacy_unit!r}; use {', '.join(PRIVACY_UNITS)}.")
        if self.accountant not in ACCOUNTANTS:
            raise SpecError(f"Unknown accountant {self.accountant!r}; use {', '.join(ACCOUNTANTS)}.")
        if self.epochs < 1 or self.batch_size < 1 or not (self.lr > 0) or not math.isfinite(self.lr):
            raise SpecError(f"epochs and batch_size must be >= 1 and lr a finite number > 0, got epochs={self.epochs}, "
                            f"batch_size={self.batch_size}, lr={self.lr}.")
        if self.n_negatives < 1:
            raise SpecError(f"n_negatives must be >= 1, got {self.n_negatives}.")
        if self.optimizer not in ("adam", "sgd") or self.init not in ("model", "random"):
            raise SpecError(f"optimizer must be adam or sgd and init model or random, got {self.optimizer!r}, {self.init!r}.")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


# The one default sweep, for the demo and every launch form: this epsilon grid (the study's 0.34 included; chosen to
# span the transition on the demo, docs/RESULTS.md) and this recipe, the certified objective protecting patients.
# Heads are learned from scratch (init "random": everything they know about matching images to reports comes
# through the noise) with clipping bound C = 10 (at C = 1 clipping alone held even epsilon 1000 below the
# retrained heads). backend.public_bank.default_sweep_base builds the DPSpec, naming the public bank.
DEFAULT_EPSILONS: tuple[float, ...] = (0.01, 0.05, 0.34, 1.0, 8.0, 1000.0, math.inf)
DEFAULT_SWEEP_RECIPE: dict[str, Any] = {"objective": "public-negatives", "privacy_unit": "patient", "init": "random",
                                        "max_grad_norm": 10.0}


@dataclass(frozen=True)
class SweepSpec(SpecMixin):
    """One DPSpec per epsilon in the grid (everything else shared)."""

    base: DPSpec = field(default_factory=DPSpec)
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS

    def __post_init__(self) -> None:
        if not self.epsilons:
            raise SpecError("A sweep needs at least one epsilon (e.g. --epsilons 1 8 inf).")
        bad = [e for e in self.epsilons if not (e > 0)]
        if bad:
            raise SpecError(f"Every sweep epsilon must be > 0 (use inf for no DP); got {bad} in {list(self.epsilons)}.")
        self.points()  # every point is a valid DPSpec, checked before any work

    def points(self) -> list[DPSpec]:
        return [dataclasses.replace(self.base, epsilon=e) for e in self.epsilons]


@dataclass(frozen=True)
class SelfTestSpec(SpecMixin):
    """A trivial job that counts to `steps` with a pause per step; fails at step `fail_at` when >= 0.
    Used by the tests and as a smoke check of the job machinery (no torch, no data)."""

    steps: int = 5
    delay_s: float = 0.1
    fail_at: int = -1
    tag: str = ""


@dataclass(frozen=True)
class DemoSpec(SpecMixin):
    """The one-button demo: prepare the demo model, audit its test split, then (when DP is available)
    a small epsilon sweep. Each part is stored as its own run so the pages find it."""

    audit: AuditSpec = field(default_factory=AuditSpec)
    sweep: SweepSpec | None = field(default_factory=lambda: SweepSpec(epsilons=(1.0, 8.0, math.inf)))


@dataclass(frozen=True)
class ProbeSpec(SpecMixin):
    """Linear-probe and zero-shot macro AUROC of a model's own embeddings (backend.probe): the probes are
    fitted on the source's train split and scored on its test split, patient-bootstrap CIs (what
    `python -m backend probe` prints)."""

    source: SourceSpec = field(default_factory=SourceSpec)
    model: str = "demo"
    n_bootstrap: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        check_resampling(self.n_bootstrap, self.seed)


# The side-information pool the demo (and the model ladder) audits beside the random and pathology-matched ones: an
# attacker who knows the patient's sex and age band (what a request form or a DICOM header gives away).
DEMO_MATCH: tuple[str, ...] = ("sex+age_band",)
LADDER_RUNGS: tuple[str, ...] = ("demo-weak", "demo", "demo-strong")  # backend/models/demo_config.py, weakest first


@dataclass(frozen=True)
class LadderSpec(SpecMixin):
    """The model ladder: train each rung (cached), audit it on the same test split of `source` and probe it;
    each rung's audit (an AuditSpec) and probe (a ProbeSpec) is stored as its own run as soon as it is done."""

    rungs: tuple[str, ...] = LADDER_RUNGS
    source: SourceSpec = field(default_factory=SourceSpec)
    n_bootstrap: int = 200
    seed: int = 0
    probe: bool = True

    def __post_init__(self) -> None:
        if not self.rungs:
            raise SpecError("A ladder needs at least one rung (e.g. --rungs demo-weak demo demo-strong).")
        if len(set(self.rungs)) != len(self.rungs):
            raise SpecError(f"A rung is listed twice in {list(self.rungs)}.")
        check_resampling(self.n_bootstrap, self.seed)

    def audit(self, rung: str) -> AuditSpec:
        """The audit of one rung (with the defaults, the demo rung's audit is the demo job's audit: one run)."""
        return AuditSpec(embed=EmbedSpec(source=self.source, model=rung), n_bootstrap=self.n_bootstrap, seed=self.seed,
                         match=DEMO_MATCH)

    def probe_spec(self, rung: str) -> ProbeSpec:
        return ProbeSpec(source=self.source, model=rung, n_bootstrap=self.n_bootstrap, seed=self.seed)


# ---------------------------------------------------------------- spec JSON round trip

SPEC_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (SourceSpec, EmbedSpec, AuditSpec, DPSpec, SweepSpec, SelfTestSpec, DemoSpec, ProbeSpec,
                                   LadderSpec)
}


def spec_from_json(text: str) -> Any:
    """Rebuild a spec from its canonical JSON (the inverse of spec.to_json())."""
    return _decode(json.loads(text))


def _decode(data: Any) -> Any:
    if not isinstance(data, dict) or "kind" not in data:
        return data
    cls = SPEC_TYPES.get(data["kind"])
    if cls is None:
        raise SpecError(f"Unknown spec kind {data['kind']!r} in a stored job; known: {', '.join(SPEC_TYPES)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints.get(f.name))
    return cls(**kwargs)


def _coerce(value: Any, hint: Any) -> Any:
    if isinstance(value, dict) and "kind" in value:
        return _decode(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan") and "float" in str(hint):
        return float(value)
    if isinstance(value, list):
        inner = typing.get_args(hint)
        item_hint = inner[0] if inner else None
        return tuple(_coerce(v, item_hint) for v in value)
    return value
