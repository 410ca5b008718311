"""SegmentWriter on a real MRML scene: preview, apply modes, masking, undo, storage, any volume geometry."""

import hashlib
import math

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.mrml.segmentwriter import PREVIEW_SEGMENT_ID, SegmentWriter, segmentMaskKji

SHAPE_KJI = (8, 12, 14)


def _rotation(axis, degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


#: IJK -> RAS direction matrices (columns are the I, J, K directions) and whether a parent transform is added.
GEOMETRIES = {
    "LPS": (np.diag([-1.0, -1.0, 1.0]), False),
    "RAS": (np.eye(3), False),
    "permuted": (np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), False),
    "oblique": (_rotation(2, 30.0) @ _rotation(0, 20.0), False),
    "transform": (np.diag([-1.0, -1.0, 1.0]), True),
}


def makeVolume(scene, voxelsKji, geometry="RAS", spacing=(0.8, 0.9, 2.5), name="volume"):
    """A scalar volume node with the named GEOMETRIES entry (direction matrix, optional parent transform)."""
    import slicer
    import vtk

    directions, withTransform = GEOMETRIES[geometry]
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    volume.SetSpacing(*spacing)
    volume.SetOrigin(12.0, -30.0, 7.5)
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, directions[row, column])
    volume.SetIJKToRASDirectionMatrix(matrix)
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(voxelsKji))
    if withTransform:
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
        toParent = np.eye(4)
        toParent[:3, :3] = _rotation(1, 25.0)
        toParent[:3, 3] = (15.0, -4.0, 22.0)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParent))
        volume.SetAndObserveTransformNodeID(transform.GetID())
    return volume


def voxelHash(volume):
    """SHA-256 of a volume's voxels (to show they were never modified)."""
    import slicer

    return hashlib.sha256(np.ascontiguousarray(slicer.util.arrayFromVolume(volume)).tobytes()).hexdigest()


