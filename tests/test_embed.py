"""Embedding: unit norm, determinism, report dedup, features+heads reproduce embeddings, cache reuse, a job
killed mid-run resumes without recomputing finished chunks (identical result), the npz round trip."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.embed import load_embedding_set, load_npz, save_npz
from backend.embed.compute import embed_split, embedding_key
from backend.errors import JobError
from backend.models import load_model
from backend.sources import load_source
from backend.specs import EmbedSpec, SourceSpec
from tests.helpers.embed_calls import count_image_chunks
from tests.helpers.tiny_models import TINY_SOURCE_OPTIONS, register_tiny_models

register_tiny_models()
SPEC = EmbedSpec(source=SourceSpec(options=TINY_SOURCE_OPTIONS), model="tiny-random", split="all", batch_size=8)


def test_embeddings_unit_norm_dedup_and_heads(fresh_cache: Path) -> None:
    es = embed_split(SPEC, chunk_size=16, num_workers=0)
    n = len(es)
    assert n > 30 and es.image_emb.shape == es.report_emb.shape and es.image_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(es.image_emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(es.report_emb, axis=1), 1, atol=1e-5)
    assert es.info["n_reports"] == es.meta["report"].nunique() < n  # each distinct report embedded once
    same = es.meta["report"].to_numpy()[:, None] == es.meta["report"].to_numpy()[None, :]
    i, j = np.argwhere(same & ~np.eye(n, dtype=bool))[0]
    assert np.array_equal(es.report_emb[i], es.report_emb[j])
    h = es.heads
    img = es.image_feat @ h["image_w"] + (0 if h["image_b"] is None else h["image_b"])
    np.testing.assert_allclose(img / np.linalg.norm(img, axis=1, keepdims=True), es.image_emb, atol=1e-5)
    txt = es.text_feat @ h["text_w"]
    np.testing.assert_allclose(txt / np.linalg.norm(txt, axis=1, keepdims=True), es.report_emb, atol=1e-5)
    assert es.heads["kind"] == "linear" and es.meta.columns[0] == "pair_id" and "No Finding" in es.meta


def test_deterministic_and_cached(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    first = embed_split(SPEC, chunk_size=16, num_workers=0)
    calls = count_image_chunks(monkeypatch)
    again = embed_split(SPEC, chunk_size=16, num_workers=0)
    assert calls == [] and again.path == first.path  # served from the cache
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path_factory.mktemp("other-cache")))
    fresh = embed_split(SPEC, chunk_size=16, num_workers=2)  # recomputed, 2 DataLoader workers on each batch's pieces
    assert calls and fresh.path != first.path
    np.testing.assert_array_equal(fresh.image_emb, first.image_emb)
    np.testing.assert_array_equal(fresh.report_emb, first.report_emb)


def test_killed_job_resumes_from_its_last_finished_chunk(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path_factory) -> None:
    chunk = 8
    calls = count_image_chunks(monkeypatch)

    def cancel_after_three_chunks(done: int, total: int, message: str = "") -> None:
        if len(calls) == 3:
            raise JobError("cancelled")

    with pytest.raises(JobError):
        embed_split(SPEC, cancel_after_three_chunks, chunk_size=chunk, num_workers=0)
    n_chunks = -(-len(load_source("synthetic", **TINY_SOURCE_OPTIONS).pairs) // chunk)
    assert n_chunks > 4
    folders = list((fresh_cache / "embeddings").iterdir())
    assert len(folders) == 1 and len(list((folders[0] / "chunks").glob("image-*.npy"))) == 3
    calls.clear()
    resumed = embed_split(SPEC, chunk_size=chunk, num_workers=0)
    assert len(calls) == n_chunks - 3  # finished chunks were not recomputed
    assert not (folders[0] / "chunks").exists()
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path_factory.mktemp("unbroken")))
    unbroken = embed_split(SPEC, chunk_size=chunk, num_workers=0)
    np.testing.assert_array_equal(resumed.image_emb, unbroken.image_emb)
    np.testing.assert_array_equal(resumed.image_feat, unbroken.image_feat)
    np.testing.assert_array_equal(resumed.report_emb, unbroken.report_emb)


def test_a_second_run_of_the_same_split_waits_for_the_first_and_reads_its_result(fresh_cache: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one split at once (the command line beside a dashboard job): the second waits for the first
    instead of computing the same chunks beside it (and failing when the first assembles and removes them), then
    reads the finished set: every chunk computed once, both results identical."""
    chunk = 8
    calls = count_image_chunks(monkeypatch)
    first_running, release = threading.Event(), threading.Event()
    messages: list[str] = []
    results: dict[str, object] = {}

    def first_progress(done: int, total: int, message: str = "") -> None:
        if calls and not first_running.is_set():
            first_running.set()
            assert release.wait(60)

    def run(name: str, progress) -> None:
        try:
            results[name] = embed_split(SPEC, progress, chunk_size=chunk, num_workers=0)
        except BaseException as exc:  # reported below
            results[name] = exc

    first = threading.Thread(target=run, args=("first", first_progress))
    first.start()
    assert first_running.wait(60)  # the first run holds the split, one chunk done
    second = threading.Thread(target=run, args=("second", lambda d, t, m="": messages.append(m)))
    second.start()
    deadline = time.monotonic() + 30
    while not messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert messages and "waiting for another process" in messages[0]
    release.set()
    first.join(120)
    second.join(120)
    a, b = results["first"], results["second"]
    assert not isinstance(a, BaseException) and not isinstance(b, BaseException), (a, b)
    n_chunks = -(-len(load_source("synthetic", **TINY_SOURCE_OPTIONS).pairs) // chunk)
    assert len(calls) == n_chunks and a.path == b.path
    np.testing.assert_array_equal(a.image_emb, b.image_emb)
    np.testing.assert_array_equal(a.report_emb, b.report_emb)


def test_npz_round_trip(fresh_cache: Path, tmp_path: Path) -> None:
    es = embed_split(SPEC, chunk_size=64, num_workers=0)
    path = save_npz(es, tmp_path / "out" / "emb.npz")
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) >= {"image_emb", "report_emb", "pair_id", "study_id", "patient_id", "labels", "report"}
        assert z["image_emb"].dtype == np.float32 and z["labels"].shape == (len(es), 14)
        np.testing.assert_array_equal(z["image_emb"], es.image_emb)
        assert list(z["pair_id"]) == es.meta["pair_id"].tolist()
        assert list(z["report"]) == es.meta["report"].tolist()
        np.testing.assert_array_equal(np.isnan(z["labels"]), np.isnan(es.labels()))
    back = load_npz(path)
    np.testing.assert_array_equal(back.report_emb, es.report_emb)
    np.testing.assert_array_equal(np.nan_to_num(back.labels(), nan=-9), np.nan_to_num(es.labels(), nan=-9))
    assert back.meta["study_id"].tolist() == es.meta["study_id"].tolist()
    reloaded = load_embedding_set(es.path)
    np.testing.assert_array_equal(reloaded.text_feat, es.text_feat)


