"""File helpers shared by the real-data sources (openi, mimic-cxr, chexpert-plus, csv).

Every function validates at the boundary and raises SourceError / ImageReadError with a message that
names the file or column and says what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from backend.errors import ImageReadError, SourceError
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


def open_image(path: Path, hint: str = "check the image folder") -> Image.Image:
    """Load one image fully as mode 'L' or 'RGB'; ImageReadError naming the file otherwise."""
    if not path.is_file():
        raise ImageReadError(f"Image {str(path)!r} does not exist; {hint}.")
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
    scale)."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        return _decodes(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # someone turned PIL's leniency on: a truncated file must fail here
    try:
        return _decodes(path)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = True


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
                    source: str = "") -> tuple[pd.DataFrame, int]:
    """Drop pairs whose image is missing or corrupt (each unique image checked once).

    Returns (kept pairs, number of pairs dropped); logs a warning naming the first bad file."""
    bad: list[str] = []
    for rel in pairs["image_path"].unique():
        path = resolve(root, rel) if resolve else root / rel
        if not check_image(path):
            bad.append(rel)
    if not bad:
        return pairs, 0
    log.warning("%s: skipped %d missing or unreadable image(s), e.g. %s", source, len(bad), bad[0])
    keep = ~pairs["image_path"].isin(set(bad))
    return pairs.loc[keep].reset_index(drop=True), int((~keep).sum())


LABEL_VALUES = (1.0, 0.0, -1.0)  # positive, negative, uncertain; plus blank (not mentioned)


def label_columns(table: pd.DataFrame, blank_as: float = 0.0, key_alias: dict[str, str] | None = None,
                  what: str = "table") -> pd.DataFrame:
    """The 14 CheXpert label columns of a table as float 1/0/NaN (uncertain -1 -> NaN).

    Accepted cells: numbers equal to 1, 0 or -1 (written 1, 0, -1, 1.0, 0.0, -1.0 ...) and blank (empty or NaN).
    Anything else (yes, True, positive, 2 ...) raises SourceError naming the column and the first bad values
    (`what` names the file in the message). Missing columns become NaN; blank cells (not mentioned) become
    `blank_as` (default 0.0, the usual 'not mentioned = negative' convention; pass float('nan') to keep them
    unknown)."""
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
