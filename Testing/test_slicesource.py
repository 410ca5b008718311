"""SliceSource (numpy only): native slice layout, square pixels, coordinate and mask maps, signature."""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.imaging.slicesource import SliceSource

IDENTITY = IntensityPolicy.window(0.0, 1000.0)


def _codedVolume(shape=(5, 6, 7)):
    """Voxel value = 100 k + 10 j + i, so a value says where it came from."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 * k + 10 * j + i).astype(np.int16)


@pytest.mark.parametrize("axis, expectedShape", [(2, (6, 7)), (1, (5, 7)), (0, (5, 6))])
def test_native_slices_follow_the_documented_table(axis, expectedShape):
    voxels = _codedVolume()
    source = SliceSource(voxels, (1.0, 1.0, 1.0), policy=IDENTITY)
    assert source.imageShape(axis) == expectedShape
    image = source.sliceImage(axis, 3) * 1000.0
    rows, cols = np.meshgrid(np.arange(expectedShape[0]), np.arange(expectedShape[1]), indexing="ij")
    k, j, i = {2: (3, rows, cols), 1: (rows, 3, cols), 0: (rows, cols, 3)}[axis]
    np.testing.assert_allclose(image, 100 * k + 10 * j + i, atol=1e-3)
    # The image's pixel (x, y) maps back to the voxel it was taken from.
    pointsIjk = source.imageToIjk(axis, 3, [[2, 4]])
    i0, j0, k0 = np.round(pointsIjk[0]).astype(int)
    assert image[4, 2] == pytest.approx(voxels[k0, j0, i0], abs=1e-3)


def test_anisotropic_sagittal_slice_is_resampled_to_square_pixels():
    shape = (8, 20, 24)  # K, J, I; 0.7 x 0.7 x 5 mm
    ramp = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape)
    source = SliceSource(ramp, (0.7, 0.7, 5.0), policy=IntensityPolicy.window(0, shape[0] - 1))
    assert source.pixelSpacing(0) == pytest.approx(0.7)
    scale = 5.0 / 0.7
    assert source.imageShape(0) == (round(8 * scale), 20)
    assert source.imageShape(2) == (20, 24)
    image = source.sliceImage(0, 11)
    # Linear interpolation of the k ramp at row centres y: k = (y + 0.5) / scale - 0.5, clamped.
    expectedK = np.clip((np.arange(image.shape[0]) + 0.5) / scale - 0.5, 0, shape[0] - 1)
    np.testing.assert_allclose(image[:, 5], expectedK / (shape[0] - 1), atol=1e-5)
    assert np.all(image == image[:, :1])  # constant along j as the volume is


def test_mask_round_trip_native_image_native_is_exact():
    rng = np.random.default_rng(7)
    source = SliceSource(np.zeros((8, 20, 24), np.int16), (0.7, 0.7, 5.0))
    for axis in (0, 1, 2):
        native = rng.random(source.nativeShape(axis)) > 0.5
        image = source.nativeMaskToImage(axis, native)
        assert image.shape == source.imageShape(axis) and image.dtype == bool
        np.testing.assert_array_equal(source.imageMaskToNative(axis, image), native)
    # A mask covering most of a native pixel's image rows sets it; a sliver does not.
    image = np.zeros(source.imageShape(1), bool)
    image[0:6, 3] = True  # about 6 of the ~7.1 image rows of native row k = 0
    image[10, 4] = True   # one image row of native row k = 1
    native = source.imageMaskToNative(1, image)
    assert native[0, 3] and not native[1, 4] and native.sum() == 1


def test_coordinates_round_trip_and_follow_pixel_centre_rule():
    source = SliceSource(np.zeros((8, 20, 24), np.int16), (0.7, 0.7, 5.0))
    pointsIjk = np.array([[0.0, 0.0, 0.0], [23.0, 19.0, 7.0], [3.3, 11.7, 2.6]])
    for axis in (0, 1, 2):
        slices, xy = source.ijkToImage(axis, pointsIjk)
        np.testing.assert_allclose(slices, pointsIjk[:, axis])
        for n in range(len(pointsIjk)):
            np.testing.assert_allclose(source.imageToIjk(axis, slices[n], xy[n:n + 1])[0], pointsIjk[n], atol=1e-9)
    # Sagittal: rows are k at 5 mm -> 7.142857 image pixels per native pixel; columns are j, unscaled.
    _, xy = source.ijkToImage(0, [[4.0, 2.0, 1.0]])
    assert xy[0, 0] == pytest.approx(2.0)
    assert xy[0, 1] == pytest.approx(1.5 * 5.0 / 0.7 - 0.5)
    box, (s0, s1) = source.boxIjkToImage(0, ((6.0, 9.5, 3.5), (2.0, -0.5, -0.5)))
    assert box == pytest.approx((-0.5, -0.5, 9.5, 4.0 * 5.0 / 0.7 - 0.5))
    assert (s0, s1) == (2.0, 6.0)


def test_signature_follows_content_not_identity():
    voxels = np.random.default_rng(1).integers(0, 100, size=(4, 10, 12)).astype(np.int16)
    reference = SliceSource(voxels, (1.0, 1.0, 2.0), geometryKey="a").signature
    assert SliceSource(voxels.copy(), (1.0, 1.0, 2.0), geometryKey="a").signature == reference
    changed = voxels.copy()
    changed[2, 3, 4] += 1
    assert SliceSource(changed, (1.0, 1.0, 2.0), geometryKey="a").signature != reference
    assert SliceSource(voxels, (1.0, 1.0, 2.5), geometryKey="a").signature != reference
    assert SliceSource(voxels, (1.0, 1.0, 2.0), geometryKey="b").signature != reference
    assert SliceSource(voxels.astype(np.int32), (1.0, 1.0, 2.0), geometryKey="a").signature != reference
    assert SliceSource(voxels.reshape(4, 12, 10), (1.0, 1.0, 2.0), geometryKey="a").signature != reference


def test_source_never_modifies_voxels_and_resolves_policy_once():
    voxels = np.random.default_rng(2).normal(100, 30, size=(5, 16, 16)).astype(np.float32)
    before = voxels.copy()
    source = SliceSource(voxels, (1.0, 1.0, 1.0), policy=IntensityPolicy.percentile(1, 99))
    key = source.policyKey
    for axis in (0, 1, 2):
        image = source.sliceImage(axis, 2)
        image[:] = -1.0  # the caller may write into what it gets
        assert source.policyKey == key
    np.testing.assert_array_equal(voxels, before)
    with pytest.raises(ValueError):
        source.nativeSlice(2, 0)[0, 0] = 5
    assert source.policyKey == IntensityPolicy.percentile(1, 99).resolve(voxels).key


def test_rgb_volume_gives_colour_slices():
    rgb = np.zeros((1, 6, 8, 3), np.uint8)
    rgb[0, 2, 5] = (255, 128, 0)
    source = SliceSource(rgb, (0.5, 0.5, 1.0))
    assert source.isRgb and source.sliceCount(2) == 1
    image = source.sliceImage(2, 0)
    assert image.shape == (6, 8, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[2, 5], [1.0, 128 / 255, 0.0], atol=1e-6)
    rgba = np.concatenate([rgb, np.full((1, 6, 8, 1), 255, np.uint8)], axis=3)
    np.testing.assert_array_equal(SliceSource(rgba).sliceImage(2, 0), image)


def test_bad_inputs_raise_input_errors():
    source = SliceSource(np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match="outside the volume"):
        source.sliceImage(2, 3)
    with pytest.raises(InputError, match="axis"):
        source.sliceCount(3)
    with pytest.raises(InputError, match="does not match"):
        source.imageMaskToNative(2, np.zeros((5, 4), bool))
    with pytest.raises(InputError, match="4D"):
        SliceSource(np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(InputError, match="spacing"):
        SliceSource(np.zeros((2, 3, 4)), (1.0, 0.0, 1.0))
