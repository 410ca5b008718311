"""Cached, batched encoding of a SliceSource, and a background prefetch worker.

EmbeddingService sits between the callers that need slice embeddings (the
Logic, propagation) and the engine's encoder. Every slice goes through the
EmbeddingCache; only misses reach ``engine.encode``, in batches. A background
worker can encode a range of slices ahead of need while the caller keeps
decoding slices already cached.

Coordination: a slice being encoded (by the worker or by another caller) is
"in flight". A request for it waits until it lands in the cache instead of
encoding it a second time; the worker skips slices another caller is encoding.
Calls to ``engine.encode`` are serialised (one model, one set of cores), while
``decode`` runs freely alongside them.

Prefetch policy: a new prefetch() cancels the job that is running (it stops
after its current batch, whose slices are kept) and any job still queued; the
newest request is what the user is looking at.

No Slicer, no Qt, no torch import here.
"""

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterable, List, Optional, Sequence

from .cache import CacheKey, EmbeddingCache
from ..engines.base import DecodeResult, Engine, Prompts, SliceEmbedding
from ..core.errors import CancelledError, InputError
from ..core.progress import CancelToken, ProgressCallback, reportProgress

LOG = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4
"""Slices per encoder call when neither the caller nor the engine says otherwise."""

WAIT_POLL_SECONDS = 0.05
"""How often a waiting request re-checks its CancelToken (seconds)."""


