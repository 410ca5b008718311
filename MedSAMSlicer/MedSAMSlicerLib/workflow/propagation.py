"""Propagation of a slice result through the volume (2D -> 3D), numpy level.

The prompt for slice k + 1 (k - 1) is the bounding box of the mask on slice k,
enlarged by ``marginMm`` (converted to pixels of that axis with
source.pixelSpacing(axis), so it means the same on every axis), optionally with
the previous slice's lowResLogits. A direction stops at the first slice where a
stop rule fires (that slice is not kept): the mask vanishes, its area changes
by more than ``maxAreaRatio``, the engine's score or the IoU with the previous
slice drops below a threshold, or ``maxSlices`` were added, or the slice range
ends.

Frames: masks are bool slice images (H, W) of ``source`` along ``axis`` (x =
column, y = row); slice indices are native indices along ``axis``.

Encoding goes through the service (EmbeddingService: cache + batches):
slices are requested ``lookaheadSlices`` at a time in the direction of travel,
so an early stop wastes at most that many encodings and a cached slice is never
re-encoded. On a GPU the next batch is encoded by the service's prefetch worker
while the current one is decoded, so decoding hides behind encoding; on a CPU
one slice is encoded at a time (an encoder pass there costs tens of seconds, so
no slice past the stop is ever encoded). No Slicer, no Qt, no torch.
"""

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from ..engines.base import DecodeResult, Prompts
from ..core.errors import InputError, PromptError
from ..core.progress import reportProgress

#: Slices encoded per batch ahead of the walk on a GPU (bf16 ViT-B: batches of 8 are the fastest per slice).
GPU_LOOKAHEAD_SLICES = 8

#: Stop reasons reported in PropagationResult.stopReasons.
STOP_VANISHED = "vanished"
STOP_AREA_CHANGE = "areaChange"
STOP_LOW_SCORE = "lowScore"
STOP_LOW_IOU = "lowIou"
STOP_MAX_SLICES = "maxSlices"
STOP_RANGE_END = "rangeEnd"
STOP_UNCHANGED = "unchanged"
STOP_ANCHORED = "anchored"
STOP_NOT_RUN = "notRun"


@dataclass
class PropagationSettings:
    """How far and how carefully a mask is carried from slice to slice.

    marginMm: the previous mask's bounding box is enlarged by this many mm on
    each side to prompt the next slice. useLowResMask: pass the previous slice's
    lowResLogits as Prompts.previousLowResLogits. minAreaPixels: a mask smaller
    than this "vanished". maxAreaRatio: stop when area grows or shrinks by more
    than this factor between neighbouring slices. minScore: stop when the
    engine's score is lower. minIouWithPrevious: stop when the IoU with the
    previous slice's mask is lower. maxSlices: at most this many slices added on
    each side of the seed (None = no limit). lookaheadSlices: slices requested
    from the encoder at a time (None: 1 on a CPU, GPU_LOOKAHEAD_SLICES on a
    GPU, where the next batch is also encoded ahead while this one is decoded). changeIou: correctSlice stops re-propagating at
    a slice whose new mask has IoU above this with the old one.

    Defaults were measured with the GrowCut engine (whose score is 0 at a
    boundary contrast-to-noise ratio of 1.2, 0.3 at 1.8): on the phantoms
    (ellipsoid, drifting tube, two objects; 1 mm and 1x1x2.5 mm voxels; axial,
    coronal, sagittal) minScore 0.3 stops every direction within 2 slices of
    the true end (Dice 0.94-1.0), while lower thresholds let some masks run on
    through noise past the end (a 5 mm tube in coronal slices: Dice 0.80 at
    minScore 0.2, 0.38 at 0.1); on the TotalSegmentator CT/MR organs and
    pyradiomics lesions (3D box protocol, bench/evaluate_shared_data.py) mean
    Dice is 0.50 at minScore 0.3 and 0.53 at 0.2 (real
    organ boundaries have less contrast). Between true neighbouring slices of
    those objects (all three axes, excluding the last two slices of each end)
    the IoU is >= 0.52 in 95% and >= 0.28 in 99% of pairs, the area ratio
    <= 1.59 in 95% and <= 2.61 in 99%: hence minIouWithPrevious 0.3 and
    maxAreaRatio 3.0, which keep about 99% of true transitions. marginMm 5:
    the true bounding box grows by <= 0.8 mm per side in half and <= 6 mm in
    90% of those pairs; real-data Dice is 0.50 at 3 and 5 mm, 0.51 at 8 mm,
    0.52 at 12 mm, but 12 mm breaks coronal phantoms (the box reaches the
    image edge, where GrowCut has no background ring).
    """

    marginMm: float = 5.0
    useLowResMask: bool = True
    minAreaPixels: int = 4
    maxAreaRatio: float = 3.0
    minScore: float = 0.3
    minIouWithPrevious: float = 0.3
    maxSlices: Optional[int] = None
    lookaheadSlices: Optional[int] = None
    changeIou: float = 0.98


