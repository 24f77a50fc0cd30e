"""The default sweep is certified offline: one recipe and grid for the demo and the Mitigation form, the synthetic
public bank disjoint from the data, and a certified sweep without a bank stopped in seconds, before any work."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from backend.errors import SpecError
from backend.public_bank import SYNTHETIC_BANK_SEED, check_banks
from backend.runs.demo import default_demo_spec
from backend.sources import load_source
from backend.sources.schema import LABELS
from backend.specs import DPSpec, SourceSpec, SweepSpec
from backend.views import launch


def test_the_demo_sweep_is_certified_for_patients_with_the_study_epsilon() -> None:
    sweep = default_demo_spec().sweep
    base = sweep.base
    assert (base.objective, base.privacy_unit, base.init, base.max_grad_norm) == ("public-negatives", "patient",
                                                                                  "random", 10.0)
    assert 0.34 in sweep.epsilons and math.inf in sweep.epsilons and min(sweep.epsilons) == 0.01
    assert base.public_bank is not None and base.public_bank.name == "synthetic"
    assert base.public_bank.options["seed"] == SYNTHETIC_BANK_SEED != base.source.options.get("seed", 0)


def test_the_mitigation_form_launches_the_demos_recipe_and_grid() -> None:
    demo = default_demo_spec().sweep
    form = launch.launch_sweep("synthetic", "demo", "public-negatives", "patient")
    assert form.epsilons == demo.epsilons
    for name in ("objective", "privacy_unit", "init", "max_grad_norm", "epochs", "batch_size", "lr", "delta",
                 "public_bank"):
        assert getattr(form.base, name) == getattr(demo.base, name), name
    nominal = launch.launch_sweep("synthetic", "demo", "in-batch", "pair", (8.0, 1.0))
    assert nominal.base.objective == "in-batch" and nominal.base.public_bank is None
    assert (nominal.base.init, nominal.base.max_grad_norm, nominal.epsilons) == ("random", 10.0, (1.0, 8.0))


def test_the_synthetic_bank_holds_no_patient_and_no_report_of_the_data() -> None:
    """Disjoint by construction: other patients; their reports are other draws of the generator (verbatim
    boilerplate normals, which carry nothing of a patient, aside)."""
    data = load_source("synthetic", n_patients=60, seed=0)
    bank_spec = default_demo_spec().sweep.base.public_bank
    bank = load_source("synthetic", **{**bank_spec.options, "n_patients": 60})
    assert not set(bank.pairs["patient_id"]) & set(data.pairs["patient_id"])
    shared = data.pairs[data.pairs["report"].isin(set(bank.pairs["report"]))]
    findings = [c for c in LABELS if c != "No Finding"]
    assert len(shared) < len(data.pairs) / 2 and not (shared[findings] == 1).any().any()  # normal boilerplate only
    assert not shared["report"].str.contains(r"\d").any()  # no size, count or position of anyone's finding


def test_a_certified_sweep_without_a_public_bank_stops_in_seconds_saying_what_to_do(
        fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.dp import eval as dp_eval
    from backend.runs import jobs

    monkeypatch.delenv("CXR_OPENI_ROOT", raising=False)
    spec = SweepSpec(base=DPSpec(source=SourceSpec(name="csv", root=str(tmp_path)), objective="public-negatives"),
                     epsilons=(1.0, math.inf))
    t0 = time.monotonic()
    with pytest.raises(SpecError, match="download openi") as caught:
        jobs.submit(spec)
    assert time.monotonic() - t0 < 10 and "--public-bank" in str(caught.value)
    with pytest.raises(SpecError, match="public report bank"):
        launch.check_launch(spec)

    def no_model(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the bank was checked")

    monkeypatch.setattr(dp_eval, "load_model", no_model)
    with pytest.raises(SpecError, match="public report bank"):
        dp_eval.prepare(spec.base)
    assert launch.bank_warning("csv") is not None and launch.bank_warning("synthetic") is None
    check_banks(default_demo_spec())  # the demo's bank is there: offline, nothing to download


def test_a_named_bank_that_does_not_load_is_said_before_any_work(tmp_path: Path) -> None:
    spec = DPSpec(objective="public-negatives", public_bank=SourceSpec(name="csv", root=str(tmp_path / "missing")))
    with pytest.raises(SpecError, match="public report bank .*cannot be read"):
        check_banks(spec)


def test_the_command_line_names_the_default_bank_in_a_certified_spec() -> None:
    from backend.__main__ import build_parser
    from backend.cli.dp import dp_spec_from

    args = build_parser().parse_args(["sweep", "--objective", "public-negatives", "--privacy-unit", "patient"])
    spec = dp_spec_from(args)
    assert spec.public_bank == default_demo_spec().sweep.base.public_bank


def test_the_headline_rows_carry_the_delta_used_and_the_one_asked_for() -> None:
    from types import SimpleNamespace

    import pandas as pd

    from backend.dp import headline_rows

    rows = pd.DataFrame([{"target": "in-domain", "pool_kind": "random", "level": "study", "k": 1, "n": 100,
                          "recall": 0.1, "ci_low": 0.09, "ci_high": 0.11}])
    probes = pd.DataFrame(columns=["target", "method", "features", "label", "auroc", "ci_low", "ci_high"])
    dp = SimpleNamespace(label="dp", relink_rows=rows, probe_rows=probes,
                         privacy={"epsilon": 1.0, "delta": 5e-6, "delta_requested": 6e-6})
    table = headline_rows([dp])
    assert (table["delta"].iloc[0], table["delta_requested"].iloc[0]) == (5e-6, 6e-6)
