"""GrowCut3d: the weight-free engine in 3D, from a 3D box and clicks, updated incrementally."""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import PromptError
from MedSAMSlicerLib.engines.base import VolumeClick
from MedSAMSlicerLib.engines.growcut3d import GrowCut3d, GrowCut3dSettings, depthAt
from MedSAMSlicerLib.engines.growcutcore import SEED_FOREGROUND, runGrowCut
from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine
from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom
from MedSAMSlicerLib.workflow.simulateduser import dice


def truthBoxIjk(truth, margin=0):
    k, j, i = np.nonzero(truth)
    return (i.min() - margin, j.min() - margin, k.min() - margin), (i.max() + margin, j.max() + margin, k.max() + margin)


def objectWithLeak(seed=0):
    """A bright ball and, touching it inside its box, a bright slab of the same intensity (a leak the box alone takes)."""
    shape = (24, 40, 40)
    kk, jj, ii = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = (ii - 20) ** 2 + (jj - 20) ** 2 + ((kk - 12) * 1.5) ** 2 <= 9.0 ** 2
    slab = np.zeros(shape, bool)
    slab[4:20, 27:37, 22:34] = True
    slab &= ~ball
    rng = np.random.default_rng(seed)
    voxels = np.where(ball | slab, 0.7, 0.2) + rng.normal(0, 0.04, shape)
    return voxels.astype(np.float32), ball, slab


def test_box_alone_segments_the_ellipsoid_with_anisotropic_voxels():
    voxels, truth, spacing = ellipsoidPhantom((24, 48, 48), spacingIjk=(1.0, 1.0, 2.5), seed=3)
    grower = GrowCut3d(voxels, truthBoxIjk(truth), spacing)
    mask = grower.update([])
    assert mask.shape == truth.shape and dice(mask, truth) >= 0.9
    assert grower.lastUpdate == "full"
    # The one-shot engine API gives the same.
    np.testing.assert_array_equal(GrowCutEngine().segmentVolume(voxels, truthBoxIjk(truth), spacingIjk=spacing), mask)


def test_incremental_update_equals_growcut_run_from_scratch_on_the_same_seeds():
    voxels, ball, slab = objectWithLeak()
    grower = GrowCut3d(voxels, truthBoxIjk(ball | slab))
    grower.update([])
    clicks = [VolumeClick((28.0, 32.0, 12.0), 0), VolumeClick((20.0, 12.0, 12.0), 1)]
    for count in (1, 2):
        mask = grower.update(clicks[:count])
        assert grower.lastUpdate == "incremental"
        # Slicer's quick update keeps the old path costs: it must give what a fresh run on the final seeds gives.
        seeds = grower._filter.seeds.copy()
        fresh = runGrowCut(grower._image, seeds, spacingXyz=(1.0, 1.0, 1.0), distancePenalty=grower.settings.distancePenalty)
        expected = np.zeros(mask.shape, bool)
        expected[grower._crop] = (fresh[grower._inner] == SEED_FOREGROUND) & grower._region[grower._inner]
        np.testing.assert_array_equal(mask, expected)
    assert grower.update(clicks).sum() == mask.sum() and grower.lastUpdate == "unchanged"


def test_a_negative_click_on_the_leak_removes_it_and_keeps_the_object():
    voxels, ball, slab = objectWithLeak()
    # A large box core and a whole shell (the defaults' core is small) seed into the slab: the box alone takes it.
    grower = GrowCut3d(voxels, truthBoxIjk(ball | slab, margin=2), settings=GrowCut3dSettings(coreFraction=0.65, wideCoreFractions=(), shellTolerance=0.0))
    boxOnly = grower.update([])
    assert (boxOnly & slab).sum() > 0.8 * slab.sum()  # the box alone takes the look-alike slab
    corrected = grower.update([VolumeClick((28.0, 32.0, 12.0), 0)])
    # No edge separates the slab from the ball: one click takes most of the slab, and none of the ball.
    assert (corrected & slab).sum() < 0.5 * (boxOnly & slab).sum()
    assert (corrected & ball).sum() >= 0.95 * (boxOnly & ball).sum()
    assert dice(corrected, ball) > dice(boxOnly, ball) + 0.05


