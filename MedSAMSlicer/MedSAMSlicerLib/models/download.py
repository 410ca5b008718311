"""Model weights on disk: the cache folder, checksummed resumable downloads, cache management.

Downloads go to "<file>.part" and are renamed only once the size and SHA-256
match, so a failed or interrupted download never leaves a file that looks like
a model. A later attempt resumes the .part with an HTTP Range request (and
starts over when the server ignores Range). Standard library only.

A cached file counts as present only when its size and, where the registry
knows it, its SHA-256 match. Hashing a 2.5 GB file takes seconds, so a verified
file gets a stamp beside it ("<file>.verified": size, modification time and
hash), and the process remembers it too (a read-only cache has no stamp);
the file is hashed again only when it changed. A damaged file gets one
message everywhere (damagedModelMessage) with the way out: `medsam-slicer
download MODEL --force`, or delete the file and download it again.
"""

import hashlib
import http.client
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Union

from ..core.errors import CancelledError, DownloadError, InputError
from ..core.progress import ProgressCallback, reportProgress

logger = logging.getLogger(__name__)

CACHE_ENV = "MEDSAM_SLICER_CACHE"
USER_AGENT = "MedSAMSlicer (+https://github.com/bowang-lab/MedSAM)"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
STAMP_SUFFIX = ".verified"
#: {resolved path: (file identity, SHA-256)} of the files hashed in this process (a read-only cache has no stamps).
_HASHED_IN_THIS_PROCESS = {}
#: cacheStatus() results.
CACHED, MISSING, DAMAGED = "cached", "missing", "damaged"

_cacheFolderOverride: Optional[Path] = None

CancelLike = Union[None, Callable[[], bool], object]


def setModelCacheFolder(folder) -> None:
    """Use ``folder`` for model files from now on (inside Slicer: Slicer's cache path); None restores the default."""
    global _cacheFolderOverride
    _cacheFolderOverride = Path(folder).expanduser() if folder is not None else None


def modelCacheFolder() -> Path:
    """Folder holding downloaded model weights (not created here).

    Order: setModelCacheFolder(), the MEDSAM_SLICER_CACHE environment variable,
    then the per-user cache: $XDG_CACHE_HOME or ~/.cache on Linux,
    ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows, + "MedSAMSlicer/models".
    """
    if _cacheFolderOverride is not None:
        return _cacheFolderOverride
    fromEnvironment = os.environ.get(CACHE_ENV)
    if fromEnvironment:
        return Path(fromEnvironment).expanduser() / "models"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "MedSAMSlicer" / "models"


def modelPath(spec) -> Path:
    """Where the weights of a registry ModelSpec live in the cache folder (InputError for weight-free/custom)."""
    if not getattr(spec, "fileName", None):
        raise InputError(f"Model {spec.modelId!r} has no cached weights file (it is weight-free or a file you choose).")
    return modelCacheFolder() / spec.fileName


def isModelCached(spec) -> bool:
    """True when the model's file is in the cache folder with the registry's byte size and SHA-256 (when known)."""
    return cacheStatus(spec)[0] == CACHED


def cacheStatus(spec):
    """(CACHED | MISSING | DAMAGED, what is wrong or None) for a registry model's cached weights file.

    DAMAGED: the file has another size or SHA-256 than the registry says (an
    interrupted copy, a file of another model under its name). The hash is
    taken once per change of the file (see the module docstring).
    """
    if not getattr(spec, "fileName", None):
        return MISSING, None
    path = modelPath(spec)
    if not path.is_file():
        return MISSING, None
    size = path.stat().st_size
    if spec.sizeBytes is not None and size != spec.sizeBytes:
        return DAMAGED, f"it has {size} bytes instead of {spec.sizeBytes}"
    if not spec.sha256 or _stampMatches(path, spec.sha256):
        return CACHED, None
    try:
        actual = _sha256File(path)
    except OSError as error:
        return DAMAGED, f"it cannot be read ({error.strerror})"
    if actual != spec.sha256.lower():
        return DAMAGED, f"its SHA-256 is {actual}, not the published {spec.sha256}"
    _writeStamp(path, actual)
    return CACHED, None


def damagedModelMessage(spec, problem: str) -> str:
    """The one message for a damaged cached weights file, with the way out."""
    name = spec.aliases[0] if spec.aliases else spec.modelId
    return (f"The cached weights of {spec.displayName} ({modelPath(spec)}) are damaged or not the published file: "
            f"{problem}. Download them again with `medsam-slicer download {name} --force` (or the module's "
            "Download button), or delete the file and download it again.")


