"""Memory propagation through a volume (SAM 2.1, MedSAM2): slices segmented from a memory of those already done.

Where the slice-by-slice propagation (propagation.py) prompts each next slice
with a box around the previous mask, an engine with a memory
(``engine.startMemorySession``, engines/sam2memory.py) segments the next slice
from the memory of the conditioning slices (the ones the user prompted) and of
the slices it tracked just before. The order is the same: from the prompted
slice up (increasing index) to the end of the range or a stop rule, then down.
Each walk starts from the conditioning slices' memory alone, as MedSAM2's 3D
inference resets its state between the forward and the reverse pass.

Every slice's image features come through the EmbeddingService, so each slice
is encoded once per volume content and model, kept in the embedding cache, and
never encoded past the slice where a stop rule fires (on a CPU slices are
fetched one at a time; on a GPU a few ahead, as propagation.py does). The stop
rules of PropagationSettings apply unchanged (mask vanished, area change,
score, IoU with the previous slice, maxSlices, range end); the slice that
breaks one is not kept and leaves nothing in the memory.

A correction (clicks on slice k of a result) makes k a conditioning slice (its
earlier logits go in as the mask input, so the clicks correct the mask) and
re-propagates outwards from k until the new masks match the old ones
(settings.changeIou), a stop rule fires, another conditioning slice is reached
(its mask is kept) or the range ends. Slices already encoded come from the
cache. No Slicer, no Qt, no torch import here.
"""

import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from ..core.errors import InputError, PromptError
from ..core.progress import reportProgress
from ..engines.base import Prompts
from ..engines.sam2memory import hasMemoryPropagation
from .propagation import (STOP_ANCHORED, STOP_MAX_SLICES, STOP_NOT_RUN, STOP_RANGE_END, STOP_UNCHANGED,
                          STOP_VANISHED, PropagationResult, PropagationSettings, SliceWalker, asService, checkedRange,
                          enlargedBox, maskIou, stopReason)

#: Stop reason of a re-propagation that reached another conditioning slice (whose mask is kept).
STOP_CONDITIONING_SLICE = "conditioningSlice"


@dataclass
class MemoryPropagationResult(PropagationResult):
    """A PropagationResult that keeps the memory it was made with, for corrections.

    session: the engine's memory session (a Sam2MemorySession).
    conditioning: {slice index: Prompts} of every conditioning slice.
    """

    session: object = None
    conditioning: Dict[int, Prompts] = field(default_factory=dict)


def usesMemoryPropagation(serviceOrEngine) -> bool:
    """True when propagation should go through the engine's memory (SAM 2-family engines)."""
    return hasMemoryPropagation(getattr(serviceOrEngine, "engine", serviceOrEngine))


def clipMask(mask: np.ndarray, clipXyxy) -> np.ndarray:
    """``mask`` without the pixels whose centres lie outside the box (x0, y0, x1, y1); unchanged for None."""
    if clipXyxy is None:
        return mask
    x0, y0, x1, y1 = clipXyxy
    clipped = np.zeros_like(mask)
    rows = slice(max(int(np.ceil(y0 - 1e-6)), 0), max(int(np.floor(y1 + 1e-6)) + 1, 0))
    cols = slice(max(int(np.ceil(x0 - 1e-6)), 0), max(int(np.floor(x1 + 1e-6)) + 1, 0))
    clipped[rows, cols] = mask[rows, cols]
    return clipped


