"""Propagation with the weight-free engine on phantoms whose truth is known; post-processing."""

import numpy as np
import pytest

from MedSAMSlicerLib.embeddings.service import EmbeddingService
from MedSAMSlicerLib.engines.base import Prompts
from MedSAMSlicerLib.core.errors import CancelledError, InputError
from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.imaging.phantoms import driftingTubePhantom, ellipsoidPhantom, twoObjectsLabels, twoObjectsPhantom
from MedSAMSlicerLib.imaging.postprocess import fillHoles, keepLargestComponent
from MedSAMSlicerLib.core.progress import CancelToken
from MedSAMSlicerLib.workflow.keyslicefill import fillBetweenKeySlices
from MedSAMSlicerLib.workflow.propagation import (PropagationResult, PropagationSettings, correctSlice, propagate,
                                                  propagateBox3d)
from MedSAMSlicerLib.workflow.simulateduser import boxFromMask, dice, truthBox3d

ANISOTROPIC = (1.0, 1.0, 2.5)
ARRAY_AXIS = {2: 0, 1: 1, 0: 2}


class CountingEngine(GrowCutEngine):
    """GrowCut that counts encoded images and decode calls."""

    def __init__(self):
        super().__init__()
        self.encoded = 0
        self.decoded = 0

    def encode(self, images, progress=None):
        self.encoded += len(images)
        return super().encode(images, progress)

    def decode(self, embedding, prompts):
        self.decoded += 1
        return super().decode(embedding, prompts)


def _source(voxels, spacing):
    from MedSAMSlicerLib.imaging.slicesource import SliceSource

    return SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))


def _truthRange(truth, axis):
    present = np.nonzero(np.moveaxis(truth, ARRAY_AXIS[axis], 0).any(axis=(1, 2)))[0]
    return int(present[0]), int(present[-1])


def _seed(source, truth, axis):
    counts = np.moveaxis(truth, ARRAY_AXIS[axis], 0).sum(axis=(1, 2))
    k = int(np.argmax(counts))
    return k, source.nativeMaskToImage(axis, truth[source.sliceSelector(axis, k)])


PHANTOMS = {
    "ellipsoid": lambda spacing: ellipsoidPhantom((24, 48, 48), spacingIjk=spacing, seed=1),
    "drifting tube": lambda spacing: driftingTubePhantom((24, 48, 48), spacingIjk=spacing, radiusMm=5.0,
                                                         driftMm=14.0, marginSlices=3, seed=2),
}


@pytest.mark.parametrize("name", sorted(PHANTOMS))
@pytest.mark.parametrize("axis", [2, 1, 0], ids=["axial", "coronal", "sagittal"])
def test_propagation_reaches_dice_09_and_stops_at_the_object_ends(name, axis):
    voxels, truth, spacing = PHANTOMS[name](ANISOTROPIC)
    source = _source(voxels, spacing)
    k, seedMask = _seed(source, truth, axis)
    result = propagate(EmbeddingService(GrowCutEngine()), source, axis, k, seedMask, PropagationSettings())
    volume = result.toVolumeMask(source)
    assert volume.shape == truth.shape
    assert dice(volume, truth) >= 0.9
    first, last = _truthRange(truth, axis)
    assert abs(min(result.masks) - first) <= 2 and abs(max(result.masks) - last) <= 2
    assert result.stopReasons["up"] != "rangeEnd" or last == source.sliceCount(axis) - 1
    assert set(result.scores) == set(result.masks)


@pytest.mark.parametrize("axis", [2, 1, 0], ids=["axial", "coronal", "sagittal"])
def test_propagation_does_not_jump_to_the_neighbouring_object(axis):
    voxels, truthA, spacing = twoObjectsPhantom((24, 48, 48), spacingIjk=ANISOTROPIC, seed=4)
    _, truthB = twoObjectsLabels((24, 48, 48), spacingIjk=ANISOTROPIC)
    source = _source(voxels, spacing)
    k, seedMask = _seed(source, truthA, axis)
    volume = propagate(GrowCutEngine(), source, axis, k, seedMask).toVolumeMask(source)
    assert dice(volume, truthA) >= 0.9
    assert (volume & truthB).sum() <= 0.02 * truthB.sum()


