"""imageio: images of every supported kind read into volume nodes with the right geometry; outputs keep it."""

import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMSlicerLib.mrml import imageio
from MedSAMSlicerLib.core.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def obliqueImage(array, spacing=(0.7, 0.9, 2.5), origin=(12.5, -30.0, 7.0)):
    """A SimpleITK image with anisotropic spacing and a tilted, left-handed direction matrix."""
    image = sitk.GetImageFromArray(array)
    c, s = math.cos(0.35), math.sin(0.35)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def sitkIjkToRas(image):
    """IJKToRAS (4x4) of a 3D SimpleITK image: its LPS geometry converted to RAS."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return matrix


def nodeIjkToRas(node):
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def assertSameGeometry(written, reference):
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".mha"])
def test_volume_reads_with_file_geometry_and_outputs_keep_it(scene, tmp_path, extension):
    import slicer

    rng = np.random.default_rng(1)
    voxels = rng.normal(0, 1, (6, 20, 30)).astype(np.float32)
    image = obliqueImage(voxels)
    inputPath = str(tmp_path / f"in{extension}")
    sitk.WriteImage(image, inputPath)

    node = imageio.readImage(inputPath, scene)
    np.testing.assert_allclose(nodeIjkToRas(node), sitkIjkToRas(image), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)

    maskKji = voxels > 0.5
    labelPath = str(tmp_path / ("out.nrrd" if extension == ".mha" else f"out{extension}"))
    imageio.writeLabelmap(maskKji, node, labelPath)
    written = sitk.ReadImage(labelPath)
    assertSameGeometry(written, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), maskKji.astype(np.uint8))

    segmentation = segmentationFromMask(scene, node, maskKji)
    segPath = str(tmp_path / "out.seg.nrrd")
    imageio.writeSegmentation(segmentation, segPath, referenceVolume=node)
    writtenSeg = sitk.ReadImage(segPath)
    assertSameGeometry(writtenSeg, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(writtenSeg) > 0, maskKji)
    # A labelmap exported from the segmentation lands on the same grid too.
    imageio.writeLabelmap(segmentation, node, str(tmp_path / "fromseg.nii.gz"))
    fromSeg = sitk.ReadImage(str(tmp_path / "fromseg.nii.gz"))
    assertSameGeometry(fromSeg, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fromSeg) > 0, maskKji)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"in{extension}", os.path.basename(labelPath), "out.seg.nrrd", "fromseg.nii.gz"])  # no temporary files left


def segmentationFromMask(scene, volumeNode, maskKji):
    """A segmentation node with one segment from a KJI mask on the volume's grid (Slicer's import logic)."""
    import slicer
    import vtk

    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    labelNode.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(labelNode, maskKji.astype(np.uint8))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation)
    return segmentation


def test_dicom_series_folder_matches_simpleitk_series_reader(scene, sharedData):
    import slicer

    folder = sharedData / "dcmqi_ct3slice" / "ct-3slice"
    node = imageio.readImage(str(folder), scene)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    assert node.GetImageData().GetDimensions() == reference.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(nodeIjkToRas(node), sitkIjkToRas(reference), atol=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(reference))
    # RAS of voxel (0, 0, 0) is the DICOM Image Position (LPS) with x and y negated.
    lpsFirst = np.array(reference.GetOrigin())
    np.testing.assert_allclose(nodeIjkToRas(node)[:3, 3], lpsFirst * [-1, -1, 1], atol=1e-4)


def writeDicomSeries(folder, seriesUid, count=2):
    """A tiny CT series written by SimpleITK (GDCM) with the given SeriesInstanceUID."""
    os.makedirs(folder, exist_ok=True)
    for index in range(count):
        image = sitk.GetImageFromArray(np.full((8, 8), index * 10, np.int16))
        image.SetOrigin((0.0, 0.0, float(index)))
        for tag, value in {"0020|000e": seriesUid, "0020|0013": str(index + 1), "0008|0060": "CT",
                           "0020|0032": f"0\\0\\{index}", "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(os.path.join(folder, f"{seriesUid[-1]}_{index}.dcm"))
        writer.Execute(image)


def test_folder_with_two_dicom_series_lists_them(scene, tmp_path):
    writeDicomSeries(str(tmp_path), "1.2.826.0.1.3680043.2.1125.1")
    writeDicomSeries(str(tmp_path), "1.2.826.0.1.3680043.2.1125.2")
    with pytest.raises(InputError, match=r"2 DICOM series.*1125\.1.*1125\.2"):
        imageio.readImage(str(tmp_path), scene)
    only = tmp_path / "one"
    writeDicomSeries(str(only), "1.2.826.0.1.3680043.2.1125.3")
    assert imageio.readImage(str(only), scene).GetImageData().GetDimensions() == (8, 8, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="without a DICOM series"):
        imageio.readImage(str(tmp_path / "empty"), scene)


def test_2d_images_become_one_slice_volumes(scene, tmp_path):
    import slicer
    from PIL import Image

    rng = np.random.default_rng(2)
    gray = rng.integers(0, 255, (30, 50), dtype=np.uint8)
    rgba = rng.integers(0, 255, (30, 50, 4), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.jpg", quality=100)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(gray).save(tmp_path / "gray.tif")
    Image.fromarray(np.stack([gray, gray // 2], -1), mode="LA").save(tmp_path / "grayalpha.png")

    for name in ("gray.png", "gray.tif", "grayalpha.png"):
        node = imageio.readImage(str(tmp_path / name), scene)
        assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), gray[np.newaxis])
        assert node.GetSpacing() == (1.0, 1.0, 1.0)
    node = imageio.readImage(str(tmp_path / "rgba.png"), scene)
    assert node.GetClassName() == "vtkMRMLVectorVolumeNode"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), rgba[np.newaxis, ..., :3])
    node = imageio.readImage(str(tmp_path / "rgb.jpg"), scene)
    assert slicer.util.arrayFromVolume(node).shape == (1, 30, 50, 3)
    # Like Slicer: 2D images are LPS with identity direction, so x and y are negated in RAS.
    np.testing.assert_allclose(nodeIjkToRas(node), np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_4d_and_many_component_images_say_how_to_pick_one(scene, tmp_path):
    import slicer

    volumes = [sitk.GetImageFromArray(np.full((3, 4, 5), index, np.int16)) for index in range(4)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match=r"4D image holding 4 volumes.*--volume-index"):
        imageio.readImage(str(tmp_path / "four.nii.gz"), scene)
    picked = imageio.readImage(str(tmp_path / "four.nii.gz"), scene, volumeIndex=2)
    assert (slicer.util.arrayFromVolume(picked) == 2).all()
    with pytest.raises(InputError, match="out of range"):
        imageio.readImage(str(tmp_path / "four.nii.gz"), scene, volumeIndex=4)

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=True), str(tmp_path / "six.nrrd"))
    with pytest.raises(InputError, match="6 components"):
        imageio.readImage(str(tmp_path / "six.nrrd"), scene)


def test_missing_and_non_image_files_raise_input_error(scene, tmp_path, capfd):
    with pytest.raises(InputError, match="does not exist"):
        imageio.readImage(str(tmp_path / "nothere.nii.gz"), scene)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="not an image"):
        imageio.readImage(str(tmp_path / "notes.txt"), scene)
    (tmp_path / "fake.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InputError):
        imageio.readImage(str(tmp_path / "fake.nii.gz"), scene)
    image = obliqueImage(np.ones((6, 20, 30), np.float32))
    sitk.WriteImage(image, str(tmp_path / "whole.nrrd"), useCompression=False)
    data = (tmp_path / "whole.nrrd").read_bytes()
    (tmp_path / "truncated.nrrd").write_bytes(data[: len(data) - 2000])
    with pytest.raises(InputError, match="could not be read"):
        imageio.readImage(str(tmp_path / "truncated.nrrd"), scene)
    assert "HDF5" not in capfd.readouterr().err  # native probing noise is kept off the user's terminal


def test_nan_voxels_warn_and_stay_unchanged(scene, tmp_path):
    import slicer

    voxels = np.ones((3, 4, 5), np.float32)
    voxels[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(tmp_path / "nan.nrrd"))
    warnings = []
    node = imageio.readImage(str(tmp_path / "nan.nrrd"), scene, warn=warnings.append)
    assert len(warnings) == 1 and "1 NaN" in warnings[0]
    assert np.isnan(slicer.util.arrayFromVolume(node)[1, 2, 3])


def test_failed_writes_leave_no_output(scene, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    import slicer

    slicer.util.updateVolumeFromArray(node, np.zeros((2, 3, 4), np.int16))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError, match="output folder"):
        imageio.writeLabelmap(np.zeros((2, 3, 4), bool), node, str(blocker / "out.nii.gz"))
    with pytest.raises(InputError, match="does not match"):
        imageio.writeLabelmap(np.zeros((2, 3, 5), bool), node, str(tmp_path / "out.nii.gz"))
    with pytest.raises(InputError, match="unsupported output type"):
        imageio.checkOutputPath(str(tmp_path / "out.png"))
    existing = tmp_path / "keep.nrrd"
    existing.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with imageio.atomicOutput(str(existing)) as temporaryPath:
            with open(temporaryPath, "wb") as handle:
                handle.write(b"partial")
            raise RuntimeError("interrupted")
    assert existing.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["afile", "keep.nrrd"]
    if os.geteuid() != 0:  # root writes anywhere; the check above covers an uncreatable folder
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="not writable"):
            imageio.writeLabelmap(np.zeros((2, 3, 4), bool), node, str(locked / "out.nii.gz"))
        shutil.rmtree(locked, ignore_errors=True)
