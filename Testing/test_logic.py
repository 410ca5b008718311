"""MedSAMLogic on a real MRML scene: prompts from markups -> preview -> segment, undo, observation.

Accuracy is shown with the weight-free GrowCut engine (deterministic) on a
bright ball with a mirrored decoy on the same slice; the SAM path runs once
end to end with a tiny random checkpoint (no accuracy claim).
"""

import threading

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import CancelledError, GeometryError, InputError, PromptError
from MedSAMSlicerLib.workflow.logic import MedSAMLogic
from MedSAMSlicerLib.core.progress import CancelToken
from MedSAMSlicerLib.mrml.segmentwriter import segmentMaskKji
from MedSAMSlicerLib.mrml.volumegeometry import ijkToWorld
from test_segmentwriter import GEOMETRIES, internalLabelmap, makeVolume, voxelHash

SHAPE_KJI = (16, 24, 28)
RADIUS_VOXELS = 3.2


def ballsPhantom(axis, seed=0):
    """(voxels, objectKji, decoyKji, objectCentreIjk): a bright ball and its mirror image on the same slice across ``axis``."""
    shapeIjk = np.array(SHAPE_KJI[::-1])
    centre = np.array([8.0, 7.0, 5.0])
    centre[axis] = shapeIjk[axis] // 2
    mirrored = shapeIjk - 1 - centre
    mirrored[axis] = centre[axis]
    kk, jj, ii = np.ogrid[: SHAPE_KJI[0], : SHAPE_KJI[1], : SHAPE_KJI[2]]

    def ball(p):
        return (ii - p[0]) ** 2 + (jj - p[1]) ** 2 + (kk - p[2]) ** 2 <= RADIUS_VOXELS**2

    obj, decoy = ball(centre), ball(mirrored)
    voxels = 100.0 * (obj | decoy) + np.random.default_rng(seed).normal(0.0, 8.0, SHAPE_KJI)
    return voxels.astype(np.float32), obj, decoy, centre


def addRoi(scene, volume, centreIjk, axis, halfVoxels=5.0, thickness=0.3):
    """An ROI markup (world RAS) aligned with the volume's voxel axes: a box of +-halfVoxels in-plane, thin across ``axis``."""
    import slicer

    matrix = ijkToWorld(volume)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    rotation = matrix[:3, :3] / spacing
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1.0
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = rotation
    objectToNode[:3, 3] = (matrix @ np.r_[centreIjk, 1.0])[:3]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
    radius = spacing * halfVoxels
    radius[axis] = spacing[axis] * thickness
    roi.SetRadiusXYZ(*radius)
    return roi


def logicOn(scene, volume, axis=2, *promptNodes):
    """A MedSAMLogic on ``volume``, slicing along ``axis``, with ``promptNodes`` (ROI, positive, negative) when given."""
    logic = MedSAMLogic(scene)
    logic.setVolume(volume)
    logic.setAxis(axis)
    if promptNodes:
        logic.setPromptNodes(*promptNodes)
    return logic


