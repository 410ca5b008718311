"""MedSAMLogic: the Qt-free facade the widget, the command line and the Python console use.

Inputs are MRML nodes (a volume, a segmentation, ROI and point markups, a slice
view); outputs are a preview and edits of a segment with undo. Long operations
come in two forms:

- synchronous: ``segmentSlice()``, ``propagate()`` (console, CLI, tests);
- split, for a worker thread: ``job = logic.prepareSegmentSlice()`` or
  ``logic.preparePropagation()`` on the main thread (snapshots the MRML inputs),
  ``result = job.run(progress, cancel)`` anywhere (touches no MRML), then
  ``logic.showResult(result)`` on the main thread.

The Logic observes its volume (voxels, geometry, transform: cached embeddings
of the old content are dropped) and its prompt markups (the preview follows
them: debounced through ``scheduleCallback``, a decode on a cached slice).
Errors a user can cause raise MedSAMError subclasses. No Qt, no dialogs.
"""

import time
from typing import Callable, Optional

from ..core.errors import InputError, MedSAMError
from . import logicchecks as checks
from .constraints import AnnotationSession
from .logicclicks import ClickSessionMixin
from .logiccache import EmbeddingCacheMixin
from .logicjobs import PostprocessOptions, PropagationJob, SegmentationResult, SliceJob
from .logicobservers import DEBOUNCE_MS, MARKUP_EVENTS, VOLUME_EVENTS, ObservationMixin
from ..core.progress import Signal


