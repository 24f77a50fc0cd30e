"""The fast image paths (backend.embed.images) against the model's reference preprocessing: the same
tensors up to a stated tolerance (mean model-embedding cosine >= 0.999 on radiograph-like JPEGs, with the
cosine between different images far lower so the check can fail), exact geometry where no resize happens,
named errors for unreadable files, and the loader choice and cache keys in embed_split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from backend.embed.compute import embed_split
from backend.embed.images import FastPreprocess, image_loader
from backend.errors import ImageReadError, SpecError
from backend.models import load_model
from backend.sources.files import open_image
from backend.specs import EmbedSpec, SourceSpec
from bench.bench_loading import radiograph
from tests.helpers.embed_calls import count_image_chunks
from tests.helpers.tiny_models import register_tiny_models

register_tiny_models()


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("xr")
    out = []
    for i, (h, w) in enumerate([(1400, 1160), (1160, 1400), (1500, 1250), (900, 1100)]):
        p = folder / f"{i}.jpg"
        radiograph(h, w, i).save(p, quality=95)
        out.append(p)
    rgb = folder / "rgb.jpg"
    Image.merge("RGB", [radiograph(800, 700, 9)] * 3).save(rgb, quality=95)
    png16 = folder / "deep.png"
    arr16 = (np.asarray(radiograph(700, 600, 7), dtype=np.uint16) * 200).astype(np.uint16)
    Image.fromarray(arr16).save(png16)
    return [*out, rgb, png16]


def _fast(model) -> FastPreprocess:
    fast = FastPreprocess.from_preprocess_id(model.preprocess_id)
    assert fast is not None and fast.size == 64
    return fast


def _embed(model, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.nn.functional.normalize(model.encode_image_features(batch), dim=-1)


def _check_close(model, ref: torch.Tensor, got: torch.Tensor) -> None:
    assert got.shape == ref.shape
    assert float((got - ref).abs().mean()) < 0.03  # normalised units (std 0.25 here: < 2 grey levels of 255)
    e_ref, e_got = _embed(model, ref), _embed(model, got)
    same = (e_ref * e_got).sum(-1)
    other = (e_ref * e_got.roll(1, 0)).sum(-1)  # each image against another image's fast embedding
    assert float(same.mean()) >= 0.999 and float(same.min()) >= 0.995
    # a random model maps all images close together: the path's error must be a small part of the gap between images
    assert 1 - float(same.mean()) < 0.1 * (1 - float(other.mean()))


def test_cpu_fast_path_matches_the_reference_transform(model, files: list[Path]) -> None:
    ref = torch.stack([model.preprocess(open_image(p)) for p in files])
    got = torch.stack([_fast(model).load(p) for p in files])
    _check_close(model, ref, got)


def test_tensor_path_matches_the_reference_transform(model, files: list[Path]) -> None:
    """The GPU path's code (batched decode_jpeg, tensor resize, crop, normalise), run on the CPU here; on a
    CUDA machine bench/bench_loading.py and the device suite run it on the GPU."""
    from backend.embed.images import read_bytes

    ref = torch.stack([model.preprocess(open_image(p)) for p in files])
    got = _fast(model).gpu_batch([read_bytes(p) for p in files], files, torch.device("cpu"))
    _check_close(model, ref, got)
    missing = files[0].with_name("gone.jpg")
    with pytest.raises(ImageReadError, match="gone.jpg"):
        _fast(model).gpu_batch([read_bytes(missing)], [missing], torch.device("cpu"))


def test_exact_when_no_resize_is_needed(model, tmp_path: Path) -> None:
    """An image whose shortest side is the model's size: crop and normalisation equal the reference's exactly."""
    p = tmp_path / "small.png"
    radiograph(64, 90, 1).save(p)
    img = open_image(p)
    np.testing.assert_array_equal(_fast(model).load(p).numpy(), model.preprocess(img).numpy())


def test_unreadable_files_are_named(model, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        _fast(model).load(bad)
    with pytest.raises(ImageReadError, match="nowhere.png"):
        _fast(model).load(tmp_path / "nowhere.png")


def test_unsupported_transforms_keep_the_reference_path() -> None:
    cfg = {"size": [64, 80], "mode": "RGB", "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic",
           "resize_mode": "shortest"}
    assert FastPreprocess.from_preprocess_id(json.dumps(cfg)) is None
    assert FastPreprocess.from_preprocess_id(json.dumps({**cfg, "size": 64, "resize_mode": "squash"})) is None
    assert FastPreprocess.from_preprocess_id(json.dumps({**cfg, "size": 64})) is not None


def test_loader_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("CXR_IMAGE_LOADER", raising=False)
    assert (image_loader(cpu, True), image_loader(cuda, True), image_loader(cuda, False)) == ("fast", "gpu", "reference")
    monkeypatch.setenv("CXR_IMAGE_LOADER", "reference")
    assert image_loader(cpu, True) == "reference"
    monkeypatch.setenv("CXR_IMAGE_LOADER", "gpu")
    with pytest.raises(SpecError, match="CUDA"):
        image_loader(cpu, True)
    monkeypatch.setenv("CXR_IMAGE_LOADER", "turbo")
    with pytest.raises(SpecError, match="turbo"):
        image_loader(cpu, True)


def test_embed_split_uses_the_fast_path_on_files(model, tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    rows = []
    for k in range(8):
        (root / "img").mkdir(parents=True, exist_ok=True)
        radiograph(700 + 10 * k, 600, k).save(root / f"img/{k}.jpg", quality=95)
        rows.append({"image_path": f"img/{k}.jpg", "report": f"Report {k}: clear lungs.", "patient_id": f"P{k // 2}"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    spec = EmbedSpec(source=SourceSpec(name="csv", root=str(root)), model="tiny-random", split="all", batch_size=4)
    monkeypatch.delenv("CXR_IMAGE_LOADER", raising=False)
    fast = embed_split(spec, device="cpu", num_workers=0)
    monkeypatch.setenv("CXR_IMAGE_LOADER", "reference")
    ref = embed_split(spec, device="cpu", num_workers=0)
    assert fast.info["image_loader"]["loader"] == "fast" and ref.info["image_loader"]["loader"] == "reference"
    assert fast.info["key"] != ref.info["key"]  # the two paths never share a cache folder
    cos = (fast.image_emb * ref.image_emb).sum(1)
    assert cos.mean() >= 0.999 and not np.array_equal(fast.image_emb, ref.image_emb)
    np.testing.assert_array_equal(fast.report_emb, ref.report_emb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by bench/gpu_suite.sh)")
def test_nvjpeg_path_matches_the_reference_transform(model, files: list[Path]) -> None:
    from backend.embed.images import read_bytes

    ref = torch.stack([model.preprocess(open_image(p)) for p in files])
    got = _fast(model).gpu_batch([read_bytes(p) for p in files], files, torch.device("cuda")).cpu()
    _check_close(model, ref, got)


def test_prefetch_decodes_what_nvjpeg_cannot_and_the_cpu_share(model, files: list[Path]) -> None:
    """The read threads hand gpu_batch file bytes for the JPEGs nvJPEG decodes, and the CPU path's image for the
    other files (the 16-bit PNG) and for the JPEGs on_cpu picks; the batch is then the same tensor, bit for bit,
    as decoding each file on its own path."""
    from backend.embed.images import on_cpu, prefetch_files, read_bytes

    fast, cpu = _fast(model), torch.device("cpu")
    raw = fast.gpu_batch([read_bytes(p) for p in files], files, cpu)  # every JPEG through the tensor path
    for share in (0.0, 0.5):
        batches = list(prefetch_files(files, 4, 3, fast, share))
        assert [len(b) for b in batches] == [4, 2]
        items = [item for b in batches for item in b]
        for i, (p, item) in enumerate(zip(files, items, strict=True)):
            if p.suffix == ".png" or on_cpu(i, share):
                np.testing.assert_array_equal(item.numpy(), fast.load(p).numpy())
            else:
                assert item.dim() == 1 and bytes(item.numpy()) == p.read_bytes()
        got = torch.cat([fast.gpu_batch(b, files[4 * k:4 * k + len(b)], cpu) for k, b in enumerate(batches)])
        for i, p in enumerate(files):
            want = fast.load(p) if p.suffix == ".png" or on_cpu(i, share) else raw[i]
            np.testing.assert_array_equal(got[i].numpy(), want.numpy())
    missing = files[0].with_name("gone.jpg")
    for share in (0.0, 0.5):  # unread bytes, or decoded on a thread: either way the batch names the file
        with pytest.raises(ImageReadError, match="gone.jpg"):
            for b in prefetch_files([files[0], missing], 2, 2, fast, share):
                fast.gpu_batch(b, [files[0], missing], cpu)


def test_cpu_share_is_spread_evenly_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.embed.images import cpu_share, describe, on_cpu

    for share in (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9):
        picks = np.array([on_cpu(i, share) for i in range(1000)])
        counts = np.cumsum(picks)
        assert all(counts[n - 1] == int(np.floor(n * share + 1e-9)) for n in (1, 7, 10, 99, 512, 1000))
    assert [i for i in range(8) if on_cpu(i, 0.25)] == [3, 7]
    fast = FastPreprocess(size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    monkeypatch.delenv("CXR_GPU_CPU_SHARE", raising=False)
    assert cpu_share() == 0.0 and "cpu_share" not in describe("gpu", fast)  # keys made before the share: unchanged
    monkeypatch.setenv("CXR_GPU_CPU_SHARE", "0.3")
    assert describe("gpu", fast)["cpu_share"] == 0.3 and "cpu_share" not in describe("fast", fast)
    for bad in ("1", "-0.1", "half"):
        monkeypatch.setenv("CXR_GPU_CPU_SHARE", bad)
        with pytest.raises(SpecError, match="CXR_GPU_CPU_SHARE"):
            cpu_share()


def _ten_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmbedSpec:
    """A csv source of ten radiographs, the fifth a PNG; the cache in tmp_path; the loader left to choose."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = []
    for k in range(10):
        name = f"img/{k}.png" if k == 4 else f"img/{k}.jpg"
        radiograph(700 + 10 * k, 600, k).save(root / name, **({} if k == 4 else {"quality": 95}))
        rows.append({"image_path": name, "report": f"Report {k}: clear lungs.", "patient_id": f"P{k // 2}"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    monkeypatch.delenv("CXR_IMAGE_LOADER", raising=False)
    return EmbedSpec(source=SourceSpec(name="csv", root=str(root)), model="tiny-random", split="all", batch_size=4)


def test_embed_split_gpu_loader_with_a_cpu_share(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu loader's code path end to end (its tensor decode run on the CPU here): PNGs decoded on the read
    threads, a CPU share of the JPEGs too; the picked rows are the fast path's embeddings, the others the
    share-0 run's, and the share is in the cache key."""
    import backend.embed.compute as embed_mod
    from backend.embed.images import on_cpu

    spec = _ten_files(tmp_path, monkeypatch)
    fast = embed_split(spec, device="cpu", num_workers=0)
    monkeypatch.setattr(embed_mod, "image_loader", lambda device, file_based: "gpu")
    runs = {}
    for share in ("0", "0.5"):
        monkeypatch.setenv("CXR_GPU_CPU_SHARE", share)
        runs[share] = embed_split(spec, device="cpu", num_workers=0)
    assert runs["0"].info["image_loader"]["loader"] == "gpu" and runs["0.5"].info["image_loader"]["cpu_share"] == 0.5
    assert len({fast.info["key"], runs["0"].info["key"], runs["0.5"].info["key"]}) == 3
    for i in range(10):
        picked = i == 4 or on_cpu(i, 0.5)
        np.testing.assert_allclose(runs["0.5"].image_feat[i], (fast if picked else runs["0"]).image_feat[i],
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runs["0"].image_feat[4], fast.image_feat[4], rtol=1e-5, atol=1e-6)  # the PNG
    assert not np.allclose(runs["0"].image_feat[0], fast.image_feat[0], rtol=1e-5, atol=1e-6)  # JPEGs: two paths
    assert float((runs["0.5"].image_emb * fast.image_emb).sum(1).mean()) >= 0.999


def test_gpu_loader_feeds_batches_across_chunks_and_resumes(model, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu loader's one feed over the chunks cuts each chunk into the batches it has alone: chunks of 4 give
    the bits of one chunk of 512 (batches of 4 either way); a run cancelled after two chunks resumes with a feed
    of the missing chunk only and equals the unbroken run."""
    import backend.embed.compute as embed_mod
    from backend.errors import JobError

    spec = _ten_files(tmp_path, monkeypatch)
    monkeypatch.setattr(embed_mod, "image_loader", lambda device, file_based: "gpu")
    monkeypatch.setenv("CXR_GPU_CPU_SHARE", "0.5")
    whole = embed_split(spec, device="cpu", num_workers=0)
    calls = count_image_chunks(monkeypatch)

    def cancel_after_two_chunks(done: int, total: int, message: str = "") -> None:
        if len(calls) == 2:
            raise JobError("cancelled")

    with pytest.raises(JobError):
        embed_split(spec, cancel_after_two_chunks, device="cpu", chunk_size=4, num_workers=0)
    calls.clear()
    resumed = embed_split(spec, device="cpu", chunk_size=4, num_workers=0)
    assert calls == [2]  # only the last chunk (items 8-9) was computed again
    assert resumed.info["key"] != whole.info["key"]
    np.testing.assert_array_equal(resumed.image_feat, whole.image_feat)


def test_a_missing_image_says_how_to_skip_missing_images(tmp_path: Path) -> None:
    """Both image paths (the source's reader and the embedding's loader) name the file and the way on: the
    check_images option skips and counts missing images."""
    from backend.errors import ImageReadError
    from backend.sources.files import open_image

    for read in (FastPreprocess(size=32, mean=(0.5,) * 3, std=(0.25,) * 3).open, open_image):
        with pytest.raises(ImageReadError, match=r"nowhere\.png' does not exist; .*--source-option check_images=true"):
            read(tmp_path / "nowhere.png")
