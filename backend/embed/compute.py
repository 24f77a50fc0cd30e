"""Batched, resumable embedding of one split: images and (deduplicated) reports, with pre-projection
features and head weights, cached under settings.cache_subdir("embeddings")/<key>/.

The key hashes (model name, weights id, source spec, split, section policy, preprocessing, the pair
table's content but its side information, EMBED_VERSION). Work is done in chunks of `chunk_size` items, each written atomically
to <key>/chunks/ as soon as it is finished; a job killed at 80% (a raising progress callback, Ctrl-C,
a crash) restarts from its last finished chunk, recomputing and losing nothing that was finished. Chunk
boundaries and batches are fixed by the key, so a resumed run yields the same arrays as an unbroken one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from backend import settings
from backend.distributed import Ranks
from backend.embed.files import (
    META_COLUMNS,
    EmbeddingSet,
    load_embedding_set,
    write_set,
)
from backend.embed.images import (
    FastPreprocess,
    batch_spans,
    cpu_share,
    describe,
    image_loader,
    prefetch_batches,
)
from backend.embed.shards import embed_devices, owner, run_shards
from backend.errors import SourceError, SpecError
from backend.models import MODELS, get_model, load_model, register_model
from backend.models.openclip import LoadedModel
from backend.progress import ProgressLike, null_progress
from backend.sources import SourceData, load_source
from backend.sources.schema import SIDE_COLUMNS, table_digest
from backend.specs import EmbedSpec, spec_from_json

__all__ = ["batch_pieces", "embed_split", "embedding_key", "encode_batches", "loader_batches", "select_split",
           "split_meta"]  # the set and its files: backend.embed

log = logging.getLogger(__name__)
EMBED_VERSION = "embed-v2"  # v2: the key covers every column and the image files
CHUNK_SIZE = 512


class _Images(Dataset):
    """Preprocessed images of the given paths: index -> (3, H, W) float tensor."""

    def __init__(self, read_image: Callable[[str], Any], paths: list[str], preprocess: Callable) -> None:
        self.read_image, self.paths, self.preprocess = read_image, paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(self.read_image(self.paths[i]))


class _Files(Dataset):
    """Files through a picklable per-file transform (the fast CPU path): index -> (3, H, W) float tensor."""

    def __init__(self, files: list[Path], load: Callable[[Path], torch.Tensor]) -> None:
        self.files, self.load = files, load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load(self.files[i])


def _loader_of(lm: LoadedModel, source: SourceData) -> tuple[str, FastPreprocess | None]:
    """(loader name, its transform): "reference" for generated images or a transform the fast paths do not
    reproduce; else "fast" (CPU, JPEG draft decoding) or "gpu" (nvJPEG) - see backend.embed.images."""
    loader = image_loader(lm.device, source.image_file is not None)
    fast = FastPreprocess.from_preprocess_id(lm.preprocess_id) if loader != "reference" else None
    return (loader, fast) if fast is not None else ("reference", None)


def split_meta(pairs: pd.DataFrame) -> pd.DataFrame:
    """An EmbeddingSet's meta for `pairs` (one split of the current table): ids, patients, labels, view, site, split,
    report and the side information the source gives. Always taken from the current table, never from the cached
    files, so a cached set gains columns the source learned to give since (the embedding key leaves those out)."""
    return pairs[[c for c in META_COLUMNS if c in pairs.columns]].copy()


def select_split(pairs: pd.DataFrame, split: str) -> pd.DataFrame:
    """The pairs of one split ("all": every pair), index reset; SourceError when empty."""
    out = pairs if split == "all" else pairs[pairs["split"] == split]
    if out.empty:
        raise SourceError(f"The source has no pairs in split {split!r}; choose another split or a larger source.")
    return out.reset_index(drop=True)


def embedding_key(spec: EmbedSpec, lm: LoadedModel, pairs: pd.DataFrame, chunk_size: int = CHUNK_SIZE, *,
                  image_file: Callable[[str], Path] | None = None, loader: dict[str, Any] | None = None) -> str:
    """The content hash naming the cache folder of this embedding job: the table's full content (patients,
    labels, view/site/split too) and, for file-based sources (`image_file`), each image's size, mtime, inode and
    ctime (schema.table_digest);
    generated (synthetic) images are covered by the source options. `loader` (backend.embed.images.describe)
    names a fast image path, so its embeddings never mix with the reference path's. The side information
    (schema.SIDE_COLUMNS: sex, age, age band, year) is left out: no embedding depends on it, and embed_split
    always takes the returned set's meta (side information included) from the current table, so adding or
    correcting it never recomputes embeddings (and keys made before sources had it stay valid)."""
    pairs = pairs.drop(columns=[c for c in SIDE_COLUMNS if c in pairs.columns])
    extra = {"loader": loader} if loader and loader.get("loader") != "reference" else {}
    blob = json.dumps({**extra,
        "v": EMBED_VERSION, "model": spec.model, "weights": lm.weights_id, "source": spec.source.to_dict(),
        "split": spec.split, "section_policy": spec.source.section_policy, "preprocess": lm.preprocess_id,
        "pairs": table_digest(pairs, image_file), "chunk": chunk_size, "batch": spec.batch_size,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


def _image_feed(lm: LoadedModel, source: SourceData, paths: list[str], chunks: list[int], chunk_size: int,
                batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    """Every model batch (B, 3, H, W) of the given image chunks (numbers, increasing), in order, made ahead by one
    pool for all of them, so it works on across the ends of chunks (no restart per chunk, no idle first batch):
    for the gpu loader the read threads' items (prefetch_batches: file bytes for nvJPEG, the CPU path's images for
    PNGs and the CPU share) made into batches on the device by gpu_batch, for the others one DataLoader whose
    workers each decode a piece of every batch (loader_batches). Each chunk is cut into the batches it has alone,
    so the features do not depend on which chunks run. A generator: nothing (not even a file's path) is looked
    up before its first batch is asked for."""
    loader, fast = _loader_of(lm, source)
    spans = [span for c in chunks
             for span in batch_spans(c * chunk_size, min(len(paths), (c + 1) * chunk_size), batch_size)]
    if loader == "reference" or fast is None or source.image_file is None:
        yield from loader_batches(_Images(source.read_image, paths, lm.preprocess), spans, num_workers,
                                  lm.device.type == "cuda")
        return
    files = [source.image_file(p) for p in paths]  # once per job (a source may look several places per file)
    if loader == "fast":
        yield from loader_batches(_Files(files, fast.load), spans, num_workers, lm.device.type == "cuda")
        return
    items = prefetch_batches(files, spans, max(4, num_workers), fast, cpu_share())
    try:
        for (a, b), batch in zip(spans, items, strict=True):
            yield fast.gpu_batch(batch, files[a:b], lm.device)
    finally:
        items.close()  # no reads left running after a failed chunk


def loader_batches(data: Dataset, spans: list[tuple[int, int]], workers: int, pin: bool) -> Iterator[torch.Tensor]:
    """The model batches data[a:b] for (a, b) in spans, from one DataLoader over all of them (its workers stay up
    for the whole job), each batch assembled from its pieces."""
    pieces, per_batch = batch_pieces(spans, workers)
    parts = iter(DataLoader(data, batch_sampler=pieces, num_workers=workers, pin_memory=pin))
    try:
        for k in per_batch:
            got = [next(parts) for _ in range(k)]
            yield got[0] if k == 1 else torch.cat(got)  # one piece: the DataLoader's (pinned) batch as it is
    finally:
        del parts  # the workers stop with their iterator (a failed or finished job leaves none running)


def _image_chunk(lm: LoadedModel, paths: list[str], batch_size: int, feed: Iterator[torch.Tensor]) -> np.ndarray:
    """(len(paths), d_img_pre) float32 features of one chunk of images, its batches taken from `feed` (_image_feed,
    which covers this chunk next)."""
    batches = itertools.islice(feed, -(-len(paths) // batch_size))
    with torch.inference_mode(), _autocast(lm.device):
        return encode_batches((b.to(lm.device, non_blocking=True) for b in batches), lm.encode_image_features)


def batch_pieces(spans: list[tuple[int, int]], workers: int) -> tuple[list[list[int]], list[int]]:
    """The DataLoader's index lists: each model batch [a, b) of spans cut into up to `workers` pieces, and how many
    pieces each batch has. A worker takes one piece at a time, so every worker decodes part of every batch; with
    whole batches as a worker's unit, a 512-item chunk of 64-item batches kept at most 8 workers busy and left
    most of them idle through the chunk's last round. The model sees the same batches either way."""
    pieces, per_batch = [], []
    for a, b in spans:
        size = -(-(b - a) // max(1, workers))
        cuts = [list(range(c, min(c + size, b))) for c in range(a, b, size)]
        pieces += cuts
        per_batch.append(len(cuts))
    return pieces, per_batch


def _image_chunks(lm: LoadedModel, source: SourceData, paths: list[str], batch_size: int, num_workers: int,
                  folder: Path, chunk_size: int, progress: ProgressLike, total: int) -> np.ndarray:
    """Every image chunk stacked: those on disk loaded, the others computed (their batches fed across chunks by
    _image_feed) and written."""
    n_chunks = -(-len(paths) // chunk_size)
    todo = [c for c in range(n_chunks) if not _chunk_path(folder, "image", c).is_file()]
    feed = _image_feed(lm, source, paths, todo, chunk_size, batch_size, num_workers)
    try:
        return _run_chunks("image", len(paths), lambda a, b: _image_chunk(lm, paths[a:b], batch_size, feed),
                           folder, chunk_size, progress, 0, total)
    finally:
        feed.close()  # a failed chunk leaves no reads or DataLoader workers running


def _write_image_chunks(lm: LoadedModel, source: SourceData, paths: list[str], batch_size: int, num_workers: int,
                        folder: Path, chunk_size: int, todo: list[int], after_chunk: Callable[[], None]) -> None:
    """Compute and write the image chunks numbered `todo` (increasing), calling after_chunk() after each."""
    feed = _image_feed(lm, source, paths, todo, chunk_size, batch_size, num_workers)
    try:
        for c in todo:
            a = c * chunk_size
            _chunk("image", c, folder, lambda a=a: _image_chunk(lm, paths[a:a + chunk_size], batch_size, feed))
            after_chunk()
    finally:
        feed.close()


def _text_chunk(lm: LoadedModel, texts: list[str], batch_size: int) -> np.ndarray:
    """(len(texts), d_txt_pre) float32 features of one chunk of report texts."""
    batches = (lm.tokenizer(texts[i:i + batch_size]).to(lm.device) for i in range(0, len(texts), batch_size))
    with torch.inference_mode(), _autocast(lm.device):
        return encode_batches(batches, lm.encode_text_features)


def encode_batches(batches: Iterable[torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """(n, d) float32 features of every batch, brought to the host in one transfer after the last batch.

    A transfer per batch would make the host wait for the model on each batch before it prepares the next one;
    with one at the end, on a GPU the host decodes (nvJPEG runs on its own stream and waits only for its own
    work) or tokenises batch i+1 while the model runs on batch i. The same values either way."""
    return torch.cat([encode(batch).float() for batch in batches]).cpu().numpy()


def _apply_head(feat: np.ndarray, head: torch.nn.Linear) -> np.ndarray:
    """L2-normalised head(feat), in float32 on the CPU: (n, d_pre) -> (n, d)."""
    with torch.inference_mode():
        emb = head.float().cpu()(torch.from_numpy(feat))
        return F.normalize(emb, dim=-1).numpy().astype(np.float32)


def _chunk_path(folder: Path, kind: str, c: int) -> Path:
    return folder / f"{kind}-{c:05d}.npy"


def _chunk(kind: str, c: int, folder: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Chunk number c of `kind` from <folder>/<kind>-<c>.npy, computing and writing it (atomically) when missing."""
    path = _chunk_path(folder, kind, c)
    if path.is_file():
        return np.load(path)
    arr = compute()
    settings.atomic_write(path, lambda p, a=arr: np.save(open(p, "wb"), a))
    return arr


def _run_chunks(kind: str, n: int, compute: Callable[[int, int], np.ndarray], folder: Path, chunk_size: int,
                progress: ProgressLike, offset: int, total: int) -> np.ndarray:
    """Compute items [0, n) chunk by chunk, skipping chunks already on disk; returns the stacked array."""
    parts = []
    for c, start in enumerate(range(0, n, chunk_size)):
        stop = min(n, start + chunk_size)
        parts.append(_chunk(kind, c, folder, lambda a=start, b=stop: compute(a, b)))
        progress(offset + stop, total, f"embedding {kind}s")
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def chunk_count(n_paths: int, n_texts: int, chunk_size: int) -> tuple[int, int]:
    """(image chunks, text chunks) of a job; the job's chunks are numbered images first, then texts."""
    return -(-n_paths // chunk_size), -(-n_texts // chunk_size)


def missing_chunks(folder: Path, n_paths: int, n_texts: int, chunk_size: int) -> list[int]:
    """The numbers of the job's chunks not yet on disk in `folder` (its chunks/ folder), in order."""
    n_img, n_txt = chunk_count(n_paths, n_texts, chunk_size)
    return [c for c in range(n_img + n_txt)
            if not (_chunk_path(folder, "image", c) if c < n_img else _chunk_path(folder, "text", c - n_img)).is_file()]


def compute_share(lm: LoadedModel, src: SourceData, paths: list[str], texts: list[str], folder: Path, chunk_size: int,
                  batch_size: int, num_workers: int, mine: Callable[[int], bool],
                  progress: ProgressLike = null_progress) -> None:
    """Compute into `folder` the chunks (numbered as chunk_count says) that `mine` picks and that are not on disk:
    one process's share of a job embedded by several (backend.embed.shards on one host, torchrun ranks,
    backend.distributed). Test hook: $CXR_TEST_KILL_AFTER_CHUNK = "RANK:N" kills the process of that torchrun rank
    (SIGKILL, as an out-of-memory kill would) once it has written N chunks."""
    n_img = chunk_count(len(paths), len(texts), chunk_size)[0]
    todo = [c for c in missing_chunks(folder, len(paths), len(texts), chunk_size) if mine(c)]
    written = 0

    def after_chunk() -> None:
        nonlocal written
        written += 1
        progress(written, len(todo), "embedding this process's chunks")
        hook = os.environ.get("CXR_TEST_KILL_AFTER_CHUNK", "")
        if hook and hook == f"{os.environ.get('RANK')}:{written}":
            os.kill(os.getpid(), signal.SIGKILL)

    _write_image_chunks(lm, src, paths, batch_size, num_workers, folder, chunk_size, [c for c in todo if c < n_img],
                        after_chunk)
    for c in (c - n_img for c in todo if c >= n_img):
        a = c * chunk_size
        _chunk("text", c, folder, lambda a=a: _text_chunk(lm, texts[a:a + chunk_size], batch_size))
        after_chunk()


def _shard(rank: int, world: int, device: str, spec_json: str, entry: Any, paths: list[str], texts: list[str],
           folder: str, chunk_size: int, num_workers: int) -> None:
    """One process of a multi-device job (backend.embed.shards): the chunks `owner` gives this rank."""
    if entry is not None and entry.name not in MODELS:
        register_model(entry)  # a model registered at run time in the parent (a plugin, a test)
    spec = spec_from_json(spec_json)
    src = load_source(spec.source.name, root=spec.source.root, section_policy=spec.source.section_policy,
                      **spec.source.options)
    compute_share(load_model(spec.model, device=device), src, paths, texts, Path(folder), chunk_size,
                  spec.batch_size, num_workers, lambda c: owner(c, world) == rank)


def _auto_workers(n: int, batch_size: int, file_based: bool = False) -> int:
    """Worker processes pay off only when there are several batches to overlap with the model's compute;
    decoding files needs many (a 16-core server: 15), rendering generated images a few."""
    cpus = os.cpu_count() or 1
    return 0 if n <= 2 * batch_size or cpus < 2 else min(16 if file_based else 4, cpus - 1)


def embed_split(spec: EmbedSpec, progress: ProgressLike | None = None, *, device: str | torch.device | None = None,
                model: LoadedModel | None = None, chunk_size: int | None = None,
                num_workers: int | None = None, source: SourceData | None = None,
                ranks: Ranks | None = None) -> EmbeddingSet:
    """Embed the pairs of `spec.split` with `spec.model`; cached and resumable (see module docstring).

    Returns the EmbeddingSet (path set to its cache folder). `model`/`source` reuse already-loaded objects.
    chunk_size: items per resumable chunk (default $CXR_EMBED_CHUNK_SIZE, else CHUNK_SIZE). ranks: this process's
    place in a torchrun group (backend.distributed): every rank computes its share of the chunks, rank 0 writes the
    set, every rank returns it."""
    chunk_size = chunk_size or default_chunk_size()
    settings.check_device(device)  # DeviceError before any work (e.g. cuda on a machine without CUDA)
    progress = progress or null_progress
    src = source or load_source(spec.source.name, root=spec.source.root,
                                section_policy=spec.source.section_policy, **spec.source.options)
    pairs = select_split(src.pairs, spec.split)
    lm = model or load_model(spec.model, device=device, progress=progress)
    loader = describe(*_loader_of(lm, src))
    key = embedding_key(spec, lm, pairs, chunk_size, image_file=src.image_file, loader=loader)
    meta = split_meta(pairs)
    inputs = {"data_hash": src.digest(), "n_pairs": len(pairs)}  # every pair of the source: what a job depends on
    folder = settings.cache_subdir("embeddings") / key
    es = None

    # one process embeds a key at a time: a second run of the same split (the command line beside a dashboard
    # job) waits, then reads the finished set instead of racing on the chunks the first one assembles and removes
    def waiting() -> None:
        log.info("another process is embedding %s; waiting for it", folder)
        progress(0, 1, "waiting for another process embedding the same split")

    def embed_into() -> EmbeddingSet:
        return _embed_into(folder, spec, src, pairs, lm, loader, key, meta, inputs, device, chunk_size, num_workers,
                           progress)

    if ranks is not None:
        es = _embed_ranks(ranks, folder, spec, src, pairs, lm, chunk_size, num_workers, progress, waiting, embed_into)
    elif not (folder / "done.json").is_file():
        with settings.exclusive(folder / ".lock", waiting):
            if not (folder / "done.json").is_file():
                es = embed_into()
    if es is None:
        log.info("embeddings cached: %s", folder)
        es = load_embedding_set(folder)
    es.meta = meta  # ids, patients and labels always come from the current table
    es.info = {**es.info, "inputs": inputs, "source_stats": dict(src.stats)}  # the drops happened before the split
    return es


def default_chunk_size() -> int:
    """Items per resumable chunk: $CXR_EMBED_CHUNK_SIZE, else CHUNK_SIZE (part of the cache key)."""
    value = os.environ.get("CXR_EMBED_CHUNK_SIZE", "").strip()
    if not value:
        return CHUNK_SIZE
    if not value.isdigit() or int(value) < 1:
        raise SpecError(f"CXR_EMBED_CHUNK_SIZE={value!r}: give a positive number of items (default {CHUNK_SIZE}).")
    return int(value)


def _job_items(pairs: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """(each pair's report number, the distinct report texts, the image paths) of a split: what its chunks embed
    (each distinct report text once)."""
    codes, reports = pd.factorize(pairs["report"])
    return codes, [str(t) for t in reports], pairs["image_path"].tolist()


def _embed_ranks(ranks: Ranks, folder: Path, spec: EmbedSpec, src: SourceData, pairs: pd.DataFrame, lm: LoadedModel,
                 chunk_size: int, num_workers: int | None, progress: ProgressLike, waiting: Callable[[], None],
                 embed_into: Callable[[], EmbeddingSet]) -> EmbeddingSet | None:
    """A split embedded by the ranks of a torchrun group, into the shared cache folder. Rank 0 holds the key's lock
    throughout (a dashboard job on the same key waits), lists the chunks not on disk and hands them round robin to
    the ranks, so a rerun after a killed rank computes only what is missing, spread over all of them. Each rank
    computes its chunks; after a barrier rank 0 assembles and writes the set exactly as one process does (the
    chunks fix the bits) and returns it; the others return None once it is written."""
    _, texts, paths = _job_items(pairs)
    chunks = folder / "chunks"
    es = None
    with settings.exclusive(folder / ".lock", waiting) if ranks.lead else contextlib.nullcontext():
        todo = None
        if ranks.lead and not (folder / "done.json").is_file():
            todo = missing_chunks(chunks, len(paths), len(texts), chunk_size)
            total = sum(chunk_count(len(paths), len(texts), chunk_size))
            log.info("embedding %s on %d processes: %d chunk(s), %d on disk, %d to compute", folder, ranks.world,
                     total, total - len(todo), len(todo))
        todo = ranks.broadcast(todo)
        if todo is not None:
            chunks.mkdir(parents=True, exist_ok=True)
            mine = set(todo[ranks.rank::ranks.world])
            workers = (_auto_workers(len(paths), spec.batch_size, src.image_file is not None)
                       if num_workers is None else num_workers)
            compute_share(lm, src, paths, texts, chunks, chunk_size, spec.batch_size,
                          max(0, workers // ranks.local_world), mine.__contains__, progress)
            ranks.barrier()  # every chunk is on disk
            es = embed_into() if ranks.lead else None
    ranks.barrier()  # the set is written
    return es


def _embed_into(folder: Path, spec: EmbedSpec, src: SourceData, pairs: pd.DataFrame, lm: LoadedModel, loader: str,
                key: str, meta: pd.DataFrame, inputs: dict[str, Any], device: str | torch.device | None,
                chunk_size: int, num_workers: int | None, progress: ProgressLike) -> EmbeddingSet:
    """Compute the split's chunks (resuming from those on disk), write the finished set into `folder`, return it."""
    chunks = folder / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    codes, texts, paths = _job_items(pairs)
    total = len(paths) + len(texts)
    workers = _auto_workers(len(paths), spec.batch_size, src.image_file is not None) if num_workers is None else num_workers
    devices = embed_devices(device)
    if len(devices) > 1 and missing_chunks(chunks, len(paths), len(texts), chunk_size):
        # every GPU: one process each computes its chunks; the loops below then only read them
        entry = None if spec.model.startswith("local:") else get_model(spec.model)
        run_shards(_shard, devices, (spec.to_json(), entry, paths, texts, str(chunks), chunk_size,
                                     max(0, workers // len(devices))), chunks,
                   lambda: min(total, chunk_size * len(list(chunks.glob("*.npy")))), total, progress)
    image_feat = _image_chunks(lm, src, paths, spec.batch_size, workers, chunks, chunk_size, progress, total)
    text_feat_u = _run_chunks("text", len(texts), lambda a, b: _text_chunk(
        lm, texts[a:b], spec.batch_size), chunks, chunk_size, progress, len(paths), total)
    es = EmbeddingSet(
        meta=meta,
        image_emb=_apply_head(image_feat, lm.image_head),
        report_emb=_apply_head(text_feat_u, lm.text_head)[codes],
        image_feat=image_feat, text_feat=text_feat_u[codes], heads=lm.head_arrays(),
        info={"key": key, "spec": spec.to_dict(), "model": spec.model, "weights_id": lm.weights_id,
              "preprocess": lm.preprocess_id, "n_pairs": len(paths), "n_reports": len(texts),
              "n_studies": int(pairs["study_id"].nunique()), "n_patients": int(pairs["patient_id"].nunique()),
              "inputs": inputs, "embed_version": EMBED_VERSION, "image_loader": loader, "torch": torch.__version__, "device": str(lm.device)})
    write_set(es, folder)
    shutil.rmtree(chunks, ignore_errors=True)  # the assembled arrays hold everything the chunks held
    return es
