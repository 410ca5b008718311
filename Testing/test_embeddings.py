"""EmbeddingService: only misses reach the encoder, in batches; prefetch; in-flight slices encoded once."""

import threading
from collections import Counter

import numpy as np
import pytest

from MedSAMSlicerLib.embeddings.cache import EmbeddingCache
from MedSAMSlicerLib.embeddings.service import EmbeddingService
from MedSAMSlicerLib.engines.base import DecodeResult, Engine, Prompts, SliceEmbedding
from MedSAMSlicerLib.core.errors import CancelledError, InputError
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.core.progress import CancelToken
from MedSAMSlicerLib.imaging.slicesource import SliceSource

SLICES = 12
GATE_TIMEOUT = 20.0  # seconds; only reached if a test is broken, so the suite fails instead of hanging


def makeSource(offset=0):
    """12 slices along K, slice k filled with the value k + offset, windowed 0..100 -> image value (k+offset)/100."""
    voxels = np.repeat((np.arange(SLICES, dtype=np.float32) + offset)[:, None, None], 30, axis=1).reshape(SLICES, 6, 5)
    return SliceSource(voxels, spacingIjk=(1.0, 1.0, 2.0), policy=IntensityPolicy.window(0, 100))


def sliceIdOf(image):
    return int(round(float(np.mean(image)) * 100))


class RecordingEngine(Engine):
    """Deterministic engine: records every encode batch (as slice ids) and can block on a gate.

    failOnce: slice ids whose next encode raises (once each).
    """

    modelId = "recording:1"

    def __init__(self, failOnce=()):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.failOnce = set(failOnce)
        self.decodeCalls = 0
        self._lock = threading.Lock()

    def encode(self, images, progress=None):
        ids = [sliceIdOf(image) for image in images]
        with self._lock:
            self.batches.append(ids)
        self.entered.set()
        if not self.gate.wait(GATE_TIMEOUT):
            raise RuntimeError("test gate was never opened")
        with self._lock:
            failing = sorted(self.failOnce.intersection(ids))
            self.failOnce.difference_update(failing)
        if failing:
            raise RuntimeError(f"encoder failure on slices {failing}")
        return [SliceEmbedding(features=np.full((4, 4), i, np.float32), imageSize=image.shape[:2], nbytes=64)
                for i, image in zip(ids, images)]

    def decode(self, embedding, prompts):
        self.decodeCalls += 1
        return DecodeResult(mask=np.asarray(embedding.features) > 5, score=1.0)

    def counts(self):
        with self._lock:
            return Counter(i for batch in self.batches for i in batch)


def sliceIds(embeddings):
    return [int(e.features[0, 0]) for e in embeddings]


def test_only_misses_are_encoded_in_batches():
    engine, source = RecordingEngine(), makeSource()
    service = EmbeddingService(engine, batchSize=3)
    first = service.embeddings(source, 2, list(range(7)))
    assert sliceIds(first) == list(range(7))
    assert engine.batches == [[0, 1, 2], [3, 4, 5], [6]]
    second = service.embeddings(source, 2, [9, 5, 7, 6, 8, 5])
    assert sliceIds(second) == [9, 5, 7, 6, 8, 5]  # the order asked for, duplicates included
    assert engine.batches[3:] == [[9, 7, 8]]
    stats = service.stats()
    assert stats["encoded"] == 10 and stats["hits"] == 2 and stats["misses"] == 10
    assert all(e.features.dtype == np.float16 for e in first + second)


def test_single_slice_is_encoded_once_then_served_from_cache():
    engine, source = RecordingEngine(), makeSource()
    service = EmbeddingService(engine)
    assert int(service.embedding(source, 2, 4).features[0, 0]) == 4
    assert service.embedding(source, 2, 4) is service.embedding(source, 2, 4)
    assert engine.counts() == {4: 1}
    with pytest.raises(InputError):
        service.embedding(source, 2, SLICES)
    with pytest.raises(InputError):
        service.embedding(source, 3, 0)


def test_key_includes_volume_content_policy_and_model():
    engine = RecordingEngine()
    cache = EmbeddingCache()
    service = EmbeddingService(engine, cache=cache)
    service.embedding(makeSource(), 2, 1)
    service.embedding(makeSource(), 2, 1)  # same content, new object: a hit
    service.embedding(makeSource(offset=1), 2, 1)  # other voxels: a miss
    other = RecordingEngine()
    other.modelId = "recording:2"
    EmbeddingService(other, cache=cache).embedding(makeSource(), 2, 1)  # other model sharing the cache
    assert engine.counts() == {1: 1, 2: 1} and other.counts() == {1: 1}


def test_invalidate_forgets_one_volume():
    engine = RecordingEngine()
    service = EmbeddingService(engine)
    sourceA, sourceB = makeSource(), makeSource(offset=20)
    service.embeddings(sourceA, 2, [0, 1])
    service.embeddings(sourceB, 2, [0, 1])
    assert service.invalidate(sourceA) == 2
    service.embeddings(sourceA, 2, [0, 1])
    service.embeddings(sourceB, 2, [0, 1])
    assert engine.counts() == {0: 2, 1: 2, 20: 1, 21: 1}


