"""Prompts from real markup nodes: ROI boxes (2D, 3D, clipped, outside), labelled points, transforms."""

import numpy as np
import pytest
import slicer

from MedSAMSlicerLib.core.errors import PromptError
from MedSAMSlicerLib.mrml.markupprompts import promptsFromMarkups
from MedSAMSlicerLib.mrml.volumegeometry import ijkToRas, ijkToWorld, sliceSourceFromVolume

SHAPE_KJI = (9, 14, 12)
SPACING = np.array([0.8, 0.9, 2.5])
LPS = np.diag([-1.0, -1.0, 1.0])
PERMUTED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_c, _s = np.cos(np.radians(20)), np.sin(np.radians(20))
OBLIQUE = np.array([[_c, -_s, 0.0], [_s, _c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, _c, -_s], [0, _s, _c]]) @ LPS
# For each slice axis: the IJK index shown along image columns (x) and rows (y) (docs/developer.md).
COLUMN_ROW_IJK = {2: (0, 1), 1: (0, 2), 0: (1, 2)}


def _addVolume(directions, withParent=False):
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(SPACING)
    matrix[:3, 3] = [12.0, -30.0, 55.0]
    node = slicer.util.addVolumeFromArray(np.zeros(SHAPE_KJI, np.int16), matrix)
    if withParent:
        parent = np.eye(4)
        parent[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        parent[:3, 3] = [-7.0, 3.0, 21.0]
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(parent))
        node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def _roiOverIjk(volumeNode, lowIjk, highIjk, transformNode=None):
    """An ROI node whose box is the continuous IJK box [lowIjk, highIjk] of the volume, in world RAS."""
    matrix = ijkToWorld(volumeNode)
    norms = np.linalg.norm(matrix[:3, :3], axis=0)
    rotation = matrix[:3, :3] / norms
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1.0  # the box is symmetric: a flipped axis describes the same box
    lowIjk, highIjk = np.asarray(lowIjk, float), np.asarray(highIjk, float)
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = rotation
    objectToNode[:3, 3] = ijkToRas(volumeNode, [(lowIjk + highIjk) / 2])[0]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetRadiusXYZ(*((highIjk - lowIjk) / 2 * norms))
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
    if transformNode is not None:
        # The caller's transform moves the ROI; put it where it must be before the move.
        toParent = slicer.util.arrayFromTransformMatrix(transformNode)
        objectToNode = np.linalg.inv(toParent) @ objectToNode
        roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
        roi.SetAndObserveTransformNodeID(transformNode.GetID())
    return roi


def _points(volumeNode, pointsIjk, descriptions=None):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    for n, pointRas in enumerate(ijkToRas(volumeNode, pointsIjk)):
        index = node.AddControlPointWorld(*pointRas)
        if descriptions:
            node.SetNthControlPointDescription(index, descriptions[n])
    return node


def _expectedXy(axis, pointIjk):
    """Image pixel of a continuous IJK point: x = (u + 0.5) * s - 0.5 with s = spacing / finer spacing."""
    colIjk, rowIjk = COLUMN_ROW_IJK[axis]
    pixel = min(SPACING[colIjk], SPACING[rowIjk])
    return ((pointIjk[colIjk] + 0.5) * SPACING[colIjk] / pixel - 0.5,
            (pointIjk[rowIjk] + 0.5) * SPACING[rowIjk] / pixel - 0.5)


