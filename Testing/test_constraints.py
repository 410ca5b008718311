"""Clicks as lasting constraints: the AnnotationSession, anchored slices in correctSlice, BoxRefinement on phantoms.

Each test fails if a click is ignored (its voxel or slice loses what the click
said) or a slice the user fixed is overwritten by a later correction.
"""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.embeddings.service import EmbeddingService
from MedSAMSlicerLib.engines.base import Prompts
from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.imaging.phantoms import driftingTubePhantom, ellipsoidPhantom
from MedSAMSlicerLib.imaging.slicesource import SliceSource
from MedSAMSlicerLib.workflow.constraints import AnnotationSession, sliceOf
from MedSAMSlicerLib.workflow.propagation import STOP_ANCHORED, PropagationResult, correctSlice, propagate
from MedSAMSlicerLib.workflow.refinement import BoxRefinement, applyClicks
from MedSAMSlicerLib.workflow.simulateduser import dice, truthBox3d


def test_session_keeps_click_order_syncs_with_markups_and_groups_by_slice():
    session = AnnotationSession()
    added, removed = session.sync([[1, 2, 3], [4.2, 5, 6]], [1, 0])
    assert len(added) == 2 and not removed
    # The markups gain a point and lose one: known clicks keep their place, the new one is appended.
    added, removed = session.sync([[7, 8, 3.4], [4.2, 5, 6]], [1, 0])
    assert [c.pointIjk for c in added] == [(7.0, 8.0, 3.4)] and [c.pointIjk for c in removed] == [(1.0, 2.0, 3.0)]
    assert [c.pointIjk for c in session.clicks] == [(4.2, 5.0, 6.0), (7.0, 8.0, 3.4)]
    assert sliceOf(session.clicks[1], 2) == 3 and sliceOf(session.clicks[0], 0) == 4
    source = SliceSource(np.zeros((10, 12, 14), np.float32), (1.0, 1.0, 2.0))
    assert set(session.clickedSlices(source, 2)) == {6, 3}
    session.accept(2, [8])
    assert session.anchoredSlices(source, 2) == {3, 6, 8} and session.acceptedSlices(1) == set()
    copy = session.snapshot()
    copy.addClick((1, 1, 1), 1)
    copy.accept(2, [9])
    assert len(session.clicks) == 2 and session.acceptedSlices(2) == {8}
    with pytest.raises(InputError):
        session.addClick((1, 2), 1)
    with pytest.raises(InputError):
        session.addClick((1, 2, 3), 2)
    session.clear()
    assert not session.clicks and not session.acceptedSlices(2)


def test_prompts_on_a_slice_hold_all_its_clicks_and_enforce_sets_every_click_voxel():
    source = SliceSource(np.zeros((6, 8, 10), np.float32), (0.5, 1.0, 2.0))  # non-square pixels on axis 1 and 0
    session = AnnotationSession()
    session.addClick((2.0, 3.0, 4.0), 1)
    session.addClick((7.0, 3.0, 4.0), 0)
    session.addClick((2.0, 5.0, 1.0), 1)
    prompts = session.promptsOnSlice(source, 2, 4, boxXyxy=(0, 0, 5, 5))
    assert prompts.boxXyxy == (0.0, 0.0, 5.0, 5.0) and list(prompts.pointLabels) == [1, 0]
    _, expected = source.ijkToImage(2, [(2.0, 3.0, 4.0), (7.0, 3.0, 4.0)])
    np.testing.assert_allclose(prompts.pointsXy, expected)
    assert len(session.promptsOnSlice(source, 1, 3).pointsXy) == 2  # the same clicks seen along J
    mask = np.ones(source.shapeKji, bool)
    enforced = session.enforce(mask)
    assert not enforced[4, 3, 7] and enforced[4, 3, 2] and mask[4, 3, 7]  # a copy; the input is kept
    onSlices = session.enforceOnSlices({4: np.ones(source.imageShape(2), bool)}, source, 2)
    volume = np.zeros(source.shapeKji, bool)
    for k, image in onSlices.items():
        volume[source.sliceSelector(2, k)] = source.imageMaskToNative(2, image)
    assert not volume[4, 3, 7] and volume[4, 3, 2] and volume[1, 5, 2]


@pytest.fixture(scope="module")
def tube():
    voxels, truth, spacing = driftingTubePhantom((32, 48, 48), radiusMm=7.0, driftMm=12.0, seed=5)
    source = SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))
    return source, truth


def test_a_correction_never_overwrites_a_fixed_slice(tube):
    source, truth = tube
    service = EmbeddingService(GrowCutEngine())
    k = 16
    seed = source.nativeMaskToImage(2, truth[k])
    result = propagate(service, source, 2, k, seed)
    # The user fixed slice k + 2 (clicked on it): a made-up mask the engine would never give.
    fixed = np.zeros_like(seed)
    fixed[10:20, 10:20] = True
    result.masks[k + 2] = fixed
    rows, cols = np.nonzero(truth[k + 1])
    click = Prompts(pointsXy=[[cols.mean(), rows.mean()]], pointLabels=[1])  # a click on slice k + 1
    without = correctSlice(service, source, 2, result, k + 1, click)
    anchored = correctSlice(service, source, 2, result, k + 1, click, anchoredSlices={k + 2})
    assert not np.array_equal(without.masks[k + 2], fixed)  # no anchor: re-propagation replaces it
    np.testing.assert_array_equal(anchored.masks[k + 2], fixed)
    assert anchored.stopReasons["up"] == STOP_ANCHORED
    for j in range(k + 3, 28):
        if j in result.masks:
            np.testing.assert_array_equal(anchored.masks[j], result.masks[j])  # nothing beyond the anchor changes