def test_clicks_are_constraints_even_against_the_image():
    voxels, ball, slab = objectWithLeak()
    grower = GrowCut3d(voxels, truthBoxIjk(ball | slab), settings=GrowCut3dSettings(clickReach=0.0))
    inside, outside = (20.0, 20.0, 12.0), (4.0, 4.0, 12.0)  # the ball's centre; dark background in the box
    clicks = [VolumeClick(inside, 0), VolumeClick(outside, 1)]
    mask = grower.update(clicks)
    assert not mask[12, 20, 20] and mask[12, 4, 4]
    # A later click of the other label next to it never takes an earlier click's voxel.
    mask = grower.update(clicks + [VolumeClick((21.0, 20.0, 12.0), 1)])
    assert not mask[12, 20, 20] and mask[12, 20, 21]


def flatBar(seed=0):
    """A long homogeneous bar (0.5, noisy) between darker ends, and a 3D box inside it: no edge anywhere in the box."""
    shape = (16, 20, 64)
    voxels = 0.5 + np.random.default_rng(seed).normal(0, 0.03, shape)
    voxels[:, :, :4] = voxels[:, :, 60:] = 0.1
    return voxels.astype(np.float32), ((4, 2, 2), (59, 17, 13))


def test_a_later_click_takes_only_what_lies_nearer_to_it_than_to_an_earlier_click_of_the_other_label():
    voxels, box = flatBar()
    grower = GrowCut3d(voxels, box)
    grower.update([])
    removed = VolumeClick((50.0, 10.0, 8.0), 0)  # the user cuts the bar's right end off
    assert not grower.update([removed])[:, :, 48:].any()
    # The user then wants a little more on the left of the cut: a positive click 6 voxels from the negative one.
    mask = grower.update([removed, VolumeClick((44.0, 10.0, 8.0), 1)])
    assert mask[6:11, 8:13, 40:47].all()  # the positive click's side of the flat bar is taken back
    # The bar's voxels nearer the negative click stay cut: without the sharing rule the positive click's reach
    # re-seeded 752 voxels beyond the negative click (i >= 50) and the cut end came back.
    assert not mask[:, :, 50:].any()
    assert mask[:, :, 48:].sum() < 0.01 * mask[:, :, 48:60].size


def test_a_positive_click_outside_the_box_enlarges_it_and_removing_a_click_starts_over():
    voxels, ball, slab = objectWithLeak()
    box = ((12, 12, 6), (26, 28, 18))  # misses the ball's left end (i < 12)
    grower = GrowCut3d(voxels, box)
    boxOnly = grower.update([])
    assert not boxOnly[:, :, :12].any()
    enlarged = grower.update([VolumeClick((10.0, 20.0, 12.0), 1)])
    assert grower.lastUpdate == "full" and enlarged[12, 20, 10]
    assert grower.blockBounds[2][0] == 10
    again = grower.update([])
    assert grower.lastUpdate == "full"
    np.testing.assert_array_equal(again, boxOnly)


def test_depth_and_bad_boxes():
    mask = np.zeros((9, 9, 9), bool)
    mask[2:7, 2:7, 2:7] = True
    assert depthAt(mask, (4, 4, 4), (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert depthAt(mask, (4, 4, 4), (2.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert depthAt(mask, (0, 4, 4), (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    with pytest.raises(PromptError, match="outside the volume"):
        GrowCut3d(np.zeros((8, 8, 8), np.float32), ((20, 20, 20), (30, 30, 30)))
    with pytest.raises(PromptError, match="expects a"):
        GrowCut3d(np.zeros((8, 8), np.float32), ((0, 0, 0), (3, 3, 3)))