def onSlice(arrayKji, axis, k):
    index = [slice(None)] * 3
    index[2 - axis] = int(k)
    return arrayKji[tuple(index)]


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture
def setup(scene):
    """A Logic on the RAS balls phantom (axis K) with an ROI around the object: (logic, volume, roi, obj, decoy, centre)."""
    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "RAS")
    roi = addRoi(scene, volume, centre, 2)
    logic = logicOn(scene, volume, 2, roi)
    yield logic, volume, roi, obj, decoy, centre
    logic.cleanup()


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["sagittal-like I", "coronal-like J", "axial-like K"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_box_gives_mask_on_object_not_on_mirrored_decoy(scene, geometry, axis):
    voxels, obj, decoy, centre = ballsPhantom(axis)
    volume = makeVolume(scene, voxels, geometry)
    before = voxelHash(volume)
    logic = logicOn(scene, volume, axis, addRoi(scene, volume, centre, axis))  # no engine set: the weight-free GrowCut default
    logic.segmentSlice()
    mask = logic.previewMaskKji
    assert logic.lastResult.sliceIndices == [int(centre[axis])]
    assert dice(onSlice(mask, axis, centre[axis]), onSlice(obj, axis, centre[axis])) > 0.8
    assert not (mask & decoy).any()
    assert mask.sum() == onSlice(mask, axis, centre[axis]).sum()  # one slice only
    # The preview node shows the same voxels on the volume's grid.
    np.testing.assert_array_equal(segmentMaskKji(logic.writer.previewNode, "MedSAMPreview", volume), mask)
    assert voxelHash(volume) == before
    logic.cleanup()


def test_slice_views_choose_the_axis_and_oblique_views_are_refused(scene):
    import slicer

    voxels, obj, decoy, centre = ballsPhantom(1)
    volume = makeVolume(scene, voxels, "RAS")
    logic = MedSAMLogic(scene)
    logic.setVolume(volume)
    sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    viewed = centre + [0.0, 1.0, 0.0]  # one slice off the box's middle along J
    expected = {"Axial": 2, "Sagittal": 0, "Coronal": 1}
    for orientation, axis in expected.items():
        sliceToRas = np.eye(4)
        sliceToRas[:3, :3] = {"Axial": np.eye(3), "Coronal": [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                              "Sagittal": [[0, 0, 1], [1, 0, 0], [0, 1, 0]]}[orientation]
        sliceToRas[:3, 3] = (ijkToWorld(volume) @ np.r_[viewed, 1.0])[:3]
        sliceNode.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(sliceToRas))
        sliceNode.UpdateMatrices()
        logic.setSliceNode(sliceNode)
        assert logic.axis == axis, orientation
    # Coronal view, a box spanning slices (3D ROI): the slice shown in the view is segmented.
    roi = addRoi(scene, volume, centre, 1, thickness=3.0)
    logic.setPromptNodes(roi)
    logic.segmentSlice()
    assert logic.lastResult.sliceIndices == [int(viewed[1])]
    assert not (logic.previewMaskKji & decoy).any()
    oblique = np.eye(4)
    oblique[:3, :3] = [[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]
    sliceNode.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(oblique))
    sliceNode.UpdateMatrices()
    with pytest.raises(GeometryError, match="oblique"):
        logic.setSliceNode(sliceNode)
    logic.cleanup()


def test_apply_writes_preview_then_undo_restores_bit_for_bit(setup):
    logic, volume, roi, obj, decoy, centre = setup
    segmentationNode, segmentId = logic.setSegmentation()
    k = int(centre[2])
    # An existing segment: a wrong blob on the object's slice and something on another slice.
    existing = np.zeros(SHAPE_KJI, bool)
    existing[k, 15:20, 18:24] = True
    existing[2, 3:6, 3:6] = True
    logic.writer.apply(segmentId, existing, "add")
    fingerprint = internalLabelmap(segmentationNode, segmentId)
    before = voxelHash(volume)
    logic.segmentSlice()
    preview = logic.previewMaskKji.copy()
    logic.apply()  # default: replace the previewed slice, keep the others
    written = segmentMaskKji(segmentationNode, segmentId, volume)
    np.testing.assert_array_equal(written[k], preview[k])
    np.testing.assert_array_equal(np.delete(written, k, axis=0), np.delete(existing, k, axis=0))
    assert logic.previewMaskKji is None and logic.canUndo
    assert logic.undo()
    assert internalLabelmap(segmentationNode, segmentId) == fingerprint
    logic.segmentSlice()
    logic.apply("add")
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), existing | preview)
    assert voxelHash(volume) == before


