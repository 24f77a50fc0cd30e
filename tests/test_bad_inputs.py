"""Bad inputs through the command line: each is refused with one line `error: ...` and exit code 2, before any
embedding or training (no traceback, nothing computed for nothing).

Each case is (id, argv, setup, message fragment). `setup(tmp_path, monkeypatch)` prepares files and returns a
dict of names substituted into argv ({root}, {file} ...). Commands that would need a model use
`local:<missing>` where the check must come first: were the check missing, the run would stop on the missing
model with another message (fast) instead of training or embedding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from backend.__main__ import main
from tests.helpers.fixtures_data import write_image

NO_MODEL = "local:/nonexistent/model"
TINY = ["--source-option", "n_patients=20"]


def _csv(tmp_path: Path, rows: list[dict] | None = None, *, images: bool = True) -> Path:
    root = tmp_path / "data"
    rows = rows if rows is not None else [
        {"image_path": f"img/{k}.png", "report": f"Report {k}.", "patient_id": f"P{k}", "Cardiomegaly": 1}
        for k in range(4)]
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for k, row in enumerate(rows):
            if not str(row["image_path"]).startswith(".."):
                write_image(root / row["image_path"], seed=k)
    columns = ["image_path", "report", "patient_id", "Cardiomegaly"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "pairs.csv", index=False)
    return root


def _label_values(*values: object) -> Setup:
    def setup(tmp_path: Path, _mp: pytest.MonkeyPatch) -> dict[str, str]:
        rows = [{"image_path": f"img/{k}.png", "report": f"Report {k}.", "patient_id": f"P{k}", "Cardiomegaly": v}
                for k, v in enumerate(values)]
        return {"root": str(_csv(tmp_path, rows))}
    return setup


def _csv_rows(edit: Callable[[list[dict]], None]) -> Setup:
    def setup(tmp_path: Path, _mp: pytest.MonkeyPatch) -> dict[str, str]:
        rows = [{"image_path": f"img/{k}.png", "report": f"Report {k}.", "patient_id": f"P{k}", "Cardiomegaly": 0}
                for k in range(4)]
        edit(rows)
        return {"root": str(_csv(tmp_path, rows))}
    return setup


def _paths(tmp_path: Path, _mp: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("not a folder")
    return {"dir": str(tmp_path / "folder"), "file": str(tmp_path / "file.txt"),
            "under_file": str(tmp_path / "file.txt" / "out.json")}


def _header_only(tmp_path: Path, _mp: pytest.MonkeyPatch) -> dict[str, str]:
    return {"root": str(_csv(tmp_path, []))}


def _cache_under_a_file(tmp_path: Path, mp: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp_path / "a-file").write_text("x")
    mp.setenv("CXR_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    return {}


def _none(_tp: Path, _mp: pytest.MonkeyPatch) -> dict[str, str]:
    return {}


Setup = Callable[[Path, pytest.MonkeyPatch], dict[str, str]]
CSV = ["sources", "--name", "csv", "--root", "{root}"]

CASES: list[tuple[str, list[str], Setup, str]] = [
    # item 2: labels other than 1/0/-1/blank
    ("label yes", CSV, _label_values(1, "yes", 0, ""), r"label column 'Cardiomegaly' has value\(s\) \['yes'\]"),
    ("label True", CSV, _label_values("True", 0, 1, -1), r"'Cardiomegaly'.*'True'"),
    ("label positive", CSV, _label_values("positive", "1.0", "0.0", "-1.0"), r"'Cardiomegaly'.*'positive'"),
    ("label 2", CSV, _label_values(2, 1, 0, ""), r"'Cardiomegaly'.*'2(\.0)?'.*use 1 \(positive\)"),
    # item 5: output paths checked before any work
    ("audit --json is a folder", ["audit", "--model", NO_MODEL, *TINY, "--json", "{dir}"], _paths,
     r"--json .* is a folder; give a file name"),
    ("audit --json under a file", ["audit", "--model", NO_MODEL, *TINY, "--json", "{under_file}"], _paths,
     r"--json .* cannot be created"),
    ("audit --save-embeddings is a folder",
     ["audit", "--model", NO_MODEL, *TINY, "--json", "{dir}/r.json", "--save-embeddings", "{dir}"], _paths,
     r"--save-embeddings .* is a folder"),
    ("dp --json is a folder", ["dp", "--model", NO_MODEL, *TINY, "--json", "{dir}"], _paths, r"is a folder"),
    ("dp --json under a file", ["dp", "--model", NO_MODEL, *TINY, "--json", "{under_file}"], _paths,
     r"cannot be created"),
    ("sweep --json under a file", ["sweep", "--model", NO_MODEL, *TINY, "--epsilons", "1", "--json", "{under_file}"],
     _paths, r"cannot be created"),
    ("members --json under a file", ["members", "--model", NO_MODEL, *TINY, "--json", "{under_file}"], _paths,
     r"cannot be created"),
    ("probe --json is a folder", ["probe", "--model", NO_MODEL, *TINY, "--json", "{dir}"], _paths, r"is a folder"),
    # item 9: a cache folder that cannot be created or written
    ("cache not writable", ["audit", *TINY, "--json", "{tmp}/r.json"], _cache_under_a_file,
     r"Cache folder .*a-file.* cannot be created or written.*set CXR_CACHE_DIR to a writable folder"),
    # item 10: pairs.csv with only a header
    ("csv header only", CSV, _header_only, r"has a header but no rows"),
    # item 11: synthetic sizes that cannot fit, or are not positive
    ("n_patients huge", ["embed", "--model", NO_MODEL, "--source-option", "n_patients=100000000"], _none,
     r"n_patients=100,000,000 needs about .* GiB .* more than this machine's"),
    ("n_patients 0", ["embed", "--model", NO_MODEL, "--source-option", "n_patients=0"], _none,
     r"n_patients must be a positive integer"),
    # item 12: devices
    ("device gpu", ["embed", "--model", NO_MODEL, *TINY, "--device", "gpu"], _none,
     r"Unknown device 'gpu'; use cpu, cuda, cuda:N or mps .*Present here: cpu"),
    ("device cuda:99", ["audit", "--model", NO_MODEL, *TINY, "--device", "cuda:99", "--json", "{tmp}/r.json"], _none,
     r"Device 'cuda:99' is not present"),
    ("prepare-demo device gpu", ["prepare-demo", "--device", "gpu"], _none, r"Unknown device 'gpu'"),
    ("dp device gpu", ["dp", "--model", NO_MODEL, *TINY, "--device", "gpu"], _none, r"Unknown device 'gpu'"),
    ("sweep device cuda:99", ["sweep", "--model", NO_MODEL, *TINY, "--device", "cuda:99"], _none,
     r"Device 'cuda:99' is not present"),
    ("members device gpu", ["members", "--model", NO_MODEL, *TINY, "--device", "gpu"], _none, r"Unknown device 'gpu'"),
    ("probe device gpu", ["probe", "--model", NO_MODEL, *TINY, "--device", "gpu"], _none, r"Unknown device 'gpu'"),
    ("audit seed -1", ["audit", "--model", NO_MODEL, *TINY, "--seed", "-1", "--json", "{tmp}/r.json"], _none,
     r"seed must be an integer >= 0, got -1"),
    ("dp transfer without a name", ["dp", "--model", NO_MODEL, *TINY, "--transfer", ":sites=B"], _none,
     r"Source ':sites=B' has no name; use e.g. synthetic:sites=B"),
    ("dp public bank without a name", ["dp", "--model", NO_MODEL, *TINY, "--public-bank", ":root=x"], _none,
     r"Source ':root=x' has no name"),
    ("audit 20 resamples", ["audit", "--model", NO_MODEL, *TINY, "--n-bootstrap", "20", "--json", "{tmp}/r.json"],
     _none, r"20 bootstrap resamples are too few for a 95% CI.*at least 50 .*or 0 for no CIs"),
    ("sweep 10 resamples", ["sweep", "--model", NO_MODEL, *TINY, "--n-bootstrap", "10"], _none, r"10 bootstrap resamples"),
    ("ladder 1 resample", ["ladder", "--n-bootstrap", "1", "--estimate"], _none, r"1 bootstrap resamples are too few"),
    ("sources option without a source", ["sources", "--source-option", "n_patients=20"], _none,
     r"--source-option belongs to one source: add --name"),
    ("sources option not key=value", ["sources", "--name", "synthetic", "--source-option", "n_patients"], _none,
     r"Option 'n_patients' is not KEY=VALUE"),
    # item 14
    ("max-grad-norm inf", ["dp", "--model", NO_MODEL, *TINY, "--max-grad-norm", "inf"], _none,
     r"max_grad_norm \(clipping\) must be a finite number > 0, got inf"),
    ("lr nan", ["dp", "--model", NO_MODEL, *TINY, "--lr", "nan"], _none, r"lr a finite number > 0"),
    ("root is a file", ["sources", "--name", "csv", "--root", "{file}"], _paths, r"is a file, not a folder"),
    ("sweep negative epsilon", ["sweep", "--model", NO_MODEL, *TINY, "--epsilons", "1", "-2"], _none,
     r"Every sweep epsilon must be > 0.*-2"),
    ("members negative epsilon", ["members", "--model", NO_MODEL, *TINY, "--epsilons", "1", "-2"], _none,
     r"Every sweep epsilon must be > 0.*-2"),
    ("members max-patients 1", ["members", "--model", NO_MODEL, *TINY, "--max-patients", "1"], _none,
     r"max_patients must be at least 2"),
    ("prepare-demo epochs 0", ["prepare-demo", "--epochs", "0", "--n-patients", "20"], _none,
     r"Demo epochs must be an integer >= 1, got 0"),
    ("prepare-demo max-pairs 0", ["prepare-demo", "--max-pairs", "0", "--n-patients", "20"], _none,
     r"Demo max_pairs must be an integer >= 1"),
    ("csv duplicate rows", CSV, _csv_rows(lambda rows: rows.append(dict(rows[1]))),
     r"lists the same image_path more than once .*img/1.png"),
    ("csv ../ image path", CSV, _csv_rows(lambda rows: rows[2].update(image_path="../../etc/passwd")),
     r"lead outside the data folder.*\.\./\.\./etc/passwd"),
]


@pytest.mark.parametrize(("argv", "setup", "message"), [pytest.param(a, s, m, id=i) for i, a, s, m in CASES])
def test_bad_input_is_one_error_line_and_exit_2(argv: list[str], setup: Setup, message: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    if "cuda" in " ".join(argv):
        import torch

        if torch.cuda.device_count() > 99:
            pytest.skip("a machine with 100 GPUs")
    names = {"tmp": str(tmp_path), **setup(tmp_path, monkeypatch)}
    code = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]


def test_cuda_without_cuda_names_what_is_present(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
                                                 ) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["embed", "--model", NO_MODEL, *TINY, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "Device 'cuda' is not present: CUDA is not available on this machine. Present here: cpu" in err


def test_sweep_spec_checks_every_point_at_construction() -> None:
    from backend.errors import SpecError
    from backend.specs import DPSpec, SweepSpec

    with pytest.raises(SpecError, match="must be > 0"):
        SweepSpec(epsilons=(1.0, -2.0))
    with pytest.raises(SpecError, match="at least one epsilon"):
        SweepSpec(epsilons=())
    with pytest.raises(SpecError, match="finite"):
        DPSpec(max_grad_norm=math.inf)
    # the checks add no field: run ids (hashes of the canonical JSON) are those of before (the default sweep's
    # grid and recipe are backend.specs.DEFAULT_EPSILONS / DEFAULT_SWEEP_RECIPE: certified, per patient)
    assert (SweepSpec().run_id(), DPSpec().run_id()) == ("sweep-9aed3b41ea36", "dp-e91d606dd555")


def test_cache_folder_is_recreated_and_checked(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from backend import settings
    from backend.errors import CacheError

    sub = settings.cache_subdir("results")
    shutil.rmtree(fresh_cache)
    assert settings.cache_subdir("results") == sub and sub.is_dir()  # removed folders come back
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(CacheError, match=r"file/cache.*CXR_CACHE_DIR"):
        settings.cache_dir()


@pytest.mark.parametrize("device", [None, "cpu"])
def test_cpu_and_default_devices_pass(device: str | None) -> None:
    from backend.settings import check_device

    check_device(device)


def test_dp_and_sweep_results_are_also_kept_in_the_cache(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from backend.cli.dp import write_result

    write_result(None, {"kind": "sweep", "x": 1}, "sweep-0123456789ab")
    assert json.loads((fresh_cache / "results" / "sweep-0123456789ab.json").read_text())["x"] == 1
    write_result(tmp_path / "out.json", {"x": 2}, "dp-0123456789ab")
    assert json.loads((tmp_path / "out.json").read_text()) == {"x": 2}
    assert (fresh_cache / "results" / "dp-0123456789ab.json").is_file()


def test_sources_passes_its_options_to_the_source(capsys: pytest.CaptureFixture) -> None:
    """`sources --source-option` loads the source with that option (MIMIC's reports_root, a synthetic size)."""
    import json

    assert main(["sources", "--name", "synthetic", "--source-option", "n_patients=20"]) == 0
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stats["patients"] == 20 and sum(stats["splits"].values()) == stats["pairs"]


def test_probe_takes_only_the_arguments_it_uses() -> None:
    """probe trains nothing: the DP recipe's flags are refused by its parser; every command that computes takes
    --device."""
    from backend.__main__ import build_parser

    parser = build_parser()
    for flag, value in (("--epsilon", "1"), ("--objective", "in-batch"), ("--max-grad-norm", "1"), ("--lr", "0.1")):
        with pytest.raises(SystemExit):
            parser.parse_args(["probe", flag, value])
    for command in ("embed", "audit", "topk", "dp", "sweep", "members", "probe", "prepare-demo"):
        extra = {"audit": ["--json", "x.json"], "topk": ["--out", "x.parquet"]}.get(command, [])
        assert parser.parse_args([command, "--device", "cpu", *extra]).device == "cpu"
