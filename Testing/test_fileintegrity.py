"""Inputs are checked before their voxels are trusted: a damaged file is an error naming the file and the problem.

Every damaged file is made in the test from a real file written by SimpleITK (GDCM for DICOM): cut short,
a DICOM series with a file taken out or cut short, a NIfTI header with a zero or NaN voxel size or a NaN
orientation. Read through imageio on a real MRML scene, and through `medsam-slicer segment` as a subprocess.
"""

import os
import struct
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.core.errors import InputError
from MedSAMSlicerLib.mrml import imageio
from MedSAMSlicerLib.mrml.volumegeometry import ijkToWorld
from test_cli import boxText, runCli, writeEllipsoid  # noqa: F401 (runCli is a fixture)

UID = "1.2.826.0.1.3680043.2.1125.77"


def cutShort(source, target, keepFraction=0.5):
    data = open(source, "rb").read()
    open(target, "wb").write(data[: int(len(data) * keepFraction)])


@pytest.mark.parametrize("extension, compressed", [(".nii", False), (".nii.gz", True), (".nrrd", True),
                                                   (".nrrd", False), (".mha", False)])
def test_file_cut_short_is_refused_naming_it(scene, tmp_path, extension, compressed):
    voxels = np.random.default_rng(0).normal(0, 1, (20, 30, 40)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(tmp_path / f"whole{extension}"), useCompression=compressed)
    assert imageio.readImage(str(tmp_path / f"whole{extension}"), scene) is not None
    cutShort(tmp_path / f"whole{extension}", tmp_path / f"half{extension}")
    with pytest.raises(InputError, match=rf"half{extension}.*(incomplete|could not be read)"):
        imageio.readImage(str(tmp_path / f"half{extension}"), scene)


def test_truncated_nifti_is_refused_by_segment(runCli, tmp_path):
    image, truth = writeEllipsoid(tmp_path / "volume.nii.gz")
    cutShort(tmp_path / "volume.nii.gz", tmp_path / "cut.nii.gz", 0.6)
    done = runCli("segment", tmp_path / "cut.nii.gz", "--out", tmp_path / "out" / "mask.nii.gz", "--box", boxText(truth))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "cut.nii.gz is incomplete" in lines[0] and "copy or export it again" in lines[0]
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def patchNifti(source, target, offset, value):
    data = bytearray(open(source, "rb").read())
    struct.pack_into("<f", data, offset, value)
    open(target, "wb").write(data)


@pytest.mark.parametrize("field, offset, value, words", [
    ("pixdim[3] zero", 76 + 3 * 4, 0.0, "voxel size"),
    ("pixdim[1] NaN", 76 + 1 * 4, float("nan"), "voxel size"),
    ("quatern_b NaN", 256, float("nan"), "orientation"),
    ("srow_x[0] NaN", 280, float("nan"), "orientation"),
])
def test_nifti_header_with_unusable_geometry_is_refused(scene, tmp_path, field, offset, value, words):
    """ITK would read a zero or NaN pixdim as 1 mm and a NaN quaternion as no rotation, without a word."""
    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.int16))
    image.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(image, str(tmp_path / "good.nii"))
    assert imageio.readImage(str(tmp_path / "good.nii"), scene).GetSpacing() == pytest.approx((0.5, 0.7, 2.0))
    patchNifti(tmp_path / "good.nii", tmp_path / "bad.nii", offset, value)
    with pytest.raises(InputError, match=f"bad.nii.*{words}"):
        imageio.readImage(str(tmp_path / "bad.nii"), scene)


@pytest.mark.parametrize("extension", [".mha", ".mhd"])
@pytest.mark.parametrize("line, bad, words", [
    (b"Offset = 0 0 0", b"Offset = nan 0 0", "origin"),
    (b"ElementSpacing = 0.5 ", b"ElementSpacing = inf ", "voxel size"),
    (b"TransformMatrix = 1 0 0", b"TransformMatrix = nan 0 0", "orientation"),
])
def test_metaimage_header_with_unusable_geometry_is_refused(scene, tmp_path, extension, line, bad, words):
    """ITK reads 'Offset = nan 0 0' as origin 0 without a word: every output would land in the wrong place."""
    image = sitk.GetImageFromArray(np.ones((4, 5, 6), np.int16))
    image.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(image, str(tmp_path / f"good{extension}"))
    assert imageio.readImage(str(tmp_path / f"good{extension}"), scene).GetSpacing() == pytest.approx((0.5, 0.7, 2.0))
    header = (tmp_path / f"good{extension}").read_bytes()
    assert line in header
    (tmp_path / f"bad{extension}").write_bytes(header.replace(line, bad))
    with pytest.raises(InputError, match=f"bad{extension}: its header gives the {words}"):
        imageio.readImage(str(tmp_path / f"bad{extension}"), scene)


