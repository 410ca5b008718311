"""Masks on a volume's voxel grid into Slicer segments: a preview, and edits with undo.

Frames: every mask here is a bool array on the *volume's* voxel grid, KJI-ordered
(`maskKji[k, j, i]`, the order slicer.util uses). The writer maps that grid into
the segmentation's coordinate frame through the volume's IJKToRAS and the parent
transforms of both nodes, so a volume with any direction matrix or a linear
parent transform is handled.

Edits go through Slicer's vtkSlicerSegmentEditorLogic, so masking (editable
area, overwrite other segments, editable intensity range) and the add / remove /
set modes behave as in the Segment Editor, and every edit saves an undo state.
The preview is a separate segmentation node that is hidden from editors, is not
saved with the scene and is not part of undo. No Qt here.

Undo never loses later work: the writer's history is its own (Slicer 5.10 gives
no access to the Segment Editor widget's), and a vtkSegmentationHistory only
drops *redo* states when the segmentation is edited elsewhere
(vtkSegmentationHistory::OnSegmentationModified), so restoring the snapshot
taken before an apply would silently revert whatever was painted since. The
writer therefore remembers what the segmentation held right after each apply
and refuses to undo once it differs. To make an apply one step of the Segment
Editor's own undo as well, a front end registers ``externalUndoSaver``: it is
called just before every write, when the Segment Editor widget can save its
state for undo (qMRMLSegmentEditorWidget::saveStateForUndo).
"""

import hashlib

import numpy as np

from ..core.errors import GeometryError, InputError

MODES = ("add", "remove", "set", "replaceSlices")
PREVIEW_NODE_NAME = "MedSAM preview"
PREVIEW_SEGMENT_ID = "MedSAMPreview"
PREVIEW_COLOR = (1.0, 0.85, 0.1)
#: Masking settings copied from a caller's segment editor node at every apply.
_MASK_SETTINGS = ("MaskMode", "MaskSegmentID", "OverwriteMode", "SourceVolumeIntensityMask", "SourceVolumeIntensityMaskRange")


def volumeIjkToNodeMatrix(volumeNode, targetNode):
    """4x4 matrix (np.ndarray) from the volume's IJK voxel indices to the local RAS frame of ``targetNode``.

    Honours the parent transforms of both nodes (volume RAS -> world -> target
    local RAS). Raises GeometryError when the transform between them is not linear.
    """
    import slicer
    import vtk

    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = slicer.util.arrayFromVTKMatrix(ijkToRas)
    volumeParent = volumeNode.GetParentTransformNode()
    targetParent = targetNode.GetParentTransformNode() if targetNode is not None else None
    if volumeParent is targetParent:
        return matrix
    between = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volumeParent, targetParent, between)
    if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(between):
        raise GeometryError(
            f"The volume '{volumeNode.GetName()}' is under a non-linear transform: harden the transform "
            "(Transforms module) or remove it before segmenting."
        )
    linear = vtk.vtkTransform()
    slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(between, linear)
    return slicer.util.arrayFromVTKMatrix(linear.GetMatrix()) @ matrix


def maskBoundingExtent(maskKji):
    """Inclusive IJK extent (i0, i1, j0, j1, k0, k1) of the True voxels of a KJI mask, or None when empty."""
    nonzero = [np.flatnonzero(np.any(maskKji, axis=axes)) for axes in ((0, 1), (0, 2), (1, 2))]
    if any(len(index) == 0 for index in nonzero):
        return None
    (i, j, k) = nonzero
    return (int(i[0]), int(i[-1]), int(j[0]), int(j[-1]), int(k[0]), int(k[-1]))