def test_progress_and_cancel_between_batches():
    engine, source = RecordingEngine(), makeSource()
    service = EmbeddingService(engine, batchSize=2)
    token, reports = CancelToken(), []

    def progress(fraction, text):
        reports.append(fraction)
        if fraction > 0:
            token.cancel()  # the user presses Cancel after the first batch

    with pytest.raises(CancelledError):
        service.embeddings(source, 2, list(range(8)), progress=progress, cancel=token)
    assert engine.batches == [[0, 1]] and reports == [0.0, 0.25]
    # The finished batch stays cached and no slice is left marked in flight.
    assert sliceIds(service.embeddings(source, 2, list(range(4)))) == [0, 1, 2, 3]
    assert engine.batches == [[0, 1], [2, 3]]


def test_decode_passes_through_and_is_timed():
    engine, source = RecordingEngine(), makeSource()
    service = EmbeddingService(engine)
    result = service.decode(service.embedding(source, 2, 9), Prompts(boxXyxy=(0, 0, 3, 3)))
    assert result.mask.all() and engine.decodeCalls == 1
    assert service.timings["decode"] > 0 and service.timings["encode"] > 0


def test_prefetch_encodes_uncached_slices_nearest_first():
    engine, source = RecordingEngine(), makeSource()
    service = EmbeddingService(engine, batchSize=2)
    service.embedding(source, 2, 6)
    reports = []
    job = service.prefetch(source, 2, range(3, 10), progress=lambda f, t: reports.append(f), aroundIndex=6)
    assert job.wait(GATE_TIMEOUT) and job.error is None and job.done
    assert engine.batches == [[6], [5, 7], [4, 8], [3, 9]]
    assert job.encoded == 6 and reports[-1] == 1.0
    service.embeddings(source, 2, range(3, 10))  # all hits now
    assert len(engine.batches) == 4 and service.stats()["encoded"] == 7
    service.close(GATE_TIMEOUT)


def test_prefetch_cancel_stops_early_and_leaves_service_usable():
    engine, source = RecordingEngine(), makeSource()
    engine.gate.clear()
    service = EmbeddingService(engine, batchSize=2)
    job = service.prefetch(source, 2)
    assert engine.entered.wait(GATE_TIMEOUT)  # the worker is inside its first batch
    job.cancel()
    engine.gate.set()
    assert job.wait(GATE_TIMEOUT) and job.error is None and job.cancelled
    assert job.encoded == 2 and engine.counts() == {0: 1, 1: 1}
    assert sliceIds(service.embeddings(source, 2, [1, 11])) == [1, 11]
    assert engine.counts() == {0: 1, 1: 1, 11: 1}
    service.close(GATE_TIMEOUT)


def test_new_prefetch_cancels_the_running_one():
    engine, source = RecordingEngine(), makeSource()
    engine.gate.clear()
    service = EmbeddingService(engine, batchSize=2)
    first = service.prefetch(source, 2, range(0, 6))
    assert engine.entered.wait(GATE_TIMEOUT)
    second = service.prefetch(source, 2, range(0, 4))
    engine.gate.set()
    assert first.wait(GATE_TIMEOUT) and second.wait(GATE_TIMEOUT)
    assert first.cancelled and first.encoded == 2 and second.encoded == 2
    assert engine.counts() == {0: 1, 1: 1, 2: 1, 3: 1}
    service.close(GATE_TIMEOUT)


def test_request_for_an_in_flight_slice_waits_instead_of_encoding_again():
    engine, source = RecordingEngine(), makeSource()
    engine.gate.clear()
    service = EmbeddingService(engine, batchSize=2)
    job = service.prefetch(source, 2, [3, 4])
    assert engine.entered.wait(GATE_TIMEOUT)  # slices 3 and 4 are in flight on the worker
    results = {}
    caller = threading.Thread(target=lambda: results.update(got=service.embeddings(source, 2, [2, 3, 4, 5])))
    caller.start()
    caller.join(0.3)  # time for a wrong implementation to call the (blocked) encoder for 3 or 4
    assert engine.counts()[3] == 1 and engine.counts()[4] == 1
    engine.gate.set()
    caller.join(GATE_TIMEOUT)
    assert not caller.is_alive() and job.wait(GATE_TIMEOUT)
    assert sliceIds(results["got"]) == [2, 3, 4, 5]
    assert engine.counts() == {2: 1, 3: 1, 4: 1, 5: 1}
    assert results["got"][1] is service.cache.peek(service.key(source, 2, 3))
    service.close(GATE_TIMEOUT)


def test_worker_error_is_kept_on_the_job_and_waiters_recover():
    engine, source = RecordingEngine(failOnce={4}), makeSource()
    engine.gate.clear()
    service = EmbeddingService(engine, batchSize=2)
    job = service.prefetch(source, 2, [4, 5])
    assert engine.entered.wait(GATE_TIMEOUT)
    results = {}
    caller = threading.Thread(target=lambda: results.update(got=service.embedding(source, 2, 5)))
    caller.start()
    caller.join(0.3)
    engine.gate.set()  # the worker's batch [4, 5] fails; the caller then encodes 5 itself
    with pytest.raises(RuntimeError, match="encoder failure"):
        job.wait(GATE_TIMEOUT)
    caller.join(GATE_TIMEOUT)
    assert int(results["got"].features[0, 0]) == 5
    assert int(service.embedding(source, 2, 4).features[0, 0]) == 4
    assert engine.counts() == {4: 2, 5: 2}
    service.close(GATE_TIMEOUT)


