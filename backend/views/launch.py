"""What a page needs to launch a job (no Streamlit): where jobs run, whether a model's weights can come, a
dataset's folder and a check that it loads, the sweep a page launches, and honest time estimates. The checks
load the source as a job would; device_summary asks nvidia-smi once per process (settings.listed_gpus)."""

from __future__ import annotations

import dataclasses
from typing import Any

from backend import settings
from backend.errors import RelinkError, SpecError
from backend.models import check_model
from backend.public_bank import NO_BANK, check_banks, default_bank, default_sweep_base
from backend.runs import ladder, store
from backend.sources import SourceData, check_match, check_matchable, get_source, load_source
from backend.specs import (
    DEFAULT_EPSILONS,
    AuditSpec,
    DPSpec,
    LadderSpec,
    SourceSpec,
    SweepSpec,
    check_ci_floor,
    spec_from_json,
)
from backend.views.catalog import is_hub_model


def device_summary() -> str:
    """The accelerator jobs will use, without importing torch: from nvidia-smi when present."""
    gpus = settings.listed_gpus()
    if gpus is None:
        return "CPU (no NVIDIA GPU found, or nvidia-smi did not answer)"
    return f"CUDA: {gpus[0]}" if gpus else "CPU (no GPU listed)"


def hub_warning(model: str) -> str | None:
    """A clear message when a hub model is chosen while the hub is off limits (never a hang)."""
    if is_hub_model(model) and settings.hub_offline():
        return (f"{model} needs weights from the model hub, and the hub is switched off (HF_HUB_OFFLINE/"
                "CXR_OFFLINE). Its job will stop at once unless the weights are already in the cache; copy them "
                "into the Hugging Face cache, or use local:<path> or the demo model.")
    return None


def needs_root(name: str) -> bool:
    """Whether a source reads a dataset folder the user must name (csv, openi, mimic-cxr, chexpert-plus)."""
    try:
        return get_source(name).needs_root
    except RelinkError:  # a source only known from stored runs
        return False


def default_root(name: str) -> str:
    """The folder a source uses when none is given (its environment variable), or ''."""
    root = settings.data_root(name)
    return str(root) if root else ""


def check_source(spec: SourceSpec, match: tuple[str, ...] = ()) -> SourceData:
    """Before any job starts, load a source as a job would and check that the pools of `match` ("sex+age_band",
    ...) can be served (sources.check_matchable: pairs lacking an attribute are left out of that pool, a pool
    nobody can be placed in is refused): raises the SourceError the command line gives for the same folder and
    options (bad folder, unknown option), or a SpecError saying what the pair table lacks. The
    synthetic source is checked on a 5-patient prefix (its options and columns are the same; the full table takes
    seconds to generate)."""
    options = dict(spec.options)
    if spec.name == "synthetic":
        options["n_patients"] = 5
    data = load_source(spec.name, root=spec.root, section_policy=spec.section_policy, **options)
    check_matchable(spec.name, data.pairs, match)
    return data


def check_launch(spec: Any) -> None:
    """Everything a launch form can check before a job starts, with the command line's own errors: the model
    (registered, or a local checkpoint that exists and names its architecture), the bootstrap floor, pools the
    source can be matched on, and for a file-based source or matched pools the data set itself (check_source) and
    the split holding pairs. Raises the RelinkError to show."""
    if isinstance(spec, SweepSpec | DPSpec):  # a certified sweep without a public bank: said now, not after embedding
        check_model((spec.base if isinstance(spec, SweepSpec) else spec).model)
        check_banks(spec)
        return
    embed = spec.embed if isinstance(spec, AuditSpec) else spec
    check_model(embed.model)
    match = spec.match if isinstance(spec, AuditSpec) else ()
    if isinstance(spec, AuditSpec):
        check_ci_floor(spec.n_bootstrap)
        check_match(embed.source.name, match)
    if needs_root(embed.source.name) or match:
        data = check_source(embed.source, match)
        if embed.split != "all" and not (data.pairs["split"] == embed.split).any():
            raise SpecError(f"The {embed.source.name} dataset has no pairs in the {embed.split} split; choose "
                            f"another split (it has: {', '.join(sorted(set(data.pairs['split'])))}).")