def requireIntactModel(spec) -> None:
    """DownloadError with damagedModelMessage when the model's cached file is damaged (a missing file is no error here)."""
    status, problem = cacheStatus(spec)
    if status == DAMAGED:
        raise DownloadError(damagedModelMessage(spec, problem))


def _stampPath(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _fileIdentity(info) -> tuple:
    """What says a file is unchanged since it was hashed: device, inode, size, modification time."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _stampMatches(path: Path, sha256: str) -> bool:
    """True when this very file (size, mtime) was hashed to ``sha256``: in this process, or by the stamp beside it."""
    try:
        info = path.stat()
        if _HASHED_IN_THIS_PROCESS.get(str(path.resolve())) == (_fileIdentity(info), sha256.lower()):
            return True
        stamp = json.loads(_stampPath(path).read_text(encoding="utf-8"))
        return stamp == {"size": info.st_size, "mtimeNs": info.st_mtime_ns, "sha256": sha256.lower()}
    except (OSError, ValueError):
        return False


def _writeStamp(path: Path, sha256: str) -> None:
    """Remember that ``path`` as it is now hashes to ``sha256``: in this process, and in a stamp beside it
    (best effort: where the cache is read-only, a later process hashes again)."""
    info = path.stat()
    _HASHED_IN_THIS_PROCESS[str(path.resolve())] = (_fileIdentity(info), sha256.lower())
    try:
        _stampPath(path).write_text(json.dumps({"size": info.st_size, "mtimeNs": info.st_mtime_ns,
                                                "sha256": sha256.lower()}), encoding="utf-8")
    except OSError:
        pass


def prepareCacheFolder(folder: Path) -> Path:
    """Create the model cache folder if needed; InputError saying how to choose another when it cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the model cache folder {folder} ({error.strerror}). Set {CACHE_ENV} to a "
                         "writable folder (or choose another cache folder in the module's settings).") from None
    return folder


def _cancelled(cancel: CancelLike) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "cancelled"):
        return bool(cancel.cancelled)
    return bool(cancel())


def _sha256File(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _resumeStart(response, offset: int) -> int:
    """Byte offset the response body starts at: ``offset`` for a matching 206, 0 when the server ignored Range."""
    if getattr(response, "status", 200) != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return offset if match and int(match.group(1)) == offset else -1


def downloadFile(url: str, destPath, sha256: Optional[str] = None, sizeBytes: Optional[int] = None,
                 progress: Optional[ProgressCallback] = None, cancel: CancelLike = None) -> Path:
    """Download ``url`` to ``destPath`` through "<destPath>.part", resuming an existing .part.

    sha256 (hex) and sizeBytes, when given, are checked before the rename.
    progress(fraction, text) is called as bytes arrive; cancel is a CancelToken
    or a callable returning True to stop. Returns destPath.
    Raises DownloadError (server unreachable, HTTP error, interrupted transfer:
    the .part is kept for a resume; size or checksum mismatch: the .part is
    deleted) and CancelledError (the .part is kept). destPath only ever
    appears complete and verified.
    """
    destPath = Path(destPath)
    partPath = destPath.with_name(destPath.name + ".part")
    prepareCacheFolder(destPath.parent)
    offset = partPath.stat().st_size if partPath.exists() else 0
    if sizeBytes is not None and offset > sizeBytes:
        partPath.unlink()
        offset = 0
    if sizeBytes is None or offset < sizeBytes:
        _transfer(url, destPath, partPath, offset, sizeBytes, progress, cancel)
    actual = _verify(url, destPath, partPath, sha256, sizeBytes)
    os.replace(partPath, destPath)
    if actual:
        _writeStamp(destPath, actual)
    reportProgress(progress, 1.0, f"Downloaded {destPath.name}")
    logger.info("Downloaded %s to %s", url, destPath)
    return destPath


def _transfer(url, destPath: Path, partPath: Path, offset: int, sizeBytes, progress, cancel) -> None:
    """Append the rest of the file to partPath (restarting it when the server cannot resume)."""
    response = _request(url, destPath, offset)
    if response is None:
        return
    start = _resumeStart(response, offset)
    if start == -1:  # a 206 for another range than asked: fetch the whole file instead
        response.close()
        response, start = _request(url, destPath, 0), 0
    elif start != offset:
        logger.info("Server ignored the Range request for %s; starting over.", url)
    with response:
        length = response.headers.get("Content-Length")
        # The server's own length tells an interrupted transfer from a wrong file (checked by _verify).
        total = start + int(length) if length and length.isdigit() else sizeBytes
        done = _copyBody(response, url, destPath, partPath, start, total, progress, cancel)
    if total is not None and done < total:
        raise DownloadError(f"The download of {destPath.name} from {url} stopped after {done} of {total} bytes. "
                            "Run the download again to resume it.")


def _request(url: str, destPath: Path, offset: int):
    """Open ``url`` from byte ``offset``; None when the server says nothing is left (HTTP 416)."""
    try:
        return _open(url, offset)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # the .part already holds everything; _verify decides whether it is right
        raise DownloadError(f"The server refused {url} (HTTP {exc.code} {exc.reason}). Try again later, or download "
                            f"the file by hand and put it at {destPath}.") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Could not reach {url} ({reason}). Check the network connection (or proxy) and try "
                            f"again, or download the file by hand and put it at {destPath}.") from None


