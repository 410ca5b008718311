"""GrowCutEngine: the weight-free engine segments what the box and points ask for, in 2D and 3D."""

import numpy as np
import pytest

from MedSAMSlicerLib.engines.base import Engine, Prompts
from MedSAMSlicerLib.core.errors import MedSAMError, PromptError
from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom, twoObjectsLabels
from MedSAMSlicerLib.workflow.simulateduser import boxFromMask, dice
from MedSAMSlicerLib.imaging.slicesource import SliceSource


@pytest.fixture(scope="module")
def anisotropicEllipsoid():
    voxels, truth, spacing = ellipsoidPhantom((24, 48, 48), spacingIjk=(1.0, 1.0, 2.5), seed=3)
    return SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0)), truth


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_on_every_slice_of_a_noisy_ellipsoid_reaches_dice_09_in_every_orientation(anisotropicEllipsoid, axis):
    source, truth = anisotropicEllipsoid
    engine = GrowCutEngine()
    predicted = np.zeros_like(truth)
    for k in range(source.sliceCount(axis)):
        truthImage = source.nativeMaskToImage(axis, truth[source.sliceSelector(axis, k)])
        if truthImage.sum() < 4:
            continue
        embedding = engine.encode([source.sliceImage(axis, k)])[0]
        result = engine.decode(embedding, Prompts(boxXyxy=boxFromMask(truthImage)))
        assert result.mask.shape == truthImage.shape and result.mask.dtype == bool
        assert 0.0 <= result.score <= 1.0
        predicted[source.sliceSelector(axis, k)] = source.imageMaskToNative(axis, result.mask)
    assert dice(predicted, truth) >= 0.9


def test_native_3d_box_segments_the_ellipsoid(anisotropicEllipsoid):
    source, truth = anisotropicEllipsoid
    k, j, i = np.nonzero(truth)
    voxels = np.stack([source.sliceImage(2, kk) for kk in range(source.sliceCount(2))])
    mask = GrowCutEngine().segmentVolume(voxels, ((i.min(), j.min(), k.min()), (i.max(), j.max(), k.max())),
                                         spacingIjk=(1.0, 1.0, 2.5))
    assert mask.shape == truth.shape
    assert dice(mask, truth) >= 0.9


def test_mask_stays_inside_the_box_and_the_other_object_is_not_taken():
    truthA, truthB = twoObjectsLabels((32, 48, 48))
    rng = np.random.default_rng(0)
    k = int(np.nonzero(truthA.any(axis=(1, 2)))[0].mean())
    image = np.where(truthA[k], 0.7, 0.2) + rng.normal(0, 0.05, truthA[k].shape)
    image[:, 40:46] = 0.7  # a bright bar outside the box
    box = boxFromMask(truthA[k])
    engine = GrowCutEngine()
    result = engine.decode(engine.encode([image.astype(np.float32)])[0], Prompts(boxXyxy=box))
    rows, cols = np.nonzero(result.mask)
    assert cols.min() >= box[0] and cols.max() <= box[2] and rows.min() >= box[1] and rows.max() <= box[3]
    assert dice(result.mask, truthA[k]) >= 0.9


def test_points_alone_segment_the_clicked_object_and_negative_points_remove():
    yy, xx = np.mgrid[:64, :64]
    left = (yy - 32) ** 2 + (xx - 18) ** 2 <= 64
    right = (yy - 32) ** 2 + (xx - 46) ** 2 <= 64
    image = np.where(left | right, 0.8, 0.1).astype(np.float32)
    engine = GrowCutEngine()
    embedding = engine.encode([image])[0]
    positive = engine.decode(embedding, Prompts(pointsXy=[[18, 32]], pointLabels=[1]))
    assert dice(positive.mask, left) >= 0.9 and not (positive.mask & right).any()
    # A box over both objects takes both; a negative click on one removes it.
    both = engine.decode(embedding, Prompts(boxXyxy=(8, 22, 56, 42), pointsXy=[[18, 32], [46, 32]], pointLabels=[1, 1]))
    assert dice(both.mask, left | right) >= 0.9
    negative = engine.decode(embedding, Prompts(boxXyxy=(8, 22, 56, 42), pointsXy=[[18, 32], [46, 32]],
                                                pointLabels=[1, 0]))
    assert dice(negative.mask, left) >= 0.9


def test_score_is_low_when_the_mask_fills_its_box():
    engine = GrowCutEngine()
    flat = engine.encode([np.full((40, 40), 0.5, np.float32)])[0]
    leak = engine.decode(flat, Prompts(boxXyxy=(10, 10, 30, 30)))
    yy, xx = np.mgrid[:40, :40]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 25).astype(np.float32)
    contained = engine.decode(engine.encode([disc])[0], Prompts(boxXyxy=(10, 10, 30, 30)))
    assert leak.score < 0.3 < 0.9 < contained.score


def test_engine_contract_rgb_large_images_and_bad_prompts():
    engine = GrowCutEngine()
    assert isinstance(engine, Engine) and engine.modelId == "growcut" and engine.device == "cpu"
    yy, xx = np.mgrid[:700, :900]
    disc = (yy - 350) ** 2 + (xx - 450) ** 2 <= 200 ** 2
    rgb = np.repeat(np.where(disc, 0.9, 0.1)[..., None], 3, axis=2).astype(np.float32)
    original = rgb.copy()
    embedding = engine.encode([rgb])[0]
    assert embedding.imageSize == (700, 900) and embedding.nbytes > 0
    np.testing.assert_array_equal(rgb, original)
    # The box covers ~160k pixels: segmented on a block-averaged image, returned at full size.
    result = engine.decode(embedding, Prompts(boxXyxy=(250, 150, 650, 550)))
    assert result.mask.shape == (700, 900) and dice(result.mask, disc) >= 0.95
    with pytest.raises(PromptError):
        engine.decode(embedding, Prompts())
    with pytest.raises(MedSAMError, match="outside"):
        engine.decode(embedding, Prompts(boxXyxy=(2000, 2000, 2100, 2100)))
    with pytest.raises(PromptError):
        engine.segmentVolume(np.zeros((8, 8, 8), np.float32), ((20, 20, 20), (30, 30, 30)))
