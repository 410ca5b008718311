"""How MedSAMLogic manages its slice embeddings: counters, prefetch ahead of need, the memory budget, clearing.

A mixin of MedSAMLogic (logic.py), kept apart so each file holds one concern.
The embeddings live in one EmbeddingCache shared by every engine the Logic
loads (the cache key holds the model and its weights), behind the Logic's EmbeddingService.
No Qt.
"""

from . import logicchecks as checks


class EmbeddingCacheMixin:
    """Embedding cache controls for MedSAMLogic (uses its attributes: service, _cache, source, axis, _ensureService)."""

    def cacheStats(self):
        """Embedding cache counters of the current engine (hits, misses, encoded, bytes, entries...)."""
        return self.service.stats() if self.service is not None else {}

    def prefetch(self, sliceRange=None, aroundIndex=None, progress=None):
        """Encode slices along the current axis ahead of need, on a background thread; returns the PrefetchJob.

        sliceRange: inclusive (k0, k1) (default: every slice); aroundIndex:
        visit slices nearest to it first (the slice the user looks at). A new
        prefetch cancels the previous one; ``job.cancel()`` stops it. Snapshot
        taken here (main thread); the worker touches no MRML node.
        """
        service = self._ensureService()
        count = self.source.sliceCount(self.axis)
        sliceRange = checks.requireSliceRange(sliceRange, count)
        if aroundIndex is not None:
            checks.requireInteger(aroundIndex, "slice to start around", 0, count - 1)
        k0, k1 = sliceRange if sliceRange is not None else (0, count - 1)
        indices = range(max(0, int(k0)), min(count - 1, int(k1)) + 1)
        return service.prefetch(self.source, self.axis, indices, progress=progress, aroundIndex=aroundIndex)

    def setCacheBudget(self, maxBytes):
        """Keep at most ``maxBytes`` of slice embeddings in memory (least recently used are evicted beyond)."""
        from ..embeddings.cache import EmbeddingCache

        checks.requirePositiveNumber(maxBytes, "embedding cache budget (bytes)")
        if self._cache is None:
            self._cache = EmbeddingCache(maxBytes=int(maxBytes))
        self._cache.maxBytes = int(maxBytes)

    def clearEmbeddings(self):
        """Forget every cached slice embedding of every engine (they are encoded again when needed)."""
        if self._cache is not None:
            self._cache.clear()
