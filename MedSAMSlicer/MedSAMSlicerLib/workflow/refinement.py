"""The segment being built from a 3D box, brought in line with every click of a session after each click.

Two ways to compute it, chosen by the engine:

- **native 3D** (engines with ``volumeSegmenter``: the weight-free GrowCut):
  the box seeds a 3D segmentation and every click seeds it too; a new click is
  an incremental update (engines/growcut3d.py), not a re-run.
- **propagation** (SAM family, or GrowCut with native=False): MedSAM's 3D box
  protocol (the middle slice with the in-plane box, propagated within the
  box's slices, workflow/propagation.py propagateBox3d; SAM 2-family engines
  with their memory, memorypropagation.py); then every clicked
  slice is re-segmented with all of its clicks and re-propagated locally
  (``applyClicks``), never replacing an anchored slice.

In both, accepted slices keep their mask, and every click's voxel keeps its
label (constraints.AnnotationSession.enforce). MRML-free: the Logic's jobs and
the simulated user both drive a BoxRefinement, so they run the same code.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.errors import InputError
from ..core.progress import reportProgress
from ..engines.base import VolumeClick
from .constraints import AnnotationSession, sliceOf
from .memorypropagation import correctWithMemory, propagateBox3dWithMemory, usesMemoryPropagation
from .propagation import PropagationResult, PropagationSettings, asService, correctSlice, propagateBox3d


class MappedVolume:
    """A SliceSource's voxels as float32 in [0, 1] (its intensity policy applied; RGB: channel mean), read block by block.

    Only ``shape``, ``ndim`` and slicing: a 3D engine maps the block it needs,
    never the whole volume.
    """

    def __init__(self, source):
        self.source = source
        self.shape = source.shapeKji
        self.ndim = 3

    def __getitem__(self, index) -> np.ndarray:
        mapped = self.source.resolvedPolicy.apply(self.source.voxelsKji[index])
        return mapped.mean(axis=-1) if self.source.isRgb else mapped


@dataclass
class RefinementResult:
    """What BoxRefinement.run gives: the mask and how it was made.

    maskKji: bool (K, J, I). sliceIndices: the slices along the axis the
    result covers (apply replaces exactly these). propagation: the
    PropagationResult in propagation mode, else None. update: "full",
    "incremental" or "unchanged". timings: seconds {"compute", "total"}.
    """

    maskKji: np.ndarray
    sliceIndices: List[int]
    propagation: Optional[PropagationResult] = None
    update: str = "full"
    timings: Dict[str, float] = field(default_factory=dict)


def applyClicks(service, source, axis: int, result: PropagationResult, session: AnnotationSession,
                clicks: Sequence[VolumeClick], settings: Optional[PropagationSettings] = None,
                progress=None, cancel=None) -> PropagationResult:
    """Re-segment every slice the given clicks lie on, with all of that slice's clicks, and re-propagate locally.

    Slices are taken in the order of their first click in ``clicks``; each is
    corrected with correctSlice, whose re-propagation stops at the session's
    anchored slices. Clicks off the result's slice range are kept (enforced)
    but start no correction. Returns the new result with the clicks enforced
    on the slice masks.
    """
    k0, k1 = result.sliceRange or (0, source.sliceCount(axis) - 1)
    order = []
    for click in clicks:
        k = sliceOf(click, axis)
        if k0 <= k <= k1 and k not in order:
            order.append(k)
    # SAM 2 family: each clicked slice becomes a conditioning slice of the model's memory
    correct = correctWithMemory if usesMemoryPropagation(service) else correctSlice
    for index, k in enumerate(order):
        prompts = session.promptsOnSlice(source, axis, k)
        result = correct(service, source, axis, result, k, prompts, settings, cancel=cancel,
                         anchoredSlices=session.anchoredSlices(source, axis))
        reportProgress(progress, (index + 1) / len(order), f"Corrected slice {k}")
    result.masks = session.enforceOnSlices(result.masks, source, axis)
    return result


class BoxRefinement:
    """The segmentation of one 3D box, recomputed from the box and a session's clicks (see the module docstring).

    service: EmbeddingService (or Engine). source: SliceSource. axis: the slice
    axis. boxXyxy: the box in slice image pixels; sliceRange: (k0, k1)
    inclusive. native: use the engine's native 3D mode when it has one.
    Raises InputError for a slice range off the volume.
    """

    def __init__(self, service, source, axis: int, boxXyxy, sliceRange, settings: Optional[PropagationSettings] = None,
                 native: bool = True):
        self.service = asService(service)
        self.source, self.axis, self.settings = source, int(axis), settings
        self.boxXyxy = tuple(float(v) for v in boxXyxy)
        k0, k1 = sorted(int(round(k)) for k in sliceRange)
        count = source.sliceCount(axis)
        if k1 < 0 or k0 >= count:
            raise InputError(f"Slice range {sliceRange} lies outside the volume (0..{count - 1}) along axis {axis}.")
        self.sliceRange = (max(k0, 0), min(k1, count - 1))
        self.native = bool(native) and hasattr(self.service.engine, "volumeSegmenter")
        self.mode = "native3d" if self.native else "propagation"
        self._grower = None
        self._propagation: Optional[PropagationResult] = None
        self._applied: List[VolumeClick] = []
        self._lastMask: Optional[np.ndarray] = None
        self._lock = threading.Lock()
        #: How the last run computed: "full", "incremental" or "unchanged" ("none" before the first run).
        self.lastUpdate = "none"

    @property
    def boxIjk(self):
        """The box as two opposite IJK corners ((i0, j0, k0), (i1, j1, k1)), continuous voxel coordinates."""
        x0, y0, x1, y1 = self.boxXyxy
        low = self.source.imageToIjk(self.axis, self.sliceRange[0], [(x0, y0)])[0]
        high = self.source.imageToIjk(self.axis, self.sliceRange[1], [(x1, y1)])[0]
        return tuple(np.minimum(low, high)), tuple(np.maximum(low, high))

    def run(self, session: AnnotationSession, progress=None, cancel=None) -> RefinementResult:
        """The mask for the box and every click of ``session`` (pass a snapshot when the session may change meanwhile).

        Incremental where the session only gained clicks since the last run;
        from scratch otherwise. Safe in a worker thread (one run at a time).
        """
        with self._lock:
            started = time.perf_counter()
            if cancel is not None:
                cancel.raiseIfCancelled()
            if self.native:
                mask, sliceIndices, update = self._runNative(session)
                propagation = None
            else:
                propagation, update = self._runPropagation(session, progress, cancel)
                mask, sliceIndices = propagation.toVolumeMask(self.source, self.axis), sorted(propagation.masks)
            mask = self._keepAccepted(mask, session)
            mask = session.enforce(mask)
            self._lastMask, self.lastUpdate = mask, update
            elapsed = time.perf_counter() - started
            reportProgress(progress, 1.0, f"Segmented the box ({self.mode}, {update})")
            return RefinementResult(mask, sliceIndices, propagation, update, {"compute": elapsed, "total": elapsed})

    def _runNative(self, session):
        if self._grower is None:
            self._grower = self.service.engine.volumeSegmenter(MappedVolume(self.source), self.boxIjk, self.source.spacingIjk)
        mask = self._grower.update(session.clicks)
        arrayAxis = {2: 0, 1: 1, 0: 2}[self.axis]
        low, high = self._grower.blockBounds[arrayAxis]
        return mask, list(range(low, high + 1)), self._grower.lastUpdate

    def _runPropagation(self, session, progress, cancel):
        clicks = list(session.clicks)
        appended = self._propagation is not None and clicks[:len(self._applied)] == self._applied
        if appended and len(clicks) == len(self._applied):
            return self._propagation, "unchanged"
        result = self._propagation if appended else None
        new = clicks[len(self._applied):] if appended else clicks
        if result is None:
            middle = (self.sliceRange[0] + self.sliceRange[1]) // 2
            points = session.promptsOnSlice(self.source, self.axis, middle)
            propagateBox = propagateBox3dWithMemory if usesMemoryPropagation(self.service) else propagateBox3d
            result = propagateBox(self.service, self.source, self.axis, self.boxXyxy, self.sliceRange, self.settings,
                                  progress, cancel, pointsXy=points.pointsXy, pointLabels=points.pointLabels)
            new = [click for click in clicks if sliceOf(click, self.axis) != middle]
        result = applyClicks(self.service, self.source, self.axis, result, session, new, self.settings, cancel=cancel)
        self._propagation, self._applied = result, clicks
        return result, "incremental" if appended else "full"

    def _keepAccepted(self, mask, session):
        """Accepted slices keep the mask they had when accepted (the last result's)."""
        accepted = session.acceptedSlices(self.axis)
        if self._lastMask is None or not accepted:
            return mask
        mask = np.array(mask, copy=True)
        for k in accepted:
            if 0 <= k < self.source.sliceCount(self.axis):
                selector = self.source.sliceSelector(self.axis, k)
                mask[selector] = self._lastMask[selector]
        return mask