def internalLabelmap(segmentationNode, segmentId):
    """(extent, voxel bytes, geometry) of the segment's stored labelmap: a bit-for-bit fingerprint."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    labelmap = segmentationNode.GetSegmentation().GetSegment(segmentId).GetRepresentation(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    )
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    scalars = labelmap.GetPointData().GetScalars()
    data = numpy_support.vtk_to_numpy(scalars).tobytes() if scalars is not None else b""
    return tuple(labelmap.GetExtent()), data, tuple(slicer.util.arrayFromVTKMatrix(matrix).ravel())


def boxMask(k0, k1, j0, j1, i0, i1, shape=SHAPE_KJI):
    mask = np.zeros(shape, bool)
    mask[k0:k1, j0:j1, i0:i1] = True
    return mask


@pytest.fixture
def noisyVoxels():
    return np.random.default_rng(3).integers(0, 200, SHAPE_KJI).astype(np.int16)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_apply_writes_mask_on_volume_grid_for_any_geometry(scene, noisyVoxels, geometry):
    volume = makeVolume(scene, noisyVoxels, geometry)
    before = voxelHash(volume)
    writer = SegmentWriter(None, volume)
    segmentId = writer.createdSegmentId
    mask = boxMask(2, 5, 3, 9, 4, 11)
    mask[3, 4, 5] = False  # asymmetric, so a flipped axis would show
    extent = writer.apply(segmentId, mask, "add")
    assert extent == (4, 10, 3, 8, 2, 4)
    np.testing.assert_array_equal(segmentMaskKji(writer.segmentationNode, segmentId, volume), mask)
    assert voxelHash(volume) == before
    # The created segmentation follows the volume: same transform and reference geometry.
    assert writer.segmentationNode.GetTransformNodeID() == volume.GetTransformNodeID()


def test_apply_then_undo_restores_segment_bit_for_bit(scene, noisyVoxels):
    volume = makeVolume(scene, noisyVoxels, "oblique")
    writer = SegmentWriter(None, volume)
    segmentId = writer.createdSegmentId
    writer.apply(segmentId, boxMask(1, 4, 1, 5, 1, 6), "add")
    fingerprint = internalLabelmap(writer.segmentationNode, segmentId)
    for mode, mask in (("add", boxMask(3, 7, 4, 10, 5, 13)), ("remove", boxMask(0, 8, 0, 3, 0, 4)), ("set", boxMask(5, 6, 5, 6, 5, 6))):
        writer.apply(segmentId, mask, mode)
        assert internalLabelmap(writer.segmentationNode, segmentId) != fingerprint
        assert writer.canUndo
        writer.undo()
        assert internalLabelmap(writer.segmentationNode, segmentId) == fingerprint


def test_modes_add_remove_set(scene, noisyVoxels):
    volume = makeVolume(scene, noisyVoxels, "LPS")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    first, second = boxMask(1, 4, 1, 5, 1, 6), boxMask(3, 6, 4, 8, 5, 9)
    writer.apply(segmentId, first, "add")
    writer.apply(segmentId, second, "add")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), first | second)
    writer.apply(segmentId, second, "remove")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), first & ~second)
    writer.apply(segmentId, second, "set")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), second)
    assert writer.apply(segmentId, np.zeros(SHAPE_KJI, bool), "add") is None  # nothing to write, no undo state


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_replace_slices_changes_only_those_slices(scene, noisyVoxels, axis):
    volume = makeVolume(scene, noisyVoxels, "permuted")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    existing = boxMask(1, 7, 2, 10, 2, 12)
    writer.apply(segmentId, existing, "add")
    new = boxMask(0, 3, 0, 4, 0, 5)
    # The mask also has voxels off the chosen slices: they must not be written.
    writer.apply(segmentId, new, "replaceSlices", sliceAxis=axis, sliceIndices=[1, 2])
    index = [slice(None)] * 3
    index[2 - axis] = [1, 2]
    expected = existing.copy()
    expected[tuple(index)] = new[tuple(index)]
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), expected)
    writer.undo()
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), existing)


def test_overwrite_none_keeps_other_segment_and_overwrite_all_does_not(scene, noisyVoxels):
    volume = makeVolume(scene, noisyVoxels, "transform")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    otherId = segmentation.GetSegmentation().AddEmptySegment("", "other")
    other = boxMask(2, 6, 2, 8, 2, 9)
    writer.apply(otherId, other, "add")
    otherFingerprint = internalLabelmap(segmentation, otherId)
    mask = boxMask(4, 8, 5, 12, 6, 14)
    settings = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")  # stands for Slicer's own editor node
    settings.SetOverwriteMode(settings.OverwriteNone)
    writer.settingsNode = settings
    writer.apply(segmentId, mask, "add")
    assert internalLabelmap(segmentation, otherId) == otherFingerprint
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), mask)
    writer.undo()
    settings.SetOverwriteMode(settings.OverwriteAllSegments)
    writer.apply(segmentId, mask, "add")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, otherId, volume), other & ~mask)
    # The writer never changed the caller's editor node selections.
    assert settings.GetSegmentationNode() is None and settings.GetSelectedSegmentID() is None


def test_editable_intensity_range_and_editable_area_are_respected(scene, noisyVoxels):
    import slicer

    volume = makeVolume(scene, noisyVoxels, "oblique")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    editor = writer.segmentEditorNode
    mask = boxMask(1, 7, 2, 10, 3, 12)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(60.0, 150.0)
    writer.apply(segmentId, mask, "add")
    inRange = (noisyVoxels >= 60) & (noisyVoxels <= 150)
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), mask & inRange)
    writer.undo()
    editor.SetSourceVolumeIntensityMask(False)
    allowedId = segmentation.GetSegmentation().AddEmptySegment("", "allowed")
    allowed = boxMask(0, 4, 0, 12, 0, 14)
    writer.apply(allowedId, allowed, "add")
    editor.SetOverwriteMode(editor.OverwriteNone)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(allowedId)
    writer.apply(segmentId, mask, "add")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), mask & allowed)


def test_preview_is_hidden_unsaved_and_outside_undo(scene, noisyVoxels, tmp_path):
    volume = makeVolume(scene, noisyVoxels, "transform")
    writer = SegmentWriter(None, volume)
    mask = boxMask(2, 5, 3, 9, 4, 11)
    writer.showPreview(mask)
    preview = writer.previewNode
    assert preview is not writer.segmentationNode
    assert not preview.GetSaveWithScene() and preview.GetHideFromEditors()
    np.testing.assert_array_equal(segmentMaskKji(preview, PREVIEW_SEGMENT_ID, volume), mask)
    assert not writer.canUndo
    scene.SetURL(str(tmp_path / "scene.mrml"))
    scene.Commit()
    saved = (tmp_path / "scene.mrml").read_text()
    assert preview.GetID() not in saved and writer.segmentationNode.GetID() in saved
    writer.showPreview(None)
    assert not segmentMaskKji(preview, PREVIEW_SEGMENT_ID, volume).any()
    writer.removePreview()
    assert preview.GetScene() is None and writer.previewNode is None


def test_segmentation_saved_as_seg_nrrd_reopens_with_same_voxels_and_geometry(scene, noisyVoxels, tmp_path):
    import slicer

    volume = makeVolume(scene, noisyVoxels, "oblique")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    mask = boxMask(2, 6, 1, 9, 3, 12)
    mask[4, 5, 6] = False
    writer.apply(segmentId, mask, "add")
    path = str(tmp_path / "result.seg.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(path)
    assert storage.WriteData(segmentation)
    reopened = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reopened")
    reopened.SetAndObserveTransformNodeID(segmentation.GetTransformNodeID())
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(path)
    assert reader.ReadData(reopened)
    reopenedId = reopened.GetSegmentation().GetNthSegmentID(0)
    np.testing.assert_array_equal(segmentMaskKji(reopened, reopenedId, volume), mask)
    original, loaded = internalLabelmap(segmentation, segmentId), internalLabelmap(reopened, reopenedId)
    np.testing.assert_allclose(original[2], loaded[2], atol=1e-6)
    assert isinstance(reopened, slicer.vtkMRMLSegmentationNode)


def test_bad_inputs_raise_clear_errors_and_write_nothing(scene, noisyVoxels):
    volume = makeVolume(scene, noisyVoxels, "RAS")
    writer = SegmentWriter(None, volume)
    segmentId = writer.createdSegmentId
    mask = boxMask(2, 5, 3, 9, 4, 11)
    with pytest.raises(InputError, match="shape"):
        writer.apply(segmentId, mask[:, :, :5], "add")
    with pytest.raises(InputError, match="Segment 'nope'"):
        writer.apply("nope", mask, "add")
    with pytest.raises(InputError, match="Unknown apply mode"):
        writer.apply(segmentId, mask, "paint")
    with pytest.raises(InputError, match="sliceAxis"):
        writer.apply(segmentId, mask, "replaceSlices")
    with pytest.raises(InputError, match="outside the volume"):
        writer.apply(segmentId, mask, "replaceSlices", sliceAxis=2, sliceIndices=[99])
    assert not writer.canUndo
    assert not segmentMaskKji(writer.segmentationNode, segmentId, volume).any()


def test_segmentation_on_another_grid_gets_the_mask_resampled(scene, noisyVoxels):
    """A user's segmentation whose geometry is finer than the volume (oversampled): the mask lands on the same voxels."""
    volume = makeVolume(scene, noisyVoxels, "oblique")
    fine = makeVolume(scene, np.zeros((16, 24, 28), np.int16), "oblique", spacing=(0.4, 0.45, 1.25), name="fine")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    segmentId = segmentation.GetSegmentation().AddEmptySegment("")
    writer = SegmentWriter(segmentation, volume)
    mask = boxMask(2, 5, 3, 9, 4, 11)
    writer.apply(segmentId, mask, "add")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), mask)
    writer.undo()
    writer.segmentEditorNode.SetSourceVolumeIntensityMask(True)
    writer.segmentEditorNode.SetSourceVolumeIntensityMaskRange(100.0, 300.0)
    writer.apply(segmentId, mask, "add")
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), mask & (noisyVoxels >= 100))
