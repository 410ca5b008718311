"""MedSAMLogic.fillBetweenKeySlices on a real MRML scene: the accepted slices of the segment being built are the
keys (each with the mask it shows: the preview's, else the segment's), the slices between them are filled into the
preview, the segment is untouched until apply, and apply is undoable. The weight-free GrowCut fills slice by
slice; a tiny SAM 2.1 checkpoint (MedSAM2 recipe) fills through its memory."""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom
from MedSAMSlicerLib.mrml.segmentwriter import segmentMaskKji
from MedSAMSlicerLib.workflow.propagation import PropagationSettings
from test_logic import addRoi, dice, logicOn
from test_segmentwriter import internalLabelmap, makeVolume, voxelHash

SHAPE_KJI = (16, 32, 32)
KEYS = (4, 11)


@pytest.fixture
def phantom(scene):
    """(logic, volume, truthKji): a Logic on an ellipsoid phantom (axis K, 1 mm voxels) with a new segmentation."""
    voxels, truth, spacing = ellipsoidPhantom(SHAPE_KJI, noise=0.05, seed=3)
    volume = makeVolume(scene, voxels, "RAS", spacing=spacing)
    logic = logicOn(scene, volume, 2)
    logic.setSegmentation()
    yield logic, volume, truth
    logic.cleanup()


def _boxOn(scene, logic, volume, truth, k):
    """Prompt slice k with a box around the object's cross-section there (a new ROI)."""
    rows, cols = np.nonzero(truth[k])
    centre = ((cols.min() + cols.max()) / 2.0, (rows.min() + rows.max()) / 2.0, float(k))
    half = max(cols.max() - cols.min(), rows.max() - rows.min()) / 2.0 + 2.5
    logic.setPromptNodes(addRoi(scene, volume, centre, 2, halfVoxels=half))


def test_growcut_fills_between_an_applied_and_a_previewed_key_slice(phantom, scene):
    """Key 4 applied earlier (in the segment), key 11 only in the preview: both accepted, fill, every slice
    between holds the object in the preview, the segment is untouched until apply, and undo restores it."""
    logic, volume, truth = phantom
    a, b = KEYS
    _boxOn(scene, logic, volume, truth, a)
    logic.segmentSlice()
    logic.apply()
    keyA = segmentMaskKji(logic.segmentationNode, logic.segmentId, volume)[a]
    _boxOn(scene, logic, volume, truth, b)
    logic.segmentSlice()
    keyB = logic.previewMaskKji[b].copy()
    assert logic.acceptSlices([a, b]) == [a, b]
    before, voxels = internalLabelmap(logic.segmentationNode, logic.segmentId), voxelHash(volume)

    result = logic.fillBetweenKeySlices()
    preview = logic.previewMaskKji
    assert type(result).__name__ == "PropagationResult"  # the weight-free engine: slice by slice from both keys
    assert logic.lastResult.sliceIndices == list(range(a, b + 1))
    np.testing.assert_array_equal(preview[a], keyA)
    np.testing.assert_array_equal(preview[b], keyB)
    for k in range(a + 1, b):
        assert dice(preview[k], truth[k]) > 0.85, k
    assert not preview[:a].any() and not preview[b + 1:].any()
    assert internalLabelmap(logic.segmentationNode, logic.segmentId) == before  # nothing written yet

    logic.apply()
    written = segmentMaskKji(logic.segmentationNode, logic.segmentId, volume)
    np.testing.assert_array_equal(written[a:b + 1], preview[a:b + 1])
    assert logic.canUndo and logic.undo()
    assert internalLabelmap(logic.segmentationNode, logic.segmentId) == before
    assert voxelHash(volume) == voxels


def test_an_accepted_slice_keeps_its_mask_when_a_later_preview_of_another_slice_replaces_it(phantom, scene):
    """What the panel does: segment slice a, accept it; a new box on slice b replaces the preview (slice a is no
    longer in it); accept b; the fill still starts from a's mask as it was accepted."""
    logic, volume, truth = phantom
    a, b = KEYS
    _boxOn(scene, logic, volume, truth, a)
    logic.segmentSlice()
    keyA = logic.previewMaskKji[a].copy()
    assert logic.acceptSlices([a]) == [a]
    _boxOn(scene, logic, volume, truth, b)
    logic.segmentSlice()
    assert logic.lastResult.sliceIndices == [b] and not logic.previewMaskKji[a].any()
    assert logic.acceptSlices([b]) == [a, b]
    logic.fillBetweenKeySlices()
    preview = logic.previewMaskKji
    np.testing.assert_array_equal(preview[a], keyA)
    assert all(dice(preview[k], truth[k]) > 0.85 for k in range(a + 1, b))
    logic.apply()  # a new segment begins: nothing stays accepted, no mask is kept
    assert logic.session.acceptedSlices(2) == set() and logic.session.acceptedMasks(2) == {}


