"""Bounded, thread-safe cache of slice embeddings, optionally persisted to a folder.

Encoding a slice is the only expensive step of an interaction, so each slice is
encoded at most once per (volume content, axis, slice, intensity policy, model):
that tuple is a CacheKey. Values are kept in half precision, in memory (on the
engine's device for torch features) up to a byte budget with least-recently-used
eviction, and, when a folder is given, one file per slice on disk.

Disk files are never trusted: each carries its key and a SHA-256 of its content;
a file whose key differs from the one asked for, whose checksum fails, or that
cannot be parsed is removed and reported as a miss, so the slice is re-encoded.

No Slicer, no Qt; torch is never imported here (a torch tensor can only reach
the cache if the engine already imported torch).
"""

import hashlib
import io
import json
import logging
import os
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..engines.base import SliceEmbedding
from ..core.errors import InputError

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
"""Default memory budget: 1 GiB (about 500 ViT-B slice embeddings in fp16)."""

FILE_MAGIC = b"MEDSAMSLICER-EMBEDDING-1\n"
"""First bytes of every cache file; bump the number when the format changes."""

FILE_SUFFIX = ".emb"

COUNTER_NAMES = ("hits", "misses", "evictions", "encoded", "diskHits", "diskWrites", "diskRejected")
"""Counters in stats(): hits/misses of get(), LRU evictions, slices encoded into the cache
(reported by EmbeddingService), disk hits, files written, and files rejected as corrupt or mismatched."""


@dataclass(frozen=True)
class CacheKey:
    """Identity of one slice embedding.

    signature: content signature of the slice source (hash of voxels + geometry,
    from SliceSource.signature; never a node name). axis: 0 = I, 1 = J, 2 = K.
    sliceIndex: index along that axis. policyKey: resolved intensity policy key.
    modelId: engine.modelId (model + weights).
    """

    signature: str
    axis: int
    sliceIndex: int
    policyKey: str
    modelId: str

    def __post_init__(self):
        # numpy integers from callers would break JSON and equality with keys read back from files
        fieldTypes = (("signature", str), ("axis", int), ("sliceIndex", int), ("policyKey", str), ("modelId", str))
        for name, kind in fieldTypes:
            object.__setattr__(self, name, kind(getattr(self, name)))

    def digest(self) -> str:
        """SHA-256 (hex) of all fields, stable across processes (used for file names)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def toDict(self) -> dict:
        """The fields as a plain dict (what a cache file records)."""
        return asdict(self)


def _torchModule():
    """torch if something already imported it, else None (the cache never imports it)."""
    return sys.modules.get("torch")


def _isTensor(value) -> bool:
    torch = _torchModule()
    return torch is not None and isinstance(value, torch.Tensor)


def featureBytes(features) -> int:
    """Bytes held by arrays and tensors in ``features`` (nested lists/tuples/dicts summed)."""
    if isinstance(features, np.ndarray):
        return int(features.nbytes)
    if _isTensor(features):
        return int(features.element_size() * features.numel())
    if isinstance(features, dict):
        return sum(featureBytes(v) for v in features.values())
    if isinstance(features, (list, tuple)):
        return sum(featureBytes(v) for v in features)
    return 0


def toHalfPrecision(features):
    """Return ``features`` with float32/float64 arrays and tensors cast to float16.

    Torch tensors stay on their device. Nested lists/tuples/dicts are converted
    element-wise; anything else (ints, bf16/fp16 tensors, strings) is returned as is.
    """
    if isinstance(features, np.ndarray):
        if features.dtype in (np.float32, np.float64):
            return features.astype(np.float16)
        return features
    if _isTensor(features):
        torch = _torchModule()
        if features.dtype in (torch.float32, torch.float64):
            return features.to(torch.float16)
        return features
    if isinstance(features, dict):
        return {k: toHalfPrecision(v) for k, v in features.items()}
    if isinstance(features, tuple):
        return tuple(toHalfPrecision(v) for v in features)
    if isinstance(features, list):
        return [toHalfPrecision(v) for v in features]
    return features


def halfPrecisionEmbedding(embedding: SliceEmbedding) -> SliceEmbedding:
    """A copy of ``embedding`` whose features are half precision and nbytes adjusted to match."""
    before = featureBytes(embedding.features)
    features = toHalfPrecision(embedding.features)
    after = featureBytes(features)
    nbytes = max(after, int(embedding.nbytes) - (before - after))
    return SliceEmbedding(features=features, imageSize=tuple(embedding.imageSize), nbytes=nbytes, extra=embedding.extra)


def _isPlain(value, allowTensors: bool) -> bool:
    """True if ``value`` survives the chosen file format without pickling arbitrary objects."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if allowTensors and _isTensor(value):
        return True
    if isinstance(value, (list, tuple)):
        return all(_isPlain(v, allowTensors) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _isPlain(v, allowTensors) for k, v in value.items())
    return False