@dataclass
class PropagationResult:
    """Masks per slice (bool (H, W) slice images), scores, and why each direction stopped.

    stopReasons: {"up": reason, "down": reason}, "up" = increasing slice index.
    sliceRange: the (k0, k1) range propagation was confined to; clipXyxy: the
    box prompts were clipped to (a 3D ROI's in-plane box) or None. timings: seconds
    spent getting embeddings ("encode", cache hits included) and decoding ("decode").
    logits: {slice: the decoder's low-resolution logits (float16)} for engines
    that have them and cannot rebuild them from a mask (SAM family), so that a
    later click on that slice refines its mask instead of starting over.
    """

    axis: int
    masks: Dict[int, np.ndarray] = field(default_factory=dict)
    scores: Dict[int, float] = field(default_factory=dict)
    stopReasons: Dict[str, str] = field(default_factory=lambda: {"up": STOP_NOT_RUN, "down": STOP_NOT_RUN})
    sliceRange: Optional[Tuple[int, int]] = None
    clipXyxy: Optional[Tuple[float, float, float, float]] = None
    timings: Dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "decode": 0.0})
    logits: Dict[int, np.ndarray] = field(default_factory=dict)

    def keep(self, k: int, decoded, service=None):
        """Store a slice's decode: mask, score, and (for engines without priorFromMask) its logits."""
        self.masks[k], self.scores[k] = decoded.mask, float(decoded.score)
        engine = getattr(service, "engine", None)
        if decoded.lowResLogits is not None and not hasattr(engine, "priorFromMask"):
            self.logits[k] = np.asarray(decoded.lowResLogits, dtype=np.float16)
        else:
            self.logits.pop(k, None)

    def toVolumeMask(self, source, axis: Optional[int] = None) -> np.ndarray:
        """All slice masks written into a bool (K, J, I) volume through source.imageMaskToNative."""
        axis = self.axis if axis is None else axis
        volume = np.zeros(source.shapeKji[:3], bool)
        for k, mask in self.masks.items():
            volume[source.sliceSelector(axis, k)] = source.imageMaskToNative(axis, mask)
        return volume


def asService(serviceOrEngine):
    """An EmbeddingService for an engine, or the given service unchanged."""
    if hasattr(serviceOrEngine, "embeddings") and hasattr(serviceOrEngine, "engine"):
        return serviceOrEngine
    from ..embeddings.service import EmbeddingService  # noqa: PLC0415

    return EmbeddingService(serviceOrEngine)


def maskIou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum()) / float(union)


