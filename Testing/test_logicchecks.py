"""The Python API's setters and actions refuse wrong arguments and drop nodes that left the scene, with MedSAMErrors.

As a console user drives MedSAMLogic: real MRML nodes in a real scene (slicer-core), wrong types and ranges,
nodes removed while the Logic holds them, prompts whose coordinates are not numbers. Every refusal is a
MedSAMError whose message says what was expected -- never an AttributeError, TypeError or ValueError.
"""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError, MedSAMError, PromptError
from MedSAMSlicerLib.engines.base import Prompts
from MedSAMSlicerLib.workflow.logic import MedSAMLogic
from test_logic import addRoi, setup  # noqa: F401 (setup is a fixture)


def wrongCalls(logic, scene, volume, roi):
    """(what, call, words in the message) for wrong arguments a console user can pass."""
    import slicer

    fiducial = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    otherScene = slicer.vtkMRMLScene()
    foreign = otherScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    return [
        ("volume as a string", lambda: logic.setVolume("CT"), "must be a vtkMRMLScalarVolumeNode"),
        ("segmentation as volume", lambda: logic.setVolume(segmentation), "vtkMRMLSegmentationNode"),
        ("volume of another scene", lambda: logic.setVolume(foreign), "not in the Logic's scene"),
        ("policy as a string", lambda: logic.setVolume(volume, policy="ct"), "IntensityPolicy"),
        ("points node as ROI", lambda: logic.setPromptNodes(roiNode=fiducial), "vtkMRMLMarkupsROINode"),
        ("ROI as points", lambda: logic.setPromptNodes(roi, positiveNode=roi), "vtkMRMLMarkupsFiducialNode"),
        ("string as points", lambda: logic.setPromptNodes(roi, negativeNode="p"), "vtkMRMLMarkupsFiducialNode"),
        ("volume as segmentation", lambda: logic.setSegmentation(volume), "vtkMRMLSegmentationNode"),
        ("number as segment id", lambda: logic.setSegmentation(segmentation, 5), "segment ID must be a str"),
        ("volume as editor node", lambda: logic.setSegmentEditorNode(volume), "vtkMRMLSegmentEditorNode"),
        ("axis as a letter", lambda: logic.setAxis("k"), "slice axis"),
        ("axis as a bool", lambda: logic.setAxis(True), "slice axis"),
        ("axis 3", lambda: logic.setAxis(3), "out of range"),
        ("no slice view", lambda: logic.setSliceNode(None), "No slice view"),
        ("volume as slice view", lambda: logic.setSliceNode(volume), "vtkMRMLSliceNode"),
        ("slice index as text", lambda: logic.segmentSlice(sliceIndex="3"), "slice index must be a whole number"),
        ("slice index past the end", lambda: logic.segmentSlice(sliceIndex=999), "out of range"),
        ("reversed slice range", lambda: logic.propagate(sliceRange=(5, 2)), "reversed"),
        ("slice range past the end", lambda: logic.propagate(sliceRange=(0, 999)), "out of range"),
        ("slice range as text", lambda: logic.propagate(sliceRange="all"), "pair"),
        ("settings as text", lambda: logic.propagate(settings="fast"), "PropagationSettings"),
        ("cancel as a bool", lambda: logic.propagate(cancel=True), "CancelToken"),
        ("prefetch range as a number", lambda: logic.prefetch(sliceRange=4), "pair"),
        ("prefetch around a float", lambda: logic.prefetch(aroundIndex=2.5), "whole number"),
        ("cache budget as text", lambda: logic.setCacheBudget("1GB"), "positive number"),
        ("cache budget NaN", lambda: logic.setCacheBudget(float("nan")), "positive number"),
        ("negative cache budget", lambda: logic.setCacheBudget(-5), "positive number"),
        ("engine as a name", lambda: logic.setEngine("growcut"), "Engine interface"),
        ("model name as a number", lambda: logic.setModel(5), "model name"),
    ]


def test_wrong_arguments_raise_medsam_errors_saying_what_is_expected(setup, scene):
    logic, volume, roi, *_ = setup
    for what, call, words in wrongCalls(logic, scene, volume, roi):
        with pytest.raises(MedSAMError) as error:
            call()
        assert words in str(error.value), f"{what}: {error.value}"
    # Nothing was changed by the refused calls: the Logic still segments with its inputs.
    assert logic.volumeNode is volume and logic.roiNode is roi and logic.axis == 2
    logic.segmentSlice()
    assert logic.previewMaskKji.any()


def test_removed_roi_is_dropped_not_used(setup, scene):
    logic, volume, roi, *_ = setup
    logic.segmentSlice()
    scene.RemoveNode(roi)
    with pytest.raises(PromptError, match="No prompt"):
        logic.segmentSlice()
    assert logic.roiNode is None


def test_removed_segmentation_has_no_undo_and_apply_writes_a_new_one(setup, scene):
    logic, volume, roi, *_ = setup
    segmentation, _ = logic.setSegmentation()
    logic.segmentSlice()
    logic.apply()
    assert logic.canUndo
    scene.RemoveNode(segmentation)
    assert logic.undo() is False and not logic.canUndo
    logic.segmentSlice()
    logic.apply()
    assert logic.segmentationNode is not segmentation and logic.segmentationNode.GetScene() is scene
    assert logic.undo() is True  # the new segmentation has its own history


def test_removed_volume_is_refused_by_every_action(setup, scene):
    logic, volume, roi, *_ = setup
    logic.segmentSlice()
    scene.RemoveNode(volume)
    for action in (logic.segmentSlice, logic.propagate, logic.apply, logic.setSegmentation, logic.prefetch):
        with pytest.raises(InputError, match="volume was removed from the scene|No volume set"):
            action()
    assert logic.previewMaskKji is None


def test_nan_in_a_prompt_coordinate_is_a_prompt_error(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    points.AddControlPoint([float("nan"), 0.0, 0.0])
    logic.setPromptNodes(roi, positiveNode=points)
    with pytest.raises(PromptError, match="not a number"):
        logic.segmentSlice()
    box = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "nan box")
    box.SetXYZ(0.0, float("nan"), 0.0)
    box.SetRadiusXYZ(5.0, 5.0, 1.0)
    logic.setPromptNodes(box)
    with pytest.raises(PromptError, match="not a number"):
        logic.segmentSlice()


@pytest.mark.parametrize("kwargs", [dict(pointsXy=[[np.nan, 3.0]], pointLabels=[1]),
                                    dict(pointsXy=[[2.0, np.inf]], pointLabels=[0]),
                                    dict(boxXyxy=(0.0, 1.0, np.nan, 9.0))])
def test_engine_prompts_refuse_non_finite_coordinates(kwargs):
    with pytest.raises(PromptError, match="not (a number|numbers)"):
        Prompts(**kwargs)