def test_box3d_segments_within_the_box_slices_only():
    voxels, truth, spacing = ellipsoidPhantom((30, 48, 48), spacingIjk=ANISOTROPIC, seed=5)
    source = _source(voxels, spacing)
    box, (first, last) = truthBox3d(source, truth, 2)
    k0, k1 = first + 4, last - 3  # the ROI covers only part of the object
    engine = CountingEngine()
    result = propagateBox3d(EmbeddingService(engine), source, 2, box, (k0, k1))
    assert min(result.masks) == k0 and max(result.masks) == k1
    assert result.stopReasons == {"up": "rangeEnd", "down": "rangeEnd"}
    assert engine.encoded == k1 - k0 + 1  # on a CPU one slice at a time: nothing outside the box's slices
    volume = result.toVolumeMask(source)
    assert not volume[:k0].any() and not volume[k1 + 1:].any()
    assert dice(volume[k0:k1 + 1], truth[k0:k1 + 1]) >= 0.9
    assert result.timings["decode"] > 0


def test_stop_rules_max_slices_and_range():
    voxels, truth, spacing = ellipsoidPhantom((24, 48, 48), seed=6)
    source = _source(voxels, spacing)
    k, seedMask = _seed(source, truth, 2)
    engine = CountingEngine()
    limited = propagate(engine, source, 2, k, seedMask, PropagationSettings(maxSlices=3))
    assert sorted(limited.masks) == list(range(k - 3, k + 4))
    assert limited.stopReasons == {"up": "maxSlices", "down": "maxSlices"}
    assert engine.encoded == 7  # the seed slice and 3 on each side: nothing fetched past the limit
    ranged = propagate(GrowCutEngine(), source, 2, k, seedMask, sliceRange=(k - 2, k + 1))
    assert sorted(ranged.masks) == list(range(k - 2, k + 2))
    strict = propagate(GrowCutEngine(), source, 2, k, seedMask, PropagationSettings(minScore=1.01))
    assert list(strict.masks) == [k] and strict.stopReasons["up"] == "lowScore"


def test_propagation_reports_progress_and_can_be_cancelled():
    voxels, truth, spacing = ellipsoidPhantom((24, 48, 48), seed=7)
    source = _source(voxels, spacing)
    k, seedMask = _seed(source, truth, 2)
    reports = []
    propagate(GrowCutEngine(), source, 2, k, seedMask, progress=lambda f, text: reports.append(f))
    assert reports and reports[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in reports)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        propagate(GrowCutEngine(), source, 2, k, seedMask, cancel=token)
    with pytest.raises(InputError):
        propagate(GrowCutEngine(), source, 2, k, np.zeros_like(seedMask))
    with pytest.raises(InputError):
        propagate(GrowCutEngine(), source, 2, k, seedMask, sliceRange=(0, k - 1))


def test_fill_between_key_slices_fills_the_gap_and_keeps_the_keys():
    voxels, truth, spacing = driftingTubePhantom((30, 48, 48), spacingIjk=ANISOTROPIC, radiusMm=5.0, seed=8)
    source = _source(voxels, spacing)
    keys = {k: source.nativeMaskToImage(2, truth[k]) for k in (6, 14, 22)}
    result = fillBetweenKeySlices(GrowCutEngine(), source, 2, keys)
    assert sorted(result.masks) == list(range(6, 23))
    for k, mask in keys.items():
        np.testing.assert_array_equal(result.masks[k], mask)
    volume = result.toVolumeMask(source)
    assert dice(volume[6:23], truth[6:23]) >= 0.9 and not volume[:6].any() and not volume[23:].any()
    union = fillBetweenKeySlices(GrowCutEngine(), source, 2, keys, merge="union").toVolumeMask(source)
    assert (union | volume).sum() == union.sum()
    with pytest.raises(InputError):
        fillBetweenKeySlices(GrowCutEngine(), source, 2, {6: keys[6]})
    # Key slices given as boxes are segmented first, then filled between.
    boxes = {k: boxFromMask(mask) for k, mask in keys.items()}
    fromBoxes = fillBetweenKeySlices(GrowCutEngine(), source, 2, boxes).toVolumeMask(source)
    assert dice(fromBoxes[6:23], truth[6:23]) >= 0.9 and not fromBoxes[23:].any()


