"""The model cache is trusted only after its SHA-256 is checked, with one message and a way out when it is damaged.

A fake registry entry with a known SHA-256 (served by the real local HTTP server of test_download.py), and the
real registry's MedSAM entry with a garbage file of exactly its size in the cache, run through the command line
as a subprocess.
"""

import json
import os

import pytest

from MedSAMSlicerLib.core.errors import DownloadError, InputError
from MedSAMSlicerLib.models import download
from MedSAMSlicerLib.models.download import (CACHED, DAMAGED, MISSING, cacheStatus, downloadFile, ensureModel,
                                             isModelCached, requireIntactModel)
from MedSAMSlicerLib.models.registry import getModelSpec
from test_cli import runCli  # noqa: F401 (fixture)
from test_download import PAYLOAD, _spec, cacheFolder, server  # noqa: F401 (fixtures)

DAMAGED_WORDS = "are damaged or not the published file"


def test_garbage_of_the_right_size_is_damaged_and_replaced_on_request(server, cacheFolder):
    spec = _spec(server.url)
    assert cacheStatus(spec) == (MISSING, None)
    cacheFolder.mkdir(parents=True)
    (cacheFolder / spec.fileName).write_bytes(b"\x5a" * len(PAYLOAD))  # right size, wrong bytes
    status, problem = cacheStatus(spec)
    assert status == DAMAGED and "SHA-256" in problem and spec.sha256 in problem
    assert not isModelCached(spec)
    with pytest.raises(DownloadError, match=rf"{DAMAGED_WORDS}.*download test_model --force.*delete the file"):
        requireIntactModel(spec)
    path = ensureModel(spec)  # asking for the model replaces the damaged file
    assert path.read_bytes() == PAYLOAD and cacheStatus(spec) == (CACHED, None)
    stamp = json.loads((cacheFolder / (spec.fileName + ".verified")).read_text())
    assert stamp["sha256"] == spec.sha256 and stamp["size"] == len(PAYLOAD)

    path.write_bytes(b"\x00" * len(PAYLOAD))  # replaced behind the stamp's back: a new modification time
    os.utime(path, ns=(stamp["mtimeNs"] + 10**9, stamp["mtimeNs"] + 10**9))
    assert cacheStatus(spec)[0] == DAMAGED


def test_force_downloads_again_and_keeps_the_file_when_that_fails(server, cacheFolder):
    spec = _spec(server.url)
    path = ensureModel(spec)
    assert ensureModel(spec) == path and len(server.requests) == 1  # intact: nothing fetched
    assert ensureModel(spec, force=True) == path and len(server.requests) == 2
    server.close()  # no server: the forced download fails, the verified file stays
    with pytest.raises(DownloadError):
        ensureModel(spec, force=True)
    assert path.read_bytes() == PAYLOAD and cacheStatus(spec) == (CACHED, None)


def test_wrong_size_is_damaged_too(server, cacheFolder):
    spec = _spec(server.url)
    cacheFolder.mkdir(parents=True)
    (cacheFolder / spec.fileName).write_bytes(PAYLOAD[:1000])
    assert cacheStatus(spec) == (DAMAGED, f"it has 1000 bytes instead of {len(PAYLOAD)}")


def test_cache_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InputError, match="Cannot create the model cache folder .*MEDSAM_SLICER_CACHE"):
        downloadFile("http://127.0.0.1:9/model.pth", tmp_path / "afile" / "models" / "m.pth")


@pytest.fixture
def damagedMedsam(tmp_path):
    """The real registry's MedSAM file name in an empty cache, holding zeros of exactly the published size."""
    spec = getModelSpec("medsam")
    folder = tmp_path / "cache" / "models"
    folder.mkdir(parents=True)
    with open(folder / spec.fileName, "wb") as stream:
        stream.truncate(spec.sizeBytes)  # sparse: no disk space used
    return spec


def test_damaged_cache_gets_one_message_everywhere(runCli, tmp_path, damagedMedsam):
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 16, 16), np.float32)), str(tmp_path / "image.nrrd"))
    segment = runCli("segment", tmp_path / "image.nrrd", "--out", tmp_path / "mask.nrrd", "--box", "2,2,1,12,12,1",
                     "--model", "medsam")
    fetch = runCli("download", "medsam")
    listing = runCli("models", "--json")
    for done in (segment, fetch):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert DAMAGED_WORDS in lines[0] and "medsam-slicer download medsam --force" in lines[0], lines[0]
    assert _messageBody(segment.stderr) == _messageBody(fetch.stderr)
    medsam = next(row for row in json.loads(listing.stdout) if row["id"] == damagedMedsam.modelId)
    assert medsam["cached"] is False and "DAMAGED" in medsam["status"] and "--force" in medsam["status"]
    default = runCli("segment", tmp_path / "image.nrrd", "--out", tmp_path / "mask.nrrd", "--box", "2,2,1,12,12,1")
    assert default.returncode == 0 and DAMAGED_WORDS in default.stderr and "weight-free" in default.stderr


def _messageBody(stderr):
    return stderr.split("error: ", 1)[1].strip()


def test_download_into_a_cache_folder_that_cannot_be_created(tmp_path):
    import subprocess

    from test_cli import REPO, cliCommand

    (tmp_path / "afile").write_text("not a folder")
    environment = dict(os.environ, MEDSAM_SLICER_CACHE=str(tmp_path / "afile" / "cache"),
                       PYTHONPATH=str(REPO / "MedSAMSlicer"))
    done = subprocess.run(cliCommand() + ["download", "medsam"], capture_output=True, text=True, env=environment,
                          timeout=120)
    assert done.returncode == 2 and "Cannot create the model cache folder" in done.stderr, done.stderr
    assert "internal error" not in done.stderr


def test_stamp_spares_the_hash(server, cacheFolder, monkeypatch):
    """After one verification the file is not hashed again while it is unchanged (seconds per GB saved per run)."""
    spec = _spec(server.url)
    ensureModel(spec)
    hashed = []
    original = download._sha256File
    monkeypatch.setattr(download, "_sha256File", lambda path: hashed.append(path) or original(path))
    monkeypatch.setattr(download, "_HASHED_IN_THIS_PROCESS", {})  # as in a later process: only the stamp remembers
    assert isModelCached(spec) and isModelCached(spec) and hashed == []
    (cacheFolder / (spec.fileName + ".verified")).unlink()
    monkeypatch.setattr(download, "_HASHED_IN_THIS_PROCESS", {})
    assert isModelCached(spec) and len(hashed) == 1 and isModelCached(spec) and len(hashed) == 1


def test_a_cache_where_no_stamp_can_be_written_is_hashed_once_per_process(server, cacheFolder, monkeypatch):
    """A read-only cache (here: a folder in the stamp's place, so writing it fails for real) is not hashed at every check."""
    spec = _spec(server.url)
    ensureModel(spec)
    stamp = cacheFolder / (spec.fileName + ".verified")
    stamp.unlink()
    stamp.mkdir()
    monkeypatch.setattr(download, "_HASHED_IN_THIS_PROCESS", {})
    hashed = []
    original = download._sha256File
    monkeypatch.setattr(download, "_sha256File", lambda path: hashed.append(path) or original(path))
    assert isModelCached(spec) and isModelCached(spec) and isModelCached(spec) and len(hashed) == 1
    # The same size, another modification time: the file may have changed, so it is hashed again.
    path = cacheFolder / spec.fileName
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    assert isModelCached(spec) and len(hashed) == 2
