"""EmbeddingCache: hits, misses, LRU by bytes, invalidation, fp16 storage, verified disk files."""

import json
import threading

import numpy as np
import pytest

from MedSAMSlicerLib.embeddings.cache import FILE_MAGIC, CacheKey, EmbeddingCache
from MedSAMSlicerLib.engines.base import SliceEmbedding
from MedSAMSlicerLib.core.errors import InputError


def makeKey(sliceIndex, signature="volA", axis=2, policyKey="window:0:100", modelId="fake:1"):
    return CacheKey(signature, axis, sliceIndex, policyKey, modelId)


def makeEmbedding(value, size=64, dtype=np.float32):
    """Embedding whose features are ``size`` values all equal to ``value``; nbytes = feature bytes."""
    features = np.full((size,), value, dtype=dtype)
    return SliceEmbedding(features=features, imageSize=(20, 30), nbytes=features.nbytes, extra={"k": int(value)})


FP16_BYTES = 64 * 2  # what one makeEmbedding() holds once stored in half precision


def test_hits_and_misses_are_counted():
    cache = EmbeddingCache()
    assert cache.get(makeKey(0)) is None
    cache.put(makeKey(0), makeEmbedding(0.5))
    stored = cache.get(makeKey(0))
    assert stored is not None and float(stored.features[0]) == 0.5
    # Every field of the key matters: another axis, policy or model is a miss.
    assert cache.get(makeKey(0, axis=1)) is None
    assert cache.get(makeKey(0, policyKey="window:-160:240")) is None
    assert cache.get(makeKey(0, modelId="other")) is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["bytes"]) == (1, 4, 1, FP16_BYTES)


def test_values_are_stored_half_precision_with_bytes_to_match():
    cache = EmbeddingCache()
    stored = cache.put(makeKey(0), makeEmbedding(0.25, dtype=np.float64))
    assert stored.features.dtype == np.float16 and stored.nbytes == FP16_BYTES
    assert cache.get(makeKey(0)).features.dtype == np.float16
    integer = SliceEmbedding(features=np.arange(6, dtype=np.int32), imageSize=(2, 3), nbytes=24)
    assert cache.put(makeKey(1), integer).features.dtype == np.int32  # only floats are halved


def test_torch_features_stored_half_precision():
    torch = pytest.importorskip("torch")
    cache = EmbeddingCache()
    features = torch.linspace(-1, 1, 256).reshape(1, 4, 8, 8)
    stored = cache.put(makeKey(0), SliceEmbedding(features=features, imageSize=(8, 8), nbytes=4 * 256 + 100))
    assert stored.features.dtype == torch.float16
    assert stored.nbytes == 2 * 256 + 100  # the non-feature part of nbytes is kept
    assert torch.allclose(stored.features.float(), features, atol=1e-3)
    assert features.dtype == torch.float32  # the engine's tensor is not modified


def test_least_recently_used_entry_is_evicted_first():
    cache = EmbeddingCache(maxBytes=3 * FP16_BYTES)
    for k in range(3):
        cache.put(makeKey(k), makeEmbedding(k))
    assert cache.get(makeKey(0)) is not None  # 0 is now the most recent; 1 the least
    cache.put(makeKey(3), makeEmbedding(3))
    assert cache.keys() == [makeKey(2), makeKey(0), makeKey(3)]
    cache.put(makeKey(4), makeEmbedding(4))
    assert makeKey(2) not in cache and makeKey(0) in cache
    assert cache.stats()["evictions"] == 2


def test_byte_budget_is_never_exceeded():
    rng = np.random.default_rng(0)
    budget = 5000
    cache = EmbeddingCache(maxBytes=budget)
    for k in range(60):
        size = int(rng.integers(10, 1500))
        cache.put(makeKey(k), makeEmbedding(k, size=size))
        stats = cache.stats()
        assert stats["bytes"] <= budget
        assert stats["bytes"] == sum(cache.peek(key).nbytes for key in cache.keys())
    assert cache.stats()["evictions"] > 0


def test_entry_larger_than_budget_is_not_kept_and_evicts_nothing():
    cache = EmbeddingCache(maxBytes=3 * FP16_BYTES)
    cache.put(makeKey(0), makeEmbedding(0))
    cache.put(makeKey(1), makeEmbedding(1, size=1000))
    assert makeKey(1) not in cache and makeKey(0) in cache
    assert cache.stats()["evictions"] == 0


def test_shrinking_the_budget_evicts_at_once():
    cache = EmbeddingCache(maxBytes=10 * FP16_BYTES)
    for k in range(5):
        cache.put(makeKey(k), makeEmbedding(k))
    cache.maxBytes = 2 * FP16_BYTES
    assert cache.keys() == [makeKey(3), makeKey(4)]
    with pytest.raises(InputError):
        EmbeddingCache(maxBytes=-1)


def test_invalidate_drops_one_volume_only(tmp_path):
    cache = EmbeddingCache(folder=tmp_path)
    for k in range(3):
        cache.put(makeKey(k, signature="volA"), makeEmbedding(k))
        cache.put(makeKey(k, signature="volB"), makeEmbedding(k))
    assert cache.invalidate("volA") == 3
    assert all(cache.get(makeKey(k, signature="volA")) is None for k in range(3))
    # A fresh cache on the same folder sees only volume B's files.
    reopened = EmbeddingCache(folder=tmp_path)
    assert all(reopened.get(makeKey(k, signature="volA")) is None for k in range(3))
    assert all(reopened.get(makeKey(k, signature="volB")) is not None for k in range(3))
    assert cache.stats()["entries"] == 3