def maskBox(mask: np.ndarray) -> Optional[Tuple[float, float, float, float]]:
    """Bounding box (x0, y0, x1, y1) of a mask's pixel centres, or None when empty."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])


def enlargedBox(mask: np.ndarray, marginPixels: float, clipXyxy=None):
    """maskBox enlarged by marginPixels, clipped to the image and to clipXyxy when given; None if empty."""
    box = maskBox(mask)
    if box is None:
        return None
    height, width = mask.shape
    x0, y0, x1, y1 = box
    x0, y0 = max(x0 - marginPixels, 0.0), max(y0 - marginPixels, 0.0)
    x1, y1 = min(x1 + marginPixels, width - 1.0), min(y1 + marginPixels, height - 1.0)
    if clipXyxy is not None:
        x0, y0 = max(x0, clipXyxy[0]), max(y0, clipXyxy[1])
        x1, y1 = min(x1, clipXyxy[2]), min(y1, clipXyxy[3])
        if x0 > x1 or y0 > y1:
            return None
    return x0, y0, x1, y1


def decodeWith(service, embedding, prompts) -> DecodeResult:
    """Decode ``prompts`` on an embedding with the service's decoder (its engine's when it has none)."""
    decode = getattr(service, "decode", None) or service.engine.decode
    return decode(embedding, prompts)


def stopReason(mask, score, previous, settings: PropagationSettings) -> Optional[str]:
    """The first stop rule a new mask breaks, or None when it may be kept."""
    area, previousArea = int(mask.sum()), int(previous.sum())
    if area < settings.minAreaPixels:
        return STOP_VANISHED
    if score < settings.minScore:
        return STOP_LOW_SCORE
    ratio = max(area, 1) / max(previousArea, 1)
    if max(ratio, 1.0 / ratio) > settings.maxAreaRatio:
        return STOP_AREA_CHANGE
    if maskIou(mask, previous) < settings.minIouWithPrevious:
        return STOP_LOW_IOU
    return None


def isAccelerated(service) -> bool:
    """True when the service's engine computes on a GPU (CUDA or MPS) rather than the CPU."""
    return str(getattr(service.engine, "device", "cpu")) not in ("cpu", "")


def lookaheadSlices(settings: "PropagationSettings", service) -> int:
    """Slices requested from the encoder at a time: the setting, or 1 on a CPU and GPU_LOOKAHEAD_SLICES on a GPU."""
    if settings.lookaheadSlices is not None:
        return max(1, int(settings.lookaheadSlices))
    return GPU_LOOKAHEAD_SLICES if isAccelerated(service) else 1


def _slicesToward(k: int, direction: int, last: int, count: int) -> list:
    """Up to ``count`` slice indices from k toward ``last`` (inclusive), in walking order."""
    return list(range(k, last + direction, direction))[:count] if (last - k) * direction >= 0 else []


class SliceWalker:
    """Walks one direction from a start mask, fetching embeddings ahead in batches."""

    def __init__(self, service, source, axis, settings, result, clipXyxy=None, cancel=None):
        self.service, self.source, self.axis = service, source, axis
        self.settings, self.result, self.clipXyxy, self.cancel = settings, result, clipXyxy, cancel
        self.marginPixels = settings.marginMm / source.pixelSpacing(axis)
        self.lookahead = lookaheadSlices(settings, service)
        # Encode the next batch in the background while this one is decoded: only where
        # encoding is cheap (a GPU), since a batch past the stop point is encoded for nothing.
        self.encodeAhead = isAccelerated(service) and hasattr(service, "prefetch")
        self._fetched = {}

    def embedding(self, k: int, direction: int, last: int):
        """Embedding of slice k; fetches k and up to lookahead - 1 further slices toward `last`."""
        if k not in self._fetched:
            batch = _slicesToward(k, direction, last, self.lookahead) or [k]
            start = time.perf_counter()
            embeddings = self.service.embeddings(self.source, self.axis, batch, cancel=self.cancel)
            self.result.timings["encode"] += time.perf_counter() - start
            self._fetched.update(zip(batch, embeddings))
            following = _slicesToward(batch[-1] + direction, direction, last, self.lookahead)
            if self.encodeAhead and following:
                self.service.prefetch(self.source, self.axis, following)
        return self._fetched.pop(k)

    def step(self, k, direction, last, previousMask, previousLogits, boxHint=None):
        """Decode slice k prompted from the previous slice's mask; returns (DecodeResult or None, reason).

        boxHint: an optional mask on slice k (its old result) whose box is joined to the prompt box.
        """
        boxMask = previousMask if boxHint is None else (previousMask | boxHint)
        box = enlargedBox(boxMask, self.marginPixels, self.clipXyxy)
        if box is None:
            return None, STOP_VANISHED
        embedding = self.embedding(k, direction, last)
        prompts = Prompts(boxXyxy=box, previousLowResLogits=previousLogits if self.settings.useLowResMask else None)
        start = time.perf_counter()
        decoded = decodeWith(self.service, embedding, prompts)
        self.result.timings["decode"] += time.perf_counter() - start
        return decoded, stopReason(decoded.mask, decoded.score, previousMask, self.settings)


