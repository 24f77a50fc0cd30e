"""File helpers shared by the real-data sources (openi, mimic-cxr, chexpert-plus, csv).

Every function validates at the boundary and raises SourceError / ImageReadError with a message that
names the file or column and says what to do.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from backend import settings
from backend.errors import ImageReadError, SourceError
from backend.progress import Progress
from backend.sources.image_checks import ImageCheckCache, Signature
from backend.sources.schema import LABELS

log = logging.getLogger(__name__)

ImageReader = Callable[[str], Image.Image]


def require_root(root: str | Path | None, source: str, env_var: str | None = None) -> Path:
    """The source's root folder; SourceError when it is not given, does not exist or is a file."""
    if root is None or str(root) == "":
        hint = f" or set {env_var}" if env_var else ""
        raise SourceError(f"Source {source!r} needs a data folder: pass root=<folder> (--root){hint}.")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise SourceError(f"Data folder {str(path)!r} for source {source!r} is a file, not a folder; pass the folder "
                          "that holds the data (for csv: the folder with pairs.csv and the images).")
    if not path.is_dir():
        raise SourceError(f"Data folder {str(path)!r} for source {source!r} does not exist; check the path.")
    return path


def find_file(root: Path, names: Sequence[str], what: str, hint: str = "") -> Path:
    """The first of `names` (relative to root, each also tried with .gz) that exists.

    Raises SourceError listing the names tried."""
    tried = []
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            tried.append(candidate.name)
            if candidate.is_file():
                return candidate
    extra = f" {hint}" if hint else ""
    raise SourceError(f"No {what} in {str(root)!r} (looked for {', '.join(dict.fromkeys(tried))}).{extra}")


def find_optional(root: Path, names: Sequence[str]) -> Path | None:
    """Like find_file but None when nothing exists."""
    try:
        return find_file(root, names, "file")
    except SourceError:
        return None


def read_table(path: Path, required: Iterable[str], what: str, **kwargs: object) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) and check its required columns (SourceError naming them)."""
    try:
        table = pd.read_csv(path, low_memory=False, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SourceError(f"Cannot read {what} {str(path)!r}: {exc}. Check that it is a valid CSV file.") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceError(
            f"{what} {str(path)!r} has no column(s) {missing}; found {list(table.columns)[:12]}. "
            "Use the official file or rename the columns."
        )
    return table


def missing_image(path: Path | str, hint: str = "check the image folder") -> ImageReadError:
    """The error for an image file that is not there: the file, what to check (`hint`), and how to go on
    without it (the check_images option skips and counts missing and unreadable images at load)."""
    return ImageReadError(f"Image {str(path)!r} does not exist; {hint}. To skip and count missing or unreadable "
                          "images instead, load the source with --source-option check_images=true.")


def open_image(path: Path, hint: str = "check the image folder") -> Image.Image:
    """Load one image fully as mode 'L' or 'RGB'; ImageReadError naming the file otherwise."""
    if not path.is_file():
        raise missing_image(path, hint)
    try:
        with Image.open(path) as img:
            img.load()
            return eight_bit(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"Image {str(path)!r} is unreadable or corrupt ({exc}); replace or remove it.") from exc


def eight_bit(img: Image.Image) -> Image.Image:
    """An 'L' or 'RGB' copy of a loaded image; 16-bit and float radiographs rescaled to 0..255 by min/max."""
    if img.mode in ("L", "RGB"):
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I", "F"):  # 16-bit radiographs: rescale to 8 bits
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    return img.convert("RGB" if "A" in img.mode or img.mode == "P" else "L")


def check_image(path: Path) -> bool:
    """True when the file exists and all of its image data is readable (a truncated PNG or JPEG is False, alike).

    PNG: Image.verify() (reads every chunk and checks its CRC, so truncation is caught) - cheap. Every other
    format (JPEG ...): a full decode, because verify() does not read JPEG data and a truncated JPEG used to pass
    here and abort the embedding later (JPEGs are decoded in draft mode: the whole stream is read, at reduced
    scale). Safe to call from several threads at once."""
    with _strict_decoding():
        return _decodes(path)


_STRICT_LOCK = threading.Lock()
_STRICT: dict[str, bool | int] = {"depth": 0, "saved": False}


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """PIL's leniency (ImageFile.LOAD_TRUNCATED_IMAGES) off while any check runs: a truncated file must fail.
    Counted, so that overlapping checks in several threads restore the caller's setting only at the end."""
    with _STRICT_LOCK:
        if _STRICT["depth"] == 0:
            _STRICT["saved"] = ImageFile.LOAD_TRUNCATED_IMAGES
        _STRICT["depth"] = int(_STRICT["depth"]) + 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _STRICT_LOCK:
            _STRICT["depth"] = int(_STRICT["depth"]) - 1
            if _STRICT["depth"] == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = bool(_STRICT["saved"])


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                img.verify()
                return True
            if img.format == "JPEG":
                img.draft(img.mode, (1, 1))
            img.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def inside_root(root: Path, image_paths: Iterable[str], source: str = "") -> None:
    """Refuse relative image paths that lead outside `root` (e.g. '../x.png'); SourceError listing the first ones.

    Absolute paths are the user's explicit choice and are not checked; only relative ones are joined to root.
    The check is on the path as written ('..' components, normalised), not on where symlinks lead: an image
    folder linked in from elsewhere stays allowed, and only paths with '..' are looked at (fast on 200k rows)."""
    base = root.resolve()
    bad = [p for p in dict.fromkeys(map(str, image_paths))
           if ".." in p and not Path(p).is_absolute()
           and not Path(os.path.normpath(base / p)).is_relative_to(base)]
    if bad:
        raise SourceError(f"{source + ': ' if source else ''}{len(bad)} image path(s) lead outside the data folder "
                          f"{str(base)!r}, e.g. {bad[:5]}; give paths relative to that folder (no '..'), or absolute "
                          "paths.")