def test_apply_respects_overwrite_none_and_intensity_range_of_the_editor_node(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    segmentationNode, segmentId = logic.setSegmentation()
    otherId = segmentationNode.GetSegmentation().AddEmptySegment("", "other")
    other = np.zeros(SHAPE_KJI, bool)
    other[:, 3:12, 4:13] = True  # overlaps the object
    logic.writer.apply(otherId, other, "add")
    otherFingerprint = internalLabelmap(segmentationNode, otherId)
    editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")  # as the widget passes Slicer's own
    editorNode.SetOverwriteMode(editorNode.OverwriteNone)
    editorNode.SetSourceVolumeIntensityMask(True)
    editorNode.SetSourceVolumeIntensityMaskRange(90.0, 1000.0)
    logic.setSegmentEditorNode(editorNode)
    logic.segmentSlice()
    preview = logic.previewMaskKji.copy()
    logic.apply("add")
    assert internalLabelmap(segmentationNode, otherId) == otherFingerprint
    import slicer

    voxels = slicer.util.arrayFromVolume(volume)
    written = segmentMaskKji(segmentationNode, segmentId, volume)
    np.testing.assert_array_equal(written, preview & (voxels >= 90.0))
    assert written.sum() < preview.sum()  # the range did cut something


def test_preview_is_not_saved_with_the_scene(setup, scene, tmp_path):
    logic, volume, roi, obj, decoy, centre = setup
    logic.segmentSlice()
    preview = logic.writer.previewNode
    assert not preview.GetSaveWithScene()
    scene.SetURL(str(tmp_path / "scene.mrml"))
    scene.Commit()
    saved = (tmp_path / "scene.mrml").read_text()
    assert preview.GetID() not in saved and volume.GetID() in saved


def test_moving_the_roi_updates_the_preview_without_re_encoding(setup):
    logic, volume, roi, obj, decoy, centre = setup
    logic.segmentSlice()
    first = logic.previewMaskKji.copy()
    stats = logic.cacheStats()
    changes = []
    logic.previewChanged.connect(lambda: changes.append(1))
    # Move the box (and so the prompt) in-plane onto the decoy: same slice, so a decode only.
    shiftKji = np.mean(np.nonzero(decoy), axis=1) - np.mean(np.nonzero(obj), axis=1)
    shiftRas = ijkToWorld(volume)[:3, :3] @ shiftKji[::-1]
    roi.SetCenter(*(np.array(roi.GetCenter()) + shiftRas))
    after = logic.cacheStats()
    assert changes, "the preview did not follow the ROI"
    moved = logic.previewMaskKji
    assert (moved & decoy).any() and not (moved & obj).any() and not np.array_equal(first, moved)
    assert after["encoded"] == stats["encoded"]
    assert after["hits"] > stats["hits"]


def test_markup_events_are_coalesced_into_one_update(setup):
    logic, volume, roi, obj, decoy, centre = setup
    scheduled = []
    logic.scheduleCallback = lambda delayMs, callback: scheduled.append(callback)
    decodes = []
    logic.previewChanged.connect(lambda: decodes.append(logic.lastResult))
    for step in range(4):
        radius = [0.0, 0.0, 0.0]
        roi.GetRadiusXYZ(radius)
        roi.SetRadiusXYZ(*(np.array(radius) + [0.1, 0.1, 0.0]))
    assert len(scheduled) == 1 and not decodes
    assert logic.processPendingUpdates()
    assert len(decodes) == 1 and logic.previewMaskKji is not None
    assert not logic.processPendingUpdates()  # nothing pending any more


def test_prompt_errors_from_observation_are_reported_not_raised(setup):
    logic, volume, roi, obj, decoy, centre = setup
    messages = []
    logic.status.connect(messages.append)
    logic.segmentSlice()
    roi.SetCenter(5000.0, 5000.0, 5000.0)  # off the volume
    assert isinstance(logic.lastError, PromptError)
    assert logic.previewMaskKji is None and "outside" in messages[-1]


def test_changing_the_volume_voxels_invalidates_its_embeddings(setup):
    import slicer

    logic, volume, roi, obj, decoy, centre = setup
    logic.segmentSlice()
    oldSignature = logic.source.signature
    assert any(key.signature == oldSignature for key in logic.service.cache.keys())
    encoded = logic.cacheStats()["encoded"]
    voxels = slicer.util.arrayFromVolume(volume)
    voxels[:] = voxels[::-1].copy()  # move the objects
    slicer.util.arrayFromVolumeModified(volume)
    assert logic.source.signature != oldSignature
    assert not any(key.signature == oldSignature for key in logic.service.cache.keys())
    assert logic.previewMaskKji is None
    logic.segmentSlice()
    assert logic.cacheStats()["encoded"] == encoded + 1


def test_moving_the_volume_invalidates_its_embeddings(setup, scene):
    import slicer

    logic, volume, roi, obj, decoy, centre = setup
    logic.segmentSlice()
    oldSignature = logic.source.signature
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    shifted = np.eye(4)
    shifted[:3, 3] = (4.0, 0.0, 0.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shifted))
    assert logic.source.signature != oldSignature
    assert not any(key.signature == oldSignature for key in logic.service.cache.keys())
    volume.SetName("renamed")  # not a geometry change: the cache is kept
    signature = logic.source.signature
    logic.segmentSlice()
    volume.SetName("renamed again")
    assert logic.source.signature == signature and any(k.signature == signature for k in logic.service.cache.keys())