def _priorFromMask(service, source, axis, k, mask):
    """Seed logits for a mask that came from no decode, when the engine offers priorFromMask (GrowCut); else None."""
    hook = getattr(getattr(service, "engine", None), "priorFromMask", None)
    if hook is None:
        return None
    return hook(service.embedding(source, axis, k), mask)


def checkedRange(source, axis, sliceRange) -> Tuple[int, int]:
    """(k0, k1), inclusive slice indices along ``axis``: ``sliceRange`` checked against the volume, or every slice.

    Raises InputError when the range lies outside the volume.
    """
    count = source.sliceCount(axis)
    if sliceRange is None:
        return 0, count - 1
    k0, k1 = sorted(int(round(k)) for k in sliceRange)
    k0, k1 = max(k0, 0), min(k1, count - 1)
    if k0 > k1:
        raise InputError(f"Slice range {sliceRange} lies outside the volume (0..{count - 1}) along axis {axis}.")
    return k0, k1


def _walk(walker: SliceWalker, seedIndex, seedMask, seedLogits, direction, last, progress=None, progressBase=0.0):
    """Propagate from seedIndex toward `last` (inclusive); fills walker.result; returns the stop reason."""
    settings, result = walker.settings, walker.result
    previousMask, previousLogits = seedMask, seedLogits
    k, added = seedIndex + direction, 0
    total = max(abs(last - seedIndex), 1)
    # Never fetch embeddings past the user's slice limit.
    fetchLast = last if settings.maxSlices is None else seedIndex + direction * min(abs(last - seedIndex), settings.maxSlices)
    while (last - k) * direction >= 0:
        if walker.cancel is not None:
            walker.cancel.raiseIfCancelled()
        if settings.maxSlices is not None and added >= settings.maxSlices:
            return STOP_MAX_SLICES
        decoded, reason = walker.step(k, direction, fetchLast, previousMask, previousLogits)
        if reason is not None:
            return reason
        result.keep(k, decoded, walker.service)
        previousMask, previousLogits = decoded.mask, decoded.lowResLogits
        added += 1
        reportProgress(progress, progressBase + 0.5 * added / total, f"Propagating: slice {k}")
        k += direction
    return STOP_RANGE_END