def writeDicomSeries(folder, count=6, gapMm=2.5, positions=None, pixels=None):
    """A CT series of ``count`` 16x16 slices, ``gapMm`` apart, written by GDCM; returns the file names in order.

    positions: each slice's Image Position (Patient) (mm, LPS) instead of (0, 0, index * gapMm);
    pixels: each slice's int16 pixels (rows, columns) instead of a constant.
    """
    os.makedirs(folder, exist_ok=True)
    names = []
    for index in range(count):
        image = sitk.GetImageFromArray(np.full((16, 16), index * 10, np.int16) if pixels is None else pixels[index])
        position = (0.0, 0.0, index * gapMm) if positions is None else positions[index]
        for tag, value in {"0020|000e": UID, "0020|0013": str(index + 1), "0008|0060": "CT",
                           "0020|0032": "\\".join(f"{v:.4f}" for v in position),
                           "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        names.append(f"slice{index:02d}.dcm")
        writer.SetFileName(os.path.join(folder, names[-1]))
        writer.Execute(image)
    return names


def test_whole_dicom_series_reads_with_its_spacing(scene, tmp_path):
    writeDicomSeries(tmp_path / "whole")
    node = imageio.readImage(str(tmp_path / "whole"), scene)
    assert node.GetImageData().GetDimensions() == (16, 16, 6)
    assert node.GetSpacing()[2] == pytest.approx(2.5)


def test_dicom_series_with_a_missing_slice_is_refused(scene, tmp_path):
    """Without the check ITK reads 5 slices 3.125 mm apart: every slice after the gap is misplaced."""
    names = writeDicomSeries(tmp_path / "series")
    os.remove(tmp_path / "series" / names[3])
    with pytest.raises(InputError, match=rf"unevenly spaced: 5 mm between {names[2]} and {names[4]}, 2.5 mm"):
        imageio.readImage(str(tmp_path / "series"), scene)


@pytest.mark.parametrize("keep", [200, -100])
def test_dicom_series_with_an_unreadable_file_is_refused_naming_it(scene, tmp_path, keep):
    """A file cut short (header only, or pixel data short) is left out by GDCM's series scan; it must be named."""
    names = writeDicomSeries(tmp_path / "series")
    path = tmp_path / "series" / names[3]
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(InputError, match=rf"1 DICOM file\(s\) could not be read as part of its series: {names[3]}"):
        imageio.readImage(str(tmp_path / "series"), scene)


def tiltedCylinderSeries(folder, tiltDegrees=20.0, count=8, gapMm=2.5):
    """A series acquired with gantry tilt: each slice ``gapMm`` further along z and shifted along y by gapMm * tan(tilt).

    It shows a cylinder standing upright in the patient (axis along z at LPS x = 10, y = 16 mm, radius 3 mm):
    its pixels move from slice to slice by the shift, so that the cylinder stays at the same physical place.
    """
    shift = gapMm * np.tan(np.radians(tiltDegrees))
    positions = [(0.0, index * shift, index * gapMm) for index in range(count)]
    rows, columns = np.mgrid[:32, :32]
    pixels = [np.where((columns - 10.0) ** 2 + (rows + y - 16.0) ** 2 <= 9.0, 1000, 0).astype(np.int16)
              for _, y, _ in positions]
    return writeDicomSeries(folder, count, positions=positions, pixels=pixels)


def test_a_series_with_gantry_tilt_is_resampled_so_every_slice_is_where_the_scanner_put_it(scene, tmp_path):
    """ITK alone places slice k at k * 2.66 mm along the normal: the cylinder would lean by the tilt (0.91 mm a slice)."""
    import slicer

    tiltedCylinderSeries(tmp_path / "tilted")
    warnings = []
    node = imageio.readImage(str(tmp_path / "tilted"), scene, warn=warnings.append)
    assert len(warnings) == 1 and "gantry tilt of 20.0 degrees" in warnings[0] and "resampled" in warnings[0]
    assert node.GetSpacing() == pytest.approx((1.0, 1.0, 2.5))
    ijkToRas = ijkToWorld(node)  # no parent transform here: the node's IJK-to-RAS
    assert np.allclose(ijkToRas[:3, :3] @ ijkToRas[:3, :3].T, np.diag(np.array(node.GetSpacing()) ** 2))  # rectilinear
    voxels = slicer.util.arrayFromVolume(node)
    centres = []
    for k in range(voxels.shape[0]):
        weights = voxels[k].astype(float)
        if weights.sum() < 20 * 1000:  # the first and last planes hold the cylinder only where the tilted slab covers them
            continue
        j, i = np.mgrid[: weights.shape[0], : weights.shape[1]]
        ras = ijkToRas @ np.array([(i * weights).sum() / weights.sum(), (j * weights).sum() / weights.sum(), k, 1.0])
        centres.append(ras[:3])
    centres = np.array(centres)
    assert len(centres) >= 6
    # Upright in the patient: every plane's cross-section centre is at RAS (-10, -16) (LPS x 10, y 16), within 0.3 mm.
    assert np.abs(centres[:, 0] + 10.0).max() < 0.3 and np.abs(centres[:, 1] + 16.0).max() < 0.3
    assert np.ptp(centres[:, 2]) >= 5 * 2.5


def test_a_series_whose_slices_are_not_on_one_line_is_refused(scene, tmp_path):
    positions = [(0.0, 0.0, 0.0), (0.0, 0.9, 2.5), (0.0, 1.8, 5.0), (0.0, 4.0, 7.5), (0.0, 3.6, 10.0)]
    writeDicomSeries(tmp_path / "bent", len(positions), positions=positions)
    with pytest.raises(InputError, match=r"bent: the slices of the DICOM series do not lie on one line"):
        imageio.readImage(str(tmp_path / "bent"), scene)


def test_dicom_folder_error_through_segment(runCli, tmp_path):
    names = writeDicomSeries(tmp_path / "series")
    os.remove(tmp_path / "series" / names[2])
    done = runCli("segment", tmp_path / "series", "--out", tmp_path / "mask.nii.gz", "--box", "2,2,1,12,12,1")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "unevenly spaced" in lines[0], done.stderr
    assert not (tmp_path / "mask.nii.gz").exists()


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".mha", ".tif"])
def test_nan_and_infinite_voxels_are_reported_in_every_format(scene, tmp_path, extension):
    shape = (1, 6, 7) if extension == ".tif" else (3, 6, 7)
    voxels = np.ones(shape, np.float32)
    voxels[0, 1, 2] = np.nan
    voxels[-1, 3, 4] = np.inf
    voxels[-1, 4, 4] = -np.inf
    image = sitk.GetImageFromArray(voxels[0] if extension == ".tif" else voxels)
    sitk.WriteImage(image, str(tmp_path / f"special{extension}"))
    warnings = []
    node = imageio.readImage(str(tmp_path / f"special{extension}"), scene, warn=warnings.append)
    assert len(warnings) == 1 and "1 NaN voxels and 2 infinite voxels" in warnings[0], warnings
    import slicer

    kept = slicer.util.arrayFromVolume(node)
    assert np.isnan(kept[0, 1, 2]) and np.isposinf(kept[-1, 3, 4])  # left as they are