def make_reader(root: Path, resolve: Callable[[Path, str], Path] | None = None,
                hint: str = "check the image folder") -> ImageReader:
    """A read_image function for SourceData: image_path (relative to root) -> PIL image.

    hint: what the user should do when an image is missing (ends the ImageReadError message)."""

    def read_image(image_path: str) -> Image.Image:
        path = resolve(root, image_path) if resolve else root / image_path
        return open_image(path, hint)

    return read_image


def drop_bad_images(pairs: pd.DataFrame, root: Path, resolve: Callable[[Path, str], Path] | None = None,
                    source: str = "", *, workers: int | None = None, cache: bool = True,
                    progress: Progress | None = None) -> tuple[pd.DataFrame, int]:
    """Drop pairs whose image is missing or corrupt (each unique image checked once, see check_images).

    Returns (kept pairs, number of pairs dropped); logs a warning naming the first bad file."""
    rels = list(pairs["image_path"].unique())
    paths = [resolve(root, rel) if resolve else root / rel for rel in rels]
    oks = check_images(paths, ImageCheckCache(root) if cache else None, workers=workers, progress=progress,
                       what=source)
    bad = [rel for rel, ok in zip(rels, oks, strict=True) if not ok]
    if not bad:
        return pairs, 0
    log.warning("%s: skipped %d missing or unreadable image(s), e.g. %s", source, len(bad), bad[0])
    keep = ~pairs["image_path"].isin(set(bad))
    return pairs.loc[keep].reset_index(drop=True), int((~keep).sum())


def image_stats(checked: bool, skipped: int = 0) -> dict[str, int]:
    """The stats entries on a source's images: {"images_checked": 1, "skipped_images": n} after a check, and only
    {"images_checked": 0} without one (an unchecked image is not known to be readable: no "0 skipped")."""
    return {"images_checked": 1, "skipped_images": int(skipped)} if checked else {"images_checked": 0}


CHUNK = 64  # at most this many images per task of the thread pool (not one future per image: 377k of them)
FLUSH_EVERY = 5000  # new verdicts written to the cache at least this often, so an interrupted scan keeps them
LOG_EVERY_S = 10.0  # without a progress callback: a log line this often during a long scan