class PrefetchJob:
    """Handle on one background prefetch: cancel(), wait(), done, error, counters.

    Attributes: indices (slice indices in the order they are visited), encoded
    (slices this job sent to the encoder), error (the exception that ended the
    job, or None). Progress callbacks run on the worker thread.
    """

    def __init__(self, source, axis: int, indices: List[int], progress: Optional[ProgressCallback]):
        self.source = source
        self.axis = axis
        self.indices = indices
        self.progress = progress
        self.encoded = 0
        self.error: Optional[BaseException] = None
        self._cancelToken = CancelToken()
        self._doneEvent = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop after its current batch (slices already encoded stay cached)."""
        self._cancelToken.cancel()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called (by the caller or by a newer prefetch)."""
        return self._cancelToken.cancelled

    @property
    def done(self) -> bool:
        """True when the job has finished, stopped after a cancel, or failed."""
        return self._doneEvent.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the job ends (or ``timeout`` seconds pass); True if it ended.

        Re-raises the exception that ended the job, if any. A cancelled job ends
        without error.
        """
        finished = self._doneEvent.wait(timeout)
        if finished and self.error is not None:
            raise self.error
        return finished

    def _finish(self, error: Optional[BaseException] = None) -> None:
        self.error = error
        self._doneEvent.set()


class EmbeddingService:
    """Cached, batched encoding of slice sources through one engine, with prefetch.

    engine: an Engine (encode/decode/modelId). cache: an EmbeddingCache (a new
    1 GiB one when None). batchSize: slices per encoder call; None takes the
    engine's ``batchSize`` attribute if it has one, else DEFAULT_BATCH_SIZE.
    A source is anything with ``signature``, ``policyKey``, ``sliceCount(axis)``
    and ``sliceImage(axis, k)`` (a SliceSource).
    """

    def __init__(self, engine: Engine, cache: Optional[EmbeddingCache] = None, batchSize: Optional[int] = None):
        self.engine = engine
        self.cache = cache if cache is not None else EmbeddingCache()
        if batchSize is None:
            batchSize = getattr(engine, "batchSize", None) or DEFAULT_BATCH_SIZE
        if int(batchSize) < 1:
            raise InputError(f"Encoding batch size must be 1 or more, got {batchSize}.")
        self.batchSize = int(batchSize)
        self.timings = {"encode": 0.0, "decode": 0.0}
        self._encoded = 0
        self._statsLock = threading.Lock()
        self._encodeLock = threading.Lock()
        self._flight = threading.Condition()
        self._inFlight = set()
        self._foregroundWaiting = 0
        self._jobs = deque()
        self._currentJob: Optional[PrefetchJob] = None
        self._worker: Optional[threading.Thread] = None
        self._closed = False

    # -- keys and validation --

    def key(self, source, axis: int, sliceIndex: int) -> CacheKey:
        """The cache key of slice ``sliceIndex`` along ``axis`` of ``source`` for this engine."""
        return CacheKey(source.signature, int(axis), int(sliceIndex), source.policyKey, self.engine.modelId)

    def _checkedIndices(self, source, axis: int, indices: Iterable[int]) -> List[int]:
        if axis not in (0, 1, 2):
            raise InputError(f"Axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}.")
        count = source.sliceCount(axis)
        result = [int(k) for k in indices]
        bad = [k for k in result if not 0 <= k < count]
        if bad:
            raise InputError(f"Slice {bad[0]} is outside the volume along axis {axis} "
                             f"(valid: 0 to {count - 1}); pick a slice inside the image.")
        return result

    # -- foreground requests --

    def embedding(self, source, axis: int, sliceIndex: int) -> SliceEmbedding:
        """The embedding of one slice: from the cache, else encoded now.

        If the prefetch worker (or another caller) is encoding that slice, waits
        for it instead of encoding it twice. Raises InputError for a slice
        outside the volume.
        """
        return self.embeddings(source, axis, [sliceIndex])[0]

    def embeddings(self, source, axis: int, indices: Sequence[int], progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> List[SliceEmbedding]:
        """Embeddings of several slices, in the order of ``indices``.

        Cached slices come from the cache; the misses are encoded in batches of
        ``batchSize``, with progress reported after each batch; slices in flight
        elsewhere are waited for. Raises CancelledError if ``cancel`` is set
        (checked between batches and while waiting; finished batches stay
        cached), InputError for slices outside the volume.
        """
        indices = self._checkedIndices(source, axis, indices)
        unique = list(dict.fromkeys(indices))
        found = {}
        for k in unique:
            hit = self.cache.get(self.key(source, axis, k))
            if hit is not None:
                found[k] = hit
        missing = [k for k in unique if k not in found]
        total = len(missing)
        if total:
            reportProgress(progress, 0.0, f"Encoding {total} slice(s)")
        while missing:
            mine, waiting = self._claim(source, axis, missing, found, skipInFlight=False)
            self._encodeOwn(source, axis, mine, found, progress, cancel, missing)
            self._waitForLanding(source, axis, waiting, cancel)
            missing = [k for k in missing if k not in found]  # a failed or cancelled worker batch: retry here
        if total:
            reportProgress(progress, 1.0, "Slices encoded")
        return [found[k] for k in indices]

    def decode(self, embedding: SliceEmbedding, prompts: Prompts) -> DecodeResult:
        """engine.decode, with its time added to timings["decode"]."""
        start = time.perf_counter()
        try:
            return self.engine.decode(embedding, prompts)
        finally:
            self._addTime("decode", time.perf_counter() - start)

    def decodeMany(self, embedding: SliceEmbedding, promptsList: Sequence[Prompts]) -> list:
        """engine.decodeMany (several objects on one slice), timed into timings["decode"]."""
        start = time.perf_counter()
        try:
            return self.engine.decodeMany(embedding, promptsList)
        finally:
            self._addTime("decode", time.perf_counter() - start)

    def addTiming(self, name: str, seconds: float) -> None:
        """Count ``seconds`` of work done outside decode() (a memory-propagation step) into timings[name]."""
        self._addTime(name, seconds)

    def invalidate(self, source) -> int:
        """Forget every cached slice of ``source`` (memory and disk); returns memory entries dropped.

        A prefetch running on the same volume is cancelled first so it does not refill the cache.
        """
        with self._flight:
            jobs = list(self._jobs) + ([self._currentJob] if self._currentJob else [])
        for job in jobs:
            if job.source.signature == source.signature:
                job.cancel()
        return self.cache.invalidate(source.signature)

    def stats(self) -> dict:
        """Cache stats, with "encoded" = slices this service sent to the encoder."""
        result = self.cache.stats()
        with self._statsLock:
            result["encoded"] = self._encoded
        return result

    # -- prefetch --

    def prefetch(self, source, axis: int, indices: Optional[Sequence[int]] = None,
                 progress: Optional[ProgressCallback] = None, aroundIndex: Optional[int] = None) -> PrefetchJob:
        """Encode slices ahead of need on this service's background worker; returns at once.

        indices: slices to encode (None = every slice along ``axis``).
        aroundIndex: when given, slices are visited nearest to it first (the
        slice the user is looking at). Cached slices and slices another caller
        is encoding are skipped. A new prefetch cancels the running and queued
        ones. ``progress(fraction, text)`` is called on the worker thread.
        Raises InputError for bad axis or indices (before anything starts).
        """
        if indices is None:
            indices = range(source.sliceCount(axis) if axis in (0, 1, 2) else 0)
        ordered = list(dict.fromkeys(self._checkedIndices(source, axis, indices)))
        if aroundIndex is not None:
            ordered.sort(key=lambda k: (abs(k - aroundIndex), k))
        job = PrefetchJob(source, int(axis), ordered, progress)
        with self._flight:
            if self._closed:
                raise InputError("This embedding service was closed; create a new one to prefetch.")
            for old in list(self._jobs) + ([self._currentJob] if self._currentJob else []):
                old.cancel()
            self._jobs.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._workerLoop, name="MedSAMSlicer-prefetch", daemon=True)
                self._worker.start()
            self._flight.notify_all()
        return job

    def close(self, timeout: Optional[float] = None) -> None:
        """Cancel every prefetch and stop the worker thread (waits up to ``timeout`` seconds)."""
        with self._flight:
            self._closed = True
            for job in list(self._jobs) + ([self._currentJob] if self._currentJob else []):
                job.cancel()
            self._flight.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def _workerLoop(self) -> None:
        while True:
            with self._flight:
                while not self._jobs and not self._closed:
                    self._flight.wait()
                if not self._jobs:
                    return  # closed and nothing left
                job = self._currentJob = self._jobs.popleft()
            try:
                self._runJob(job)
                job._finish()
            except CancelledError:
                job._finish()
            except BaseException as error:  # kept on the job, re-raised by wait(); the worker lives on
                LOG.warning("Prefetch failed: %s", error)
                job._finish(error)
            finally:
                with self._flight:
                    self._currentJob = None

    def _runJob(self, job: PrefetchJob) -> None:
        total = len(job.indices)
        position = 0
        reportProgress(job.progress, 0.0, f"Prefetching {total} slice(s)")
        while position < total:
            if job.cancelled:
                return
            batch, position = self._nextPrefetchBatch(job, position)
            if batch:
                self._encodeBatch(job.source, job.axis, batch, background=True)
                job.encoded += len(batch)
            reportProgress(job.progress, position / total, f"Prefetched {position} of {total} slice(s)")

    def _nextPrefetchBatch(self, job: PrefetchJob, position: int):
        """Claim up to batchSize uncached, not-in-flight slices from ``position`` on; returns (batch, new position)."""
        batch = []
        try:
            while position < len(job.indices) and len(batch) < self.batchSize:
                k = job.indices[position]
                position += 1
                if self.cache.get(self.key(job.source, job.axis, k), record=False) is not None:
                    continue  # also brings a disk entry into memory
                mine, _ = self._claim(job.source, job.axis, [k], {}, skipInFlight=True)
                batch.extend(mine)
        except BaseException:
            self._release(job.source, job.axis, batch)
            raise
        return batch, position

    # -- shared machinery --

    def _claim(self, source, axis, indices, found, skipInFlight):
        """Mark uncached, not-in-flight slices as ours; returns (mine, waiting).

        Slices that landed in memory meanwhile are added to ``found``; slices in
        flight elsewhere go to ``waiting`` (or are dropped when skipInFlight).
        Checking the cache under the same lock the encoder releases keys with
        means a slice is never encoded twice.
        """
        mine, waiting = [], []
        with self._flight:
            for k in indices:
                key = self.key(source, axis, k)
                landed = self.cache.peek(key)
                if landed is not None:
                    found[k] = landed
                elif key in self._inFlight:
                    if not skipInFlight:
                        waiting.append(k)
                else:
                    self._inFlight.add(key)
                    mine.append(k)
        return mine, waiting

    def _release(self, source, axis, indices) -> None:
        with self._flight:
            for k in indices:
                self._inFlight.discard(self.key(source, axis, k))
            self._flight.notify_all()

    def _encodeOwn(self, source, axis, mine, found, progress, cancel, missing) -> None:
        """Encode the slices this caller claimed, batch by batch, into ``found``; cancel between batches."""
        unstarted = list(mine)
        total = len(missing)
        try:
            while unstarted:
                if cancel is not None:
                    cancel.raiseIfCancelled()
                batch, unstarted = unstarted[:self.batchSize], unstarted[self.batchSize:]
                found.update(self._encodeBatch(source, axis, batch))
                done = sum(1 for k in missing if k in found)
                reportProgress(progress, done / total, f"Encoded {done} of {total} slice(s)")
        finally:
            self._release(source, axis, unstarted)  # never leave a claim behind that nobody will fulfil

    def _encodeBatch(self, source, axis, batch, background=False) -> dict:
        """Encode slices this thread claimed, store them, release them (even on error); returns {k: stored}."""
        try:
            images = [source.sliceImage(axis, k) for k in batch]
            with self._encoderTurn(background):
                start = time.perf_counter()
                encoded = self.engine.encode(images)
                self._addTime("encode", time.perf_counter() - start)
            if len(encoded) != len(batch):
                raise RuntimeError(f"{type(self.engine).__name__}.encode returned {len(encoded)} embeddings "
                                   f"for {len(batch)} images")
            with self._statsLock:
                self._encoded += len(batch)
            self.cache.noteEncoded(len(batch))
            return {k: self.cache.put(self.key(source, axis, k), e) for k, e in zip(batch, encoded)}
        finally:
            self._release(source, axis, batch)

    @contextmanager
    def _encoderTurn(self, background: bool):
        """Hold the encoder; the worker lets waiting foreground requests go first (the user is waiting on them)."""
        if background:
            with self._flight:
                while self._foregroundWaiting:
                    self._flight.wait()
            with self._encodeLock:
                yield
            return
        with self._flight:
            self._foregroundWaiting += 1
        try:
            self._encodeLock.acquire()
        finally:
            self._leaveForegroundQueue()
        try:
            yield
        finally:
            self._encodeLock.release()

    def _leaveForegroundQueue(self) -> None:
        with self._flight:
            self._foregroundWaiting -= 1
            self._flight.notify_all()

    def _waitForLanding(self, source, axis, waiting, cancel: Optional[CancelToken]) -> None:
        """Block until none of ``waiting`` is in flight any more (or ``cancel`` is set)."""
        keys = [self.key(source, axis, k) for k in waiting]
        with self._flight:
            while any(key in self._inFlight for key in keys):
                if cancel is not None and cancel.cancelled:
                    cancel.raiseIfCancelled()
                self._flight.wait(WAIT_POLL_SECONDS if cancel is not None else None)

    def _addTime(self, name: str, seconds: float) -> None:
        with self._statsLock:
            self.timings[name] += seconds