def test_split_form_runs_in_a_worker_thread(setup):
    logic, volume, roi, obj, decoy, centre = setup
    job = logic.prepareSegmentSlice()
    outcome, progress = {}, []
    worker = threading.Thread(target=lambda: outcome.setdefault("result", job.run(lambda f, t: progress.append(f))))
    worker.start()
    worker.join(60)
    result = outcome["result"]
    assert logic.previewMaskKji is None  # nothing shown until the main thread says so
    logic.showResult(result)
    assert logic.previewMaskKji is result.maskKji and progress[-1] == 1.0
    assert dice(result.maskKji[int(centre[2])], obj[int(centre[2])]) > 0.8
    # A result computed before the voxels changed is refused.
    stale = logic.prepareSegmentSlice().run()
    import slicer

    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1.0
    slicer.util.arrayFromVolumeModified(volume)
    with pytest.raises(InputError, match="changed"):
        logic.showResult(stale)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(CancelledError):
        logic.prepareSegmentSlice().run(cancel=cancel)


def test_clear_removes_preview_and_prompts_but_not_the_segment(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    logic.setPromptNodes(roi, points)
    segmentationNode, segmentId = logic.setSegmentation()
    logic.segmentSlice()
    logic.apply()
    logic.segmentSlice()
    points.AddControlPoint(*(ijkToWorld(volume) @ np.r_[centre, 1.0])[:3])
    assert logic.previewMaskKji is not None
    logic.clear()
    assert logic.previewMaskKji is None
    assert roi.GetNumberOfControlPoints() == 0 and points.GetNumberOfControlPoints() == 0
    assert segmentMaskKji(segmentationNode, segmentId, volume).any()
    assert not segmentMaskKji(logic.writer.previewNode, "MedSAMPreview", volume).any()


def test_user_errors_raise_clear_messages(scene):
    logic = MedSAMLogic(scene)
    with pytest.raises(InputError, match="volume"):
        logic.segmentSlice()
    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "RAS")
    logic.setVolume(volume)
    with pytest.raises(PromptError, match="No prompt"):
        logic.segmentSlice()
    with pytest.raises(InputError, match="Nothing to apply"):
        logic.apply()
    assert not logic.undo()
    with pytest.raises(InputError, match="axis"):
        logic.setAxis(3)
    logic.cleanup()


def test_timings_are_recorded(setup):
    logic, volume, roi, obj, decoy, centre = setup
    logic.resetTimings()
    logic.segmentSlice()
    logic.apply()
    assert set(logic.timings) == {"encode", "decode", "write", "total"}
    assert all(value > 0.0 for value in logic.timings.values())


def test_propagation_segments_the_ball_in_3d_and_apply_replaces_those_slices(scene):
    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "oblique")
    logic = logicOn(scene, volume, 2, addRoi(scene, volume, centre, 2))
    segmentationNode, segmentId = logic.setSegmentation()
    elsewhere = np.zeros(SHAPE_KJI, bool)
    elsewhere[:, 20:23, 2:5] = True  # on every slice, away from the object
    logic.writer.apply(segmentId, elsewhere, "add")
    fingerprint = internalLabelmap(segmentationNode, segmentId)
    progress = []
    logic.progress.connect(lambda fraction, text: progress.append(fraction))
    result = logic.propagate()
    mask = logic.previewMaskKji
    assert len(result.masks) > 3 and progress[-1] == 1.0
    assert dice(mask, obj) > 0.75 and not (mask & decoy).any()
    covered = logic.lastResult.sliceIndices
    logic.apply()
    written = segmentMaskKji(segmentationNode, segmentId, volume)
    np.testing.assert_array_equal(written[covered], mask[covered])  # the previewed slices are what the preview showed
    others = [k for k in range(SHAPE_KJI[0]) if k not in covered]
    np.testing.assert_array_equal(written[others], elsewhere[others])  # the other slices are kept
    logic.undo()
    assert internalLabelmap(segmentationNode, segmentId) == fingerprint
    logic.cleanup()


