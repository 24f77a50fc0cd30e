"""Embedding on several devices (backend.embed.shards): one spawned process per device computes its chunks
and the parent assembles them; here two CPU "devices" stand in for two GPUs. The result must equal a
one-process run bit for bit, the parent must compute nothing itself, and a failing shard must fail the job
with its traceback while finished chunks stay for the resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import backend.embed.compute as compute
from backend.embed.compute import embed_split
from backend.embed.shards import embed_devices, owner
from backend.errors import JobError
from backend.models import ModelEntry, register_model
from backend.specs import EmbedSpec, SourceSpec
from tests.helpers.tiny_models import TINY_SOURCE_OPTIONS, register_tiny_models

register_tiny_models()
SPEC = EmbedSpec(source=SourceSpec(options=TINY_SOURCE_OPTIONS), model="tiny-random", split="all", batch_size=8)


def test_two_devices_give_the_one_device_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "one"))
    monkeypatch.delenv("CXR_EMBED_DEVICES", raising=False)
    one = embed_split(SPEC, device="cpu", chunk_size=16, num_workers=0)

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "two"))
    monkeypatch.setenv("CXR_EMBED_DEVICES", "cpu,cpu")

    def parent_must_not_compute(*args, **kwargs):
        raise AssertionError("the parent computed a chunk: the shards should have")

    monkeypatch.setattr(compute, "_image_chunk", parent_must_not_compute)  # the spawned shards do not see this
    monkeypatch.setattr(compute, "_text_chunk", parent_must_not_compute)
    two = embed_split(SPEC, device="cpu", chunk_size=16, num_workers=0)
    for name in ("image_emb", "report_emb", "image_feat", "text_feat"):
        np.testing.assert_array_equal(getattr(two, name), getattr(one, name))
    assert two.info["key"] == one.info["key"]


def test_a_failing_shard_fails_the_job_with_its_traceback(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register_model(ModelEntry("tiny-broken-shard", "fails to load (tests)", "synthetic", "none",
                              "tests.helpers.tiny_models:load_broken"))
    monkeypatch.setenv("CXR_EMBED_DEVICES", "cpu,cpu")
    real_model = compute.load_model("tiny-random", device="cpu")  # the parent's model loads; the shards' do not
    monkeypatch.setattr(compute, "load_model", lambda *a, **k: real_model)
    spec = EmbedSpec(source=SPEC.source, model="tiny-broken-shard", split="all", batch_size=8)
    with pytest.raises(JobError, match="(?s)shard .* failed.*missing on purpose"):
        embed_split(spec, device="cpu", chunk_size=16, num_workers=0)


def test_device_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_EMBED_DEVICES", "cuda:0, cuda:1")
    assert embed_devices(None) == ["cuda:0", "cuda:1"]
    monkeypatch.delenv("CXR_EMBED_DEVICES")
    assert embed_devices("cpu") == ["cpu"]
    assert [owner(c, 3) for c in range(7)] == [0, 1, 2, 0, 1, 2, 0]
