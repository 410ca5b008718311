"""Fill between key slices: the slices between the ones the user accepted, segmented from both of them.

``fillKeySlices`` chooses the path by engine: SAM 2-family engines (MedSAM2,
SAM 2.1) go through their memory (memorypropagation.fillWithMemory: every key
slice is a conditioning slice, each slice between is tracked with both keys in
memory); every other engine propagates slice by slice from both ends
(fillBetweenKeySlices, here).

For the Logic (``MedSAMLogic.fillBetweenKeySlices``), the key slices are the
accepted slices of the current segment along the current axis
(``logic.acceptSlices``), and each key's mask is what the user sees there:
the preview's mask on that slice when the preview shows one, else the one it
showed when accepted (a later preview of another slice replaced it), else the
segment's (an earlier apply). The fill becomes the new preview: the slices
from the first key to the last are replaced, the preview's other slices are
kept; nothing touches the segment until apply (undoable). The Logic reads the
MRML nodes (main thread, logicclicks.prepareFill); the FillJob touches none.
"""

import time
from typing import Dict, Optional

import numpy as np

from ..core.errors import InputError
from ..core.progress import CancelToken, ProgressCallback, reportProgress
from ..mrml.segmentwriter import maskBoundingExtent
from .logicjobs import SegmentationResult, resultVolumeMask
from .memorypropagation import fillWithMemory, usesMemoryPropagation
from ..engines.base import Prompts
from .propagation import PropagationResult, PropagationSettings, asService, decodeWith, propagate


def fillKeySlices(service, source, axis: int, keyMasks: Dict[int, object],
                  settings: Optional[PropagationSettings] = None, progress=None, cancel=None):
    """Fill the slices between key slices, with the engine's memory when it has one.

    keyMasks: {slice index along ``axis``: bool (H, W) slice image mask, a
    boxXyxy, or Prompts} (at least two). Returns a MemoryPropagationResult
    (SAM 2 family: memorypropagation.fillWithMemory) or a PropagationResult
    (fillBetweenKeySlices, merge by score). Raises InputError for
    fewer than two keys or an empty key mask.
    """
    service = asService(service)
    if usesMemoryPropagation(service):
        return fillWithMemory(service, source, axis, keyMasks, settings, progress, cancel)
    return fillBetweenKeySlices(service, source, axis, keyMasks, settings, progress, cancel)


def keySliceMasks(source, axis: int, keys, previewResult=None, segmentMaskKji=None,
                  acceptedMasks=None) -> Dict[int, np.ndarray]:
    """{key slice: bool (H, W) slice image mask}: the preview's mask on that slice, else the mask the slice showed
    when it was accepted, else the segment's.

    previewResult: the Logic's SegmentationResult (or None); its mask counts on
    the slices it covers along ``axis`` when not empty there. segmentMaskKji:
    the segment as bool (K, J, I), or None. acceptedMasks: {slice: bool native
    slice mask} kept when the slices were accepted (AnnotationSession.
    acceptedMasks), or None. Raises InputError for fewer than two keys or a key
    with none of them (the message names the slices).
    """
    keys = sorted(int(k) for k in keys)
    if len(keys) < 2:
        raise InputError(f"Fill needs at least two accepted slices along {'IJK'[axis]} (accepted: {keys or 'none'}): "
                         "segment and accept a slice above and one below the slices to fill.")
    masks, missing = {}, []
    for k in keys:
        native = shownNativeMask(source, axis, k, previewResult, None)
        kept = (acceptedMasks or {}).get(k)
        if native is None and kept is not None and kept.shape == tuple(source.nativeShape(axis)) and kept.any():
            native = kept  # the grid may have changed since it was accepted (the volume's voxels were replaced)
        if native is None:
            native = shownNativeMask(source, axis, k, None, segmentMaskKji)
        if native is None:
            missing.append(k)
            continue
        masks[k] = source.nativeMaskToImage(axis, native)
    if missing:
        raise InputError(f"Accepted slice(s) {missing} show no mask in the preview or the segment: segment them "
                         "(and keep them in the preview or apply them) before filling between them.")
    return masks


def shownNativeMask(source, axis: int, k: int, previewResult=None, segmentMaskKji=None) -> Optional[np.ndarray]:
    """The bool native mask slice ``k`` along ``axis`` shows: the preview's there (same axis, covering ``k``, not
    empty), else the segment's (bool (K, J, I) or None) when not empty, else None."""
    covered = previewResult is not None and previewResult.axis == axis and k in previewResult.sliceIndices
    for native in (previewResult.maskKji[source.sliceSelector(axis, k)] if covered else None,
                   segmentMaskKji[source.sliceSelector(axis, k)] if segmentMaskKji is not None else None):
        if native is not None and native.any():
            return native
    return None