def test_propagation_stays_inside_a_3d_box_and_can_run_in_a_worker(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    k = int(centre[2])
    box3d = addRoi(scene, volume, centre, 2, thickness=1.6)  # slices k-1 .. k+1
    logic.setPromptNodes(box3d)
    job = logic.preparePropagation()
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", job.run()))
    worker.start()
    worker.join(60)
    logic.showResult(outcome["result"])
    assert sorted(outcome["result"].sliceIndices) == [k - 1, k, k + 1]
    assert not logic.previewMaskKji[: k - 1].any() and not logic.previewMaskKji[k + 2 :].any()
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(CancelledError):
        logic.preparePropagation().run(cancel=cancel)


def test_postprocessing_is_off_by_default_and_keeps_the_largest_component_when_asked(scene):
    from scipy import ndimage

    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "RAS")
    logic = logicOn(scene, volume, 2)
    # One box over both balls and a positive click on each: the raw mask has two components.
    mirrored = np.array(SHAPE_KJI[::-1]) - 1.0 - centre
    mirrored[2] = centre[2]
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    for pointIjk in (centre, mirrored):
        points.AddControlPoint(*(ijkToWorld(volume) @ np.r_[pointIjk, 1.0])[:3])
    logic.setPromptNodes(addRoi(scene, volume, (centre + mirrored) / 2.0, 2, halfVoxels=11.0), points)
    assert not logic.postprocess.largestComponent and not logic.postprocess.fillHoles
    logic.segmentSlice()
    k = int(centre[2])
    assert ndimage.label(logic.previewMaskKji[k])[1] == 2
    logic.postprocess.largestComponent = True
    logic.segmentSlice()
    assert ndimage.label(logic.previewMaskKji[k])[1] == 1
    logic.cleanup()


def test_set_model_by_name_and_unknown_names_are_refused(setup):
    logic, volume, roi, obj, decoy, centre = setup
    engine = logic.setModel("growcut")
    assert engine.modelId == "growcut" and logic.engine is engine
    logic.segmentSlice()
    with pytest.raises(InputError, match="Unknown engine"):
        logic.setModel("no-such-model")
    assert logic.engine is engine  # a failed switch keeps the working engine


def test_sam_path_runs_end_to_end_through_the_logic(setup, tmp_path):
    from MedSAMSlicerLib.engines.tinymodel import writeTinyCheckpoint

    logic, volume, roi, obj, decoy, centre = setup
    checkpoint = writeTinyCheckpoint(tmp_path / "tiny_sam.pth")
    engine = logic.setModel(str(checkpoint), device="cpu")
    assert engine.modelId != "growcut"
    decoded = logic.segmentSlice()
    assert decoded.mask.shape == logic.source.imageShape(2) and 0.0 <= decoded.score <= 1.0
    assert logic.cacheStats()["encoded"] == 1
    segmentationNode, segmentId = logic.setSegmentation()
    preview = logic.previewMaskKji.copy()
    logic.apply("add")
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), preview)


