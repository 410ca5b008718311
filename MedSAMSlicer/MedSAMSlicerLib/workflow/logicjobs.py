"""The compute step of the Logic's long operations: safe to run in a worker thread.

A job is made on the main thread by MedSAMLogic.prepareSegmentSlice() or
MedSAMLogic.preparePropagation(): it holds a snapshot of everything it needs
(a SliceSource over the volume's voxels, prompts already mapped to slice pixels,
the embedding service, settings) and touches no MRML node. ``job.run(progress,
cancel)`` encodes and decodes and returns a SegmentationResult (masks on the
volume's voxel grid, KJI); MedSAMLogic.showResult(result) then shows it, on the
main thread. No `slicer`, no Qt here.
"""

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..engines.base import DecodeResult
from ..core.errors import PromptError
from ..core.progress import CancelToken, ProgressCallback, reportProgress
from ..mrml.segmentwriter import maskBoundingExtent
from .constraints import sliceOf
from .refinement import applyClicks


@dataclass
class PostprocessOptions:
    """Clean-up of a mask before it is shown; both off by default (the model's mask, as is).

    largestComponent: keep only the largest connected component (3D for a
    propagated mask, 2D for a slice). fillHoles: fill enclosed holes.
    """

    largestComponent: bool = False
    fillHoles: bool = False

    @property
    def active(self) -> bool:
        """True when any clean-up is switched on."""
        return self.largestComponent or self.fillHoles


@dataclass
class SegmentationResult:
    """What a job produced, for MedSAMLogic.showResult.

    kind: "slice" or "volume". axis: the IJK axis slices cut across.
    sliceIndices: the slices along ``axis`` the result covers (the preview
    replaces the segment on exactly these with apply's default mode).
    maskKji: bool (K, J, I) on the volume's voxel grid. extentIjk: inclusive
    (i0, i1, j0, j1, k0, k1) holding every True voxel, or None when empty.
    signature: the SliceSource signature it was computed from (a result for a
    volume that changed since is refused). decode: the seed slice's DecodeResult.
    propagation: the PropagationResult for kind "volume" made by propagation.
    origin: the PropagationResult before any click (what a correction starts
    over from when a click is removed). refinement: the BoxRefinement of a
    3D box segmented natively in 3D (its state answers the next click
    incrementally). session: the AnnotationSession snapshot the result honours.
    timings: seconds {"encode", "decode", "total"} spent in run().
    """

    kind: str
    axis: int
    sliceIndices: List[int]
    maskKji: np.ndarray
    extentIjk: Optional[Tuple[int, int, int, int, int, int]]
    signature: str
    decode: Optional[DecodeResult] = None
    propagation: object = None
    timings: Dict[str, float] = field(default_factory=dict)
    origin: object = None
    refinement: object = None
    session: object = None


def _cleanUp(mask: np.ndarray, options: PostprocessOptions, axis: int = 2) -> np.ndarray:
    """Apply the chosen clean-ups to a 2D slice image mask or a 3D KJI mask (holes filled slice by slice along ``axis``)."""
    if not options.active or not mask.any():
        return mask
    from ..imaging import postprocess

    if options.fillHoles:
        mask = postprocess.fillHoles(mask, perSlice=mask.ndim == 3, axis=axis)
    if options.largestComponent:
        mask = postprocess.keepLargestComponent(mask)
    return np.asarray(mask, dtype=bool)


class _Job:
    """Shared parts of the jobs: the snapshot and timing."""

    def __init__(self, service, source, axis: int, promptSet, postprocess: PostprocessOptions):
        self.service = service
        self.source = source
        self.axis = int(axis)
        self.promptSet = promptSet
        self.postprocess = postprocess
        # Hash the voxels now, on the calling (main) thread, while they are the ones the prompts were drawn on.
        self.signature = source.signature

    def _seed(self, timings, cancel: Optional[CancelToken]):
        """(DecodeResult, clean image mask) of the prompts on the prompt slice."""
        if cancel is not None:
            cancel.raiseIfCancelled()
        start = time.perf_counter()
        embedding = self.service.embedding(self.source, self.axis, self.promptSet.sliceIndex)
        timings["encode"] += time.perf_counter() - start
        start = time.perf_counter()
        decoded = self.service.decode(embedding, self.promptSet.prompts)
        timings["decode"] += time.perf_counter() - start
        return decoded, _cleanUp(np.asarray(decoded.mask, dtype=bool), self.postprocess)


