"""How MedSAMLogic follows its inputs: prompt markups (debounced preview updates) and the volume (cache invalidation).

A mixin of MedSAMLogic (logic.py), kept apart so each file holds one concern.
Markup events only mark an update as pending; it runs at once when no
``scheduleCallback`` is set (headless default), or when the widget's timer
fires, or on ``processPendingUpdates()``: many events, one decode. Volume
events compare a cheap state (voxel buffer identity and modification time,
IJK-to-world geometry) so a rename or display change keeps the cache. No Qt.
"""

from ..core.errors import MedSAMError

VOLUME_EVENTS = ("ImageDataModifiedEvent", "TransformModifiedEvent", "ModifiedEvent")
MARKUP_EVENTS = ("PointModifiedEvent", "PointAddedEvent", "PointRemovedEvent", "ModifiedEvent")
#: Delay (ms) the widget's timer waits to coalesce markup events into one preview update.
DEBOUNCE_MS = 150


class ObservationMixin:
    """Observer callbacks and pending-update bookkeeping for MedSAMLogic (uses its attributes)."""

    def processPendingUpdates(self):
        """Run the preview update requested by markup changes since the last call (one decode for many events).

        Returns True when an update ran. Errors a user can cause (a box moved
        off the volume) are reported through status and logic.lastError instead
        of being raised, and clear a slice preview (a propagated preview is kept:
        a stray click must not throw away a 3D result).
        """
        self._updateScheduled = False
        if not self._updatePending:
            return False
        self._updatePending = False
        if self.source is None:
            return False
        self.lastError = None
        try:
            if self._hasPrompts():
                self._refreshPreview()
            else:
                self._clearPreview()
        except MedSAMError as error:
            self.lastError = error
            if self.lastResult is None or self.lastResult.kind != "volume":
                self._clearPreview()
            self.status.emit(str(error))
        return True

    def _onMarkupEvent(self, caller, event):
        if not self.autoUpdate:
            return
        self._updatePending = True
        if self.scheduleCallback is None:
            self.processPendingUpdates()
        elif not self._updateScheduled:
            self._updateScheduled = True
            self.scheduleCallback(self.debounceMs, self.processPendingUpdates)

    def _onVolumeEvent(self, caller, event):
        from ..mrml.volumegeometry import sliceSourceFromVolume

        if caller is not self.volumeNode or self.source is None:
            return
        try:
            state = self._volumeState()
            if state == self._volumeStateKey:
                return  # a name or display change: the voxels and their placement are the same
            old = self.source
            self.source = sliceSourceFromVolume(self.volumeNode, self.policy)
            self._volumeStateKey = state
        except MedSAMError as error:
            self.status.emit(str(error))
            return
        if self.service is not None:
            self.service.invalidate(old)  # the cache is shared by all engines: this drops every model's slices
        self._clearPreview()
        self.status.emit("The volume changed: its cached slices were dropped.")

    def _volumeState(self):
        """What identifies the volume's voxels and placement cheaply: image data and scalars identity and
        modification time (slicer.util.arrayFromVolumeModified bumps it) and the IJK-to-world geometry."""
        from ..mrml.volumegeometry import geometryKey

        imageData = self.volumeNode.GetImageData()
        scalars = imageData.GetPointData().GetScalars() if imageData is not None else None
        if scalars is None:
            return None, geometryKey(self.volumeNode)
        content = (imageData.GetAddressAsString("vtkImageData"), scalars.GetAddressAsString("vtkDataArray"), scalars.GetMTime())
        return content, geometryKey(self.volumeNode)

    def _observe(self, node, events, callback):
        return [(node, node.AddObserver(getattr(node, name, name), callback)) for name in events]

    @staticmethod
    def _removeObservers(observers):
        for node, tag in observers:
            node.RemoveObserver(tag)
        observers.clear()

    def _onSceneEndClose(self, caller, event):
        """The scene was closed: every node the Logic held is gone; forget them (cached embeddings are kept)."""
        self._removeObservers(self._volumeObservers)
        self._removeObservers(self._markupObservers)
        if self.writer is not None:
            self.writer.previewNode = None
            self.writer = None
        self.volumeNode = self.source = self.segmentationNode = self.segmentId = None
        self.roiNode = self.positiveNode = self.negativeNode = self.sliceNode = None
        self.segmentEditorNode = None
        self.lastResult = None
        self._resetSession()
        self._updatePending = False
