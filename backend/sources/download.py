"""Resumable, checksum-verified downloads, and the OpenI archives from NLM.

`download(url, dest, sha256=None, progress=None)` writes to `<dest>.part`, resumes an interrupted
transfer with an HTTP Range request, verifies the SHA-256 when given (a mismatch deletes the partial
file and raises, so nothing corrupt is kept), and only then renames the file to `dest`.

`download_openi(dest)` fetches NLM's official OpenI archives into `dest`:
    NLMCXR_reports.tgz   the 3,955 report XMLs (read directly by the openi source; ~1 MB)
    NLMCXR_png.tgz       the 7,470 PNG images (~1.3 GB), extracted into dest/NLMCXR_png/
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
import urllib.response
from dataclasses import dataclass
from pathlib import Path

from backend.errors import SourceError
from backend.progress import Progress, null_progress

log = logging.getLogger(__name__)

OPENI_BASE_URL = "https://openi.nlm.nih.gov/imgs/collections/"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One file of a dataset download: its name at the base URL and (when known) its SHA-256."""

    name: str
    sha256: str | None = None
    extract_to: str | None = None  # folder (relative to dest) to extract a tarball into, or None to keep it packed


# The reports archive's SHA-256 is that of the copy the project tests against (1,112,632 bytes, shipped in
# torchxrayvision 1.5.7 and documented as identical to NLM's file). The PNG archive's is not pinned.
OPENI_ARCHIVES: dict[str, Archive] = {
    "reports": Archive("NLMCXR_reports.tgz", "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"),
    "images": Archive("NLMCXR_png.tgz", None, extract_to="NLMCXR_png"),
}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, start: int, timeout: float) -> urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs by design)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the .part file already holds the whole file
            raise _Complete from exc
        raise SourceError(f"Download of {url} failed: HTTP {exc.code} {exc.reason}. Check the URL or try later.") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise SourceError(f"Cannot reach {url} ({exc}). Check your internet connection; run the command again "
                          "to resume.") from exc


class _Complete(Exception):
    """Internal: the server says the requested range starts at the end of the file."""


def _transfer(url: str, part: Path, progress: Progress, timeout: float) -> None:
    """Append the rest of `url` to `part` (restarting from zero when the server ignores Range)."""
    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start, timeout)
    except _Complete:
        return
    with response:
        resumed = start > 0 and response.status == 206
        if start and not resumed:
            log.info("server ignored the Range request; restarting %s from zero", part.name)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else 0
        done = start
        with open(part, "ab" if resumed else "wb") as out:
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    progress(done, max(total, done), part.name.removesuffix(".part"))
            except (http.client.HTTPException, OSError) as exc:
                raise SourceError(f"Download of {url} broke off at {done} bytes ({exc!r}); run the command again "
                                  "to resume.") from exc
    if total and done < total:
        raise SourceError(f"Download of {url} stopped at {done} of {total} bytes; run the command again to resume.")


def download(url: str, dest: str | Path, sha256: str | None = None, progress: Progress | None = None, *,
             timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (resuming `<dest>.part`), verify `sha256` if given, return dest.

    An existing `dest` is kept when it matches the checksum (or when no checksum is given).
    Raises SourceError on network failure (the partial file stays for resuming) or on a checksum
    mismatch (the partial file is deleted)."""
    dest = Path(dest)
    progress = progress or null_progress
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        size = dest.stat().st_size
        progress(size, size, f"{dest.name} (already here)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _transfer(url, part, progress, timeout)
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256.lower():
            part.unlink(missing_ok=True)
            raise SourceError(f"Checksum mismatch for {dest.name} from {url}: expected sha256 {sha256.lower()}, got "
                              f"{got}. The corrupt file was deleted; run the command again (if the publisher "
                              "changed the file, pass the new checksum or skip the check).")
    part.replace(dest)
    return dest


def extract_tarball(archive: Path, folder: Path) -> Path:
    """Extract a .tgz safely (tarfile's 'data' filter: no absolute paths, links or devices) into folder.

    NLMCXR_png.tgz holds bare PNG files; an archive with one top folder has that folder's content lifted
    into `folder`, so the files always end up directly in it."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".complete"
    if marker.exists():
        return folder
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"Cannot extract {str(archive)!r} ({exc}); delete it and download it again.") from exc
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():  # the archive held one top folder: lift its files up
        for item in entries[0].iterdir():
            shutil.move(str(item), folder / item.name)
        entries[0].rmdir()
    marker.touch()
    return folder


def download_openi(dest: str | Path, *, images: bool = True, base_url: str = OPENI_BASE_URL,
                   verify: bool = True, progress: Progress | None = None) -> list[Path]:
    """Fetch NLM's OpenI archives into `dest` (see module docstring); returns the files/folders written.

    images=False fetches only the reports; verify=False skips the pinned checksums; base_url is for mirrors
    (and tests)."""
    dest = Path(dest).expanduser()
    wanted = [OPENI_ARCHIVES["reports"]] + ([OPENI_ARCHIVES["images"]] if images else [])
    written: list[Path] = []
    for archive in wanted:
        url = base_url.rstrip("/") + "/" + archive.name
        path = download(url, dest / archive.name, archive.sha256 if verify else None, progress)
        written.append(path)
        if archive.extract_to:
            written.append(extract_tarball(path, dest / archive.extract_to))
    log.info("OpenI is in %s; load it with load_source('openi', root=%r)", dest, str(dest))
    return written