def test_dicom_series_with_nan_free_integers_gives_no_warning(scene, tmp_path):
    writeDicomSeries(tmp_path / "series")
    warnings = []
    imageio.readImage(str(tmp_path / "series"), scene, warn=warnings.append)
    assert warnings == []


def test_a_pipe_given_as_the_image_is_refused_at_once(scene, runCli, tmp_path):
    """A FIFO would block the reader forever: refused before anything opens it (both waits are bounded)."""
    import threading

    pipe = tmp_path / "image.nii.gz"
    os.mkfifo(pipe)
    outcome = []

    def read():
        try:
            imageio.readImage(str(pipe), scene)
            outcome.append("read")
        except InputError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    if reader.is_alive():  # blocked in open(): give it a writer so that the thread can end
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("readImage blocked on the pipe")
    assert outcome and "not a regular file" in outcome[0], outcome
    try:
        done = runCli("segment", pipe, "--out", tmp_path / "mask.nii.gz", "--box", "1,1,1,5,5,1", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("segment blocked on the pipe")
    assert done.returncode == 2 and "not a regular file" in done.stderr, done.stderr


def test_geometry_checks_on_any_format(tmp_path):
    """The geometry check behind every reader: zero, negative or NaN spacing; NaN or degenerate directions."""
    from MedSAMSlicerLib.imaging.fileintegrity import checkImageGeometry

    checkImageGeometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "fine")
    for spacing in ((0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, np.nan, 1.0), (1.0, 1.0, np.inf)):
        with pytest.raises(InputError, match="odd: the voxel size"):
            checkImageGeometry(spacing, (0.0, 0.0, 0.0), np.eye(3), "odd")
    with pytest.raises(InputError, match="not numbers"):
        checkImageGeometry((1.0, 1.0, 1.0), (np.nan, 0.0, 0.0), np.eye(3), "odd")
    with pytest.raises(InputError, match="parallel"):
        checkImageGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1.0]]), "odd")
