"""Intensity policies: CT windows, MR percentiles, the viewer's window, auto choice; NaN and the caller's array."""

import numpy as np
import pytest

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy


def test_ct_presets_map_hounsfield_units_through_their_window():
    hu = np.array([-1000, -160, 40, 240, 1000], dtype=np.int16)
    softTissue = IntensityPolicy.ct("soft tissue").resolve(hu)
    assert softTissue.key == "window:-160:240"
    np.testing.assert_allclose(softTissue.apply(hu), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    lung = IntensityPolicy.ct("Lung").resolve(hu)  # level -600, width 1500
    np.testing.assert_allclose(lung.apply(np.array([-1350.0, -600.0, 150.0])), [0.0, 0.5, 1.0], atol=1e-6)
    assert IntensityPolicy.ct("bone").resolve(hu).key == "window:-500:1300"
    assert IntensityPolicy.ct("brain").resolve(hu).key == "window:0:80"
    assert IntensityPolicy.ct(level=40, width=400).resolve(hu).key == softTissue.key


def test_bad_policies_raise_input_errors_that_say_what_to_use():
    with pytest.raises(InputError, match="soft tissue"):
        IntensityPolicy.ct("liverish")
    with pytest.raises(InputError, match="positive"):
        IntensityPolicy.ct(level=40, width=0)
    with pytest.raises(InputError):
        IntensityPolicy.window(10, 5)
    with pytest.raises(InputError):
        IntensityPolicy.percentile(99, 1)
    with pytest.raises(InputError, match="no finite voxel"):
        IntensityPolicy.percentile().resolve(np.full((2, 3, 3), np.nan))


def test_percentiles_ignore_nan_and_match_numpy_on_finite_voxels():
    rng = np.random.default_rng(3)
    voxels = rng.gamma(2.0, 150.0, size=(6, 40, 50)).astype(np.float32)
    voxels[0, :5, :5] = np.nan
    voxels[1, 0, 0] = np.inf
    resolved = IntensityPolicy.percentile(0.5, 99.5).resolve(voxels)
    finite = voxels[np.isfinite(voxels)]
    low, high = np.percentile(finite, [0.5, 99.5])
    assert resolved.low == pytest.approx(low, rel=1e-6) and resolved.high == pytest.approx(high, rel=1e-6)
    mapped = resolved.apply(voxels)
    assert mapped.dtype == np.float32 and mapped.min() >= 0.0 and mapped.max() <= 1.0
    assert np.all(mapped[0, :5, :5] == 0.0) and mapped[1, 0, 0] == 0.0
    inside = np.isfinite(voxels) & (voxels > low) & (voxels < high)
    np.testing.assert_allclose(mapped[inside], (voxels[inside] - low) / (high - low), rtol=1e-4, atol=1e-5)


def test_apply_never_modifies_the_callers_array():
    for dtype in (np.float32, np.float64, np.int16, np.uint8):
        array = np.arange(-50, 250, dtype=np.float64).astype(dtype).reshape(10, 30)
        before = array.copy()
        out = IntensityPolicy.window(0, 100).resolve(array).apply(array)
        assert out is not array and not np.shares_memory(out, array)
        np.testing.assert_array_equal(array, before)
    withNan = np.array([np.nan, 5.0, np.inf, -np.inf], dtype=np.float32)
    before = withNan.copy()
    np.testing.assert_array_equal(IntensityPolicy.window(0, 10).resolve(withNan).apply(withNan), [0, 0.5, 0, 0])
    np.testing.assert_array_equal(np.isnan(withNan), np.isnan(before))


def test_auto_chooses_ct_window_for_hounsfield_data_and_percentiles_otherwise():
    ct = np.full((3, 20, 20), -1024, dtype=np.int16)
    ct[:, 5:15, 5:15] = 60
    assert IntensityPolicy.auto().resolve(ct).key == IntensityPolicy.ct("soft tissue").resolve(ct).key
    mr = np.random.default_rng(0).integers(0, 3000, size=(4, 30, 30)).astype(np.uint16)
    auto = IntensityPolicy.auto().resolve(mr)
    percentile = IntensityPolicy.percentile(0.5, 99.5).resolve(mr)
    assert auto == percentile and auto.low > 0 and auto.high < 3000


def test_auto_keeps_colour_of_rgb_images_per_channel():
    rgb = np.zeros((1, 4, 5, 3), dtype=np.uint8)
    rgb[0, 1, 2] = (255, 0, 51)
    resolved = IntensityPolicy.auto().resolve(rgb)
    mapped = resolved.apply(rgb)
    assert mapped.shape == (1, 4, 5, 3)
    np.testing.assert_allclose(mapped[0, 1, 2], [1.0, 0.0, 0.2], atol=1e-6)
    assert mapped[0, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_constant_image_gives_a_defined_result():
    constant = np.full((2, 8, 8), 7.0)
    resolved = IntensityPolicy.percentile().resolve(constant)
    out = resolved.apply(constant)
    assert np.all(np.isfinite(out)) and np.all(out == 0.0)


def test_parse_reads_the_command_line_forms():
    assert IntensityPolicy.parse("auto") == IntensityPolicy.auto()
    assert IntensityPolicy.parse("ct:lung") == IntensityPolicy.ct("lung")
    assert IntensityPolicy.parse("ct:40:400") == IntensityPolicy.ct("soft tissue")
    assert IntensityPolicy.parse("percentile:1:99") == IntensityPolicy.percentile(1, 99)
    assert IntensityPolicy.parse("window:-100:200") == IntensityPolicy.window(-100, 200)
    assert IntensityPolicy.parse("bone") == IntensityPolicy.ct("bone")
    with pytest.raises(InputError, match="window:<low>:<high>"):
        IntensityPolicy.parse("window:abc")
