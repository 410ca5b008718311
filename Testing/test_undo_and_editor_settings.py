"""Undo that never loses later work, and masking settings from the user's own Segment Editor node.

Real MRML (slicer-core). The Segment Editor widget is Qt and cannot run here; what it does to a
segmentation is done with the same classes it uses in Slicer 5.10: a vtkSlicerSegmentEditorLogic on
the scene's segment editor singleton (qMRMLSegmentEditorWidget holds exactly that), whose
SaveStateForUndo/Undo are the widget's saveStateForUndo()/undo().
"""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.mrml.segmenteditornode import userSegmentEditorNode
from MedSAMSlicerLib.mrml.segmentwriter import (SegmentWriter, orientedImageFromMask, segmentMaskKji,
                                                 volumeIjkToNodeMatrix)
from test_logic import addRoi, ballsPhantom, logicOn
from test_segmentwriter import SHAPE_KJI, boxMask, makeVolume


def segmentEditorStandIn(scene, segmentationNode, volume):
    """What Slicer's Segment Editor widget holds: a segment editor logic on the user's editor node."""
    import slicer

    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(userSegmentEditorNode(scene))
    logic.SetSegmentationNode(segmentationNode)
    logic.SetSourceVolumeNode(volume)
    return logic


def paintElsewhere(segmentationNode, segmentId, volume, maskKji):
    """An edit made outside MedSAM (a script, another module): the mask is added to the segment."""
    import slicer

    image = orientedImageFromMask(maskKji, volumeIjkToNodeMatrix(volume, segmentationNode))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)


def test_user_segment_editor_node_is_slicers_singleton_created_once(scene):
    import slicer

    decoy = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "another extension's editor")
    node = userSegmentEditorNode(scene)
    assert node is not decoy and node.GetSingletonTag() == "SegmentEditor"
    assert userSegmentEditorNode(scene) is node
    assert scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode") is node
    assert node.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
    assert userSegmentEditorNode(slicer.vtkMRMLScene(), create=False) is None


def test_undo_refuses_after_a_later_edit_and_keeps_it(scene):
    volume = makeVolume(scene, np.zeros(SHAPE_KJI, np.float32), "oblique")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    first, second, painted = boxMask(1, 4, 1, 5, 1, 6), boxMask(5, 8, 6, 10, 5, 9), boxMask(0, 1, 9, 11, 10, 13)
    writer.apply(segmentId, first, "add")
    writer.apply(segmentId, second, "add")
    editor = segmentEditorStandIn(scene, segmentation, volume)
    editor.SaveStateForUndo()  # the Segment Editor saves its state before an effect paints
    paintElsewhere(segmentation, segmentId, volume, painted)
    assert writer.canUndo
    with pytest.raises(InputError, match="edited after MedSAM's last apply.*Segment Editor's Undo"):
        writer.undo()
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), first | second | painted)
    # Once the later edit is taken back where it was made, MedSAM's applies undo one by one, in order.
    editor.Undo()
    assert writer.undo()
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, volume), first)
    assert writer.undo()
    assert not segmentMaskKji(segmentation, segmentId, volume).any()
    assert not writer.canUndo and writer.undo() is False


def test_renaming_or_recolouring_a_segment_does_not_block_undo(scene):
    volume = makeVolume(scene, np.zeros(SHAPE_KJI, np.float32), "LPS")
    writer = SegmentWriter(None, volume)
    segmentation, segmentId = writer.segmentationNode, writer.createdSegmentId
    writer.apply(segmentId, boxMask(1, 4, 1, 5, 1, 6), "add")
    segment = segmentation.GetSegmentation().GetSegment(segmentId)
    segment.SetName("liver")
    segment.SetColor(0.2, 0.4, 0.9)
    assert writer.undo()
    assert not segmentMaskKji(segmentation, segmentId, volume).any()


