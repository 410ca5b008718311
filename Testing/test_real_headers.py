"""Real headers through the geometry bridge: thick-slice brain MRI, a CT DICOM series with z-flipped labels.

Volumes are read with Slicer's own volumes logic (AddArchetypeVolume, DICOM
included); SimpleITK reads the same files independently, as the reference.
Labels are aligned to images by physical (RAS) position only, never by index.
"""

import glob
import os

import numpy as np
import pytest
import slicer
import vtk

from MedSAMSlicerLib.mrml.headlessscene import moduleLogic
from MedSAMSlicerLib.mrml.volumegeometry import (axisFromSliceNode, ijkToRas, ijkToWorld, rasToIjk, sliceIndexFromRas,
                                            sliceSourceFromVolume)

sitk = pytest.importorskip("SimpleITK")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _load(scene, path, labelMap=False, fileList=None):
    names = None
    if fileList:
        names = vtk.vtkStringArray()
        for name in fileList:
            names.InsertNextValue(name)
    node = moduleLogic(scene, "Volumes").AddArchetypeVolume(path, os.path.basename(path), 1 if labelMap else 0, names)
    assert node is not None, f"Slicer's volumes logic could not read {path}"
    return node


def _nodeFromSitk(image):
    """A scalar volume node from a SimpleITK image (LPS) with the same voxels, geometry converted to RAS."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), LPS_TO_RAS @ matrix)


def _allIjk(shapeKji):
    k, j, i = np.meshgrid(*(np.arange(n) for n in shapeKji), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)


def _resampleNearest(labelNode, targetNode):
    """The label's values on the target's voxel grid, through world RAS (KJI array, 0 outside the label)."""
    labelKji = slicer.util.arrayFromVolume(labelNode)
    targetShape = slicer.util.arrayFromVolume(targetNode).shape[:3]
    labelIjk = np.floor(rasToIjk(labelNode, ijkToRas(targetNode, _allIjk(targetShape))) + 0.5).astype(int)
    inside = np.all((labelIjk >= 0) & (labelIjk < np.array(labelKji.shape[::-1])), axis=1)
    values = np.zeros(len(labelIjk), labelKji.dtype)
    values[inside] = labelKji[labelIjk[inside, 2], labelIjk[inside, 1], labelIjk[inside, 0]]
    return values.reshape(targetShape)


def _centroidRas(node, maskKji):
    return ijkToRas(node, np.argwhere(maskKji)[:, ::-1].astype(float)).mean(axis=0)


def _axialSliceNode():
    sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
    sliceNode.SetSliceToRASByNTP(0, 0, 1, 1, 0, 0, 0, 0, 0, 0)
    return sliceNode


def test_thick_slice_brain_mri_and_its_label_align_physically(scene, sharedData):
    imagePath = str(sharedData / "pyradiomics" / "brain1_image.nrrd")
    labelPath = str(sharedData / "pyradiomics" / "brain1_label.nrrd")
    image, label = _load(scene, imagePath), _load(scene, labelPath, labelMap=True)
    labelKji = slicer.util.arrayFromVolume(label) > 0
    assert labelKji.any()
    # Each label voxel centre falls on an image voxel centre.
    labelIjk = np.argwhere(labelKji)[:, ::-1].astype(float)
    inImage = rasToIjk(image, ijkToRas(label, labelIjk))
    np.testing.assert_allclose(inImage, np.round(inImage), atol=1e-4)
    # The tumour centroid in RAS agrees with SimpleITK's independent reading (LPS -> RAS).
    reference = sitk.ReadImage(labelPath)
    referenceKji = np.argwhere(sitk.GetArrayFromImage(reference) > 0).mean(axis=0)
    lps = reference.TransformContinuousIndexToPhysicalPoint(referenceKji[::-1].tolist())
    np.testing.assert_allclose(_centroidRas(label, labelKji), [-lps[0], -lps[1], lps[2]], atol=1e-4)
    # Axial view cuts across the thick axis; a sagittal slice is resampled to 0.78 mm square pixels.
    source = sliceSourceFromVolume(image)
    assert axisFromSliceNode(image, _axialSliceNode()) == 2
    assert source.pixelSpacing(0) == pytest.approx(0.78125) and source.spacingIjk[2] == pytest.approx(6.5)
    assert source.imageShape(0) == (round(25 * 6.5 / 0.78125), 256)
    labelSource = sliceSourceFromVolume(label)
    centreI = int(round(rasToIjk(label, _centroidRas(label, labelKji))[0, 0]))
    native = labelKji[:, :, centreI]
    imageMask = labelSource.nativeMaskToImage(0, native)
    np.testing.assert_array_equal(labelSource.imageMaskToNative(0, imageMask), native)
    nativeAreaMm2 = native.sum() * 0.78125 * 6.5
    assert imageMask.sum() * 0.78125 ** 2 == pytest.approx(nativeAreaMm2, rel=0.1)
    # The tumour slice through its centroid is one where the label is present.
    centreK = sliceIndexFromRas(image, 2, _centroidRas(label, labelKji))
    assert labelKji[centreK].any()
    assert source.sliceImage(2, centreK).shape == (256, 256)


def test_ct_series_and_z_flipped_liver_label_align_by_physical_position(scene, sharedData):
    folder = sharedData / "dcmqi_ct3slice"
    files = sorted(glob.glob(str(folder / "ct-3slice" / "*.dcm")))
    assert len(files) == 3
    ct = _load(scene, files[0], fileList=files)  # Slicer's DICOM reading (slices sorted by position)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)  # instance order 1, 2, 3 runs from superior to inferior: K points down
    ctByInstance = _nodeFromSitk(reader.Execute())
    liver = _load(scene, str(folder / "liver_seg.nrrd"), labelMap=True)
    liverKji = slicer.util.arrayFromVolume(liver) > 0
    assert ijkToWorld(ctByInstance)[2, 2] < 0 < ijkToWorld(liver)[2, 2]  # the index orders disagree
    resampled = {}
    for ctNode in (ct, ctByInstance):
        # Every liver voxel lands inside the CT on a voxel centre; slice k of the label is CT slice k or 2 - k.
        inCt = rasToIjk(ctNode, ijkToRas(liver, np.argwhere(liverKji)[:, ::-1].astype(float)))
        np.testing.assert_allclose(inCt, np.round(inCt), atol=1e-3)
        assert np.all(inCt > -0.5) and np.all(inCt < np.array([512, 512, 3]) - 0.5)
        for k in range(3):
            ctSlice = sliceIndexFromRas(ctNode, axisFromSliceNode(ctNode, _axialSliceNode()), ijkToRas(liver, [[0, 0, k]])[0])
            assert ctSlice == (k if ctNode is ct else 2 - k)
        # The label resampled onto the CT grid through the geometry keeps its centroid and its voxels.
        resampled[ctNode.GetID()] = _resampleNearest(liver, ctNode)
        onCt = resampled[ctNode.GetID()] > 0
        assert onCt.sum() == liverKji.sum()
        np.testing.assert_allclose(_centroidRas(ctNode, onCt), _centroidRas(liver, liverKji), atol=1e-6)
        # The CT under the liver label looks like liver (soft tissue in HU).
        hu = slicer.util.arrayFromVolume(ctNode)[onCt]
        assert 0 < np.median(hu) < 200
    np.testing.assert_array_equal(resampled[ctByInstance.GetID()], resampled[ct.GetID()][::-1])
    # The same physical slice gives the same image from either CT node.
    source, flippedSource = sliceSourceFromVolume(ct), sliceSourceFromVolume(ctByInstance)
    np.testing.assert_array_equal(source.sliceImage(2, 0), flippedSource.sliceImage(2, 2))
