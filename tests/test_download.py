"""Downloads against a local HTTP server on 127.0.0.1 (never the internet): resume, checksum, OpenI."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backend.__main__ import main
from backend.errors import SourceError
from backend.sources import load_source
from backend.sources.download import download, download_openi
from tests.helpers.fixtures_data import write_openi


class _Server:
    """Serves `files` (name -> bytes) with HTTP Range support; can ignore Range or cut a body short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.honour_range = True
        self.cut_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = int(header.split("=")[1].split("-")[0]) if header and server.honour_range else 0
                if start >= len(data) and header:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                self.wfile.write(body[: server.cut_after] if server.cut_after is not None else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919) % 251 for i in range(n))


def test_download_with_checksum_and_progress(server: _Server, tmp_path: Path) -> None:
    data = _payload()
    server.files["blob.bin"] = data
    calls: list[tuple[int, int]] = []
    out = download(server.url + "blob.bin", tmp_path / "blob.bin", hashlib.sha256(data).hexdigest(),
                   progress=lambda done, total, msg="": calls.append((done, total)))
    assert out.read_bytes() == data and not (tmp_path / "blob.bin.part").exists()
    assert calls[-1] == (len(data), len(data))
    again = download(server.url + "blob.bin", out, hashlib.sha256(data).hexdigest())
    assert again == out and len(server.ranges) == 1  # already there and verified: no second request


def test_resume_from_part_file(server: _Server, tmp_path: Path) -> None:
    data = _payload()
    server.files["blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(data[:100_000])
    out = download(server.url + "blob.bin", tmp_path / "blob.bin", hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data and server.ranges == ["bytes=100000-"]


def test_interrupted_download_keeps_part_then_resumes(server: _Server, tmp_path: Path) -> None:
    data = _payload()
    server.files["blob.bin"] = data
    server.cut_after = 120_000
    with pytest.raises(SourceError, match="resume"):
        download(server.url + "blob.bin", tmp_path / "blob.bin", hashlib.sha256(data).hexdigest(), timeout=5)
    part = tmp_path / "blob.bin.part"
    assert 0 < part.stat().st_size < len(data) and not (tmp_path / "blob.bin").exists()
    server.cut_after = None
    download(server.url + "blob.bin", tmp_path / "blob.bin", hashlib.sha256(data).hexdigest())
    assert (tmp_path / "blob.bin").read_bytes() == data and server.ranges[-1].startswith("bytes=")


def test_server_ignoring_range_restarts_cleanly(server: _Server, tmp_path: Path) -> None:
    data = _payload()
    server.files["blob.bin"] = data
    server.honour_range = False
    (tmp_path / "blob.bin.part").write_bytes(b"garbage" * 100)
    out = download(server.url + "blob.bin", tmp_path / "blob.bin", hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data


def test_checksum_mismatch_keeps_nothing(server: _Server, tmp_path: Path) -> None:
    server.files["blob.bin"] = _payload(5000)
    with pytest.raises(SourceError, match="Checksum mismatch for blob.bin"):
        download(server.url + "blob.bin", tmp_path / "blob.bin", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_unreachable_server(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        download(server.url + "missing.bin", tmp_path / "x")
    with pytest.raises(SourceError, match="Cannot reach"):
        download("http://127.0.0.1:9/none", tmp_path / "y", timeout=2)


def _openi_archives(tmp_path: Path) -> dict[str, bytes]:
    """NLMCXR_reports.tgz and NLMCXR_png.tgz (PNG files at the archive's top level) in NLM's format."""
    tree = write_openi(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for png in sorted((tree / "NLMCXR_png").glob("*.png")):
            tar.add(png, arcname=png.name)
    return {"NLMCXR_reports.tgz": (tree / "NLMCXR_reports.tgz").read_bytes(), "NLMCXR_png.tgz": buf.getvalue()}


def test_download_openi_then_load(server: _Server, tmp_path: Path) -> None:
    server.files.update(_openi_archives(tmp_path))
    dest = tmp_path / "openi"
    with pytest.raises(SourceError, match="Checksum mismatch for NLMCXR_reports.tgz"):
        download_openi(dest, base_url=server.url)  # our tiny archive is not NLM's pinned file
    written = download_openi(dest, base_url=server.url, verify=False)
    assert [p.name for p in written] == ["NLMCXR_reports.tgz", "NLMCXR_png.tgz", "NLMCXR_png"]
    data = load_source("openi", root=str(dest))
    assert len(data.pairs) == 5 and data.stats["skipped_images"] == 0
    assert data.read_image(data.pairs["image_path"].iloc[0]).size == (16, 16)


def test_cli_download_and_sources(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server.files.update(_openi_archives(tmp_path))
    dest = tmp_path / "cli"
    assert main(["download", "openi", "--dest", str(dest), "--base-url", server.url, "--reports-only",
                 "--no-verify"]) == 0
    assert (dest / "NLMCXR_reports.tgz").is_file() and not (dest / "NLMCXR_png.tgz").exists()
    assert main(["sources", "--name", "openi", "--root", str(dest)]) == 0
    out = capsys.readouterr().out
    assert '"reports": 5' in out and '"pairs": 5' in out
    assert main(["sources", "--name", "no-such-source"]) == 2
    assert "Unknown source 'no-such-source'" in capsys.readouterr().err


def test_extract_lifts_a_single_top_folder(tmp_path: Path) -> None:
    from backend.sources.download import extract_tarball

    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "CXR9_IM-0001-1001.png").write_bytes(b"png")
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        tar.add(tmp_path / "top", arcname="images")
    out = extract_tarball(tmp_path / "a.tgz", tmp_path / "NLMCXR_png")
    assert (out / "CXR9_IM-0001-1001.png").read_bytes() == b"png" and not (out / "images").exists()
    (tmp_path / "broken.tgz").write_bytes(b"not a tarball")
    with pytest.raises(SourceError, match="Cannot extract"):
        extract_tarball(tmp_path / "broken.tgz", tmp_path / "other")
