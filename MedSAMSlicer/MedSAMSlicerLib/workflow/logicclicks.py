"""How MedSAMLogic keeps the clicks of the segment being built (constraints.AnnotationSession) and uses them.

A mixin of MedSAMLogic (logic.py), kept apart so each file holds one concern.
The point markups are the clicks: before every propagation or correction the
session is synchronised with them (new points appended in order, deleted or
moved ones dropped), so every click (any slice, any view) is used by every
later re-propagation. Accepted slices are also the keys of a fill between
them (keyslicefill.py). A 3D box with an engine that segments natively in 3D
(the weight-free GrowCut) is segmented that way (refinement.BoxRefinement),
and the next click updates that result incrementally. No Qt.
"""

from ..core.errors import InputError, MedSAMError
from . import logicchecks as checks
from .constraints import AnnotationSession, sliceOf
from .logicjobs import CorrectionJob, VolumeJob
from .refinement import BoxRefinement


class ClickSessionMixin:
    """Session bookkeeping for MedSAMLogic (uses its attributes: session, nativeVolume, source, axis...)."""

    def acceptSlices(self, sliceIndices=None):
        """Declare slices of the preview right (along the current axis): no later re-propagation replaces them.

        sliceIndices: slice indices along the current axis; None takes the
        slice shown in the slice view (setSliceNode). Clicked slices are
        anchored too, without this call. Each slice keeps the mask it shows now
        (the preview's, else the segment's) as its key for a fill, even when a
        later preview of another slice no longer shows it. Returns the accepted
        slices (sorted). Raises InputError without a volume or a slice to accept.
        """
        from ..mrml.volumegeometry import sliceIndexFromSliceNode
        from .keyslicefill import shownNativeMask

        self._requireVolume()
        if sliceIndices is None:
            if self.sliceNode is None:
                raise InputError("No slice to accept: give the slice indices or set the slice view (setSliceNode).")
            sliceIndices = [sliceIndexFromSliceNode(self.volumeNode, self.axis, self.sliceNode)]
        count = self.source.sliceCount(self.axis)
        indices = [int(k) for k in sliceIndices]
        if any(not 0 <= k < count for k in indices):
            raise InputError(f"Slices {indices} are not all inside the volume (0..{count - 1}) along {'IJK'[self.axis]}.")
        shown, segment = {}, None
        for k in indices:
            mask = shownNativeMask(self.source, self.axis, k, self.lastResult)
            if mask is None:  # read the segment only when the preview shows nothing there
                segment = self._segmentMask() if segment is None else segment
                mask = shownNativeMask(self.source, self.axis, k, None, segment)
            if mask is not None:
                shown[k] = mask
        self.session.accept(self.axis, indices, shown)
        return sorted(self.session.acceptedSlices(self.axis))

    def prepareFill(self, settings=None):
        """Main-thread snapshot for filling the preview between the accepted slices: returns a FillJob (run it
        anywhere, then showResult). Keys: the session's accepted slices along the current axis, each with the
        preview's mask there, else the mask it showed when accepted, else the segment's
        (keyslicefill.keySliceMasks). Raises InputError without a volume, with fewer than two accepted slices,
        or one that shows no mask."""
        from .keyslicefill import FillJob, keySliceMasks
        from .propagation import PropagationSettings

        checks.requireInstance(settings, PropagationSettings, "propagation settings")
        service = self._ensureService()
        session, _, _ = self._syncedSession()
        keyMasks = keySliceMasks(self.source, self.axis, session.acceptedSlices(self.axis), self.lastResult,
                                 self._segmentMask(), session.acceptedMasks(self.axis))
        self.session = session
        return FillJob(service, self.source, self.axis, keyMasks, self.lastResult, session, self.postprocess,
                       settings if settings is not None else self.propagationSettings)

    def fillBetweenKeySlices(self, settings=None, cancel=None):
        """Fill the slices between the accepted slices (acceptSlices) along the current axis, each keeping the
        mask it shows (the preview's, else the segment's), through the engine's memory for SAM 2-family
        models; shows the result as the preview (the segment is untouched until apply). Synchronous
        prepareFill + run + showResult; returns the PropagationResult. ``cancel``: a CancelToken."""
        checks.requireCancelToken(cancel)
        result = self.prepareFill(settings).run(self.progress.emit, cancel)
        self.showResult(result)
        return result.propagation

    def _segmentMask(self):
        """The selected segment as bool (K, J, I) on the volume's grid, or None when none is selected."""
        from ..mrml.segmentwriter import segmentMaskKji

        if self.segmentationNode is None or self.segmentId is None:
            return None
        return segmentMaskKji(self.segmentationNode, self.segmentId, self.volumeNode)

    def _syncedSession(self):
        """(a snapshot of the session synchronised with the point markups, added clicks, removed clicks)."""
        from ..mrml.markupprompts import pointsFromMarkups
        from ..mrml.volumegeometry import rasToIjk

        pointsRas, labels = pointsFromMarkups(self.positiveNode, self.negativeNode)
        pointsIjk = rasToIjk(self.volumeNode, pointsRas) if len(pointsRas) else pointsRas
        session = self.session.snapshot()
        added, removed = session.sync(pointsIjk, labels)
        return session, added, removed

    def _sessionPromptSet(self, sliceIndex=None):
        """The prompts of the seed slice; with points on several slices (clicks of a session), the box with the
        points of its own slice only (the others are applied as corrections after propagating)."""
        from ..mrml.markupprompts import promptsFromMarkups

        try:
            return self._promptSet(sliceIndex)
        except MedSAMError:
            roi = self.roiNode if self.roiNode is not None and self.roiNode.GetNumberOfControlPoints() > 0 else None
            if roi is None or (not self.session.clicks and not self._hasPoints()):
                raise
        promptSet = promptsFromMarkups(self.volumeNode, self.source, self.axis, roi, sliceIndex=sliceIndex)
        session, _, _ = self._syncedSession()
        promptSet.prompts = session.promptsOnSlice(self.source, self.axis, promptSet.sliceIndex, promptSet.prompts.boxXyxy)
        return promptSet

    def _nativeVolumeJob(self, promptSet, session, settings):
        """A VolumeJob for a 3D box when the engine segments natively in 3D and nativeVolume is on, else None."""
        engine = self._ensureService().engine
        if not (self.nativeVolume and hasattr(engine, "volumeSegmenter") and promptSet.sliceRange is not None
                and promptSet.prompts.boxXyxy is not None):
            return None
        refinement = BoxRefinement(self.service, self.source, self.axis, promptSet.prompts.boxXyxy,
                                   promptSet.sliceRange, settings, native=True)
        return VolumeJob(refinement, session, self.postprocess)

    def _sessionCorrectionJob(self, previous, settings):
        """The job that brings a volume preview in line with the point markups (see prepareCorrection)."""
        session, added, removed = self._syncedSession()
        if previous.refinement is not None:
            refinement = previous.refinement
            promptSet = self._boxPromptSet()
            if promptSet is not None and (promptSet.prompts.boxXyxy != refinement.boxXyxy
                                          or promptSet.sliceRange != refinement.sliceRange):
                refinement = BoxRefinement(self.service, self.source, self.axis, promptSet.prompts.boxXyxy,
                                           promptSet.sliceRange, settings, native=True)  # the box was moved
            job = VolumeJob(refinement, session, self.postprocess)
        else:
            k0, k1 = previous.propagation.sliceRange or (0, self.source.sliceCount(self.axis) - 1)
            outside = sorted({sliceOf(c, self.axis) for c in added} - set(range(k0, k1 + 1)))
            if outside:
                raise InputError(f"The points are on slice(s) {outside}, outside the propagated slices {k0}..{k1}.")
            job = CorrectionJob(self._ensureService(), self.source, self.axis, previous, session, added,
                                restart=bool(removed), postprocess=self.postprocess, settings=settings)
        self.session = session
        return job

    def _boxPromptSet(self):
        """The ROI's prompt set (box, slice range) without points, or None without an ROI."""
        from ..mrml.markupprompts import promptsFromMarkups

        if self.roiNode is None or self.roiNode.GetNumberOfControlPoints() == 0:
            return None
        return promptsFromMarkups(self.volumeNode, self.source, self.axis, self.roiNode)

    def _hasPoints(self):
        from ..mrml.markupprompts import pointsFromMarkups

        return len(pointsFromMarkups(self.positiveNode, self.negativeNode)[0]) > 0

    def _resetSession(self):
        """A new segment begins: forget clicks' history and accepted slices."""
        self.session = AnnotationSession()