class _MemoryWalker(SliceWalker):
    """Walks one direction with the engine's memory; embeddings fetched (and encoded ahead on a GPU) as SliceWalker does."""

    def __init__(self, service, source, axis, settings, result: MemoryPropagationResult, cancel=None):
        super().__init__(service, source, axis, settings, result, result.clipXyxy, cancel)
        self.session = result.session

    def condition(self, k: int, prompts: Prompts):
        """Decode slice k from ``prompts`` as a conditioning slice; records it (cut to the 3D box) in the result."""
        embedding = self.embedding(k, +1, k)
        decoded = self._timed(self.session.condition, k, embedding, prompts)
        self.result.conditioning[k] = self.session.conditioning[k]
        self._keep(k, decoded)
        return decoded

    def conditionMask(self, k: int, mask: np.ndarray):
        """Make slice k a conditioning slice from a given mask, kept as the slice's result (score 1)."""
        embedding = self.embedding(k, +1, k)
        decoded = self._timed(self.session.conditionMask, k, embedding, mask)
        self.result.conditioning[k] = self.session.conditioning[k]
        self._keep(k, decoded, np.asarray(mask, dtype=bool))
        return decoded

    def _keep(self, k: int, decoded, mask=None) -> None:
        """Record slice k: its mask (cut to the 3D box), score, and logits (a later click refines from them)."""
        result = self.result
        result.masks[k] = clipMask(decoded.mask, result.clipXyxy) if mask is None else mask
        result.scores[k] = float(decoded.score)
        result.logits[k] = np.asarray(decoded.lowResLogits, dtype=np.float16)

    def _timed(self, step, *args, **options):
        """Run a memory step, counting its time as decoding (in the result and in the service's timings)."""
        start = time.perf_counter()
        try:
            return step(*args, **options)
        finally:
            seconds = time.perf_counter() - start
            self.result.timings["decode"] += seconds
            if hasattr(self.service, "addTiming"):
                self.service.addTiming("decode", seconds)

    def walk(self, start: int, direction: int, last: int, progress=None, progressBase=0.0, previous=None,
             anchors=frozenset(), fresh=True) -> str:
        """Track from ``start`` towards ``last`` (inclusive); returns the stop reason.

        previous: the result a correction re-propagates (None for a first
        propagation): the walk then also stops where the new mask matches the
        old, and before any slice in ``anchors`` (slices the user clicked on or
        accepted: never replaced). fresh: start from the conditioning slices'
        memory alone (False: keep what the walk before tracked, as one
        uninterrupted pass of the video predictor does).
        """
        settings, result, session = self.settings, self.result, self.session
        if fresh:
            session.startWalk()
        previousMask = result.masks[start]
        k, added = start + direction, 0
        total = max(abs(last - start), 1)
        limit = last if settings.maxSlices is None else start + direction * min(abs(last - start), settings.maxSlices)
        while (last - k) * direction >= 0:
            if self.cancel is not None:
                self.cancel.raiseIfCancelled()
            if settings.maxSlices is not None and added >= settings.maxSlices:
                return STOP_MAX_SLICES
            if k in session.conditioning:
                return STOP_CONDITIONING_SLICE
            if k in anchors:
                return STOP_ANCHORED
            embedding = self.embedding(k, direction, limit)
            decoded = self._timed(session.track, k, embedding, reverse=direction < 0)
            mask = clipMask(decoded.mask, result.clipXyxy)
            reason = stopReason(mask, decoded.score, previousMask, settings)
            if reason is not None:
                session.forget(k)
                return reason
            self._keep(k, decoded, mask)
            added += 1
            reportProgress(progress, progressBase + 0.5 * added / total, f"Propagating with memory: slice {k}")
            old = previous.masks.get(k) if previous is not None else None
            if old is not None and maskIou(mask, old) > settings.changeIou:
                return STOP_UNCHANGED
            previousMask = mask
            k += direction
        return STOP_RANGE_END


def propagateWithMemory(service, source, axis: int, seedSliceIndex: int, prompts: Prompts,
                        settings: Optional[PropagationSettings] = None, sliceRange=None, progress=None, cancel=None,
                        clipXyxy=None) -> MemoryPropagationResult:
    """Segment slice ``seedSliceIndex`` from ``prompts`` and carry it through the volume with the engine's memory.

    service: an EmbeddingService (or an Engine with startMemorySession, wrapped
    in one). prompts: box and/or points on the seed slice, in slice image
    pixels. sliceRange: inclusive (k0, k1) the walk may not leave (None = whole
    volume). clipXyxy: a 3D box's in-plane box: propagated masks are cut to it.
    progress(fraction, text), cancel: CancelToken (CancelledError). Raises
    InputError (engine without memory, seed outside the range), PromptError
    (the prompts give an empty mask on the seed slice).
    """
    settings = settings or PropagationSettings()
    service = asService(service)
    if not usesMemoryPropagation(service):
        raise InputError(f"{getattr(service.engine, 'displayName', 'This engine')} has no memory propagation; "
                         "use propagation.propagate.")
    k0, k1 = checkedRange(source, axis, sliceRange)
    if not k0 <= seedSliceIndex <= k1:
        raise InputError(f"Seed slice {seedSliceIndex} lies outside the slice range {k0}..{k1}.")
    session = service.engine.startMemorySession(source.sliceCount(axis))
    result = MemoryPropagationResult(axis=axis, sliceRange=(k0, k1), clipXyxy=clipXyxy, session=session)
    walker = _MemoryWalker(service, source, axis, settings, result, cancel)
    walker.condition(seedSliceIndex, prompts)
    if not result.masks[seedSliceIndex].any():
        raise PromptError(f"The prompts give an empty mask on slice {seedSliceIndex}: adjust the box or points "
                          "until the slice preview shows the object, then propagate.")
    result.stopReasons["up"] = walker.walk(seedSliceIndex, +1, k1, progress, 0.0)
    result.stopReasons["down"] = walker.walk(seedSliceIndex, -1, k0, progress, 0.5)
    reportProgress(progress, 1.0, f"Propagated to {len(result.masks)} slices")
    return result


