"""The audit on torch.distributed (backend.distributed): `torchrun --nproc-per-node 2` with gloo on the CPU against
one process (the same rows, summary and per-query counts, bit for bit), a rank killed mid-embedding that resumes
from the chunks on disk, and the share of queries each rank counts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backend.__main__ import main
from backend.distributed import Ranks, rank_device, share, torchrun_env
from backend.embed.compute import default_chunk_size
from backend.errors import SpecError
from backend.models import load_model
from backend.relink import relink_curves
from tests.helpers.tiny_models import register_tiny_models
from tests.test_relink import _data

register_tiny_models()
ARGS = ["--source-option", "n_patients=12", "--source-option", "image_size=64", "--split", "all",
        "--n-bootstrap", "50", "--match", "sex+age_band"]
CHUNK = "16"  # items per chunk: 4 image and 3 text chunks, so each rank has several


class _ThreadRanks:
    """Ranks as threads of one process: what relink_curves asks of backend.distributed.Ranks."""

    def __init__(self, rank: int, world: int, parts: dict, barrier: threading.Barrier) -> None:
        self.rank, self.world, self.parts, self.barrier = rank, world, parts, barrier

    def share(self, n: int) -> tuple[int, int]:
        return share(n, self.rank, self.world)

    def gather_rows(self, part: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        assert all(v.shape == (self.share(n)[1] - self.share(n)[0],) for v in part.values())
        self.parts[self.rank] = part
        self.barrier.wait()
        return {k: np.concatenate([self.parts[r][k] for r in range(self.world)]) for k in part}


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_counting_their_shares_give_the_one_process_curve(world: int) -> None:
    data = _data(seed=5, n_patients=40)
    kwargs = {"pools": ("random", "hard"), "ks": (1, 3), "n_bootstrap": 30, "seed": 2, "device": "cpu"}
    one = relink_curves(**data, **kwargs)
    parts: dict = {}
    barrier = threading.Barrier(world)
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(
        r, relink_curves(**data, **kwargs, ranks=_ThreadRanks(r, world, parts, barrier)))) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(world))
    for res in results.values():
        pd.testing.assert_frame_equal(res.rows, one.rows)
        pd.testing.assert_frame_equal(res.per_query, one.per_query)
        assert res.summary == one.summary
    sizes = [len(p["b"]) for p in parts.values()]
    assert sum(sizes) == len(data["study_id"]) and max(sizes) - min(sizes) <= 1  # each counted its share only


def test_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # one process: no group
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SpecError, match="torchrun"):
        torchrun_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert torchrun_env() == (3, 4, 1, 2)
    assert [share(10, r, 4) for r in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    if not torch.cuda.is_available():
        assert rank_device(None, 1) == "cpu" and rank_device("cpu", 1) == "cpu"
        with pytest.raises(SpecError, match="no CUDA"):
            rank_device("cuda", 0)
    with pytest.raises(SpecError, match="local rank"):
        rank_device("cuda:1", 0)


def test_gather_rows_keeps_every_bit() -> None:
    """The real all_gather (a one-process gloo group): float32 scores, negative zero, NaN and large int64 counts
    arrive as they were sent."""
    import torch.distributed as dist

    scores = np.array([0.1, -0.0, np.nan, 3.4e38, -1e-45], dtype=np.float32)
    counts = np.array([0, -1, 2**62, 7, 5], dtype=np.int64)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        got = Ranks(0, 1, 0, "cpu").gather_rows({"score": scores, "b": counts}, 5)
    finally:
        dist.destroy_process_group()
    assert got["score"].dtype == np.float32 and got["score"].tobytes() == scores.tobytes()
    assert got["b"].dtype == np.int64 and got["b"].tobytes() == counts.tobytes()


def test_chunk_size_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_EMBED_CHUNK_SIZE", raising=False)
    assert default_chunk_size() == 512
    monkeypatch.setenv("CXR_EMBED_CHUNK_SIZE", "64")
    assert default_chunk_size() == 64
    monkeypatch.setenv("CXR_EMBED_CHUNK_SIZE", "0")
    with pytest.raises(SpecError, match="CXR_EMBED_CHUNK_SIZE"):
        default_chunk_size()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random-weights checkpoint (local:), and the audit's JSON from one process."""
    tmp = tmp_path_factory.mktemp("dist")
    ckpt = tmp / "tiny.pt"
    torch.save(load_model("tiny-random", device="cpu").model.state_dict(), ckpt)
    model = f"local:{ckpt}#cxr-demo-tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_CACHE_DIR", str(tmp / "one"))
        mp.setenv("CXR_EMBED_CHUNK_SIZE", CHUNK)
        assert main(["audit", *ARGS, "--model", model, "--json", str(tmp / "one.json")]) == 0
    return {"tmp": tmp, "model": model, "one": json.loads((tmp / "one.json").read_text())}


def _torchrun(setup: dict, cache: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "backend", "audit", *ARGS, "--model", setup["model"], "--json", str(out)]
    keep = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent, env={
        **keep, "CXR_CACHE_DIR": str(setup["tmp"] / cache), "CXR_EMBED_CHUNK_SIZE": CHUNK, "OMP_NUM_THREADS": "1",
        **env})


def _same_result(got: dict, want: dict) -> None:
    assert got["rows"] == want["rows"]  # every curve point and CI, bit for bit (JSON keeps float64 exactly)
    assert got["summary"] == want["summary"] and got["counts"] == want["counts"]
    assert got["inputs"]["embedding_key"] == want["inputs"]["embedding_key"]


def test_torchrun_two_processes_equal_one(setup: dict) -> None:
    out = setup["tmp"] / "two.json"
    done = _torchrun(setup, "two", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 of 2" in done.stderr and "on 2 processes: 7 chunk(s), 0 on disk, 7 to compute" in done.stderr
    assert done.stdout.count("curve points ->") == 1  # rank 0 alone reports and writes
    _same_result(json.loads(out.read_text()), setup["one"])


def test_a_killed_rank_resumes_from_its_chunks(setup: dict) -> None:
    out = setup["tmp"] / "killed.json"
    killed = _torchrun(setup, "killed", out, CXR_TEST_KILL_AFTER_CHUNK="1:1")  # rank 1 dies after its first chunk
    assert killed.returncode != 0 and not out.exists()
    assert re.search(r"exitcode\s*:\s*-9", killed.stderr), killed.stderr[-3000:]
    chunks = list((setup["tmp"] / "killed" / "embeddings").glob("*/chunks/*.npy"))
    assert 1 <= len(chunks) < 7  # some chunks finished, not all
    done = _torchrun(setup, "killed", out)
    assert done.returncode == 0, done.stderr[-3000:]
    # the rerun computes only what is missing, spread over both ranks
    assert f"7 chunk(s), {len(chunks)} on disk, {7 - len(chunks)} to compute" in done.stderr
    _same_result(json.loads(out.read_text()), setup["one"])