class FillJob:
    """Fill between key slices and merge the result into the preview; touches no MRML (worker-thread safe)."""

    def __init__(self, service, source, axis: int, keyMasks, previous: Optional[SegmentationResult], session=None,
                 postprocess=None, settings=None):
        self.service, self.source, self.axis = service, source, int(axis)
        self.keyMasks, self.previous, self.session = dict(keyMasks), previous, session
        self.postprocess, self.settings = postprocess, settings
        self.signature = source.signature  # the voxels the keys were read from

    def run(self, progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None) -> SegmentationResult:
        """Returns a "volume" SegmentationResult: the fill from the first key to the last, the previous preview's
        other slices (same axis) kept; clean-up, then the session's clicks enforced. Raises CancelledError."""
        started = time.perf_counter()
        encodeBefore, decodeBefore = self.service.timings["encode"], self.service.timings["decode"]
        reportProgress(progress, 0.0, f"Filling between slices {sorted(self.keyMasks)}")
        result = fillKeySlices(self.service, self.source, self.axis, self.keyMasks, self.settings, progress, cancel)
        if cancel is not None:
            cancel.raiseIfCancelled()
        self._keepPreviewOutside(result)
        maskKji = resultVolumeMask(result, self.source, self.axis, self.postprocess, self.session)
        timings = {"encode": self.service.timings["encode"] - encodeBefore,
                   "decode": self.service.timings["decode"] - decodeBefore,
                   "total": time.perf_counter() - started}
        reportProgress(progress, 1.0, f"Filled {len(result.masks)} slice(s)")
        return SegmentationResult("volume", self.axis, sorted(int(k) for k in result.masks), maskKji,
                                  maskBoundingExtent(maskKji), self.signature, None, result, timings,
                                  origin=result, session=self.session)

    def _keepPreviewOutside(self, result) -> None:
        """Add the previous preview's slices outside the keys' range to ``result`` (masks, logits, range)."""
        previous, (first, last) = self.previous, result.sliceRange
        if previous is None or previous.axis != self.axis:
            return
        earlier = previous.propagation
        for k in previous.sliceIndices:
            if first <= k <= last:
                continue
            native = previous.maskKji[self.source.sliceSelector(self.axis, k)]
            result.masks[k] = self.source.nativeMaskToImage(self.axis, native)
            result.scores[k] = earlier.scores.get(k, 1.0) if earlier is not None else 1.0
            if earlier is not None and k in earlier.logits:
                result.logits[k] = earlier.logits[k]
        result.sliceRange = (min(result.masks), max(result.masks))


def fillBetweenKeySlices(service, source, axis: int, keyMasks: Dict[int, np.ndarray],
                         settings: Optional[PropagationSettings] = None, progress=None, cancel=None,
                         merge: str = "score") -> PropagationResult:
    """Fill the slices between consecutive key slices by propagating from both ends.

    keyMasks: {slice index: bool (H, W) slice image mask, or a boxXyxy, or
    Prompts} (at least two); masks are kept as given, boxes and prompts are
    decoded first (InputError if a key gives an empty mask). Between keys a and b, propagation runs up from a and
    down from b, never leaving (a, b). Where both reach a slice, merge="score"
    keeps the mask with the higher engine score (ties: the nearer key), "union"
    takes their union. Slices outside [first key, last key] are not touched.
    stopReasons report the last gap. Raises InputError for fewer than two keys.
    This is the slice-by-slice fill; keyslicefill.fillKeySlices sends SAM 2-family
    engines through their memory instead (memorypropagation.fillWithMemory).
    """
    if len(keyMasks) < 2:
        raise InputError("Fill between key slices needs masks on at least two slices.")
    if merge not in ("score", "union"):
        raise InputError(f"Unknown merge mode {merge!r}: use 'score' or 'union'.")
    settings = settings or PropagationSettings()
    service = asService(service)
    keys = sorted(int(k) for k in keyMasks)
    result = PropagationResult(axis=axis, sliceRange=(keys[0], keys[-1]))
    for k in keys:
        result.masks[k], result.scores[k] = _keyMask(service, source, axis, k, keyMasks[k], result)
    for index, (a, b) in enumerate(zip(keys[:-1], keys[1:])):
        if b - a < 2:
            continue
        up = propagate(service, source, axis, a, result.masks[a], settings, (a, b - 1), cancel=cancel)
        down = propagate(service, source, axis, b, result.masks[b], settings, (a + 1, b), cancel=cancel)
        for part in (up, down):
            for name in ("encode", "decode"):
                result.timings[name] += part.timings[name]
        for k in range(a + 1, b):
            _mergeSlice(result, k, up, down, preferUp=(k - a) <= (b - k), merge=merge)
        result.stopReasons = {"up": up.stopReasons["up"], "down": down.stopReasons["down"]}
        reportProgress(progress, (index + 1) / (len(keys) - 1), f"Filled slices {a}..{b}")
    return result


def _keyMask(service, source, axis, k, key, result):
    """(mask, score) of a key slice given as a bool mask, a boxXyxy or Prompts (decoded here)."""
    if isinstance(key, Prompts) or (np.ndim(key) == 1 and np.size(key) == 4):
        prompts = key if isinstance(key, Prompts) else Prompts(boxXyxy=tuple(float(v) for v in key))
        embedding = service.embedding(source, axis, k)
        start = time.perf_counter()
        decoded = decodeWith(service, embedding, prompts)
        result.timings["decode"] += time.perf_counter() - start
        mask, score = decoded.mask, float(decoded.score)
    else:
        mask, score = np.asarray(key, bool), 1.0
    if mask.shape != tuple(source.imageShape(axis)) or not mask.any():
        raise InputError(f"Key slice {k} has an empty or mis-sized mask: segment the object on that slice first.")
    return mask, score


def _mergeSlice(result, k, up, down, preferUp, merge):
    candidates = [(part.scores[k], part.masks[k]) for part in ((up, down) if preferUp else (down, up)) if k in part.masks]
    if not candidates:
        return
    if merge == "union":
        result.masks[k] = np.logical_or.reduce([mask for _, mask in candidates])
        result.scores[k] = max(score for score, _ in candidates)
        return
    best = max(candidates, key=lambda item: item[0])  # max keeps the first (nearer key) on ties
    result.scores[k], result.masks[k] = best[0], best[1]