def test_a_fill_replaces_a_propagated_preview_between_its_accepted_slices_only(phantom, scene):
    logic, volume, truth = phantom
    a, b = KEYS
    logic.nativeVolume = False
    _boxOn(scene, logic, volume, truth, (a + b) // 2)
    logic.propagate()
    propagated = logic.previewMaskKji.copy()
    logic.acceptSlices([a, b])
    logic.fillBetweenKeySlices()
    covered = logic.lastResult.sliceIndices
    assert set(range(a, b + 1)) <= set(covered)
    outside = [k for k in range(SHAPE_KJI[0]) if not a <= k <= b]
    np.testing.assert_array_equal(logic.previewMaskKji[outside], propagated[outside])  # kept as they were
    np.testing.assert_array_equal(logic.previewMaskKji[[a, b]], propagated[[a, b]])  # the keys as accepted


def test_fill_says_what_is_missing(phantom, scene):
    logic, volume, truth = phantom
    with pytest.raises(InputError, match="at least two accepted slices"):
        logic.fillBetweenKeySlices()
    _boxOn(scene, logic, volume, truth, KEYS[0])
    logic.segmentSlice()
    logic.acceptSlices(KEYS)
    with pytest.raises(InputError, match=rf"\[{KEYS[1]}\] show no mask"):
        logic.fillBetweenKeySlices()
    assert logic.lastResult.sliceIndices == [KEYS[0]]  # the preview stays as it was
    with pytest.raises(InputError, match="propagation settings"):
        logic.fillBetweenKeySlices(settings="fast")


def test_a_sam2_model_fills_through_its_memory(phantom, scene, tmp_path, oneTorchThread):
    """MedSAM2 recipe, tiny checkpoint: key masks in the segment (applied before), both accepted; the fill is
    a memory result whose conditioning slices are the keys, each slice of the range encoded once."""
    pytest.importorskip("torch")
    pytest.importorskip("sam2")
    from MedSAMSlicerLib.engines.tinysam2 import writeTinySam2Checkpoint
    from MedSAMSlicerLib.workflow.memorypropagation import MemoryPropagationResult

    logic, volume, truth = phantom
    a, b = KEYS
    keys = np.zeros(SHAPE_KJI, bool)
    keys[[a, b]] = truth[[a, b]]
    logic.writer.apply(logic.segmentId, keys, "add")
    before = internalLabelmap(logic.segmentationNode, logic.segmentId)
    logic.setModel(str(writeTinySam2Checkpoint(tmp_path / "cover.pt", seed=1, coverImage=True)), device="cpu",
                   recipe="medsam2")
    logic.acceptSlices([a, b])
    result = logic.fillBetweenKeySlices(PropagationSettings(minAreaPixels=0, maxAreaRatio=1e9, minScore=0.0,
                                                            minIouWithPrevious=0.0))
    assert isinstance(result, MemoryPropagationResult) and set(result.conditioning) == {a, b}
    assert result.session.steps == 2 + (b - a - 1)  # two keys conditioned, each slice between tracked once
    assert logic.cacheStats()["encoded"] == b - a + 1
    preview = logic.previewMaskKji
    assert logic.lastResult.sliceIndices == list(range(a, b + 1))
    np.testing.assert_array_equal(preview[[a, b]], truth[[a, b]])
    assert all(preview[k].all() for k in range(a + 1, b))  # this model's masks cover every slice
    assert internalLabelmap(logic.segmentationNode, logic.segmentId) == before
    logic.apply()
    assert segmentMaskKji(logic.segmentationNode, logic.segmentId, volume)[a + 1:b].all()
    assert logic.undo() and internalLabelmap(logic.segmentationNode, logic.segmentId) == before
