"""Model downloads against a real HTTP server on 127.0.0.1: progress, resume, Range, checksums, failures."""

import hashlib
import http.server
import re
import socket
import threading

import pytest

from MedSAMSlicerLib.models import download
from MedSAMSlicerLib.models.download import (clearModelCache, downloadFile, ensureModel, isModelCached, modelCacheFolder,
                                      modelPath, setModelCacheFolder)
from MedSAMSlicerLib.core.errors import CancelledError, DownloadError
from MedSAMSlicerLib.core.progress import CancelToken
from MedSAMSlicerLib.models.registry import ModelSpec

PAYLOAD = bytes(range(256)) * 12000  # ~3 MB: several 1 MiB chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """A threaded HTTP server serving PAYLOAD at /model.pth with switchable behaviour."""

    def __init__(self):
        self.supportsRange = True
        self.truncateNext = False  # send half the body of the next response, then close
        self.requests = []  # (path, Range header or None)
        self.bytesSent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path != "/model.pth":
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.supportsRange:
                    start = int(match.group(1))
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncateNext:
                    server.truncateNext = False
                    body = body[: len(body) // 2]
                    self.close_connection = True
                # counted before writing: the client can finish reading (and the test assert)
                # before this thread runs again after the write
                server.bytesSent += len(body)
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    instance = _Server()
    yield instance
    instance.close()


@pytest.fixture
def cacheFolder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(tmp_path / "cache"))
    setModelCacheFolder(None)
    yield tmp_path / "cache" / "models"
    setModelCacheFolder(None)


def _spec(url, **overrides):
    fields = dict(modelId="test_model", displayName="Test model", kind="download", recipe="sam",
                  architecture="vit_b", fileName="test_model.pth", sizeBytes=len(PAYLOAD), sha256=SHA, urls=(url,))
    fields.update(overrides)
    return ModelSpec(**fields)


def test_download_reports_progress_and_verifies(server, tmp_path):
    progress = []
    dest = downloadFile(server.url, tmp_path / "m.pth", sha256=SHA, sizeBytes=len(PAYLOAD),
                        progress=lambda fraction, text: progress.append((fraction, text)))
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "m.pth.part").exists()
    fractions = [fraction for fraction, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 3
    assert "m.pth" in progress[0][1]


def test_existing_part_file_resumes_with_a_range_request(server, tmp_path):
    (tmp_path / "m.pth.part").write_bytes(PAYLOAD[:1000000])
    downloadFile(server.url, tmp_path / "m.pth", sha256=SHA)
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert server.requests == [("/model.pth", "bytes=1000000-")]
    assert server.bytesSent == len(PAYLOAD) - 1000000


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.supportsRange = False
    (tmp_path / "m.pth.part").write_bytes(b"x" * 500000)  # wrong bytes: must not survive
    downloadFile(server.url, tmp_path / "m.pth", sha256=SHA, sizeBytes=len(PAYLOAD))
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert server.bytesSent == len(PAYLOAD)


def test_interrupted_transfer_fails_cleanly_then_resumes(server, tmp_path):
    server.truncateNext = True
    dest = tmp_path / "m.pth"
    with pytest.raises(DownloadError, match="Run the download again to resume"):
        downloadFile(server.url, dest, sha256=SHA)
    assert not dest.exists()
    kept = (tmp_path / "m.pth.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    downloadFile(server.url, dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/model.pth", f"bytes={kept}-")


def test_complete_part_file_is_verified_without_refetching(server, tmp_path):
    (tmp_path / "m.pth.part").write_bytes(PAYLOAD)
    downloadFile(server.url, tmp_path / "m.pth", sha256=SHA)  # server answers 416: nothing left to send
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD and server.bytesSent == 0


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256 .* expected 0{64}.*deleted"):
        downloadFile(server.url, tmp_path / "m.pth", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="bytes instead of"):
        downloadFile(server.url, tmp_path / "m.pth", sizeBytes=len(PAYLOAD) + 1)
    assert list(tmp_path.iterdir()) == []


def test_server_down_and_http_errors_are_clear(server, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closedPort = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="Could not reach .*network connection.*by hand"):
        downloadFile(f"http://127.0.0.1:{closedPort}/model.pth", tmp_path / "m.pth")
    with pytest.raises(DownloadError, match="HTTP 404"):
        downloadFile(server.url.replace("model.pth", "missing.pth"), tmp_path / "m.pth")
    assert not (tmp_path / "m.pth").exists()


def test_cancel_keeps_the_part_for_later(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CHUNK_BYTES", 65536)
    token = CancelToken()
    progress = lambda fraction, text: token.cancel() if fraction > 0.2 else None  # noqa: E731
    with pytest.raises(CancelledError, match="resumes"):
        downloadFile(server.url, tmp_path / "m.pth", progress=progress, cancel=token)
    assert not (tmp_path / "m.pth").exists() and (tmp_path / "m.pth.part").stat().st_size > 0
    downloadFile(server.url, tmp_path / "m.pth", sha256=SHA)
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD


def test_ensure_model_downloads_once_into_the_cache(server, cacheFolder):
    spec = _spec(server.url)
    assert modelCacheFolder() == cacheFolder and not isModelCached(spec)
    path = ensureModel(spec)
    assert path == cacheFolder / "test_model.pth" == modelPath(spec) and isModelCached(spec)
    assert ensureModel(spec) == path and len(server.requests) == 1
    assert (cacheFolder / "test_model.pth.verified").is_file()  # hashed once, at download
    assert clearModelCache(spec) >= len(PAYLOAD) and not path.exists()
    assert sorted(p.name for p in cacheFolder.iterdir()) == []  # the stamp goes with the file


def test_ensure_model_tries_mirrors_and_explains_where_to_put_the_file(server, cacheFolder):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        deadUrl = f"http://127.0.0.1:{probe.getsockname()[1]}/model.pth"
    assert ensureModel(_spec(deadUrl, urls=(deadUrl, server.url))).read_bytes() == PAYLOAD
    clearModelCache()
    with pytest.raises(DownloadError) as error:
        ensureModel(_spec(deadUrl))
    message = str(error.value)
    assert "test_model.pth" in message and deadUrl in message and str(cacheFolder) in message


def test_cache_folder_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(tmp_path / "fromEnv"))
    assert modelCacheFolder() == tmp_path / "fromEnv" / "models"
    setModelCacheFolder(tmp_path / "slicerCache")
    try:
        assert modelCacheFolder() == tmp_path / "slicerCache"
    finally:
        setModelCacheFolder(None)