def test_undo_after_the_segmentation_was_removed_says_so(scene):
    volume = makeVolume(scene, np.zeros(SHAPE_KJI, np.float32), "RAS")
    writer = SegmentWriter(None, volume)
    writer.apply(writer.createdSegmentId, boxMask(1, 4, 1, 5, 1, 6), "add")
    scene.RemoveNode(writer.segmentationNode)
    with pytest.raises(InputError, match="no longer in the scene"):
        writer.undo()
    with pytest.raises(InputError, match="no longer in the scene"):
        writer.apply(writer.createdSegmentId, boxMask(1, 4, 1, 5, 1, 6), "add")


@pytest.fixture
def logicOnBall(scene):
    """A Logic with a preview of the ball ready to apply: (logic, volume, segmentationNode, segmentId)."""
    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "RAS")
    logic = logicOn(scene, volume, 2, addRoi(scene, volume, centre, 2))
    segmentationNode, segmentId = logic.setSegmentation()
    logic.segmentSlice()
    assert logic.previewMaskKji.any()
    yield logic, volume, segmentationNode, segmentId
    logic.cleanup()


def test_segment_editor_undo_takes_an_apply_back(scene, logicOnBall):
    logic, volume, segmentationNode, segmentId = logicOnBall
    existing = np.zeros(logic.previewMaskKji.shape, bool)
    existing[1, 1:4, 1:4] = True
    logic.writer.apply(segmentId, existing, "add")
    editor = segmentEditorStandIn(scene, segmentationNode, volume)
    calls = []

    def saveInSegmentEditor(node):  # what the module registers: the widget's saveStateForUndo()
        calls.append(node)
        if userSegmentEditorNode(scene).GetSegmentationNode() is node:
            editor.SaveStateForUndo()

    logic.setExternalUndoSaver(saveInSegmentEditor)
    logic.apply()
    assert calls == [segmentationNode] and editor.CanUndo()
    assert segmentMaskKji(segmentationNode, segmentId, volume).sum() > existing.sum()
    editor.Undo()  # the Segment Editor's Undo button / Ctrl+Z
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), existing)


def test_masking_comes_from_slicers_segment_editor_node_not_the_modules_own(scene, logicOnBall):
    import slicer

    logic, volume, segmentationNode, segmentId = logicOnBall
    otherId = segmentationNode.GetSegmentation().AddEmptySegment("", "other")
    other = np.zeros(logic.previewMaskKji.shape, bool)
    other[:, :, :8] = True  # up to the ball's centre column: it cuts the ball in two
    logic.writer.apply(otherId, other, "add")
    # A segment editor node that is not Slicer's, first in the scene, with the opposite settings.
    decoy = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    decoy.SetOverwriteMode(decoy.OverwriteAllSegments)
    decoy.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    user = userSegmentEditorNode(scene)
    user.SetOverwriteMode(user.OverwriteNone)  # "Modify other segments: none"
    user.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)  # "Editable area: outside all segments"
    preview = logic.previewMaskKji.copy()
    assert (preview & other).any() and (preview & ~other).any()
    logic.apply("add")
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, otherId, volume), other)
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), preview & ~other)
    assert logic.undo()
    user.SetOverwriteMode(user.OverwriteAllSegments)
    user.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    logic.segmentSlice()
    logic.apply("add")
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), preview)
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, otherId, volume), other & ~preview)
    # MedSAM never changed the Segment Editor's own selections.
    assert user.GetSegmentationNode() is None and user.GetSelectedSegmentID() is None


def test_logic_undo_refuses_after_a_later_edit(scene, logicOnBall):
    logic, volume, segmentationNode, segmentId = logicOnBall
    logic.apply()
    applied = segmentMaskKji(segmentationNode, segmentId, volume)
    painted = np.zeros(applied.shape, bool)
    painted[1, 1:4, 1:4] = True
    paintElsewhere(segmentationNode, segmentId, volume, painted)
    with pytest.raises(InputError, match="edited after"):
        logic.undo()
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), applied | painted)