class CacheFileError(Exception):
    """A cache file that cannot be trusted (internal: always handled as a miss)."""


def encodeEntryFile(key: CacheKey, embedding: SliceEmbedding) -> Optional[bytes]:
    """Serialise one entry to the bytes of a cache file, or None if its payload cannot be stored.

    Torch features go through torch.save (loaded back with weights_only=True),
    a numpy array through .npz (loaded with allow_pickle=False). Layout:
    FILE_MAGIC, one JSON header line (key fields, format, payload length,
    SHA-256 over key digest + payload), then the payload.
    """
    features = embedding.features
    buffer = io.BytesIO()
    if _containsTensor(features) and _isPlain(features, True):
        if not _isPlain(embedding.extra, True):
            return None
        torch = _torchModule()
        features = _toCpu(features)
        extra = _toCpu(embedding.extra)
        payload = {"features": features, "imageSize": list(embedding.imageSize),
                   "nbytes": int(embedding.nbytes), "extra": extra}
        torch.save(payload, buffer)
        fileFormat = "torch"
    elif isinstance(features, np.ndarray) and features.dtype != object:
        if not _isPlain(embedding.extra, False):
            return None
        np.savez(buffer, features=features, meta=np.array(json.dumps({
            "imageSize": list(embedding.imageSize), "nbytes": int(embedding.nbytes), "extra": embedding.extra})))
        fileFormat = "npz"
    else:
        return None
    payloadBytes = buffer.getvalue()
    header = {"key": key.toDict(), "format": fileFormat, "length": len(payloadBytes),
              "sha256": _checksum(key, payloadBytes)}
    return FILE_MAGIC + json.dumps(header, sort_keys=True).encode("utf-8") + b"\n" + payloadBytes