def propagate(service, source, axis: int, seedSliceIndex: int, seedMaskImage, settings: Optional[PropagationSettings] = None,
              sliceRange=None, progress=None, cancel=None, seedScore: float = 1.0, seedLowResLogits=None,
              clipXyxy=None) -> PropagationResult:
    """Propagate a mask from one slice in both directions until a stop rule fires.

    service: an EmbeddingService (or an Engine, wrapped in one). source: a
    SliceSource. axis: 0/1/2 (I/J/K). seedMaskImage: bool (H, W) slice image
    mask on slice seedSliceIndex (kept as is). sliceRange: (k0, k1) inclusive
    native slice indices propagation may not leave (None = whole volume).
    clipXyxy: optional box every prompt box is clipped to (a 3D ROI's in-plane
    box). seedScore, seedLowResLogits: the seed decode's score and logits;
    without logits (a painted or imported seed mask) an engine that offers
    ``priorFromMask(embedding, mask)`` (GrowCut) makes them from the mask.
    progress(fraction, text), cancel: CancelToken (CancelledError).
    Raises InputError for an empty seed mask or a seed outside the range.
    """
    settings = settings or PropagationSettings()
    service = asService(service)
    k0, k1 = checkedRange(source, axis, sliceRange)
    seedMask = np.asarray(seedMaskImage, dtype=bool)
    if seedMask.shape != tuple(source.imageShape(axis)):
        raise InputError(f"Seed mask shape {seedMask.shape} does not match the slice image {source.imageShape(axis)}.")
    if not seedMask.any():
        raise InputError("The seed slice has an empty mask: segment the object on one slice first.")
    if not k0 <= seedSliceIndex <= k1:
        raise InputError(f"Seed slice {seedSliceIndex} lies outside the slice range {k0}..{k1}.")
    result = PropagationResult(axis=axis, sliceRange=(k0, k1), clipXyxy=clipXyxy)
    result.keep(seedSliceIndex, DecodeResult(seedMask, float(seedScore), seedLowResLogits), service)
    if seedLowResLogits is None and settings.useLowResMask:
        seedLowResLogits = _priorFromMask(service, source, axis, seedSliceIndex, seedMask)
    walker = SliceWalker(service, source, axis, settings, result, clipXyxy, cancel)
    result.stopReasons["up"] = _walk(walker, seedSliceIndex, seedMask, seedLowResLogits, +1, k1, progress, 0.0)
    result.stopReasons["down"] = _walk(walker, seedSliceIndex, seedMask, seedLowResLogits, -1, k0, progress, 0.5)
    reportProgress(progress, 1.0, f"Propagated to {len(result.masks)} slices")
    return result


def propagateBox3d(service, source, axis: int, boxXyxy, sliceRange, settings: Optional[PropagationSettings] = None,
                   progress=None, cancel=None, pointsXy=None, pointLabels=None) -> PropagationResult:
    """The MedSAM 3D box protocol: segment the middle slice of [k0, k1] with the box, propagate within [k0, k1].

    boxXyxy: the ROI's in-plane box in slice image pixels; every propagated
    prompt box is also clipped to it. sliceRange: (k0, k1) inclusive native
    slice indices (a continuous range from boxIjkToImage is rounded).
    pointsXy/pointLabels: optional clicks on the middle slice. Raises
    PromptError when the middle slice gives an empty mask.
    """
    settings = settings or PropagationSettings()
    service = asService(service)
    k0, k1 = checkedRange(source, axis, sliceRange)
    middle = (k0 + k1) // 2
    embedding = service.embedding(source, axis, middle)
    prompts = Prompts(boxXyxy=tuple(boxXyxy), pointsXy=np.zeros((0, 2)) if pointsXy is None else pointsXy,
                      pointLabels=np.zeros(0) if pointLabels is None else pointLabels)
    start = time.perf_counter()
    decoded = decodeWith(service, embedding, prompts)
    decodeTime = time.perf_counter() - start
    if not decoded.mask.any():
        raise PromptError(f"Nothing was segmented on slice {middle} inside the box: draw the box around the object.")
    result = propagate(service, source, axis, middle, decoded.mask, settings, (k0, k1), progress, cancel,
                       seedScore=decoded.score, seedLowResLogits=decoded.lowResLogits, clipXyxy=prompts.boxXyxy)
    result.timings["decode"] += decodeTime
    return result