class MedSAMLogic(ObservationMixin, ClickSessionMixin, EmbeddingCacheMixin):
    """Prompts on a volume -> preview -> segment, with undo; see docs/console.md for a session.

    scene: the vtkMRMLScene (slicer.mrmlScene when None).
    Signals: progress(fraction, text), status(text), previewChanged().
    Attributes the caller may set: postprocess (PostprocessOptions, off by
    default), propagationSettings (PropagationSettings or None for defaults),
    autoUpdate (markup changes refresh the preview; default True),
    scheduleCallback (``f(delayMs, callable)``, e.g. qt.QTimer.singleShot, to
    debounce preview updates; None runs them at once), nativeVolume (a 3D box
    with an engine that segments natively in 3D, the weight-free GrowCut, is
    segmented in 3D rather than propagated slice by slice; default True).
    session: the AnnotationSession of the segment being built (its clicks are
    the point markups; see acceptSlices).
    """

    def __init__(self, scene=None):
        import slicer

        self.scene = scene if scene is not None else slicer.mrmlScene
        self.progress = Signal()
        self.status = Signal()
        self.previewChanged = Signal()
        self.postprocess = PostprocessOptions()
        self.propagationSettings = None
        self.autoUpdate = True
        self.nativeVolume = True
        self.session = AnnotationSession()
        self.scheduleCallback: Optional[Callable] = None
        self.debounceMs = DEBOUNCE_MS
        self.volumeNode = None
        self.policy = None
        self.source = None
        self.engine = None
        self.service = None
        self._cache = None
        self.segmentationNode = None
        self.segmentId = None
        self.segmentEditorNode = None
        self._externalUndoSaver = None
        self.writer = None
        self.roiNode = self.positiveNode = self.negativeNode = None
        self.axis = 2
        self.sliceNode = None
        self.lastResult: Optional[SegmentationResult] = None
        self.lastError: Optional[MedSAMError] = None
        self.timings = {"encode": 0.0, "decode": 0.0, "write": 0.0, "total": 0.0}
        self._volumeObservers = []
        self._markupObservers = []
        self._updatePending = False
        self._updateScheduled = False
        self._volumeStateKey = None
        self._sceneObservers = self._observe(self.scene, ("EndCloseEvent",), self._onSceneEndClose)

    # ------------------------------------------------------------------ inputs

    def setVolume(self, volumeNode, policy=None):
        """Segment ``volumeNode`` (scalar or RGB vector volume) with intensity ``policy`` (IntensityPolicy; auto when None).

        Observes the volume: when its voxels, geometry or transform change, the
        embeddings of its old content are dropped and the slices rebuilt. Clears
        the preview. Raises InputError for a node without voxels or an
        unsupported image, GeometryError for a non-linear parent transform.
        """
        from ..mrml.volumegeometry import sliceSourceFromVolume

        if volumeNode is None:
            raise InputError("No volume given: load or select a volume first.")
        checks.requireVolumeArguments(self.scene, volumeNode, policy)
        source = sliceSourceFromVolume(volumeNode, policy)
        self._removeObservers(self._volumeObservers)
        self._clearPreview()
        self._resetSession()
        self.volumeNode, self.policy, self.source = volumeNode, policy, source
        self._volumeStateKey = self._volumeState()
        self._volumeObservers = self._observe(volumeNode, VOLUME_EVENTS, self._onVolumeEvent)
        if self.writer is not None and self.writer.volumeNode is not volumeNode:
            self.writer.close()
            self.writer = None
        if self.segmentationNode is not None:
            self._ensureWriter()

    def setModel(self, name="auto", device="auto", checkpointPath=None, recipe=None):
        """Use the model ``name`` ("growcut", "medsam", "sam_vit_b", "medsam2", "sam2.1_hiera_t", "auto", or a
        checkpoint path) on ``device``; ``recipe`` chooses the preprocessing of a checkpoint file
        ("medsam", "sam", "medsam2", "sam2"; None: from the file).

        Builds the engine through engines.createEngine (loads weights: can take
        seconds). Raises CheckpointError / DependencyError / InputError with
        what to do. Returns the engine.
        """
        from ..models.enginefactory import createEngine

        checks.requireModelArguments(name, device, checkpointPath)
        checks.requireInstance(recipe, str, "preprocessing recipe")
        self.setEngine(createEngine(name, device=device, checkpointPath=checkpointPath, recipe=recipe))
        return self.engine

    def setEngine(self, engine):
        """Use ``engine`` (an Engine) from now on.

        The previous engine's prefetch worker is stopped and the engine let go
        (its weights leave GPU memory once nothing else holds them). The
        embedding cache is shared by all engines: its keys hold the model id,
        so switching back to a model finds the slices it already encoded.
        """
        from ..embeddings.cache import EmbeddingCache
        from ..embeddings.service import EmbeddingService

        if engine is self.engine:
            return
        checks.requireEngine(engine)
        if self._cache is None:
            self._cache = EmbeddingCache()
        if self.service is not None:
            self.service.close(timeout=1.0)
        self.engine, self.service = engine, EmbeddingService(engine, cache=self._cache)
        self.status.emit(f"Model: {getattr(engine, 'displayName', engine.modelId)}")

    def setSegmentation(self, segmentationNode=None, segmentId=None):
        """Write into ``segmentId`` of ``segmentationNode``; returns (segmentationNode, segmentId).

        None for the node creates a segmentation with the volume as reference
        geometry; None for the segment takes the first segment, or adds one.
        Raises InputError when no volume is set or the segment does not exist.
        """
        from ..mrml.segmentwriter import createSegmentationNode

        self._requireVolume()
        checks.requireNode(segmentationNode, ("vtkMRMLSegmentationNode",), "segmentation", self.scene)
        checks.requireInstance(segmentId, str, "segment ID")
        if segmentationNode is None:
            segmentationNode, created = createSegmentationNode(self.volumeNode)
            segmentId = segmentId or created
        segmentation = segmentationNode.GetSegmentation()
        if segmentId is None:
            segmentId = segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments() else segmentation.AddEmptySegment("")
        if segmentation.GetSegment(segmentId) is None:
            raise InputError(f"Segment '{segmentId}' is not in segmentation '{segmentationNode.GetName()}': pick an existing segment.")
        import slicer

        if not segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()):
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        changed = segmentationNode is not self.segmentationNode
        self.segmentationNode, self.segmentId = segmentationNode, segmentId
        writer = self._ensureWriter()
        if changed:
            writer.setSegmentationNode(segmentationNode)
        return segmentationNode, segmentId

    def setSegmentEditorNode(self, segmentEditorNode):
        """Take masking settings (editable area, overwrite other segments, intensity range) from this
        vtkMRMLSegmentEditorNode at every apply. None (the default): Slicer's own Segment Editor node,
        the scene's singleton tagged "SegmentEditor" (created as the Segment Editor creates it)."""
        checks.requireNode(segmentEditorNode, ("vtkMRMLSegmentEditorNode",), "segment editor node", self.scene)
        self.segmentEditorNode = segmentEditorNode

    def setExternalUndoSaver(self, saver):
        """Call ``saver(segmentationNode)`` just before each apply writes (None: no call).

        The Slicer module passes one that saves the Segment Editor widget's undo
        state, so the Segment Editor's Undo (Ctrl+Z) takes a MedSAM apply back.
        """
        self._externalUndoSaver = saver
        if self.writer is not None:
            self.writer.externalUndoSaver = saver

    def setPromptNodes(self, roiNode=None, positiveNode=None, negativeNode=None):
        """Prompt with this ROI (box) and these point markups (positive, negative); observed for changes.

        A change of any of them schedules a preview update (see scheduleCallback
        and processPendingUpdates) when autoUpdate is on.
        """
        checks.requirePromptNodes(self.scene, roiNode, positiveNode, negativeNode)
        self._removeObservers(self._markupObservers)
        self.roiNode, self.positiveNode, self.negativeNode = roiNode, positiveNode, negativeNode
        for node in (roiNode, positiveNode, negativeNode):
            if node is not None:
                self._markupObservers += self._observe(node, MARKUP_EVENTS, self._onMarkupEvent)

    def setAxis(self, axis):
        """Segment slices across IJK axis ``axis`` (0 = I, 1 = J, 2 = K); forgets any slice view."""
        self.axis, self.sliceNode = checks.requireAxis(axis), None

    def setSliceNode(self, sliceNode):
        """Segment in the plane of slice view ``sliceNode``: its axis now, its current slice inside a 3D box.

        Raises GeometryError when the view is oblique to the volume (the message says which views work).
        """
        from ..mrml.volumegeometry import axisFromSliceNode

        self._requireVolume()
        checks.requireNode(sliceNode, ("vtkMRMLSliceNode",), "slice view", self.scene, optional=False)
        self.axis = axisFromSliceNode(self.volumeNode, sliceNode)
        self.sliceNode = sliceNode

    # ------------------------------------------------------------------ segmenting

    def prepareSegmentSlice(self, sliceIndex=None) -> SliceJob:
        """Main-thread snapshot for segmenting one slice: returns a SliceJob (run it anywhere, then showResult).

        sliceIndex: slice along the current axis; by default the prompts' slice
        (inside a 3D box: the slice view's current slice). Raises PromptError
        when there are no usable prompts, InputError when no volume is set.
        """
        promptSet = self._promptSet(sliceIndex)
        return SliceJob(self._ensureService(), self.source, self.axis, promptSet, self.postprocess)

    def preparePropagation(self, settings=None, sliceRange=None) -> PropagationJob:
        """Main-thread snapshot for propagating from the prompt slice: returns a PropagationJob.

        settings: PropagationSettings (else logic.propagationSettings, else
        defaults). sliceRange: inclusive (k0, k1) along the axis; by default a 3D
        box's slices, else the whole volume. Every click of the session (the
        point markups, on any slice) is used: the seed slice's as its prompts,
        the others as corrections after propagating. A 3D box with the
        weight-free engine and no explicit sliceRange is segmented natively in
        3D (nativeVolume) and returns a VolumeJob.
        """
        from .propagation import PropagationSettings

        checks.requireInstance(settings, PropagationSettings, "propagation settings")
        promptSet = self._sessionPromptSet(None)
        sliceRange = checks.requireSliceRange(sliceRange, self.source.sliceCount(self.axis))
        settings = settings if settings is not None else self.propagationSettings
        session, _, _ = self._syncedSession()
        job = self._nativeVolumeJob(promptSet, session, settings) if sliceRange is None else None
        sliceRange = sliceRange if sliceRange is not None else promptSet.sliceRange
        if job is None:
            job = PropagationJob(self._ensureService(), self.source, self.axis, promptSet, self.postprocess,
                                 settings, sliceRange, session=session)
        self.session = session
        return job

    def prepareCorrection(self, settings=None):
        """Main-thread snapshot for fixing the 3D preview with clicks: returns a CorrectionJob or a VolumeJob.

        The session takes the point markups as its clicks (new ones appended,
        deleted ones dropped). For a propagated preview, every slice with a new
        click is re-segmented with all of its clicks and re-propagated outwards
        only as far as the result changes and never over a clicked or accepted
        slice, from cached embeddings; a removed click restarts from the result
        before any click. A natively 3D preview (weight-free engine, 3D box) is
        updated incrementally. Every click's voxel keeps its label. Raises
        InputError when the preview is not a 3D result or new points lie off it.
        """
        self._requireVolume()
        previous = self.lastResult
        if (previous is None or previous.kind != "volume" or previous.axis != self.axis
                or (previous.propagation is None and previous.refinement is None)):
            raise InputError("No propagated preview to correct in this view: propagate first, then click on a slice of it.")
        self._ensureService()
        return self._sessionCorrectionJob(previous, settings if settings is not None else self.propagationSettings)

    def prepareUpdate(self):
        """The job that refreshes the preview after the prompts changed: a CorrectionJob when the preview is a
        propagated result and points are placed on it, else a SliceJob. For a widget running jobs in a worker."""
        if self._correcting():
            return self.prepareCorrection()
        return self.prepareSegmentSlice()

    def correctSlice(self, settings=None):
        """Synchronous prepareCorrection + run + showResult; returns the new PropagationResult (None for a
        natively 3D preview: see previewMaskKji)."""
        result = self.prepareCorrection(settings).run(self.progress.emit)
        self.showResult(result)
        return result.propagation

    def showResult(self, result: SegmentationResult):
        """Show a job's result as the preview (main thread); it becomes what apply() writes.

        Raises InputError when the volume changed since the job was prepared
        (run it again).
        """
        if self.source is None or result.signature != self.source.signature:
            raise InputError("The volume changed while segmenting: the result was discarded; segment again.")
        started = time.perf_counter()
        self._ensureWriter().showPreview(result.maskKji if result.extentIjk is not None else None, result.extentIjk)
        self.lastResult = result
        written = time.perf_counter() - started
        for name in ("encode", "decode", "total"):
            self.timings[name] += result.timings.get(name, 0.0)
        self.timings["write"] += written
        self.timings["total"] += written
        self.previewChanged.emit()

    def segmentSlice(self, sliceIndex=None):
        """Segment one slice from the prompts and show it as the preview; returns the DecodeResult.

        Synchronous form of prepareSegmentSlice + run + showResult. Progress
        goes to logic.progress. Raises PromptError / InputError.
        """
        result = self.prepareSegmentSlice(sliceIndex).run(self.progress.emit)
        self.showResult(result)
        return result.decode

    def propagate(self, settings=None, sliceRange=None, cancel=None):
        """Segment the prompt slice and propagate through the volume; shows the 3D preview.

        Synchronous form of preparePropagation + run + showResult; returns the
        PropagationResult. ``cancel``: a CancelToken (CancelledError, nothing shown).
        """
        checks.requireCancelToken(cancel)
        result = self.preparePropagation(settings, sliceRange).run(self.progress.emit, cancel)
        self.showResult(result)
        return result.propagation

    @property
    def previewMaskKji(self):
        """The preview as bool (K, J, I) on the volume's grid, or None when there is none."""
        return self.lastResult.maskKji if self.lastResult is not None else None

    # ------------------------------------------------------------------ writing

    def apply(self, mode=None):
        """Write the preview into the selected segment, then clear the preview; returns the extent written.

        mode None (default): "replaceSlices" on the slices the preview covers,
        so each previewed slice of the segment becomes exactly what the preview
        shows and every other slice is kept (a re-segmented slice replaces a
        wrong one instead of being merged with it). "add", "remove", "set" as in
        the Segment Editor. Masking follows the segment editor node. A
        segmentation is created when none was set. Raises InputError when there
        is no preview.
        """
        self._requireVolume()
        if self.lastResult is None:
            raise InputError("Nothing to apply: segment a slice or propagate first.")
        if self.segmentationNode is None:
            self.setSegmentation()
        result = self.lastResult
        started = time.perf_counter()
        mode = mode or "replaceSlices"
        slices = result.sliceIndices if mode == "replaceSlices" else None
        from ..mrml.segmenteditornode import userSegmentEditorNode

        self.writer.settingsNode = self.segmentEditorNode or userSegmentEditorNode(self.scene)
        extent = self.writer.apply(self.segmentId, result.maskKji, mode, sliceAxis=result.axis, sliceIndices=slices)
        self._clearPreview()
        self._resetSession()
        elapsed = time.perf_counter() - started
        self.timings["write"] += elapsed
        self.timings["total"] += elapsed
        self.status.emit(f"Applied to segment '{self._segmentName()}' ({mode}).")
        return extent

    def undo(self):
        """Undo the last apply (the segmentation is restored bit for bit); returns False when there was nothing to undo,
        also when the segmentation left the scene (its undo history went with it).

        Raises InputError, undoing nothing, when the segmentation was edited after
        that apply (its message says to use the Segment Editor's Undo).
        """
        checks.forgetRemovedNodes(self)
        if self.writer is None or not self.writer.undo():
            return False
        self.status.emit("Undone.")
        return True

    @property
    def canUndo(self):
        """True when apply() can be undone."""
        checks.forgetRemovedNodes(self)
        return self.writer is not None and self.writer.canUndo

    def clearPreview(self):
        """Remove the preview only; the prompts and the segment are untouched."""
        self._clearPreview()

    def clear(self):
        """Remove the preview, every prompt (ROI and points) and the session's clicks, without touching the segment."""
        self._clearPreview()
        self._resetSession()
        pending = self.autoUpdate
        self.autoUpdate = False
        try:
            for node in (self.roiNode, self.positiveNode, self.negativeNode):
                if node is not None:
                    node.RemoveAllControlPoints()
        finally:
            self.autoUpdate = pending
        self._updatePending = False

    def resetTimings(self):
        """Zero logic.timings (seconds spent encoding, decoding, writing, and in total)."""
        self.timings = dict.fromkeys(self.timings, 0.0)

    def cleanup(self):
        """Stop observing, remove the preview and hidden nodes, stop prefetch workers. Call before dropping the Logic."""
        for observers in (self._volumeObservers, self._markupObservers, self._sceneObservers):
            self._removeObservers(observers)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.service is not None:
            self.service.close(timeout=1.0)

    # ------------------------------------------------------------------ internals

    def _requireVolume(self):
        removed = checks.forgetRemovedNodes(self)
        if self.volumeNode is None or self.source is None:
            gone = "The volume was removed from the scene" if "volume" in removed else "No volume set"
            raise InputError(f"{gone}: call setVolume(volumeNode) (select a volume) first.")

    def _ensureService(self):
        self._requireVolume()
        if self.engine is None:
            from ..engines.growcutengine import GrowCutEngine

            self.setEngine(GrowCutEngine())
        return self.service

    def _ensureWriter(self):
        from ..mrml.segmentwriter import SegmentWriter

        self._requireVolume()
        if self.writer is None:
            self.writer = SegmentWriter(self.segmentationNode, self.volumeNode, self.segmentEditorNode, createSegmentation=False)
            self.writer.externalUndoSaver = self._externalUndoSaver
        return self.writer

    def _refreshPreview(self):
        self.showResult(self.prepareUpdate().run(self.progress.emit))

    def _correcting(self):
        from ..mrml.markupprompts import pointsFromMarkups

        previous = self.lastResult
        return (previous is not None and previous.kind == "volume"
                and (previous.propagation is not None or previous.refinement is not None)
                and (len(pointsFromMarkups(self.positiveNode, self.negativeNode)[0]) > 0 or len(self.session.clicks) > 0))

    def _hasPrompts(self):
        from ..mrml.markupprompts import isBoxComplete, pointsFromMarkups

        return isBoxComplete(self.roiNode) or len(pointsFromMarkups(self.positiveNode, self.negativeNode)[0]) > 0

    def _promptSet(self, sliceIndex):
        from ..mrml.markupprompts import isBoxComplete, promptsFromMarkups
        from ..mrml.volumegeometry import sliceIndexFromSliceNode

        self._requireVolume()
        if sliceIndex is not None:
            sliceIndex = checks.requireInteger(sliceIndex, "slice index", 0, self.source.sliceCount(self.axis) - 1)
        roi = self.roiNode if isBoxComplete(self.roiNode) else None  # a box still being drawn is no prompt yet
        args = (self.volumeNode, self.source, self.axis, roi, self.positiveNode, self.negativeNode)
        promptSet = promptsFromMarkups(*args, sliceIndex=sliceIndex)
        if sliceIndex is None and promptSet.sliceRange is not None and self.sliceNode is not None:
            try:
                viewed = sliceIndexFromSliceNode(self.volumeNode, self.axis, self.sliceNode)
            except MedSAMError:
                viewed = promptSet.sliceIndex  # the view is off the volume: keep the box's own slice
            if promptSet.sliceRange[0] <= viewed <= promptSet.sliceRange[1] and viewed != promptSet.sliceIndex:
                promptSet = promptsFromMarkups(*args, sliceIndex=viewed)
        return promptSet

    def _clearPreview(self):
        if self.writer is not None:
            self.writer.showPreview(None)
        changed = self.lastResult is not None
        self.lastResult = None
        if changed:
            self.previewChanged.emit()

    def _segmentName(self):
        segment = self.segmentationNode.GetSegmentation().GetSegment(self.segmentId)
        return segment.GetName() if segment is not None else self.segmentId