def test_clear_empties_memory_and_folder(tmp_path):
    cache = EmbeddingCache(folder=tmp_path)
    cache.put(makeKey(0), makeEmbedding(0))
    cache.clear()
    assert len(cache) == 0 and cache.stats()["bytes"] == 0
    assert EmbeddingCache(folder=tmp_path).get(makeKey(0)) is None


def test_disk_entries_survive_a_new_cache_and_load_into_memory(tmp_path):
    EmbeddingCache(folder=tmp_path).put(makeKey(7), makeEmbedding(0.75))
    reopened = EmbeddingCache(folder=tmp_path)
    loaded = reopened.get(makeKey(7))
    assert loaded.features.dtype == np.float16 and float(loaded.features[0]) == 0.75
    assert loaded.imageSize == (20, 30) and loaded.extra == {"k": 0} and loaded.nbytes == FP16_BYTES
    assert makeKey(7) in reopened  # now in memory
    assert reopened.stats()["diskHits"] == 1


def test_torch_entry_round_trips_through_disk(tmp_path):
    torch = pytest.importorskip("torch")
    features = torch.randn(1, 8, 4, 4)
    extra = {"inputSize": (16, 12), "originalSize": [20, 15]}
    EmbeddingCache(folder=tmp_path).put(makeKey(1), SliceEmbedding(features, (20, 15), 512, extra))
    loaded = EmbeddingCache(folder=tmp_path).get(makeKey(1))
    assert loaded.features.dtype == torch.float16 and loaded.features.device.type == "cpu"
    assert torch.equal(loaded.features, features.half())
    assert loaded.imageSize == (20, 15) and tuple(loaded.extra["inputSize"]) == (16, 12)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped payload byte", "empty"])
def test_corrupt_disk_entry_is_a_miss_and_removed(tmp_path, damage):
    EmbeddingCache(folder=tmp_path).put(makeKey(3), makeEmbedding(0.5))
    cache = EmbeddingCache(folder=tmp_path)
    path = cache.entryPath(makeKey(3))
    data = path.read_bytes()
    if damage == "garbage":
        data = b"\x00not an embedding\xff" * 10
    elif damage == "truncated":
        data = data[: len(data) - 20]
    elif damage == "flipped payload byte":
        data = data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:]
    else:
        data = b""
    path.write_bytes(data)
    assert cache.get(makeKey(3)) is None
    assert not path.exists()
    assert cache.stats()["diskRejected"] == 1 and cache.stats()["misses"] == 1
    cache.put(makeKey(3), makeEmbedding(0.5))  # the recomputed value is stored again and trusted
    assert float(EmbeddingCache(folder=tmp_path).get(makeKey(3)).features[0]) == 0.5


def test_file_whose_key_is_changed_is_not_trusted(tmp_path):
    cache = EmbeddingCache(folder=tmp_path)
    cache.put(makeKey(3), makeEmbedding(3))
    path = cache.entryPath(makeKey(3))
    data = path.read_bytes()
    headerEnd = data.index(b"\n", len(FILE_MAGIC))
    header = json.loads(data[len(FILE_MAGIC):headerEnd])
    header["key"]["sliceIndex"] = 4  # claims to be another slice
    path.write_bytes(FILE_MAGIC + json.dumps(header).encode() + data[headerEnd:])
    assert EmbeddingCache(folder=tmp_path).get(makeKey(3)) is None
    assert not path.exists()


def test_file_of_another_key_at_this_name_is_not_trusted(tmp_path):
    cache = EmbeddingCache(folder=tmp_path)
    cache.put(makeKey(3), makeEmbedding(3))
    # A well-formed, correctly checksummed file of slice 3 sitting where slice 4's file belongs.
    cache.entryPath(makeKey(4)).write_bytes(cache.entryPath(makeKey(3)).read_bytes())
    reopened = EmbeddingCache(folder=tmp_path)
    assert reopened.get(makeKey(4)) is None
    assert not reopened.entryPath(makeKey(4)).exists()
    assert float(reopened.get(makeKey(3)).features[0]) == 3


def test_concurrent_puts_and_gets_keep_the_books_straight():
    cache = EmbeddingCache(maxBytes=20 * FP16_BYTES)
    errors = []

    def work(offset):
        try:
            for k in range(200):
                cache.put(makeKey(offset + k), makeEmbedding(k))
                cache.get(makeKey(offset + k // 2))
        except Exception as error:  # surfaced below; a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=work, args=(1000 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert not errors
    assert stats["bytes"] == sum(cache.peek(key).nbytes for key in cache.keys()) <= 20 * FP16_BYTES
    assert stats["hits"] + stats["misses"] == 800
    assert stats["evictions"] == 800 - stats["entries"]


def test_numpy_integer_key_fields_match_plain_ints(tmp_path):
    cache = EmbeddingCache(folder=tmp_path)
    cache.put(makeKey(np.int64(5), axis=np.int32(2)), makeEmbedding(5))
    assert makeKey(5) in cache
    assert EmbeddingCache(folder=tmp_path).get(makeKey(5)) is not None


def test_importing_cache_and_embeddings_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import MedSAMSlicerLib.embeddings.cache, MedSAMSlicerLib.embeddings.service; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    library = Path(__file__).resolve().parents[1] / "MedSAMSlicer"
    assert subprocess.run([sys.executable, "-c", code], cwd=library).returncode == 0