def correctSlice(service, source, axis: int, previousResult: PropagationResult, sliceIndex: int, prompts: Prompts,
                 settings: Optional[PropagationSettings] = None, progress=None, cancel=None,
                 anchoredSlices=()) -> PropagationResult:
    """Fix one slice of a 3D result with points, then re-propagate outwards only as far as the result changes.

    prompts: the user's points on slice sliceIndex (image pixels: all of that
    slice's clicks, see constraints.AnnotationSession.promptsOnSlice); without
    a box, the current mask's box on that slice (enlarged by marginMm) is added,
    or, where the slice has no mask yet, the result's clip box (a 3D ROI's).
    The previous mask refines: engines with ``priorFromMask`` (GrowCut) get the
    current mask as previousLowResLogits, SAM-family engines the logits kept
    for that slice (PropagationResult.logits).

    The rule that keeps a fix local: each re-propagated slice is prompted with
    the box of the new neighbouring mask joined with its old mask, and each
    direction stops (a) before any slice in ``anchoredSlices`` (slices the user
    clicked on or accepted: never replaced), (b) at the first slice whose new
    mask has IoU > settings.changeIou with the old one (old masks are kept from
    there on), (c) at a stop rule (older masks beyond are kept), or (d) at the
    previous result's slice range. Propagated boxes are clipped to
    previousResult.clipXyxy. Embeddings come from the service's cache: nothing
    cached is re-encoded. Returns a new PropagationResult; previousResult is not modified.
    """
    settings = settings or PropagationSettings()
    service = asService(service)
    k0, k1 = previousResult.sliceRange or checkedRange(source, axis, None)
    if not k0 <= sliceIndex <= k1:
        raise InputError(f"Slice {sliceIndex} lies outside the result's slice range {k0}..{k1}.")
    result = PropagationResult(axis=axis, masks=dict(previousResult.masks), scores=dict(previousResult.scores),
                               sliceRange=(k0, k1), clipXyxy=previousResult.clipXyxy, logits=dict(previousResult.logits))
    oldMask = previousResult.masks.get(sliceIndex)
    hasOld = oldMask is not None and oldMask.any()
    box = prompts.boxXyxy
    if box is None:
        box = enlargedBox(oldMask, settings.marginMm / source.pixelSpacing(axis), result.clipXyxy) if hasOld else result.clipXyxy
    embedding = service.embedding(source, axis, sliceIndex)
    prior = prompts.previousLowResLogits
    if prior is None and hasOld and settings.useLowResMask:
        # The current mask is what the clicks correct: start from it.
        prior = _priorFromMask(service, source, axis, sliceIndex, oldMask)
        if prior is None and sliceIndex in previousResult.logits:
            prior = np.asarray(previousResult.logits[sliceIndex], dtype=np.float32)
    prompts = Prompts(boxXyxy=box, pointsXy=prompts.pointsXy, pointLabels=prompts.pointLabels, previousLowResLogits=prior)
    start = time.perf_counter()
    decoded = decodeWith(service, embedding, prompts)
    result.timings["decode"] += time.perf_counter() - start
    result.keep(sliceIndex, decoded, service)
    walker = SliceWalker(service, source, axis, settings, result, result.clipXyxy, cancel)
    anchors = {int(k) for k in anchoredSlices} - {int(sliceIndex)}
    for name, direction, last in (("up", +1, k1), ("down", -1, k0)):
        result.stopReasons[name] = _rewalk(walker, previousResult, sliceIndex, decoded, direction, last, anchors)
    reportProgress(progress, 1.0, "Correction propagated")
    return result


def _rewalk(walker: SliceWalker, previousResult, sliceIndex, decoded, direction, last, anchors=frozenset()) -> str:
    """Re-propagate from a corrected slice until the new masks match the old ones or an anchored slice is next."""
    settings, result = walker.settings, walker.result
    previousMask, previousLogits = decoded.mask, decoded.lowResLogits
    if not previousMask.any():
        # The user removed the object here: the slices beyond no longer connect to it.
        return STOP_VANISHED
    k = sliceIndex + direction
    while (last - k) * direction >= 0:
        if walker.cancel is not None:
            walker.cancel.raiseIfCancelled()
        if k in anchors:
            return STOP_ANCHORED
        old = previousResult.masks.get(k)
        new, reason = walker.step(k, direction, k, previousMask, previousLogits, boxHint=old)
        if reason is not None:
            return reason
        result.keep(k, new, walker.service)
        if old is not None and maskIou(new.mask, old) > settings.changeIou:
            return STOP_UNCHANGED
        previousMask, previousLogits = new.mask, new.lowResLogits
        k += direction
    return STOP_RANGE_END
