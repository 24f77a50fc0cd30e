"""The public report bank of the certified objective (`public-negatives`): which bank a spec uses, a check, run
before any model is loaded or any split embedded, that it is there, and the default sweep that names it.

- Synthetic data: reports of the same generator under another seed (SYNTHETIC_BANK_SEED). Patients are a function
  of (seed, index) (backend.sources.synthetic), so no bank report belongs to a patient of the data: public by
  construction, offline, nothing to download.
- Real data: OpenI's reports after `python -m backend download openi --dest DIR` (CXR_OPENI_ROOT), or any public
  report folder the user names (`--public-bank csv:root=DIR`, any registered source).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from backend import settings
from backend.errors import RelinkError, SpecError
from backend.sources import load_source
from backend.specs import DEFAULT_SWEEP_RECIPE, DemoSpec, DPSpec, SourceSpec, SweepSpec

SYNTHETIC_BANK_SEED = 104_729  # no demo, test or ladder dataset uses this seed
SYNTHETIC_BANK_PATIENTS = 1_500  # about 3,600 studies: 256 negatives a step drawn from a few thousand reports


def synthetic_bank(source: SourceSpec) -> SourceSpec:
    """The public bank for a synthetic source: the generator under SYNTHETIC_BANK_SEED, in the data's site styles."""
    options: dict = {"n_patients": SYNTHETIC_BANK_PATIENTS, "seed": SYNTHETIC_BANK_SEED}
    if "sites" in source.options:
        options["sites"] = source.options["sites"]
    if source.options.get("seed") == SYNTHETIC_BANK_SEED:
        raise SpecError(f"The synthetic data uses seed {SYNTHETIC_BANK_SEED}, the public bank's seed: its reports would "
                        "not be public. Generate the data with another seed.")
    return SourceSpec(name="synthetic", section_policy=source.section_policy, options=options)


def default_bank(source: SourceSpec) -> SourceSpec | None:
    """The bank a new certified spec names: the synthetic bank for synthetic data, else OpenI when CXR_OPENI_ROOT
    is set (None otherwise: the user must name one)."""
    if source.name == "synthetic":
        return synthetic_bank(source)
    root = settings.data_root("openi")
    return SourceSpec(name="openi", root=str(root)) if root is not None else None


def bank_of(spec: DPSpec) -> SourceSpec | None:
    """The bank `spec` reads: its own public_bank, else OpenI when present (what a spec without one always meant)."""
    if spec.public_bank is not None:
        return spec.public_bank
    root = settings.data_root("openi")
    return SourceSpec(name="openi", root=str(root)) if root is not None else None


NO_BANK = ("The certified objective (public-negatives) needs a public report bank, and none is available: OpenI was "
           "not found (CXR_OPENI_ROOT is not set) and no bank was named. Either download OpenI's reports "
           "(`python -m backend download openi --dest DIR --reports-only`, then set CXR_OPENI_ROOT=DIR), name a "
           "public report folder (`--public-bank csv:root=DIR`), or choose the in-batch objective (nominal epsilon).")


def check_bank(spec: DPSpec) -> None:
    """For a public-negatives spec, that its bank loads and holds reports (seconds: no model, no embedding);
    SpecError saying what to do otherwise. Other objectives need no bank."""
    if spec.objective != "public-negatives":
        return
    src = bank_of(spec)
    if src is None:
        raise SpecError(NO_BANK)
    options = dict(src.options)
    if src.name == "synthetic":
        options["n_patients"] = min(int(options.get("n_patients", 5)), 5)  # its options: the bank itself is generated
    try:
        data = load_source(src.name, root=src.root, section_policy=src.section_policy, **options)
    except RelinkError as exc:
        raise SpecError(f"The public report bank ({src.name}{', ' + src.root if src.root else ''}) cannot be read: "
                        f"{exc} {NO_BANK.split(': ', 1)[0]}; fix the bank or name another.") from exc
    if not data.pairs["report"].notna().any():
        raise SpecError(f"The public report bank ({src.name}) holds no reports; name another (--public-bank).")




def check_banks(spec: Any) -> None:
    """check_bank of the DP recipe inside a job's spec (a DPSpec, a sweep's base, the demo's sweep); nothing for
    other specs."""
    if isinstance(spec, DemoSpec):
        spec = spec.sweep
    if isinstance(spec, SweepSpec):
        spec = spec.base
    if isinstance(spec, DPSpec):
        check_bank(spec)


def default_sweep_base(source: SourceSpec, model: str, **overrides: Any) -> DPSpec:
    """The DPSpec of the default sweep (backend.specs.DEFAULT_SWEEP_RECIPE, then `overrides`: e.g. another objective
    or privacy unit, or the audit), with the default bank of `source` named when the objective is certified."""
    spec = DPSpec(source=source, model=model, **{**DEFAULT_SWEEP_RECIPE, **overrides})
    if spec.objective == "public-negatives" and spec.public_bank is None:
        spec = dataclasses.replace(spec, public_bank=default_bank(source))
    return spec


def bank_note(source: SourceSpec) -> str:
    """What the certified objective would use on `source`, or what to do when no bank is available (a launch form
    shows it before anything is launched)."""
    bank = default_bank(source)
    if bank is None:
        return NO_BANK
    if bank.name == "synthetic":
        return (f"Certified: the public bank is the synthetic generator's reports under seed {SYNTHETIC_BANK_SEED} "
                f"({SYNTHETIC_BANK_PATIENTS:,} patients, none of them in the data): public by construction.")
    return f"Certified: the public bank is {bank.name} ({bank.root})."