@pytest.mark.parametrize("directions, withParent", [(LPS, True), (PERMUTED, False), (OBLIQUE, True)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thin_roi_gives_a_2d_box_on_its_slice_in_any_view(scene, directions, withParent, axis):
    node = _addVolume(directions, withParent)
    source = sliceSourceFromVolume(node)
    low, high = np.array([2.5, 3.5, 1.5]), np.array([7.5, 9.5, 6.5])
    low[axis] = high[axis] = 4.0  # flat across the slice axis, on slice 4
    result = promptsFromMarkups(node, source, axis, roiNode=_roiOverIjk(node, low, high))
    assert result.sliceIndex == 4 and result.sliceRange is None
    x0, y0 = _expectedXy(axis, low)
    x1, y1 = _expectedXy(axis, high)
    assert result.prompts.boxXyxy == pytest.approx((x0, y0, x1, y1), abs=1e-6)
    assert len(result.prompts.pointsXy) == 0


def test_thick_roi_spans_slices_and_prompts_on_the_points_slice(scene):
    node = _addVolume(LPS, withParent=True)
    source = sliceSourceFromVolume(node)
    roi = _roiOverIjk(node, (2.5, 3.5, 2.6), (7.5, 9.5, 6.4))
    result = promptsFromMarkups(node, source, 2, roiNode=roi)
    assert result.sliceRange == (3, 6) and result.sliceIndex == 4
    assert result.prompts.boxXyxy == pytest.approx(_expectedXy(2, (2.5, 3.5, 0)) + _expectedXy(2, (7.5, 9.5, 0)))
    positive = _points(node, [(5.0, 6.0, 5.0)])
    result = promptsFromMarkups(node, source, 2, roiNode=roi, positiveNode=positive)
    assert result.sliceIndex == 5 and result.sliceRange == (3, 6)
    assert promptsFromMarkups(node, source, 2, roiNode=roi, sliceIndex=6).sliceIndex == 6
    with pytest.raises(PromptError, match="slices 3..6"):
        promptsFromMarkups(node, source, 2, roiNode=roi, sliceIndex=7)


def test_roi_partly_outside_is_clipped_and_entirely_outside_is_refused(scene):
    node = _addVolume(PERMUTED)
    source = sliceSourceFromVolume(node)
    height, width = source.imageShape(2)
    partly = _roiOverIjk(node, (-6.0, 8.0, 3.0), (5.0, 20.0, 3.0))
    result = promptsFromMarkups(node, source, 2, roiNode=partly)
    assert result.prompts.boxXyxy == pytest.approx((-0.5, _expectedXy(2, (0, 8.0, 0))[1], 5.0, height - 0.5))
    outside = _roiOverIjk(node, (20.0, 2.0, 3.0), (25.0, 6.0, 3.0))
    with pytest.raises(PromptError, match="entirely outside"):
        promptsFromMarkups(node, source, 2, roiNode=outside)
    beyondLastSlice = _roiOverIjk(node, (2.0, 2.0, 11.0), (6.0, 6.0, 11.0))
    with pytest.raises(PromptError, match="outside"):
        promptsFromMarkups(node, source, 2, roiNode=beyondLastSlice)


def test_roi_under_its_own_transform_is_placed_by_world_position(scene):
    node = _addVolume(LPS, withParent=True)
    source = sliceSourceFromVolume(node)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    move = np.eye(4)
    move[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    move[:3, 3] = [40.0, -5.0, 9.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(move))
    roi = _roiOverIjk(node, (1.5, 2.5, 3.0), (6.5, 8.5, 3.0), transformNode=transform)
    result = promptsFromMarkups(node, source, 2, roiNode=roi)
    assert result.sliceIndex == 3
    assert result.prompts.boxXyxy == pytest.approx(_expectedXy(2, (1.5, 2.5, 0)) + _expectedXy(2, (6.5, 8.5, 0)))


def test_points_carry_labels_from_their_node_or_description(scene):
    node = _addVolume(OBLIQUE, withParent=True)
    source = sliceSourceFromVolume(node)
    positive = _points(node, [(2.0, 3.0, 5.0), (8.0, 9.0, 5.2), (4.0, 4.0, 4.8)], ["", "positive", "negative"])
    negative = _points(node, [(6.0, 1.0, 5.0)])
    result = promptsFromMarkups(node, source, 2, positiveNode=positive, negativeNode=negative)
    assert result.sliceIndex == 5 and result.prompts.boxXyxy is None
    assert result.prompts.pointLabels.tolist() == [1, 1, 0, 0]
    expected = [_expectedXy(2, p) for p in [(2.0, 3.0, 0), (8.0, 9.0, 0), (4.0, 4.0, 0), (6.0, 1.0, 0)]]
    np.testing.assert_allclose(result.prompts.pointsXy, expected, atol=1e-4)
    # Sagittal (axis 0): x is j, y is k scaled by 2.5 / 0.9 (the axial rows j by 0.9 / 0.8).
    sagittal = promptsFromMarkups(node, source, 0, positiveNode=_points(node, [(3.0, 4.0, 2.0)]))
    assert sagittal.sliceIndex == 3
    np.testing.assert_allclose(sagittal.prompts.pointsXy[0], _expectedXy(0, (3.0, 4.0, 2.0)), atol=1e-4)


def test_points_and_box_must_share_one_slice(scene):
    node = _addVolume(LPS)
    source = sliceSourceFromVolume(node)
    spread = _points(node, [(2.0, 3.0, 4.0), (5.0, 5.0, 6.0)])
    with pytest.raises(PromptError, match="different slices"):
        promptsFromMarkups(node, source, 2, positiveNode=spread)
    box = _roiOverIjk(node, (1.5, 1.5, 4.0), (8.5, 8.5, 4.0))
    elsewhere = _points(node, [(3.0, 3.0, 6.0)])
    with pytest.raises(PromptError, match="not on slice 4"):
        promptsFromMarkups(node, source, 2, roiNode=box, positiveNode=elsewhere)
    with pytest.raises(PromptError, match="box is on slice 4"):
        promptsFromMarkups(node, source, 2, roiNode=box, sliceIndex=2)
    onBox = _points(node, [(3.0, 3.0, 4.3)])
    result = promptsFromMarkups(node, source, 2, roiNode=box, negativeNode=onBox)
    assert result.sliceIndex == 4 and result.prompts.pointLabels.tolist() == [0]


def test_missing_or_outside_points_are_refused(scene):
    node = _addVolume(LPS)
    source = sliceSourceFromVolume(node)
    with pytest.raises(PromptError, match="No prompt"):
        promptsFromMarkups(node, source, 2)
    with pytest.raises(PromptError, match="outside the volume"):
        promptsFromMarkups(node, source, 2, positiveNode=_points(node, [(30.0, 3.0, 4.0)]))
    # A point on the very edge of the image is kept, moved onto the nearest pixel centre.
    edge = promptsFromMarkups(node, source, 2, positiveNode=_points(node, [(-0.4, 3.0, 4.0)]))
    np.testing.assert_allclose(edge.prompts.pointsXy[0], [0.0, _expectedXy(2, (0, 3.0, 0))[1]], atol=1e-6)
