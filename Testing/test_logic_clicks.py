"""Clicks through MedSAMLogic on real MRML nodes: every click lasts, a fixed slice is never overwritten.

The point markups are the user's clicks (any slice); the Logic's session keeps
them for every later re-computation. Weight-free engine, balls phantom of test_logic.
"""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.mrml.volumegeometry import ijkToWorld
from test_logic import SHAPE_KJI, addRoi, ballsPhantom, dice, logicOn
from test_segmentwriter import makeVolume


@pytest.fixture
def clicking(scene):
    """(logic, volume, positive, negative, obj, centre): a 3D box around the ball, empty point markups."""
    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "oblique")
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    logic = logicOn(scene, volume, 2, addRoi(scene, volume, centre, 2, halfVoxels=6.0, thickness=5.0), positive, negative)
    logic.scheduleCallback = lambda delayMs, callback: None  # as a widget's timer: many events, one update
    yield logic, volume, positive, negative, obj, centre
    logic.cleanup()


def click(logic, volume, node, ijk):
    """Place a point as a user does, then let the debounced update run."""
    node.AddControlPoint(*(ijkToWorld(volume) @ np.r_[np.asarray(ijk, float), 1.0])[:3])
    assert logic.processPendingUpdates()


def test_a_3d_box_with_the_weight_free_engine_is_segmented_in_3d_and_each_click_updates_it(clicking):
    logic, volume, positive, negative, obj, centre = clicking
    logic.propagate()
    result = logic.lastResult
    assert result.refinement is not None and result.refinement.mode == "native3d"
    k0, k1 = result.sliceIndices[0], result.sliceIndices[-1]
    assert k1 - k0 >= 8 and dice(logic.previewMaskKji, obj) > 0.75  # a cautious box result (GrowCut3dSettings' small core)
    k = int(centre[2])
    # Clicks that contradict the image, on two slices: each one holds, and the earlier one still holds after the later.
    click(logic, volume, negative, (centre[0], centre[1], k))
    assert logic.lastError is None and not logic.previewMaskKji[k, int(centre[1]), int(centre[0])]
    assert result.refinement.lastUpdate == "incremental"
    background = (centre[0] + 5, centre[1] - 5, k + 2)
    click(logic, volume, positive, background)
    mask = logic.previewMaskKji
    assert mask[k + 2, int(background[1]), int(background[0])]
    assert not mask[k, int(centre[1]), int(centre[0])]
    assert result.refinement.lastUpdate == "incremental" and len(logic.session.clicks) == 2
    # Deleting a click: the result is recomputed without it (from scratch).
    negative.RemoveAllControlPoints()
    logic.processPendingUpdates()
    assert logic.previewMaskKji[k, int(centre[1]), int(centre[0])] and result.refinement.lastUpdate == "full"
    logic.apply()
    assert not logic.session.clicks  # the segment is done: a new one starts with no clicks


def test_clicks_on_several_slices_accumulate_and_a_clicked_slice_is_never_overwritten(clicking):
    logic, volume, positive, negative, obj, centre = clicking
    logic.nativeVolume = False  # slice propagation (the SAM family's path), with the weight-free engine
    logic.propagate()
    assert logic.lastResult.refinement is None and logic.lastResult.propagation is not None
    k = int(centre[2])
    click(logic, volume, negative, (centre[0] + 1, centre[1], k + 1))
    fixed = logic.previewMaskKji[k + 1].copy()
    assert not fixed[int(centre[1]), int(centre[0]) + 1]
    # A click on the neighbouring slice (points now lie on two slices): corrected without a PromptError,
    # and the re-propagation stops at slice k + 1, which the user fixed.
    click(logic, volume, positive, (centre[0], centre[1], k))
    assert logic.lastError is None, logic.lastError
    np.testing.assert_array_equal(logic.previewMaskKji[k + 1], fixed)
    assert logic.previewMaskKji[k, int(centre[1]), int(centre[0])]
    assert [c.label for c in logic.session.clicks] == [0, 1]
    # Propagating again uses every click: the negative one on slice k + 1 still holds.
    logic.propagate()
    assert not logic.previewMaskKji[k + 1, int(centre[1]), int(centre[0]) + 1]


def test_an_accepted_slice_is_kept_by_later_corrections(clicking):
    logic, volume, positive, negative, obj, centre = clicking
    logic.nativeVolume = False
    logic.propagate()
    k = int(centre[2])
    assert logic.acceptSlices([k + 1]) == [k + 1]
    accepted = logic.previewMaskKji[k + 1].copy()
    click(logic, volume, negative, (centre[0], centre[1], k))  # removes the object on slice k; would spread to k + 1
    assert logic.lastError is None
    assert logic.previewMaskKji[k].sum() < accepted.sum()
    np.testing.assert_array_equal(logic.previewMaskKji[k + 1], accepted)
    with pytest.raises(InputError):
        logic.acceptSlices([SHAPE_KJI[0] + 3])
    with pytest.raises(InputError, match="slice view"):
        logic.acceptSlices()