def test_cache_key_covers_split_policy_and_preprocessing(fresh_cache: Path) -> None:
    lm = load_model("tiny-random", device="cpu")
    pairs = load_source("synthetic", **TINY_SOURCE_OPTIONS).pairs
    base = embedding_key(SPEC, lm, pairs)
    assert embedding_key(dataclasses.replace(SPEC, split="test"), lm, pairs) != base
    policy = dataclasses.replace(SPEC, source=dataclasses.replace(SPEC.source, section_policy="impression"))
    assert embedding_key(policy, lm, pairs) != base
    assert embedding_key(SPEC, dataclasses.replace(lm, preprocess_id="other"), pairs) != base
    assert embedding_key(SPEC, dataclasses.replace(lm, weights_id="other"), pairs) != base
    assert embedding_key(SPEC, lm, pairs.iloc[1:]) != base
    # every column counts, not only pair_id/image_path/report: patients, labels, view, site, split
    assert embedding_key(SPEC, lm, pairs.assign(patient_id="P0")) != base
    assert embedding_key(SPEC, lm, pairs.assign(**{"Pleural Effusion": 1.0})) != base
    for col in ("view", "site", "split"):
        assert embedding_key(SPEC, lm, pairs.assign(**{col: "other"})) != base
    assert embedding_key(SPEC, lm, pairs.copy()) == base


def test_each_item_gets_its_own_features_across_batches_and_chunks(fresh_cache: Path) -> None:
    """Chunks of several batches, their features brought to the host once per chunk (encode_batches): every image
    and report keeps its own features, in input order, against the model run on one item at a time."""
    import torch

    es = embed_split(SPEC, chunk_size=20, num_workers=0)  # batches of 8, 8, 4 per chunk
    lm = load_model(SPEC.model)
    src = load_source(SPEC.source.name, **SPEC.source.options)
    pairs = src.pairs  # split "all", in the source's order
    assert len(pairs) > 40
    picks = [0, 7, 8, 19, 20, 27, len(pairs) - 1]  # first/last of batches and chunks, and the last pair
    with torch.inference_mode():
        for i in picks:
            img = lm.preprocess(src.read_image(pairs["image_path"].iloc[i]))[None]
            np.testing.assert_allclose(es.image_feat[i], lm.encode_image_features(img)[0].numpy(), atol=1e-5)
            tokens = lm.tokenizer([str(pairs["report"].iloc[i])])
            np.testing.assert_allclose(es.text_feat[i], lm.encode_text_features(tokens)[0].numpy(), atol=1e-5)


def test_encode_batches_keeps_order_and_values() -> None:
    """Batches of different sizes through a linear map: the same rows as numpy's product of the stacked inputs."""
    import torch

    from backend.embed.compute import encode_batches

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 6)).astype(np.float32) for n in (5, 5, 2)]
    lin = torch.nn.Linear(6, 3).double()
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    with torch.inference_mode():
        got = encode_batches((torch.from_numpy(x).double() for x in xs), lin)
    assert got.dtype == np.float32 and got.shape == (12, 3)
    np.testing.assert_allclose(got, np.concatenate(xs).astype(np.float64) @ w.T + b, rtol=1e-6, atol=1e-6)


def test_batch_pieces_cut_every_batch_across_the_workers() -> None:
    """Each model batch [a, b) is cut into at most `workers` non-empty pieces that put its items back together in
    order; one worker (or none): whole batches."""
    from backend.embed.compute import batch_pieces

    for n, batch, workers in [(512, 64, 15), (100, 8, 3), (7, 8, 4), (20, 5, 0), (1, 4, 2), (33, 32, 32)]:
        spans = [(a, min(a + batch, n)) for a in range(0, n, batch)]
        pieces, per_batch = batch_pieces(spans, workers)
        assert sum(per_batch) == len(pieces) and all(pieces) and len(per_batch) == len(spans)
        k = 0
        for (a, b), count in zip(spans, per_batch, strict=True):
            assert 1 <= count <= max(1, workers)
            assert [i for piece in pieces[k:k + count] for i in piece] == list(range(a, b))
            k += count
        if workers <= 1:
            assert per_batch == [1] * len(per_batch)
    pieces, per_batch = batch_pieces([(a, a + 64) for a in range(0, 512, 64)], 15)
    assert per_batch == [13] * 8 and max(map(len, pieces)) == 5  # 15 workers on every batch, not 8 of them