def orientedImageFromMask(maskKji, ijkToLocal, extentIjk=None):
    """A vtkOrientedImageData (uint8, 1 inside) holding ``maskKji`` cropped to ``extentIjk``.

    ijkToLocal: 4x4 matrix from voxel indices to the target node's local RAS.
    extentIjk: inclusive (i0, i1, j0, j1, k0, k1); the whole array when None.
    The image's voxel indices equal the volume's IJK indices (extent, not origin, carries the crop).
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    shapeK, shapeJ, shapeI = maskKji.shape
    if extentIjk is None:
        extentIjk = (0, shapeI - 1, 0, shapeJ - 1, 0, shapeK - 1)
    i0, i1, j0, j1, k0, k1 = extentIjk
    block = np.ascontiguousarray(maskKji[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1], dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    scalars = numpy_support.numpy_to_vtk(block.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    image.SetGeometryFromImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijkToLocal))
    return image


def segmentMaskKji(segmentationNode, segmentId, volumeNode):
    """The segment as a bool KJI array on the volume's voxel grid (nearest-neighbour resampling).

    Works whatever the segmentation's own geometry and transforms are. Raises
    InputError when the segment does not exist.
    """
    import slicer

    _requireSegment(segmentationNode, segmentId)
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segmentId, labelmap, False)
    dims = volumeNode.GetImageData().GetDimensions()
    shapeKji = (dims[2], dims[1], dims[0])
    if labelmap.IsEmpty():
        return np.zeros(shapeKji, bool)
    reference = orientedImageFromMask(np.zeros((1, 1, 1), bool), volumeIjkToNodeMatrix(volumeNode, segmentationNode))
    reference.SetExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled, False, True)
    # Segments may share one labelmap layer, each with its own label value.
    labelValue = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    return _imageToArray(resampled).reshape(shapeKji) == labelValue


def _imageToArray(image):
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).copy()


def _requireSegment(segmentationNode, segmentId):
    if segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(segmentId or "") is None:
        name = segmentationNode.GetName() if segmentationNode is not None else "(none)"
        raise InputError(f"Segment '{segmentId}' is not in segmentation '{name}': select an existing segment or create one.")


def createSegmentationNode(volumeNode, name=None, segmentName="Segment_1"):
    """Add a vtkMRMLSegmentationNode with the volume as reference geometry and one empty segment.

    The segmentation is placed under the volume's parent transform so it stays
    aligned with the volume. Returns (segmentationNode, segmentId).
    """
    scene = volumeNode.GetScene()
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volumeNode.GetName()} segmentation")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", segmentName)
    return segmentationNode, segmentId


class SegmentWriter:
    """Writes masks on one volume's voxel grid into one segmentation: preview, apply with undo.

    segmentationNode: the target vtkMRMLSegmentationNode, or None to create one
    (see createSegmentationNode; then ``writer.createdSegmentId`` names its segment).
    volumeNode: the source volume whose voxel grid the masks are on; never modified.
    settingsNode: an optional vtkMRMLSegmentEditorNode whose masking settings
    (mask mode, mask segment, overwrite mode, editable intensity range) are copied
    at every apply; pass Slicer's own segment editor node to respect the user's
    Segment Editor settings. The writer edits through its own hidden editor node so
    it never changes the Segment Editor's selections. Set masking on
    ``writer.segmentEditorNode`` directly when no settingsNode is given.
    """

    def __init__(self, segmentationNode, volumeNode, settingsNode=None, createSegmentation=True):
        import slicer

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError("No volume with voxels was given: load or select a volume first.")
        self.volumeNode = volumeNode
        self.scene = volumeNode.GetScene()
        self.createdSegmentId = None
        if segmentationNode is None and createSegmentation:
            segmentationNode, self.createdSegmentId = createSegmentationNode(volumeNode)
        self.segmentationNode = segmentationNode
        self.settingsNode = settingsNode
        self.externalUndoSaver = None
        self.previewNode = None
        self._contentAfterApply = []  # one content digest per undoable apply, newest last
        editorNode = slicer.vtkMRMLSegmentEditorNode()
        editorNode.SetName("MedSAM segment editor")
        editorNode.SetHideFromEditors(True)
        editorNode.SetSaveWithScene(False)
        self.scene.AddNode(editorNode)
        self.segmentEditorNode = editorNode
        self.editorLogic = slicer.vtkSlicerSegmentEditorLogic()
        self.editorLogic.SetMRMLScene(self.scene)
        self.editorLogic.SetSegmentEditorNode(editorNode)
        self.setSegmentationNode(segmentationNode)

    def setSegmentationNode(self, segmentationNode):
        """Write into ``segmentationNode`` from now on (None: preview only); clears the undo history."""
        self.segmentationNode = segmentationNode
        self.editorLogic.ClearUndoState()
        self._contentAfterApply = []
        self.editorLogic.SetSegmentationNode(segmentationNode)
        if segmentationNode is not None:
            self.editorLogic.SetSourceVolumeNode(self.volumeNode)

    # ------------------------------------------------------------------ preview

    def showPreview(self, maskKji, extentIjk=None):
        """Show ``maskKji`` (bool KJI on the volume grid) as the preview; None or an empty mask clears it.

        The preview node is created on first use: hidden from editors, not saved
        with the scene, outside undo. Only the mask's bounding box is stored;
        ``extentIjk`` (inclusive (i0, i1, j0, j1, k0, k1) containing every True
        voxel) spares scanning the whole mask for it.
        """
        import slicer

        if maskKji is None and (self.previewNode is None or self.previewNode.GetScene() is not self.scene):
            return  # nothing shown, nothing to clear: no node is created for it
        node = self._ensurePreviewNode()
        node.SetAndObserveTransformNodeID(self.volumeNode.GetTransformNodeID())
        if maskKji is None:
            extent = None
        else:
            maskKji = self._checkMask(maskKji)
            extent = tuple(extentIjk) if extentIjk is not None else maskBoundingExtent(maskKji)
        if extent is None:
            maskKji, extent = np.zeros((1, 1, 1), bool), (0, 0, 0, 0, 0, 0)
        image = orientedImageFromMask(maskKji, volumeIjkToNodeMatrix(self.volumeNode, node), extent)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, PREVIEW_SEGMENT_ID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )
        node.GetDisplayNode().SetVisibility(extent != (0, 0, 0, 0, 0, 0) or bool(maskKji[0, 0, 0]))

    def removePreview(self):
        """Remove the preview node from the scene (if any)."""
        if self.previewNode is not None and self.previewNode.GetScene() is not None:
            self.scene.RemoveNode(self.previewNode)
        self.previewNode = None

    def _ensurePreviewNode(self):
        import slicer

        if self.previewNode is not None and self.previewNode.GetScene() is self.scene:
            return self.previewNode
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(PREVIEW_NODE_NAME)
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node.SetAttribute("MedSAM.Preview", "1")
        self.scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSaveWithScene(False)
        node.GetDisplayNode().SetHideFromEditors(True)
        node.GetDisplayNode().SetOpacity2DFill(0.4)
        node.SetAndObserveTransformNodeID(self.volumeNode.GetTransformNodeID())
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNode)
        node.GetSegmentation().AddEmptySegment(PREVIEW_SEGMENT_ID, "MedSAM preview", list(PREVIEW_COLOR))
        self.previewNode = node
        return node

    # ------------------------------------------------------------------ apply / undo

    def apply(self, segmentId, maskKji, mode="add", sliceAxis=None, sliceIndices=None):
        """Write ``maskKji`` into segment ``segmentId`` as the Segment Editor would, saving an undo state first.

        mode: "add" (union), "remove" (erase the mask from the segment), "set"
        (the segment becomes the mask; kept outside the editable area), or
        "replaceSlices" (on the slices ``sliceIndices`` across IJK axis
        ``sliceAxis`` (0 = I, 1 = J, 2 = K) the segment becomes the mask; other
        slices are kept). Masking and overwriting follow the segment editor node.
        Only the mask's bounding box (for replaceSlices: those slices) is written.
        Returns the inclusive IJK extent written, or None when nothing changed.
        Raises InputError for an unknown mode or segment, a segmentation that left
        the scene, a mask of the wrong shape, or replaceSlices without slices; on
        failure the segment is restored. ``externalUndoSaver(segmentationNode)``,
        when set, is called once just before the first voxel is written.
        """
        maskKji = self._checkMask(maskKji)
        if self.segmentationNode is None:
            raise InputError("No segmentation to write into: select or create a segmentation first.")
        self._requireInScene()
        if mode not in MODES:
            raise InputError(f"Unknown apply mode '{mode}': use one of {', '.join(MODES)}.")
        _requireSegment(self.segmentationNode, segmentId)
        self._requireLabelmapSource()
        steps = self._plan(maskKji, mode, sliceAxis, sliceIndices)
        if not steps:
            return None
        self._prepareEditor(segmentId)
        if self.externalUndoSaver is not None:
            self.externalUndoSaver(self.segmentationNode)
        self.editorLogic.SaveStateForUndo()
        try:
            for modifierKji, extent, modification in steps:
                self._modify(segmentId, modifierKji, extent, modification)
        except Exception:
            self.editorLogic.Undo()
            raise
        self._contentAfterApply.append(self._contentDigest())
        del self._contentAfterApply[: -max(1, self.editorLogic.GetMaximumNumberOfUndoStates())]
        return _unionExtent([extent for _, extent, _ in steps])

    def undo(self):
        """Restore the segmentation as it was before the last apply (bit for bit); returns False when there is none.

        Raises InputError, changing nothing, when the segmentation was edited
        after that apply (in the Segment Editor, by a script, ...) or left the
        scene: restoring the old snapshot would silently throw those edits away.
        """
        if not self.canUndo:
            return False
        self._requireInScene()
        if self._contentDigest() != self._contentAfterApply[-1]:
            raise InputError(
                f"Segmentation '{self.segmentationNode.GetName()}' was edited after MedSAM's last apply: undoing it here "
                "would throw those edits away, so nothing was undone. Use the Segment Editor's Undo (Ctrl+Z) to step back "
                "through the edits in order."
            )
        self.editorLogic.Undo()
        self._contentAfterApply.pop()
        return True

    @property
    def canUndo(self):
        """True when an apply can be undone (see undo for when it is refused)."""
        return bool(self._contentAfterApply) and bool(self.editorLogic.CanUndo())

    def close(self):
        """Remove the preview and the hidden editor node; the writer is unusable afterwards."""
        self.removePreview()
        self.editorLogic.SetSegmentEditorNode(None)
        if self.segmentEditorNode.GetScene() is not None:
            self.scene.RemoveNode(self.segmentEditorNode)

    # ------------------------------------------------------------------ internals

    def _checkMask(self, maskKji):
        dims = self.volumeNode.GetImageData().GetDimensions()
        shapeKji = (dims[2], dims[1], dims[0])
        maskKji = np.asarray(maskKji)
        if maskKji.shape != shapeKji:
            raise InputError(f"The mask has shape {maskKji.shape} but the volume's voxel grid is {shapeKji} (K, J, I).")
        return maskKji.astype(bool, copy=False)

    def _requireInScene(self):
        if self.segmentationNode.GetScene() is not self.scene:
            raise InputError(
                f"Segmentation '{self.segmentationNode.GetName()}' is no longer in the scene: select or create a segmentation."
            )

    def _contentDigest(self):
        """A digest of every segment's voxels (labelmap layers: extent, geometry, scalars) and label values.

        Names, colours and other display properties are left out: changing them is no edit to protect.
        """
        import slicer
        import vtk

        segmentation = self.segmentationNode.GetSegmentation()
        digest = hashlib.blake2b(digest_size=16)
        layers = []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segmentId)
            digest.update(f"{segmentId}={segment.GetLabelValue()};".encode())
            labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
            if labelmap is None:
                continue
            layer = next((n for n, known in enumerate(layers) if known is labelmap), None)
            if layer is None:
                layer = len(layers)
                layers.append(labelmap)
                matrix = vtk.vtkMatrix4x4()
                labelmap.GetImageToWorldMatrix(matrix)
                digest.update(np.asarray(labelmap.GetExtent(), np.int64).tobytes())
                digest.update(slicer.util.arrayFromVTKMatrix(matrix).tobytes())
                scalars = labelmap.GetPointData().GetScalars()
                if scalars is not None and not labelmap.IsEmpty():
                    from vtk.util import numpy_support

                    digest.update(np.ascontiguousarray(numpy_support.vtk_to_numpy(scalars)).tobytes())
            digest.update(f"@{layer};".encode())
        return digest.digest()

    def _requireLabelmapSource(self):
        import slicer

        segmentation = self.segmentationNode.GetSegmentation()
        labelmapName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if segmentation.GetNumberOfSegments() and segmentation.GetSourceRepresentationName() != labelmapName:
            raise InputError(
                f"Segmentation '{self.segmentationNode.GetName()}' is stored as {segmentation.GetSourceRepresentationName()}: "
                "convert its source representation to binary labelmap (Segmentations module) before editing."
            )
        segmentation.SetSourceRepresentationName(labelmapName)

    def _plan(self, maskKji, mode, sliceAxis, sliceIndices):
        """List of (modifierKji, extentIjk, modificationMode) steps for one apply."""
        import slicer

        Logic = slicer.vtkSlicerSegmentEditorLogic
        extent = maskBoundingExtent(maskKji)
        if mode in ("add", "remove"):
            if extent is None:
                return []
            return [(maskKji, extent, Logic.ModificationModeAdd if mode == "add" else Logic.ModificationModeRemove)]
        if mode == "set":
            return [(maskKji, extent or (0, 0, 0, 0, 0, 0), Logic.ModificationModeSet)]
        slices, sliceExtent = self._sliceSelection(maskKji.shape, sliceAxis, sliceIndices)
        steps = [(slices, sliceExtent, Logic.ModificationModeRemove)]
        onSlices = maskKji & slices
        maskExtent = maskBoundingExtent(onSlices)
        if maskExtent is not None:
            steps.append((onSlices, maskExtent, Logic.ModificationModeAdd))
        return steps

    @staticmethod
    def _sliceSelection(shapeKji, sliceAxis, sliceIndices):
        """Bool KJI array True on the chosen slices, and its inclusive IJK extent."""
        if sliceAxis not in (0, 1, 2) or sliceIndices is None or len(list(sliceIndices)) == 0:
            raise InputError('Mode "replaceSlices" needs sliceAxis (0 = I, 1 = J, 2 = K) and at least one slice index.')
        indices = np.unique(np.asarray(list(sliceIndices), dtype=int))
        count = shapeKji[2 - sliceAxis]
        if indices[0] < 0 or indices[-1] >= count:
            raise InputError(f"Slice indices {indices[0]}..{indices[-1]} are outside the volume (0..{count - 1} along axis {sliceAxis}).")
        selection = np.zeros(shapeKji, bool)
        index = [slice(None)] * 3
        index[2 - sliceAxis] = indices
        selection[tuple(index)] = True
        extent = [0, shapeKji[2] - 1, 0, shapeKji[1] - 1, 0, shapeKji[0] - 1]
        extent[2 * sliceAxis], extent[2 * sliceAxis + 1] = int(indices[0]), int(indices[-1])
        return selection, tuple(extent)

    def _prepareEditor(self, segmentId):
        editorNode = self.segmentEditorNode
        if self.settingsNode is not None:
            for name in _MASK_SETTINGS:
                getattr(editorNode, "Set" + name)(getattr(self.settingsNode, "Get" + name)())
        if editorNode.GetSegmentationNode() is not self.segmentationNode:
            self.editorLogic.SetSegmentationNode(self.segmentationNode)
        if editorNode.GetSourceVolumeNode() is not self.volumeNode:
            self.editorLogic.SetSourceVolumeNode(self.volumeNode)
        editorNode.SetSelectedSegmentID(segmentId)

    def _modify(self, segmentId, modifierKji, extent, modification):
        """One ModifySegmentByLabelmap call with a modifier cropped to ``extent`` on the reference grid."""
        modifier = orientedImageFromMask(modifierKji, volumeIjkToNodeMatrix(self.volumeNode, self.segmentationNode), extent)
        modifier = self._onReferenceGrid(modifier)
        writeExtent = modifier.GetExtent()
        self.editorLogic.ModifySegmentByLabelmap(self.segmentationNode, segmentId, modifier, modification, writeExtent, True, False)

    def _onReferenceGrid(self, modifier):
        """The modifier on the segmentation's reference grid (required by intensity masking): same lattice or resampled."""
        import slicer

        if not self.editorLogic.UpdateReferenceGeometryImage():
            raise GeometryError(f"Segmentation '{self.segmentationNode.GetName()}' has no reference geometry: set it from the volume.")
        reference = self.editorLogic.GetReferenceGeometryImage()
        ours = _imageToWorld(modifier)
        theirs = _imageToWorld(reference)
        if np.allclose(ours, theirs, atol=1e-4 * max(1.0, float(np.abs(theirs).max()))):
            modifier.SetGeometryFromImageToWorldMatrix(slicer.util.vtkMatrixFromArray(theirs))
            return modifier
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(modifier, reference, resampled, False, True)
        return resampled


def _imageToWorld(image):
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _unionExtent(extents):
    extents = np.asarray(extents)
    return tuple(int(v) for pair in zip(extents[:, 0::2].min(axis=0), extents[:, 1::2].max(axis=0)) for v in pair)