class SliceJob(_Job):
    """Segment one slice from its prompts: encode it (or take it from the cache) and decode."""

    def run(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> SegmentationResult:
        """Encode (cached) and decode the prompt slice; returns a "slice" SegmentationResult.

        Safe in a worker thread. Raises CancelledError when ``cancel`` is set
        before decoding, PromptError/InputError from the engine.
        """
        started = time.perf_counter()
        timings = {"encode": 0.0, "decode": 0.0}
        reportProgress(progress, 0.0, f"Segmenting slice {self.promptSet.sliceIndex}")
        decoded, maskImage = self._seed(timings, cancel)
        k = self.promptSet.sliceIndex
        native = self.source.imageMaskToNative(self.axis, maskImage)
        maskKji = np.zeros(self.source.shapeKji, bool)
        selector = self.source.sliceSelector(self.axis, k)
        maskKji[selector] = native
        extent = None
        if native.any():
            rows, cols = np.flatnonzero(native.any(axis=1)), np.flatnonzero(native.any(axis=0))
            extent = _sliceExtent(self.axis, k, (rows[0], rows[-1]), (cols[0], cols[-1]))
        timings["total"] = time.perf_counter() - started
        reportProgress(progress, 1.0, "Slice segmented")
        return SegmentationResult("slice", self.axis, [k], maskKji, extent, self.signature, decoded, None, timings)


def _sliceExtent(axis: int, k: int, rowRange, colRange):
    """IJK extent of a native-slice box (rows/columns per the axis table in docs/developer.md)."""
    rowAxis, colAxis = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[axis]
    extent = [0] * 6
    extent[2 * axis], extent[2 * axis + 1] = k, k
    extent[2 * rowAxis], extent[2 * rowAxis + 1] = int(rowRange[0]), int(rowRange[1])
    extent[2 * colAxis], extent[2 * colAxis + 1] = int(colRange[0]), int(colRange[1])
    return tuple(extent)


class PropagationJob(_Job):
    """Segment the prompt slice, then propagate the mask through ``sliceRange``: with the engine's memory for
    SAM 2-family engines (memorypropagation.py), else slice by slice from the previous mask's box."""

    def __init__(self, service, source, axis, promptSet, postprocess, settings=None, sliceRange=None, session=None):
        super().__init__(service, source, axis, promptSet, postprocess)
        self.settings = settings
        self.sliceRange = sliceRange
        self.session = session  # clicks on other slices than the seed are applied after propagating

    def run(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> SegmentationResult:
        """Seed decode plus propagation; returns a "volume" SegmentationResult.

        Safe in a worker thread. Progress goes from 0 to 1 over the slices
        visited. Raises CancelledError when cancelled (nothing is shown or
        written), PromptError when the seed slice gives an empty mask.
        """
        from .memorypropagation import propagateWithMemory, usesMemoryPropagation
        from .propagation import PropagationSettings, propagate

        started = time.perf_counter()
        timings = {"encode": 0.0, "decode": 0.0}
        encodeBefore, decodeBefore = self.service.timings["encode"], self.service.timings["decode"]
        reportProgress(progress, 0.0, "Segmenting the seed slice")
        decoded, seedImage = self._seed(timings, cancel)
        if not seedImage.any():
            raise PromptError(f"The prompts give an empty mask on slice {self.promptSet.sliceIndex}: "
                              "adjust the box or points until the slice preview shows the object, then propagate.")
        settings = self.settings if self.settings is not None else PropagationSettings()
        # Inside a 3D box, every propagated prompt stays within the box (MedSAM's 3D box protocol).
        inBox = self.promptSet.sliceRange is not None and self.promptSet.prompts.boxXyxy is not None
        clipXyxy = self.promptSet.prompts.boxXyxy if inBox else None
        if usesMemoryPropagation(self.service):  # SAM 2 family: the engine's memory carries the mask
            result = propagateWithMemory(self.service, self.source, self.axis, self.promptSet.sliceIndex,
                                         self.promptSet.prompts, settings, sliceRange=self.sliceRange,
                                         progress=progress, cancel=cancel, clipXyxy=clipXyxy)
        else:
            result = propagate(self.service, self.source, self.axis, self.promptSet.sliceIndex, seedImage, settings,
                               sliceRange=self.sliceRange, progress=progress, cancel=cancel, seedScore=decoded.score,
                               seedLowResLogits=decoded.lowResLogits, clipXyxy=clipXyxy)
        if cancel is not None:
            cancel.raiseIfCancelled()
        origin = result
        if self.session is not None and self.session.clicks:
            others = [c for c in self.session.clicks if sliceOf(c, self.axis) != self.promptSet.sliceIndex]
            result = applyClicks(self.service, self.source, self.axis, result, self.session, others, settings, cancel=cancel)
        maskKji = resultVolumeMask(result, self.source, self.axis, self.postprocess, self.session)
        timings["encode"] = self.service.timings["encode"] - encodeBefore
        timings["decode"] = self.service.timings["decode"] - decodeBefore
        timings["total"] = time.perf_counter() - started
        reportProgress(progress, 1.0, f"Propagated over {len(result.masks)} slice(s)")
        return SegmentationResult("volume", self.axis, sorted(int(k) for k in result.masks), maskKji,
                                  maskBoundingExtent(maskKji), self.signature, decoded, result, timings,
                                  origin=origin, session=self.session)


def resultVolumeMask(result, source, axis, postprocess, session):
    """A PropagationResult as a cleaned-up KJI mask; the session's clicks enforced last (they outrank clean-up)."""
    maskKji = _cleanUp(np.asarray(result.toVolumeMask(source, axis), dtype=bool), postprocess, axis)
    return session.enforce(maskKji) if session is not None else maskKji


class CorrectionJob(_Job):
    """Apply a session's new clicks to a propagated (3D) result: each clicked slice is re-segmented with all of
    its clicks and re-propagated locally, never over an anchored slice (refinement.applyClicks)."""

    def __init__(self, service, source, axis, previous: SegmentationResult, session, newClicks, restart=False,
                 postprocess=None, settings=None):
        self.service, self.source, self.axis = service, source, int(axis)
        self.postprocess = postprocess if postprocess is not None else PostprocessOptions()
        self.signature = source.signature
        self.previous, self.session, self.newClicks = previous, session, list(newClicks)
        self.restart = restart  # a click was removed: start over from the result before any click
        self.settings = settings

    def run(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> SegmentationResult:
        """Returns a new "volume" SegmentationResult. Slices already encoded come from the cache
        (nothing is re-encoded). Safe in a worker thread; raises CancelledError when cancelled."""
        started = time.perf_counter()
        if cancel is not None:
            cancel.raiseIfCancelled()
        origin = self.previous.origin if self.previous.origin is not None else self.previous.propagation
        start = origin if self.restart else self.previous.propagation
        clicks = self.session.clicks if self.restart else self.newClicks
        result = applyClicks(self.service, self.source, self.axis, start, self.session, clicks, self.settings,
                             progress=progress, cancel=cancel)
        maskKji = resultVolumeMask(result, self.source, self.axis, self.postprocess, self.session)
        timings = dict(result.timings)
        timings["total"] = time.perf_counter() - started
        return SegmentationResult("volume", self.axis, sorted(int(k) for k in result.masks), maskKji,
                                  maskBoundingExtent(maskKji), self.signature, None, result, timings,
                                  origin=origin, session=self.session)


class VolumeJob:
    """Segment a 3D box natively in 3D with every click of a session (refinement.BoxRefinement, weight-free engine).

    The same BoxRefinement answers later clicks incrementally: pass it again
    with the updated session. Touches no MRML; safe in a worker thread.
    """

    def __init__(self, refinement, session, postprocess=None):
        self.refinement, self.session = refinement, session
        self.postprocess = postprocess if postprocess is not None else PostprocessOptions()
        self.axis = refinement.axis
        self.signature = refinement.source.signature

    def run(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> SegmentationResult:
        """Returns a "volume" SegmentationResult covering the box's slices (clean-up first, then the clicks enforced)."""
        outcome = self.refinement.run(self.session, progress, cancel)
        maskKji = _cleanUp(outcome.maskKji, self.postprocess, self.axis)
        maskKji = self.session.enforce(maskKji)
        return SegmentationResult("volume", self.axis, outcome.sliceIndices, maskKji, maskBoundingExtent(maskKji),
                                  self.signature, None, outcome.propagation, dict(outcome.timings),
                                  refinement=self.refinement, session=self.session)