def check_images(paths: Sequence[Path], cache: ImageCheckCache | None = None, *, workers: int | None = None,
                 progress: Progress | None = None, what: str = "") -> list[bool]:
    """check_image of every path (missing -> False), in parallel threads, reusing cached verdicts.

    workers: threads (default settings.image_check_workers(): CXR_IMAGE_CHECK_WORKERS or CPU count + 4;
    1 checks serially in this thread). cache: verdicts keyed by (absolute path, size, mtime_ns); a file whose
    size or mtime changed is checked again, a missing file is never cached (see backend.sources.image_checks
    for the accepted limitation). progress(done, total, message) is called as chunks finish; without it a
    long scan logs its progress every LOG_EVERY_S seconds. Returns the verdicts in the order of `paths`."""
    start = time.perf_counter()
    workers = settings.image_check_workers() if workers is None else max(1, int(workers))
    known = cache.load() if cache is not None else {}
    names = [os.path.abspath(p) for p in paths]
    size = max(1, min(CHUNK, -(-len(names) // (4 * workers))))  # small sets: still about 4 tasks per thread
    chunks = [names[i:i + size] for i in range(0, len(names), size)]

    def run(chunk: list[str]) -> list[tuple[bool, Signature | None]]:
        return [_check_one(name, known.get(name)) for name in chunk]

    oks: list[bool] = []
    fresh: list[tuple[str, Signature, bool]] = []
    n_fresh, last_log = 0, start
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 and len(chunks) > 1 else None
    try:
        for chunk, results in zip(chunks, pool.map(run, chunks) if pool else map(run, chunks), strict=True):
            for name, (ok, sig) in zip(chunk, results, strict=True):
                oks.append(ok)
                if sig is not None:
                    fresh.append((name, sig, ok))
            if cache is not None and len(fresh) >= FLUSH_EVERY:
                n_fresh += len(fresh)
                cache.store(fresh)
                fresh = []
            if progress is not None:  # may raise (a cancelled job): the verdicts so far are kept below
                progress(len(oks), len(names), f"{what}: checking images" if what else "checking images")
            elif time.perf_counter() - last_log > LOG_EVERY_S:
                last_log = time.perf_counter()
                log.info("%s: checked %d of %d images", what or "images", len(oks), len(names))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)  # after an error: only the chunks already running finish
        n_fresh += len(fresh)
        if cache is not None:
            cache.store(fresh)
    log.info("%s: %d images checked in %.1f s (%d decoded, the others cached or missing; %d thread(s))",
             what or "images", len(names), time.perf_counter() - start, n_fresh, workers)
    return oks


def _check_one(name: str, known: tuple[int, int, bool] | None) -> tuple[bool, Signature | None]:
    """(verdict, (size, mtime_ns) when the file was decoded now, None when missing or taken from `known`)."""
    try:
        st = os.stat(name)
    except OSError:
        return False, None
    if not stat.S_ISREG(st.st_mode):
        return False, None
    sig = (st.st_size, st.st_mtime_ns)  # taken before the decode: a file changed meanwhile is checked next time
    if known is not None and (known[0], known[1]) == sig:
        return known[2], None
    return check_image(Path(name)), sig


LABEL_VALUES = (1.0, 0.0, -1.0)  # positive, negative, uncertain; plus blank (not mentioned)


def blank_value(value: object) -> float:
    """The `blank_as` source option as a label value: 0 or 1 (numbers or their text) or NaN ("nan", "NaN",
    "unknown", None); SourceError naming the accepted values for anything else."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"nan", "unknown", "none", ""}):
        return float("nan")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = None
    if number is not None and (np.isnan(number) or number in (0.0, 1.0)):
        return number
    raise SourceError(f"blank_as={value!r} is not a label value for blank (not mentioned) cells; use blank_as=0 "
                      "(negative, the default), blank_as=1 or blank_as=nan (unknown).")


def label_columns(table: pd.DataFrame, blank_as: float = 0.0, key_alias: dict[str, str] | None = None,
                  what: str = "table") -> pd.DataFrame:
    """The 14 CheXpert label columns of a table as float 1/0/NaN (uncertain -1 -> NaN).

    Accepted cells: numbers equal to 1, 0 or -1 (written 1, 0, -1, 1.0, 0.0, -1.0 ...) and blank (empty or NaN).
    Anything else (yes, True, positive, 2 ...) raises SourceError naming the column and the first bad values
    (`what` names the file in the message). Missing columns become NaN; blank cells (not mentioned) become
    `blank_as` (default 0.0, the usual 'not mentioned = negative' convention; pass float('nan') to keep them
    unknown; the source option blank_as=nan, NaN or 0 gives the same)."""
    blank_as = blank_value(blank_as)
    out = pd.DataFrame(index=table.index)
    for label in LABELS:
        name = (key_alias or {}).get(label, label)
        if name not in table.columns:
            out[label] = np.nan
            continue
        raw = table[name]
        text = raw.astype(str).str.strip()
        blank = raw.isna() | text.isin(["", "nan", "NaN", "NA", "N/A", "None"])
        col = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
        bad = ~blank & ~col.isin(LABEL_VALUES)
        if bad.any():
            examples = list(dict.fromkeys(text[bad]))[:5]
            raise SourceError(f"{what}: label column {name!r} has value(s) {examples} ({int(bad.sum())} cell(s)); "
                              "use 1 (positive), 0 (negative), -1 (uncertain) or leave the cell blank.")
        col = col.fillna(blank_as)
        col[col < 0] = np.nan
        out[label] = col
    return out