def decodeEntryFile(key: CacheKey, data: bytes) -> SliceEmbedding:
    """Parse and verify cache-file bytes for ``key``; raise CacheFileError if anything is off."""
    if not data.startswith(FILE_MAGIC):
        raise CacheFileError("not a cache file (bad magic)")
    headerEnd = data.find(b"\n", len(FILE_MAGIC))
    if headerEnd < 0:
        raise CacheFileError("truncated header")
    try:
        header = json.loads(data[len(FILE_MAGIC):headerEnd].decode("utf-8"))
        storedKey = CacheKey(**header["key"])
        fileFormat, length, checksum = header["format"], int(header["length"]), header["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CacheFileError(f"unreadable header: {error}") from error
    if storedKey != key:
        raise CacheFileError(f"file holds {storedKey}, not {key}")
    payloadBytes = data[headerEnd + 1:]
    if len(payloadBytes) != length:
        raise CacheFileError(f"payload is {len(payloadBytes)} bytes, header says {length}")
    if _checksum(key, payloadBytes) != checksum:
        raise CacheFileError("checksum mismatch")
    try:
        return _decodePayload(fileFormat, payloadBytes)
    except CacheFileError:
        raise
    except Exception as error:  # a verified file that still fails to load is treated the same way
        raise CacheFileError(f"payload does not load: {error}") from error


def _decodePayload(fileFormat: str, payloadBytes: bytes) -> SliceEmbedding:
    if fileFormat == "torch":
        import torch  # only reached for files written from torch features

        payload = torch.load(io.BytesIO(payloadBytes), map_location="cpu", weights_only=True)
        return SliceEmbedding(features=payload["features"], imageSize=tuple(payload["imageSize"]),
                              nbytes=int(payload["nbytes"]), extra=payload["extra"])
    if fileFormat == "npz":
        with np.load(io.BytesIO(payloadBytes), allow_pickle=False) as archive:
            features = archive["features"]
            meta = json.loads(str(archive["meta"]))
        return SliceEmbedding(features=features, imageSize=tuple(meta["imageSize"]),
                              nbytes=int(meta["nbytes"]), extra=meta["extra"])
    raise CacheFileError(f"unknown payload format {fileFormat!r}")


def _checksum(key: CacheKey, payloadBytes: bytes) -> str:
    digest = hashlib.sha256(key.digest().encode("ascii"))
    digest.update(payloadBytes)
    return digest.hexdigest()


def _containsTensor(value) -> bool:
    if _isTensor(value):
        return True
    if isinstance(value, dict):
        return any(_containsTensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_containsTensor(v) for v in value)
    return False


def _toCpu(value):
    if _isTensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _toCpu(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_toCpu(v) for v in value)
    if isinstance(value, list):
        return [_toCpu(v) for v in value]
    return value


class EmbeddingCache:
    """LRU cache of SliceEmbeddings bounded by bytes, optionally backed by a folder.

    maxBytes: memory budget in bytes (sum of stored embeddings' nbytes); an
    entry larger than the whole budget is not kept in memory. folder: where one
    file per slice is written (created if missing); None keeps memory only.
    The disk copy is not bounded by maxBytes; clear() empties it.
    Thread-safe: a prefetch worker may put() while the UI thread get()s.
    Raises InputError for a negative budget or a folder that cannot be created.
    """

    def __init__(self, maxBytes: int = DEFAULT_MAX_BYTES, folder: Optional[Union[str, Path]] = None):
        self._lock = threading.RLock()
        self._entries: "OrderedDict[CacheKey, SliceEmbedding]" = OrderedDict()
        self._bytes = 0
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._maxBytes = self._checkedBudget(maxBytes)
        self.folder = None
        if folder is not None:
            self.folder = Path(folder)
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(f"Cannot create the embedding cache folder {self.folder}: {error}. "
                                 "Choose a writable folder or turn the disk cache off.") from error

    @staticmethod
    def _checkedBudget(maxBytes) -> int:
        maxBytes = int(maxBytes)
        if maxBytes < 0:
            raise InputError(f"Embedding cache budget must be 0 bytes or more, got {maxBytes}.")
        return maxBytes

    @property
    def maxBytes(self) -> int:
        """Memory budget in bytes; setting a smaller one evicts least recently used entries at once."""
        return self._maxBytes

    @maxBytes.setter
    def maxBytes(self, value: int) -> None:
        with self._lock:
            self._maxBytes = self._checkedBudget(value)
            self._evictOverBudget()

    def get(self, key: CacheKey, record: bool = True) -> Optional[SliceEmbedding]:
        """The embedding stored for ``key`` (memory first, then disk), or None on a miss.

        A disk entry that verifies is loaded back into memory (features on the
        CPU); one that does not is deleted and counts as a miss.
        record=False leaves the hit/miss counters alone (used by prefetch).
        """
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
                self._count("hits", record)
                return embedding
        embedding = self._readFile(key)  # outside the lock: disk I/O must not block other threads
        with self._lock:
            if embedding is None:
                self._count("misses", record)
                return None
            self._count("hits", record)
            self._count("diskHits", record)
            self._insert(key, embedding)
            return embedding

    def peek(self, key: CacheKey) -> Optional[SliceEmbedding]:
        """The in-memory embedding for ``key`` or None; touches neither counters, LRU order nor disk."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: CacheKey, embedding: SliceEmbedding) -> SliceEmbedding:
        """Store ``embedding`` under ``key`` in half precision; returns the stored copy.

        Evicts least recently used entries until the budget holds; writes the
        file when a folder is set (atomically: temp file, then rename).
        """
        stored = halfPrecisionEmbedding(embedding)
        with self._lock:
            self._insert(key, stored)
        self._writeFile(key, stored)
        return stored

    def noteEncoded(self, count: int) -> None:
        """Add ``count`` slices to the "encoded" counter (called by whoever ran the encoder)."""
        with self._lock:
            self._counters["encoded"] += int(count)

    def invalidate(self, signature: str) -> int:
        """Drop every entry of the volume with this content signature, in memory and on disk.

        Returns the number of memory entries dropped. Other volumes are untouched.
        """
        with self._lock:
            doomed = [key for key in self._entries if key.signature == signature]
            for key in doomed:
                self._bytes -= self._entries.pop(key).nbytes
        if self.folder is not None:
            for path in self.folder.glob(_signaturePrefix(signature) + "*" + FILE_SUFFIX):
                _removeQuietly(path)
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry, in memory and in the folder; counters are kept."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
        if self.folder is not None:
            for path in self.folder.glob("*" + FILE_SUFFIX):
                _removeQuietly(path)

    def stats(self) -> dict:
        """Counters and sizes: hits, misses, evictions, bytes, entries, encoded, maxBytes, disk counters."""
        with self._lock:
            result = dict(self._counters)
            result.update(bytes=self._bytes, entries=len(self._entries), maxBytes=self._maxBytes)
            return result

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list:
        """Keys in memory, least recently used first."""
        with self._lock:
            return list(self._entries)

    def entryPath(self, key: CacheKey) -> Optional[Path]:
        """The file that holds ``key`` on disk (it may not exist), or None without a folder."""
        if self.folder is None:
            return None
        return self.folder / (_signaturePrefix(key.signature) + key.digest()[:40] + FILE_SUFFIX)

    # -- internals (callers hold self._lock where noted) --

    def _count(self, name: str, record: bool) -> None:
        if record:
            self._counters[name] += 1

    def _insert(self, key: CacheKey, embedding: SliceEmbedding) -> None:
        """Lock held. Replace or add the entry, then evict to the budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        if embedding.nbytes > self._maxBytes:
            return  # would evict everything and still not fit
        self._entries[key] = embedding
        self._bytes += embedding.nbytes
        self._evictOverBudget()

    def _evictOverBudget(self) -> None:
        """Lock held. Pop least recently used entries until bytes <= maxBytes."""
        while self._bytes > self._maxBytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self._counters["evictions"] += 1

    def _writeFile(self, key: CacheKey, embedding: SliceEmbedding) -> None:
        path = self.entryPath(key)
        if path is None:
            return
        data = encodeEntryFile(key, embedding)
        if data is None:
            LOG.debug("Embedding for %s kept in memory only: its payload is not a plain array/tensor", key)
            return
        tempPath = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tempPath, "wb") as stream:
                stream.write(data)
            os.replace(tempPath, path)  # atomic: readers see the old file or the whole new one
        except OSError as error:
            LOG.warning("Could not write embedding cache file %s: %s", path, error)
            _removeQuietly(tempPath)
            return
        with self._lock:
            self._counters["diskWrites"] += 1

    def _readFile(self, key: CacheKey) -> Optional[SliceEmbedding]:
        path = self.entryPath(key)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            LOG.warning("Could not read embedding cache file %s: %s", path, error)
            return None
        try:
            return decodeEntryFile(key, data)
        except CacheFileError as error:
            LOG.warning("Discarding embedding cache file %s (%s); the slice will be encoded again", path, error)
            _removeQuietly(path)
            with self._lock:
                self._counters["diskRejected"] += 1
            return None


def _signaturePrefix(signature: str) -> str:
    """File-name prefix shared by every slice of one volume, so invalidate() can find them by name."""
    return hashlib.sha256(signature.encode("utf-8")).hexdigest()[:16] + "_"


def _removeQuietly(path: Path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