def launch_sweep(source: str, model: str, objective: str, privacy_unit: str,
                 epsilons: tuple[float, ...] = ()) -> SweepSpec:
    """The sweep the Mitigation form launches: the default sweep (backend.public_bank.default_sweep_base: the same
    grid, initialisation and clipping as the demo) with the chosen objective and privacy unit, over `epsilons`
    (else DEFAULT_EPSILONS)."""
    base = default_sweep_base(SourceSpec(name=source), model, objective=objective, privacy_unit=privacy_unit)
    return SweepSpec(base=base, epsilons=tuple(sorted(set(epsilons))) or DEFAULT_EPSILONS)


def bank_warning(source: str) -> str | None:
    """What a launch form says before launching a certified sweep on `source` when no public bank is available
    (None when one is: the synthetic bank, or OpenI)."""
    return NO_BANK if default_bank(SourceSpec(name=source)) is None else None


def sweep_spec(sweep_id: str | None) -> SweepSpec | None:
    """The spec of a stored sweep run (an imported snapshot keeps the real spec), or None."""
    run = store.get_run(sweep_id) if sweep_id else None
    if not run or run.get("kind") != "sweep":
        return None
    spec = spec_from_json(run["spec"])
    return spec if isinstance(spec, SweepSpec) else None


def transfer_sweep(base: DPSpec | None, source: str, model: str, target: SourceSpec,
                   epsilons: tuple[float, ...] = ()) -> SweepSpec:
    """The sweep to launch from the Utility page: the shown sweep's settings (`base`; else the defaults for this
    dataset and model: the default sweep) with `target` added to its transfer targets, over `epsilons` (else DEFAULT_EPSILONS).
    Heads are trained on the base's dataset as before and applied, without retraining, to the target's test split."""
    base = base or default_sweep_base(SourceSpec(name=source), model)
    transfer = base.transfer if target in base.transfer else (*base.transfer, target)
    return SweepSpec(base=dataclasses.replace(base, transfer=transfer),
                     epsilons=tuple(sorted(set(epsilons))) or DEFAULT_EPSILONS)


# Measured on a quiet 2-core x86 CPU on the synthetic demo data (25,660 pairs; a timeline of the Recompute job,
# 2026-11-30, docs/BENCHMARKS.md): embedding the train split 140 s, then about 10 s per evaluation
# (8: the 7 points and the original-model reference); beside other jobs (load 3.5-8) the same took 21-67 s per
# evaluation and 7 min 47 s to embed, so the upper end allows BUSY_FACTOR x. A transfer target added about a quarter
# of an evaluation in the earlier measurements (17 min 19 s for 5 points with one target against 14 min without),
# and embedding a target's test split (5,090 images) takes about 36 s (the demo audit's embedding).
SWEEP_TIMES_S = {"train_embed": 140.0, "evaluation": 10.0, "transfer_evaluation": 2.5, "target_embed": 36.0}
BUSY_FACTOR = 4.0


def sweep_estimate(n_epsilons: int, n_targets: int = 0) -> str:
    """An honest time estimate of a sweep on a 2-core CPU, from the measured times above: from everything cached
    on a quiet machine to embedding the train split and each target's test split first beside other jobs."""
    t = SWEEP_TIMES_S
    evaluations = n_epsilons + 1  # and the original model
    low = evaluations * (t["evaluation"] + n_targets * t["transfer_evaluation"])
    high = BUSY_FACTOR * (low + t["train_embed"] + n_targets * t["target_embed"])
    text = (f"Estimated time on a 2-core CPU for data the size of the synthetic demo (25,660 pairs): about "
            f"{max(low / 60, 1):.0f}-{high / 60:.0f} min. {evaluations} evaluations ({n_epsilons} ε points and the "
            f"original model) take about {t['evaluation']:.0f} s each on a quiet machine")
    text += f", plus about {t['transfer_evaluation']:.1f} s each per transfer target" if n_targets else ""
    text += f"; embedding the training split adds about {t['train_embed'] / 60:.1f} min"
    text += (f" and {'the' if n_targets == 1 else 'each'} target's test split about {t['target_embed']:.0f} s"
             if n_targets else "")
    return text + (", the first time only (the lower end: all embeddings cached); beside other jobs up to "
                   f"{BUSY_FACTOR:.0f}x as long (the upper end). Measured on a 2-core x86 CPU; larger datasets "
                   "take longer, a GPU less.")


def ladder_estimate(spec: LadderSpec | None = None) -> dict[str, Any]:
    """The ladder job's time estimate from what is cached now (backend.runs.ladder.ladder_estimate)."""
    return ladder.ladder_estimate(spec or LadderSpec())