def test_local_correction_repropagates_only_the_changed_slices_and_encodes_nothing():
    voxels, truth, spacing = ellipsoidPhantom((30, 48, 48), seed=9)
    source = _source(voxels, spacing)
    engine = CountingEngine()
    service = EmbeddingService(engine)
    k, seedMask = _seed(source, truth, 2)
    good = propagate(service, source, 2, k, seedMask)
    assert dice(good.toVolumeMask(source), truth) >= 0.9
    # A damaged result: slices k+2..k+5 lost their right half.
    damaged = PropagationResult(axis=2, masks=dict(good.masks), scores=dict(good.scores), sliceRange=good.sliceRange)
    for j in range(k + 2, k + 6):
        damaged.masks[j] = damaged.masks[j].copy()
        damaged.masks[j][:, 24:] = False
    encodedBefore, decodedBefore = engine.encoded, engine.decoded
    click = np.array([[30.0, 24.0]])
    fixed = correctSlice(service, source, 2, damaged, k + 2, Prompts(pointsXy=click, pointLabels=[1]))
    decodes = engine.decoded - decodedBefore
    assert engine.encoded == encodedBefore  # every slice was cached
    changed = [j for j in fixed.masks if not np.array_equal(fixed.masks[j], damaged.masks[j])]
    assert set(range(k + 2, k + 6)) <= set(changed)
    # One decode per changed slice, plus at most one per direction to see that nothing changes any more.
    assert decodes <= len(changed) + 2 and decodes < len(good.masks) // 2
    assert fixed.stopReasons["up"] == "unchanged"
    assert dice(fixed.toVolumeMask(source), truth) > dice(damaged.toVolumeMask(source), truth)
    assert dice(fixed.toVolumeMask(source), truth) >= 0.9


def test_keep_largest_component_and_fill_holes():
    mask = np.zeros((10, 20, 20), bool)
    mask[2:8, 2:10, 2:10] = True
    mask[4:6, 5:7, 5:7] = False  # an enclosed cavity
    mask[1, 15:18, 15:18] = True  # a small island
    largest = keepLargestComponent(mask)
    assert not largest[1, 15:18, 15:18].any() and largest[2:8, 2:4, 2:4].all()
    filled = fillHoles(mask)
    assert filled[4:6, 5:7, 5:7].all() and filled[1, 15:18, 15:18].all()
    tube = np.zeros((6, 20, 20), bool)
    tube[:, 5:15, 5:15] = True
    tube[:, 8:12, 8:12] = False  # a lumen open at both ends: no 3D hole, a 2D hole on every K slice
    assert not fillHoles(tube)[:, 8:12, 8:12].any()
    assert fillHoles(tube, perSlice=True, axis=2)[:, 8:12, 8:12].all()
    assert fillHoles(tube, perSlice=True, axis=0)[:, 8:12, 8:12].sum() == 0
    original = mask.copy()
    keepLargestComponent(mask)
    np.testing.assert_array_equal(mask, original)
    assert not keepLargestComponent(np.zeros((3, 3, 3), bool)).any()


class GpuReportingEngine(CountingEngine):
    """The counting GrowCut engine reporting a GPU device, so propagation takes its encode-ahead path on any machine."""

    device = "cuda"

    def __init__(self):
        super().__init__()
        self.encodedSlices = []

    def encode(self, images, progress=None):
        self.encodedSlices.append(len(images))
        return super().encode(images, progress)


def test_on_a_gpu_the_next_batch_is_encoded_ahead_and_no_slice_twice():
    from MedSAMSlicerLib.workflow.propagation import GPU_LOOKAHEAD_SLICES

    voxels, truth, spacing = ellipsoidPhantom((40, 48, 48), spacingIjk=ANISOTROPIC, seed=5)
    source = _source(voxels, spacing)
    seed, seedMask = _seed(source, truth, 2)
    engine = GpuReportingEngine()
    service = EmbeddingService(engine)
    result = propagate(service, source, 2, seed, seedMask)
    service.close(timeout=5.0)
    first, last = _truthRange(truth, 2)
    assert dice(result.toVolumeMask(source), truth) >= 0.9
    # each encoded slice is its own cache entry (none encoded twice); the walked slices plus at most
    # two batches ahead per direction
    assert service.cache.stats()["entries"] == engine.encoded
    assert engine.encoded <= len(result.masks) + 2 + 2 * 2 * GPU_LOOKAHEAD_SLICES
    assert engine.encoded >= (last - first + 1) - 4
    assert max(engine.encodedSlices) > 1  # batches, not one slice per encoder call