def test_a_click_on_the_3d_preview_corrects_it_without_re_encoding(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    logic.setPromptNodes(roi, None, negative)
    logic.propagate()
    before = logic.previewMaskKji.copy()
    k = int(centre[2]) + 1
    assert before[k].any()
    encoded = logic.cacheStats()["encoded"]
    # A negative click in the middle of the object on a propagated slice: the preview follows, in 3D.
    negative.AddControlPoint(*(ijkToWorld(volume) @ np.r_[centre[0], centre[1], k, 1.0])[:3])
    after = logic.previewMaskKji
    assert logic.lastResult.kind == "volume" and logic.lastError is None
    assert after[k].sum() < before[k].sum()
    assert logic.cacheStats()["encoded"] == encoded
    assert isinstance(logic.prepareUpdate(), type(logic.prepareCorrection()))
    negative.RemoveAllControlPoints()
    logic.segmentSlice()
    with pytest.raises(InputError, match="propagate first"):
        logic.prepareCorrection()


def test_cache_budget_and_clearing_embeddings(setup):
    logic, volume, roi, obj, decoy, centre = setup
    logic.setCacheBudget(1 << 20)
    logic.segmentSlice()
    assert logic.cacheStats()["maxBytes"] == 1 << 20 and logic.cacheStats()["entries"] == 1
    logic.clearEmbeddings()
    assert logic.cacheStats()["entries"] == 0
    encoded = logic.cacheStats()["encoded"]
    logic.segmentSlice()
    assert logic.cacheStats()["encoded"] == encoded + 1
    with pytest.raises(InputError, match="positive"):
        logic.setCacheBudget(0)


def test_rgb_photo_as_one_slice_vector_volume_segments_and_applies(scene):
    import slicer

    voxels, obj, decoy, centre = ballsPhantom(2)
    k = int(centre[2])
    photo = np.zeros((1,) + SHAPE_KJI[1:] + (3,), np.uint8)
    photo[0, ..., 0] = np.clip(voxels[k] * 2.0, 0, 255)  # a red object and its decoy on black
    photo[0, ..., 2] = 40
    volume = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    slicer.util.updateVolumeFromArray(volume, photo)
    before = voxelHash(volume)
    logic = MedSAMLogic(scene)
    logic.setVolume(volume)
    logic.setAxis(2)
    logic.setPromptNodes(addRoi(scene, volume, [centre[0], centre[1], 0.0], 2))
    logic.segmentSlice()
    mask = logic.previewMaskKji
    assert mask.shape == (1,) + SHAPE_KJI[1:]
    assert dice(mask[0], obj[k]) > 0.8 and not (mask[0] & decoy[k]).any()
    segmentationNode, segmentId = logic.setSegmentation()
    logic.apply()
    np.testing.assert_array_equal(segmentMaskKji(segmentationNode, segmentId, volume), mask)
    assert voxelHash(volume) == before
    logic.cleanup()


def test_each_engine_keeps_its_embeddings_across_switches_and_volumes(setup, scene):
    from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine

    logic, volume, roi, obj, decoy, centre = setup
    first, second = GrowCutEngine(), GrowCutEngine(smoothingSigma=0.0)
    second.modelId = "growcut-unsmoothed"
    logic.setEngine(first)
    logic.segmentSlice()
    logic.setEngine(second)
    logic.segmentSlice()
    assert logic.cacheStats()["encoded"] == 1  # the second engine encoded its own slice
    other = makeVolume(scene, ballsPhantom(2, seed=5)[0], "LPS", name="other")
    logic.setVolume(other)
    logic.setVolume(volume)
    logic.setEngine(first)
    hits = logic.cacheStats()["hits"]
    logic.segmentSlice()
    stats = logic.cacheStats()
    # "encoded" counts the current engine's encoder passes since it was set: none, the slice came from the cache
    assert stats["encoded"] == 0 and stats["hits"] == hits + 1


def test_closing_the_scene_forgets_its_nodes_and_the_logic_keeps_working(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    logic.setSegmentation()
    logic.segmentSlice()
    scene.Clear(False)
    assert logic.volumeNode is None and logic.segmentationNode is None and logic.previewMaskKji is None
    with pytest.raises(InputError, match="No volume"):
        logic.segmentSlice()
    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "RAS")
    logic.setVolume(volume)
    logic.setPromptNodes(addRoi(scene, volume, centre, 2))
    logic.segmentSlice()
    segmentationNode, segmentId = logic.setSegmentation()
    logic.apply()
    assert segmentMaskKji(segmentationNode, segmentId, volume).any()


def test_prefetch_encodes_ahead_so_propagation_encodes_nothing_more(setup):
    logic, volume, roi, obj, decoy, centre = setup
    k = int(centre[2])
    job = logic.prefetch(sliceRange=(k - 4, k + 4), aroundIndex=k)
    job.wait(60)
    assert job.done and logic.cacheStats()["encoded"] == 9
    logic.propagate(sliceRange=(k - 4, k + 4))
    assert logic.cacheStats()["encoded"] == 9


def test_a_stray_click_off_the_propagated_slices_keeps_the_3d_preview(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    k = int(centre[2])
    positive = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    logic.setPromptNodes(roi, positive)
    logic.propagate(sliceRange=(k - 2, k + 2))
    before = logic.previewMaskKji.copy()
    positive.AddControlPoint(*(ijkToWorld(volume) @ np.r_[centre[0], centre[1], k + 5, 1.0])[:3])
    assert isinstance(logic.lastError, InputError) and "outside the propagated slices" in str(logic.lastError)
    np.testing.assert_array_equal(logic.previewMaskKji, before)


def test_cleanup_stops_observing_and_removes_the_hidden_nodes(setup, scene):
    logic, volume, roi, obj, decoy, centre = setup
    logic.segmentSlice()
    preview, editor = logic.writer.previewNode, logic.writer.segmentEditorNode
    assert preview.GetScene() is scene and editor.GetScene() is scene
    logic.cleanup()
    assert preview.GetScene() is None and editor.GetScene() is None
    changes = []
    logic.previewChanged.connect(lambda: changes.append(1))
    roi.SetCenter(*(np.array(roi.GetCenter()) + 1.0))
    assert not changes and logic.lastError is None