def _copyBody(response, url, destPath: Path, partPath: Path, start: int, total, progress, cancel) -> int:
    """Write the response body into partPath from byte ``start``; returns the bytes now in the .part."""
    done = start
    try:
        with open(partPath, "r+b" if start else "wb") as stream:
            stream.seek(start)
            stream.truncate()
            while True:
                if _cancelled(cancel):
                    raise CancelledError(f"Download of {destPath.name} cancelled; {done} bytes are kept in "
                                         f"{partPath.name} and the next download resumes from there.")
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    return done
                stream.write(chunk)
                done += len(chunk)
                text = f"Downloading {destPath.name}: {done / 1e6:.1f}" + (f" of {total / 1e6:.1f} MB" if total else " MB")
                reportProgress(progress, done / total if total else 0.0, text)
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"The download of {destPath.name} from {url} was interrupted after {done} bytes "
                            f"({type(exc).__name__}: {exc}). Run the download again to resume it.") from None


def _verify(url, destPath: Path, partPath: Path, sha256: Optional[str], sizeBytes: Optional[int]) -> Optional[str]:
    """Check size and checksum of the finished .part; delete it and raise DownloadError on a mismatch.

    Returns the SHA-256 checked (None when none was expected)."""
    size = partPath.stat().st_size if partPath.exists() else 0
    problem = actual = None
    if sizeBytes is not None and size != sizeBytes:
        problem = f"it has {size} bytes instead of {sizeBytes}"
    elif sha256:
        actual = _sha256File(partPath)
        if actual.lower() != sha256.lower():
            problem = f"its SHA-256 is {actual}, expected {sha256}"
    if problem:
        partPath.unlink(missing_ok=True)
        raise DownloadError(f"The file downloaded from {url} is not the expected {destPath.name}: {problem}. It was "
                            "deleted; try again later, or download the file by hand and put it at "
                            f"{destPath}.")
    return actual


def ensureModel(spec, progress: Optional[ProgressCallback] = None, cancel: CancelLike = None,
                force: bool = False) -> Path:
    """Path of a registry model's weights, downloading them into the cache folder if missing or damaged.

    A damaged cached file (another size or SHA-256) is deleted and downloaded
    again: calling this is asking for the model. force: download again even
    when the cached file is intact (it is replaced only once the new file is
    verified, so a failed download keeps it). Tries the spec's URLs in
    order. Raises DownloadError naming the file, the URL(s) and the folder
    where the file can be put by hand when every source fails; CancelledError
    when cancelled; InputError for weight-free models or a cache folder that
    cannot be created.
    """
    path = modelPath(spec)
    status, problem = cacheStatus(spec)
    if status == CACHED and not force:
        return path
    if status == DAMAGED:
        logger.warning("Replacing %s: %s", path, problem)
        clearModelCache(spec)
    if not spec.urls:
        raise DownloadError(f"No download address is known for {spec.fileName}; put the file in {path.parent}.")
    failures = []
    for url in spec.urls:
        try:
            return downloadFile(url, path, sha256=spec.sha256, sizeBytes=spec.sizeBytes, progress=progress,
                                cancel=cancel)
        except DownloadError as exc:
            logger.warning("Download from %s failed: %s", url, exc)
            failures.append(str(exc))
    size = f" ({spec.sizeBytes / 1e6:.0f} MB)" if spec.sizeBytes else ""
    raise DownloadError(f"Could not download {spec.fileName}{size} for {spec.displayName}. "
                        f"Download it by hand from {' or '.join(spec.urls)} and put it in the folder "
                        f"{path.parent} (keep the name {spec.fileName}). Last error: {failures[-1]}")


def clearModelCache(spec=None) -> int:
    """Delete cached model files (one model's, or all with spec=None) and their .part files; returns bytes freed."""
    folder = modelCacheFolder()
    if not folder.is_dir():
        return 0
    if spec is not None:
        candidates = [modelPath(spec), modelPath(spec).with_name(spec.fileName + ".part"), _stampPath(modelPath(spec))]
    else:
        candidates = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".pth", ".pt", ".part", STAMP_SUFFIX)]
    freed = 0
    for path in candidates:
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed
