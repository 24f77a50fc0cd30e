"""The headless audit and its command line, end to end on a tiny synthetic set with a tiny demo training."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from backend.__main__ import build_parser, main
from backend.audit import AuditResult, headline, run_audit
from backend.cli.audit import audit_spec_from
from backend.embed.compute import embed_split
from backend.errors import SpecError
from backend.relink import relink_curves
from backend.relink.rows import ROW_COLUMNS
from backend.sources import load_source
from backend.specs import AuditSpec, EmbedSpec, SourceSpec, parse_option
from tests.helpers.tiny_models import TINY_SOURCE_OPTIONS, register_tiny_models

register_tiny_models()
SOURCE_ARGS = [f"--source-option={k}={v}" for k, v in TINY_SOURCE_OPTIONS.items()]


def _strict(text: str) -> dict:
    def bad(value: str) -> None:
        raise AssertionError(f"non-standard JSON constant {value}")

    return json.loads(text, parse_constant=bad)


def test_cli_audit_end_to_end_with_tiny_demo_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, npz = tmp_path / "out.json", tmp_path / "emb.npz"
    rc = main(["audit", "--source", "synthetic", *SOURCE_ARGS, "--model", "demo-tiny", "--split", "all",
               "--n-bootstrap", "50", "--ks", "1", "5", "--json", str(out), "--save-embeddings", str(npz)])
    assert rc == 0
    doc = _strict(out.read_text())
    assert doc["spec"]["embed"]["model"] == "demo-tiny" and doc["spec"]["pools"] == ["random", "hard"]
    assert doc["spec"]["embed"]["source"]["options"] == TINY_SOURCE_OPTIONS
    assert doc["counts"]["pairs"] > doc["counts"]["studies"] >= doc["counts"]["patients"] > 5
    assert {"torch", "open_clip_torch", "numpy"} <= set(doc["versions"])
    rows = doc["rows"]
    assert rows and set(ROW_COLUMNS) <= set(rows[0])
    assert {r["pool_kind"] for r in rows} >= {"random", "hard"} and {r["level"] for r in rows} >= {"study", "patient"}
    assert {r["k"] for r in rows} == {1, 5}
    for r in rows:
        assert 0 <= r["recall"] <= 1 and r["n"] >= 2
        if r["ci_low"] is not None:
            assert r["ci_low"] <= r["recall"] + 1e-9 and r["recall"] <= r["ci_high"] + 1e-9
    with np.load(npz, allow_pickle=False) as z:
        assert z["image_emb"].shape[0] == doc["counts"]["pairs"]
    assert "curve points" in capsys.readouterr().out


def test_run_audit_matches_the_metric_engine(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = AuditSpec(embed=EmbedSpec(source=SourceSpec(options=TINY_SOURCE_OPTIONS), model="tiny-random",
                                     split="all", batch_size=16), ks=(1,), n_bootstrap=10, seed=3)
    result = run_audit(spec)
    es = embed_split(spec.embed)
    ref = relink_curves(es.image_emb, es.report_emb, es.meta["study_id"], es.meta["patient_id"], es.meta["report"],
                        es.labels(), pools=("random", "hard"), ks=(1,), n_bootstrap=10, seed=3)
    np.testing.assert_allclose(result.rows["recall"].to_numpy(), ref.rows["recall"].to_numpy())
    assert result.embedding_path == str(es.path) and len(result.per_query) == len(es)
    doc = _strict(result.to_json())
    assert doc["run_id"] == spec.run_id() and len(doc["rows"]) == len(result.rows)
    top = result.headline()
    assert set(top["pool_kind"]) >= {"random", "hard"}
    assert isinstance(result, AuditResult)


def test_headline_picks_n100_and_the_largest_n() -> None:
    import pandas as pd

    rows = pd.DataFrame([{"pool_kind": "random", "level": "study", "k": 1, "n": n, "recall": 1 / n, "ci_low": 0,
                          "ci_high": 1, "chance": 1 / n, "lift": 1.0, "effective_n": n} for n in (10, 100, 500)])
    assert headline(rows)["n"].tolist() == [100, 500]
    assert headline(rows[rows["n"] < 100])["n"].tolist() == [10]


def test_cli_options_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert parse_option("n_patients=500") == ("n_patients", 500)
    assert parse_option("sites=[\"A\"]") == ("sites", ["A"])
    assert parse_option("name=abc") == ("name", "abc")
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_option("n_patients")
    args = build_parser().parse_args(["audit", "--pools", "random", "--hard-negatives", "--json", "x.json"])
    assert audit_spec_from(args).pools == ("random", "hard")
    args = build_parser().parse_args(["audit", "--pools", "random", "--json", "x.json"])
    assert audit_spec_from(args).pools == ("random",)
    rc = main(["audit", "--model", "no-such-model", *SOURCE_ARGS, "--json", str(tmp_path / "x.json")])
    assert rc == 2 and "Known models" in capsys.readouterr().err
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "openai-vit-b-16" in listing and "biomedclip" in listing and "chexzero" in listing


def test_cli_embed_prints_the_cache_folder(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["embed", *SOURCE_ARGS, "--model", "tiny-random", "--split", "all", "--batch-size", "16"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert Path(doc["path"]).parent == tmp_path / "embeddings" and doc["pairs"] > doc["distinct_reports"] > 0


def test_phased_progress_opens_a_bar_per_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.progress as cli

    bars: list[list[tuple[int, int]]] = []

    def fake_bar(desc: str = ""):
        calls: list[tuple[int, int]] = []
        bars.append(calls)
        return lambda done, total, message="": calls.append((done, total))

    monkeypatch.setattr(cli, "tqdm_progress", fake_bar)
    update = cli.phased_progress("audit")
    for done in (1, 2, 3):
        update(done, 3, "render")
    for done in (1, 5):
        update(done, 5, "train")
    update(2, 5, "embed")  # same total as the finished phase: still a new bar
    assert [len(b) for b in bars] == [3, 2, 1]


def test_progress_rate_counts_only_work_since_the_bar_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    """A phase that starts with a jump (cached chunks) must not report millions of items per second."""
    import time

    import tqdm.auto

    import backend.progress as progress

    bars: list = []
    real = tqdm.auto.tqdm

    def keep(*args, **kwargs):
        bar = real(*args, **{**kwargs, "file": io.StringIO()})
        bars.append(bar)
        return bar

    monkeypatch.setattr(tqdm.auto, "tqdm", keep)
    update = progress.tqdm_progress("embed")
    update(9000, 12000, "images")  # 9,000 items were cached: they arrive at once
    time.sleep(0.2)
    update(9100, 12000, "images")
    shown = re.search(r"([\d.]+)it/s", str(bars[0]))
    assert shown is not None
    assert float(shown.group(1)) <= 100 / 0.2 * 1.05  # the 100 items of real work in 0.2 s, not 9,100 / 0.2 s


def _csv_dataset(root: Path, patients: int, label: bool = False) -> None:
    import pandas as pd

    from tests.helpers.fixtures_data import write_image

    rows = []
    for i in range(20):
        if not (root / f"img/{i}.png").is_file():
            write_image(root / f"img/{i}.png", seed=i)
        row = {"image_path": f"img/{i}.png", "report": f"Report {i}: {'small' if i % 3 else 'no'} effusion.",
               "patient_id": f"P{i % patients}"}
        if label:
            row["Pleural Effusion"] = 1 if i % 3 else 0
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)


def test_editing_the_data_gives_fresh_results_not_the_cached_ones(tmp_path: Path, fresh_cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from tests.helpers.fixtures_data import write_image

    data = tmp_path / "data"
    _csv_dataset(data, patients=20)
    spec = AuditSpec(embed=EmbedSpec(source=SourceSpec(name="csv", root=str(data)), model="tiny-random", split="all",
                                     batch_size=8), n_bootstrap=0, ks=(1,))
    first = run_audit(spec, device="cpu")
    assert first.counts["patients"] == 20 and first.inputs["n_pairs"] == 20 and first.inputs["data_hash"]
    assert _strict(first.to_json())["inputs"] == first.inputs
    _csv_dataset(data, patients=5, label=True)  # the user edits patients and adds a label column
    second = run_audit(spec, device="cpu")
    assert second.counts["patients"] == 5
    es = embed_split(spec.embed, device="cpu")
    assert es.meta["patient_id"].nunique() == 5 and es.meta["Pleural Effusion"].notna().all()
    assert second.inputs["data_hash"] != first.inputs["data_hash"]
    old_image = es.image_emb[3].copy()
    write_image(data / "img/3.png", seed=999)  # an image replaced in place (same name)
    os.utime(data / "img/3.png", ns=(1, 1))
    fresh = embed_split(spec.embed, device="cpu")
    assert fresh.path != es.path and not np.allclose(fresh.image_emb[3], old_image)
    np.testing.assert_array_equal(fresh.image_emb[4], es.image_emb[4])


def test_two_images_of_one_size_and_one_mtime_swapped_give_new_embeddings(tmp_path: Path, fresh_cache: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder unpacked from a zip gives every file one mtime; two images of one size swapped (what this audit
    measures) must change the data hash and the embeddings, not reuse the cached ones."""
    import os

    from PIL import Image

    data = tmp_path / "data"
    _csv_dataset(data, patients=20)
    rng = np.random.default_rng(5)
    for i in (3, 4):  # uncompressed PNGs of one shape: one size
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(data / f"img/{i}.png", compress_level=0)
    for f in (data / "img").iterdir():
        os.utime(f, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    assert (data / "img/3.png").stat().st_size == (data / "img/4.png").stat().st_size
    spec = EmbedSpec(source=SourceSpec(name="csv", root=str(data)), model="tiny-random", split="all", batch_size=8)
    before = embed_split(spec, device="cpu")
    digest = load_source("csv", root=str(data)).digest()
    os.rename(data / "img/3.png", data / "img/swap.png")
    os.rename(data / "img/4.png", data / "img/3.png")
    os.rename(data / "img/swap.png", data / "img/4.png")
    for f in (data / "img").iterdir():
        os.utime(f, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    assert load_source("csv", root=str(data)).digest() != digest
    after = embed_split(spec, device="cpu")
    row = {p: i for i, p in enumerate(before.meta["image_path"])}
    assert after.path != before.path
    np.testing.assert_array_equal(after.image_emb[row["img/3.png"]], before.image_emb[row["img/4.png"]])
    np.testing.assert_array_equal(after.image_emb[row["img/4.png"]], before.image_emb[row["img/3.png"]])


def test_pairs_the_source_drops_are_counted_with_their_reason(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A csv whose every other report is empty: the audit keeps 10 of 20 pairs and its JSON (and the command's
    output) says that 10 were dropped for an empty report, not just `pairs: 10`."""
    import pandas as pd

    data = tmp_path / "data"
    _csv_dataset(data, patients=20)
    table = pd.read_csv(data / "pairs.csv")
    table.loc[::2, "report"] = ""
    table.to_csv(data / "pairs.csv", index=False)
    out = tmp_path / "a.json"
    assert main(["audit", "--source", "csv", "--root", str(data), "--model", "tiny-random", "--split", "all",
                 "--n-bootstrap", "0", "--ks", "1", "--json", str(out)]) == 0
    counts = json.loads(out.read_text())["counts"]
    assert counts["pairs"] == 10 and counts["dropped"] == {"empty_report": 10}
    assert counts["labelled_pairs"] == 0  # no label column: said, not a silent random pool under another name
    printed = capsys.readouterr().out
    assert "Left out by the source before the split: 10 pair(s) with empty report." in printed
    assert "No pair of this data has a finding label: the pathology-matched pool is the random pool" in printed


def test_an_audit_onto_a_full_disk_keeps_the_old_json_and_the_computed_embeddings(
        fresh_cache: Path, tmpfs, capsys: pytest.CaptureFixture) -> None:
    """--json on a full disk: one named error, the old result file as it was, and the embeddings computed on the
    way kept in the cache (a second run reads them; only the write is redone)."""
    disk = tmpfs("16k")
    old = disk / "audit.json"
    old.write_text(json.dumps({"old": "x" * 12000}))
    before = old.read_bytes()
    args = ["audit", "--source", "synthetic", *SOURCE_ARGS, "--model", "tiny-random", "--split", "all",
            "--n-bootstrap", "0", "--ks", "1", "--json", str(old)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: Could not write" in err and "No space left" in err and "Traceback" not in err, err
    assert old.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["audit.json"]
    assert len(list((fresh_cache / "embeddings").iterdir())) == 1  # the work done is kept