def propagateBox3dWithMemory(service, source, axis: int, boxXyxy, sliceRange,
                             settings: Optional[PropagationSettings] = None, progress=None, cancel=None,
                             pointsXy=None, pointLabels=None) -> MemoryPropagationResult:
    """The 3D box protocol with memory (as propagation.propagateBox3d): the box (and optional clicks) on the
    middle slice of [k0, k1], propagated within [k0, k1], every mask cut to the box. Raises PromptError for
    an empty middle-slice mask."""
    k0, k1 = checkedRange(source, axis, sliceRange)
    prompts = Prompts(boxXyxy=tuple(boxXyxy), pointsXy=np.zeros((0, 2)) if pointsXy is None else pointsXy,
                      pointLabels=np.zeros(0) if pointLabels is None else pointLabels)
    return propagateWithMemory(service, source, axis, (k0 + k1) // 2, prompts, settings, (k0, k1), progress, cancel,
                               clipXyxy=tuple(boxXyxy))


def fillWithMemory(service, source, axis: int, keyMasks: Dict[int, object],
                   settings: Optional[PropagationSettings] = None, progress=None,
                   cancel=None) -> MemoryPropagationResult:
    """Fill the slices between key slices with the engine's memory, every key slice a conditioning slice.

    keyMasks: {slice index: bool (H, W) slice image mask, a boxXyxy, or
    Prompts} (at least two). A mask is conditioned as sam2's video predictor's
    add_new_mask does and kept as given; a box or Prompts as
    add_new_points_or_box does (InputError if a key gives an empty mask).

    Order, as SAM2VideoPredictor.propagate_in_video from the first key with
    masks on every key: one forward pass from the first key to the last; each
    slice between keys is tracked with memory attention over every key slice
    (the one below and the one above) and the slices tracked just before it;
    key slices keep their masks. Where a stop rule (PropagationSettings) fires
    inside a gap (a, b), the pass resumes at b, and afterwards the rest of that
    gap is tracked down from b (from the key slices' memory alone), so each
    slice between keys gets one mask, from the forward pass where it reached.
    Each slice is encoded at most once (through the service's cache).
    stopReasons: the last gap's forward ("up") and downward ("down", "notRun"
    when the forward pass filled it) walks. Raises InputError (fewer than two
    keys, an engine without memory, a key outside the volume).
    """
    settings = settings or PropagationSettings()
    service = asService(service)
    if not usesMemoryPropagation(service):
        raise InputError(f"{getattr(service.engine, 'displayName', 'This engine')} has no memory propagation; "
                         "use keyslicefill.fillBetweenKeySlices.")
    if len(keyMasks) < 2:
        raise InputError("Fill between key slices needs masks on at least two slices.")
    keys = sorted(int(k) for k in keyMasks)
    if keys[0] < 0 or keys[-1] >= source.sliceCount(axis):
        raise InputError(f"Key slices {keys} are not all inside the volume (0..{source.sliceCount(axis) - 1}).")
    session = service.engine.startMemorySession(source.sliceCount(axis))
    result = MemoryPropagationResult(axis=axis, sliceRange=(keys[0], keys[-1]), session=session)
    walker = _MemoryWalker(service, source, axis, settings, result, cancel)
    for k in keys:
        _conditionKey(walker, source, axis, k, keyMasks[k])
    gaps = list(zip(keys[:-1], keys[1:]))
    for index, (a, b) in enumerate(gaps):
        # no fresh start between gaps: one uninterrupted forward pass, as the video predictor's
        result.stopReasons = {"up": walker.walk(a, +1, b - 1, _gapProgress(progress, index, len(gaps)), 0.0,
                                                fresh=index == 0), "down": STOP_NOT_RUN}
        reportProgress(progress, (index + 0.5) / len(gaps), f"Filled slices {a}..{b} upwards")
    for index, (a, b) in enumerate(gaps):
        missing = [k for k in range(a + 1, b) if k not in result.masks]
        if missing:
            down = walker.walk(b, -1, missing[0], _gapProgress(progress, index, len(gaps)), 0.5)
            if index == len(gaps) - 1:
                result.stopReasons["down"] = down
    reportProgress(progress, 1.0, f"Filled {len(result.masks) - len(keys)} slice(s) between {len(keys)} key slices")
    return result