def test_waiting_request_goes_before_the_next_prefetch_batch():
    engine, source = RecordingEngine(), makeSource()
    engine.gate.clear()
    service = EmbeddingService(engine, batchSize=2)
    job = service.prefetch(source, 2, range(0, 6))
    assert engine.entered.wait(GATE_TIMEOUT)
    caller = threading.Thread(target=service.embedding, args=(source, 2, 10))
    caller.start()
    queued = threading.Event()
    for _ in range(int(GATE_TIMEOUT / 0.01)):  # until the request queues for the encoder
        if service._foregroundWaiting:
            queued.set()
            break
        queued.wait(0.01)
    assert queued.is_set()
    engine.gate.set()
    caller.join(GATE_TIMEOUT)
    assert job.wait(GATE_TIMEOUT)
    assert engine.batches == [[0, 1], [10], [2, 3], [4, 5]]
    service.close(GATE_TIMEOUT)


def test_cancel_while_waiting_for_an_in_flight_slice():
    engine, source = RecordingEngine(), makeSource()
    engine.gate.clear()
    service = EmbeddingService(engine)
    job = service.prefetch(source, 2, [3])
    assert engine.entered.wait(GATE_TIMEOUT)
    token, outcome = CancelToken(), {}

    def request():
        try:
            service.embeddings(source, 2, [3], cancel=token)
        except CancelledError as error:
            outcome["error"] = error

    caller = threading.Thread(target=request)
    caller.start()
    token.cancel()
    caller.join(GATE_TIMEOUT)  # returns while the worker is still blocked inside the encoder
    assert not caller.is_alive() and isinstance(outcome.get("error"), CancelledError)
    engine.gate.set()
    assert job.wait(GATE_TIMEOUT) and engine.counts() == {3: 1}
    service.close(GATE_TIMEOUT)


def test_prefetch_reuses_disk_entries_of_an_earlier_session(tmp_path):
    source = makeSource()
    EmbeddingService(RecordingEngine(), cache=EmbeddingCache(folder=tmp_path)).embeddings(source, 2, range(4))
    engine = RecordingEngine()
    service = EmbeddingService(engine, cache=EmbeddingCache(folder=tmp_path), batchSize=4)
    assert service.prefetch(source, 2, range(6)).wait(GATE_TIMEOUT)
    assert engine.batches == [[4, 5]]
    assert sliceIds(service.embeddings(source, 2, range(6))) == list(range(6))
    assert service.stats()["hits"] == 6
    service.close(GATE_TIMEOUT)

def test_tiny_sam_embedding_round_trips_through_the_disk_cache(tmp_path):
    pytest.importorskip("segment_anything")
    samengine = pytest.importorskip("MedSAMSlicerLib.engines.samengine")
    tinymodel = pytest.importorskip("MedSAMSlicerLib.engines.tinymodel")
    import torch

    checkpoint = tinymodel.writeTinyCheckpoint(tmp_path / "tiny.pth", seed=3)
    rows, cols = np.mgrid[0:40, 0:50]
    voxels = np.zeros((3, 40, 50), np.float32)
    voxels[1] = 200.0 * ((rows - 18) ** 2 + (cols - 27) ** 2 < 64) + 5.0 * cols
    source = SliceSource(voxels, spacingIjk=(1.0, 1.0, 3.0), policy=IntensityPolicy.window(0, 450))
    prompts = Prompts(boxXyxy=(17.0, 8.0, 37.0, 28.0))

    first = EmbeddingService(samengine.SamEngine(checkpoint, recipe="medsam", device="cpu"),
                             cache=EmbeddingCache(folder=tmp_path / "cache"))
    encoded = first.embedding(source, 2, 1)
    before = first.decode(encoded, prompts)
    assert encoded.features.dtype == torch.float16 and first.stats()["encoded"] == 1

    # A new session: a fresh engine on the same checkpoint, an empty memory cache on the same folder.
    second = EmbeddingService(samengine.SamEngine(checkpoint, recipe="medsam", device="cpu"),
                              cache=EmbeddingCache(folder=tmp_path / "cache"))
    loaded = second.embedding(source, 2, 1)
    stats = second.stats()
    assert stats["encoded"] == 0 and stats["diskHits"] == 1
    assert loaded.features.dtype == torch.float16 and torch.equal(loaded.features, encoded.features.cpu())
    after = second.decode(loaded, prompts)
    assert after.mask.shape == (40, 50) and np.array_equal(after.mask, before.mask)
    assert after.score == pytest.approx(before.score, abs=1e-6)
    np.testing.assert_allclose(after.lowResLogits, before.lowResLogits, atol=1e-5)