def test_clicks_on_one_slice_accumulate_and_every_click_is_kept(tube):
    source, truth = tube
    service = EmbeddingService(GrowCutEngine())
    k = 16
    result = propagate(service, source, 2, k, source.nativeMaskToImage(2, truth[k]))
    session = AnnotationSession()
    rows, cols = np.nonzero(truth[k + 2])
    centre = (float(cols.mean()), float(rows.mean()), float(k + 2))
    session.addClick(centre, 0)  # a negative click in the middle of the object
    first = applyClicks(service, source, 2, result, session, session.clicks[-1:])
    session.addClick((2.0, 2.0, float(k + 2)), 1)  # a positive click far off the object, same slice
    second = applyClicks(service, source, 2, first, session, session.clicks[-1:])
    for outcome in (first, second):
        volume = session.enforce(outcome.toVolumeMask(source))
        assert not volume[k + 2, int(centre[1]), int(centre[0])]
    assert second.toVolumeMask(source)[k + 2, 2, 2]
    # The second decode of slice k + 2 got both clicks: the negative one still holds there.
    assert not second.toVolumeMask(source)[k + 2, int(centre[1]), int(centre[0])]


@pytest.mark.parametrize("native", [True, False], ids=["native 3D", "propagation"])
def test_box_refinement_honours_every_click_and_accepted_slice(native):
    voxels, truth, spacing = ellipsoidPhantom((24, 40, 40), spacingIjk=(1.0, 1.0, 2.0), seed=7)
    source = SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))
    box, sliceRange = truthBox3d(source, truth, 2)
    refinement = BoxRefinement(GrowCutEngine(), source, 2, box, sliceRange, native=native)
    assert refinement.mode == ("native3d" if native else "propagation")
    session = AnnotationSession()
    boxOnly = refinement.run(session)
    assert dice(boxOnly.maskKji, truth) > 0.85 and boxOnly.update == "full"
    k = (sliceRange[0] + sliceRange[1]) // 2 + 2
    session.accept(2, [k - 1])
    acceptedBefore = boxOnly.maskKji[k - 1].copy()
    # Clicks against the image: negative in the object's centre, positive in the background inside the box.
    centre = np.argwhere(truth[k]).mean(axis=0)
    session.addClick((centre[1], centre[0], k), 0)
    inBox = np.zeros(truth.shape[1:], bool)
    rows, cols = np.nonzero(truth.any(axis=0))
    inBox[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    outside = np.argwhere(~truth[k + 1] & inBox)[0]
    session.addClick((outside[1], outside[0], k + 1), 1)
    outcome = refinement.run(session)
    assert outcome.update == "incremental"
    assert not outcome.maskKji[k, int(round(centre[0])), int(round(centre[1]))]
    assert outcome.maskKji[k + 1, outside[0], outside[1]]
    np.testing.assert_array_equal(outcome.maskKji[k - 1], acceptedBefore)
    session.clicks.pop()
    assert refinement.run(session).update == "full"


class RecordingEngine:
    """A real engine whose decodes are recorded (what prompts reached it), for checking what a correction sends."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.modelId, self.device = engine.modelId, engine.device

    def encode(self, images, progress=None):
        return self.engine.encode(images, progress)

    def decode(self, embedding, prompts):
        self.calls.append(prompts)
        return self.engine.decode(embedding, prompts)


def test_a_sam_engine_gets_all_clicks_of_the_slice_and_its_previous_low_res_mask(tmp_path, oneTorchThread):
    from MedSAMSlicerLib.engines.tinymodel import writeTinyCheckpoint
    from MedSAMSlicerLib.models.enginefactory import createEngine

    voxels, truth, spacing = ellipsoidPhantom((10, 32, 32), seed=2)
    source = SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))
    engine = RecordingEngine(createEngine(str(writeTinyCheckpoint(tmp_path / "tiny.pth")), device="cpu"))
    service = EmbeddingService(engine)
    box, sliceRange = truthBox3d(source, truth, 2)
    assert BoxRefinement(service, source, 2, box, sliceRange).mode == "propagation"  # SAM family: MedSAM's protocol
    k = 5
    result = PropagationResult(axis=2, sliceRange=(0, 9))
    result.keep(k, service.decode(service.embedding(source, 2, k), Prompts(boxXyxy=box)), service)
    assert k in result.logits  # kept for the SAM family (the weight-free engine rebuilds its prior from the mask)
    kept = result.logits[k].astype(np.float32)
    result.masks[k] = source.nativeMaskToImage(2, truth[k])
    session = AnnotationSession()
    session.addClick((10.0, 12.0, k), 1)
    session.addClick((20.0, 14.0, k), 0)
    engine.calls.clear()
    corrected = applyClicks(service, source, 2, result, session, session.clicks)
    onSlice = [p for p in engine.calls if len(p.pointsXy)]
    assert len(onSlice) == 1, "the slice is decoded once, with both of its clicks"
    prompts = onSlice[0]
    np.testing.assert_allclose(prompts.pointsXy, source.ijkToImage(2, [(10.0, 12.0, k), (20.0, 14.0, k)])[1])
    assert list(prompts.pointLabels) == [1, 0]
    np.testing.assert_array_equal(prompts.previousLowResLogits, kept)
    volume = corrected.toVolumeMask(source)
    assert volume[k, 12, 10] and not volume[k, 14, 20]  # whatever the random model decoded, the clicks hold