def _conditionKey(walker: "_MemoryWalker", source, axis, k, key) -> None:
    """Condition key slice k on a bool mask (kept as given), a boxXyxy or Prompts; InputError for an empty mask."""
    if isinstance(key, Prompts) or (np.ndim(key) == 1 and np.size(key) == 4):
        prompts = key if isinstance(key, Prompts) else Prompts(boxXyxy=tuple(float(v) for v in key))
        walker.condition(k, prompts)
    else:
        mask = np.asarray(key, dtype=bool)
        if mask.shape == tuple(source.imageShape(axis)) and mask.any():
            walker.conditionMask(k, mask)
    if k not in walker.result.masks or not walker.result.masks[k].any():
        raise InputError(f"Key slice {k} has an empty or mis-sized mask: segment the object on that slice first.")


def _gapProgress(progress, index: int, count: int):
    """A progress callback mapping one gap's fraction into the whole fill's."""
    if progress is None:
        return None
    return lambda fraction, text: reportProgress(progress, (index + fraction) / count, text)


def correctWithMemory(service, source, axis: int, previousResult: PropagationResult, sliceIndex: int,
                      prompts: Prompts, settings: Optional[PropagationSettings] = None, progress=None,
                      cancel=None, anchoredSlices=()) -> MemoryPropagationResult:
    """Fix slice ``sliceIndex`` of a 3D result with clicks, as a new conditioning slice, and re-propagate from it.

    prompts: the clicks (and optionally a box) on that slice; a box the slice
    was conditioned with before is kept when none is given. The memory of
    ``previousResult`` is reused when it was made by this engine (else the
    conditioning slices it records are conditioned again). Re-propagation
    stops before any slice of ``anchoredSlices`` (as correctSlice's). Returns a
    new result; previousResult is not modified. Raises InputError for a slice
    outside the result's range.
    """
    settings = settings or PropagationSettings()
    service = asService(service)
    k0, k1 = previousResult.sliceRange or checkedRange(source, axis, None)
    if not k0 <= sliceIndex <= k1:
        raise InputError(f"Slice {sliceIndex} lies outside the result's slice range {k0}..{k1}.")
    session = _sessionFor(service, source, axis, previousResult)
    result = MemoryPropagationResult(axis=axis, masks=dict(previousResult.masks), scores=dict(previousResult.scores),
                                     sliceRange=(k0, k1), clipXyxy=previousResult.clipXyxy,
                                     logits=dict(previousResult.logits), session=session,
                                     conditioning=dict(session.conditioning))
    walker = _MemoryWalker(service, source, axis, settings, result, cancel)
    for k, earlier in sorted(getattr(previousResult, "conditioning", {}).items()):
        if k not in session.conditioning and k != sliceIndex:
            # a session made by another engine: condition its slices again (a key slice of a fill by its mask)
            if earlier.isEmpty:
                walker.conditionMask(k, previousResult.masks[k])
            else:
                walker.condition(k, earlier)
    walker.condition(sliceIndex, _correctionPrompts(session, source, axis, previousResult, sliceIndex, prompts,
                                                    settings))
    if not result.masks[sliceIndex].any():
        # The user removed the object here: the slices beyond no longer connect to it.
        result.stopReasons = {"up": STOP_VANISHED, "down": STOP_VANISHED}
    else:
        anchors = frozenset(int(k) for k in anchoredSlices) - {int(sliceIndex)}
        for name, direction, last, base in (("up", +1, k1, 0.0), ("down", -1, k0, 0.5)):
            result.stopReasons[name] = walker.walk(sliceIndex, direction, last, progress, base, previousResult,
                                                   anchors)
    reportProgress(progress, 1.0, "Correction propagated")
    return result


def _sessionFor(service, source, axis, previousResult):
    """A private copy of the previous result's memory session when it belongs to this engine, else a new one."""
    session = getattr(previousResult, "session", None)
    if session is not None and session.engine is service.engine and session.sliceCount == source.sliceCount(axis):
        return session.copy()
    return service.engine.startMemorySession(source.sliceCount(axis))


def _correctionPrompts(session, source, axis, previousResult, k, prompts: Prompts, settings) -> Prompts:
    """The prompts slice k is conditioned with: the clicks, plus the box it had (or, without memory of the slice,
    the old mask's box enlarged by marginMm, as the slice-by-slice correction does)."""
    box = prompts.boxXyxy
    earlier = session.conditioning.get(k)
    if box is None and earlier is not None:
        box = earlier.boxXyxy
    oldMask = previousResult.masks.get(k)
    if box is None and k not in session.lowResLogits and oldMask is not None and oldMask.any():
        box = enlargedBox(oldMask, settings.marginMm / source.pixelSpacing(axis), previousResult.clipXyxy)
    return Prompts(boxXyxy=box, pointsXy=prompts.pointsXy, pointLabels=prompts.pointLabels,
                   previousLowResLogits=prompts.previousLowResLogits)
