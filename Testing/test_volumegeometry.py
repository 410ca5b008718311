"""MRML geometry bridge on real volume nodes: IJK <-> world RAS, view axis, SliceSources from nodes."""

import numpy as np
import pytest
import slicer
import vtk

from MedSAMSlicerLib.core.errors import GeometryError, InputError, PromptError
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.mrml.volumegeometry import (axisFromNormalRas, axisFromSliceNode, ijkToRas, ijkToWorld, rasToIjk,
                                            sliceIndexFromRas, sliceIndexFromSliceNode, sliceSourceFromVolume)


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


# Direction matrices (columns = world directions of I, J, K).
DIRECTIONS = {
    "ras": np.eye(3),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # I->A, J->-S, K->-R
    "oblique": _rotation([1, 2, 3], 25.0) @ np.diag([-1.0, -1.0, 1.0]),
}
SPACING = np.array([0.8, 0.9, 2.5])
ORIGIN = np.array([-40.0, 25.0, 110.0])
SHAPE_KJI = (9, 14, 12)


def _ijkToRasArray(directions, spacing=SPACING, origin=ORIGIN):
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def _addVolume(directions, voxels=None, parentMatrix=None, spacing=SPACING, nodeClassName=None):
    if voxels is None:
        voxels = np.zeros(SHAPE_KJI, np.int16)
    node = slicer.util.addVolumeFromArray(voxels, _ijkToRasArray(directions, spacing), nodeClassName=nodeClassName)
    if parentMatrix is not None:
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(parentMatrix))
        node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def _parentMatrix():
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation([0, 1, 1], 40.0)
    matrix[:3, 3] = [5.0, -12.0, 30.0]
    return matrix


def _sliceNode(normalRas, transverseRas, originRas=(0, 0, 0)):
    sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
    sliceNode.SetSliceToRASByNTP(*normalRas, *transverseRas, *originRas, 0)
    return sliceNode


CASES = [(name, parent) for name in DIRECTIONS for parent in (False, True)]


@pytest.mark.parametrize("name, withParent", CASES)
def test_ijk_to_world_matches_the_geometry_it_was_built_from(scene, name, withParent):
    parent = _parentMatrix() if withParent else None
    node = _addVolume(DIRECTIONS[name], parentMatrix=parent)
    expected = _ijkToRasArray(DIRECTIONS[name])
    if withParent:
        expected = parent @ expected
    np.testing.assert_allclose(ijkToWorld(node), expected, atol=1e-9)
    pointIjk = np.array([[3.0, 7.0, 4.0]])
    expectedRas = (expected @ np.append(pointIjk[0], 1.0))[:3]
    np.testing.assert_allclose(ijkToRas(node, pointIjk)[0], expectedRas, atol=1e-9)
    # Slicer's own transform of the same point agrees (parent transform included).
    local = _ijkToRasArray(DIRECTIONS[name]) @ np.append(pointIjk[0], 1.0)
    world = [0.0, 0.0, 0.0]
    node.TransformPointToWorld(local[:3], world)
    np.testing.assert_allclose(world, expectedRas, atol=1e-9)


@pytest.mark.parametrize("name, withParent", CASES)
def test_ras_ijk_slice_pixel_round_trip_in_every_view(scene, name, withParent):
    node = _addVolume(DIRECTIONS[name], parentMatrix=_parentMatrix() if withParent else None)
    source = sliceSourceFromVolume(node)
    matrix = ijkToWorld(node)
    rng = np.random.default_rng(5)
    pointsIjk = rng.uniform(0, 1, size=(6, 3)) * (np.array(SHAPE_KJI[::-1]) - 1)
    pointsRas = ijkToRas(node, pointsIjk)
    for axis in (0, 1, 2):
        # The view that looks along this IJK axis is the one that cuts across it.
        normal = np.cross(matrix[:3, (axis + 1) % 3], matrix[:3, (axis + 2) % 3])
        assert axisFromNormalRas(node, normal) == axis
        assert axisFromNormalRas(node, -normal) == axis
        slices, xy = source.ijkToImage(axis, rasToIjk(node, pointsRas))
        for n in range(len(pointsRas)):
            back = ijkToRas(node, source.imageToIjk(axis, slices[n], xy[n:n + 1]))[0]
            np.testing.assert_allclose(back, pointsRas[n], atol=1e-6)


@pytest.mark.parametrize("name, withParent", CASES)
def test_a_bright_voxel_lands_on_its_slice_pixel(scene, name, withParent):
    voxels = np.zeros(SHAPE_KJI, np.int16)
    voxelKji = (6, 3, 9)
    voxels[5:8, 2:5, 8:11] = 1000  # a 3-voxel cube around it, so resampling keeps its centre at full value
    node = _addVolume(DIRECTIONS[name], voxels=voxels, parentMatrix=_parentMatrix() if withParent else None)
    source = sliceSourceFromVolume(node, IntensityPolicy.window(0, 1000))
    voxelRas = ijkToRas(node, [voxelKji[::-1]])[0]
    for axis in (0, 1, 2):
        k = sliceIndexFromRas(node, axis, voxelRas)
        assert k == voxelKji[::-1][axis]
        _, xy = source.ijkToImage(axis, rasToIjk(node, voxelRas))
        image = source.sliceImage(axis, k)
        row, col = int(round(xy[0, 1])), int(round(xy[0, 0]))
        assert image[row, col] == pytest.approx(1.0)
        assert image.max() == 1.0 and (image > 0).sum() < image.size / 4


def test_standard_views_pick_the_matching_axis_for_lps_and_permuted_volumes(scene):
    axial = _sliceNode((0, 0, 1), (1, 0, 0))
    sagittal = _sliceNode((1, 0, 0), (0, -1, 0))
    coronal = _sliceNode((0, 1, 0), (1, 0, 0))
    lps = _addVolume(DIRECTIONS["lps"])
    assert [axisFromSliceNode(lps, s) for s in (axial, sagittal, coronal)] == [2, 0, 1]
    permuted = _addVolume(DIRECTIONS["permuted"])  # I->A, J->S, K->R
    assert [axisFromSliceNode(permuted, s) for s in (axial, sagittal, coronal)] == [1, 2, 0]


def test_oblique_view_raises_a_geometry_error_that_says_which_views_work(scene):
    oblique = _addVolume(DIRECTIONS["oblique"])
    axial = _sliceNode((0, 0, 1), (1, 0, 0))
    with pytest.raises(GeometryError, match="Rotate to volume plane") as error:
        axisFromSliceNode(oblique, axial)
    assert "axial" in str(error.value) or "sagittal" in str(error.value)
    # Half a degree off a volume plane still counts as that plane; 3 degrees does not.
    matrix = ijkToWorld(oblique)
    normalK = np.cross(matrix[:3, 0], matrix[:3, 1])
    tilted = _rotation(matrix[:3, 0], 0.5) @ normalK
    assert axisFromNormalRas(oblique, tilted) == 2
    with pytest.raises(GeometryError):
        axisFromNormalRas(oblique, _rotation(matrix[:3, 0], 3.0) @ normalK)


def test_oblique_volume_under_parent_transform_follows_the_transform(scene):
    parent = np.eye(4)
    parent[:3, :3] = _rotation([0, 0, 1], 30.0)
    node = _addVolume(DIRECTIONS["ras"], parentMatrix=parent)
    axial = _sliceNode((0, 0, 1), (1, 0, 0))
    assert axisFromSliceNode(node, axial) == 2  # rotation about S keeps axial slices axial
    sagittal = _sliceNode((1, 0, 0), (0, -1, 0))
    with pytest.raises(GeometryError):
        axisFromSliceNode(node, sagittal)
    rotated = _sliceNode(parent[:3, 0], parent[:3, 1])
    assert axisFromSliceNode(node, rotated) == 0


def test_slice_index_from_slice_node_and_points_outside(scene):
    node = _addVolume(DIRECTIONS["lps"])
    centreOfSlice5 = ijkToRas(node, [[4.0, 6.0, 5.0]])[0]
    axial = _sliceNode((0, 0, 1), (1, 0, 0), originRas=centreOfSlice5 + [0, 0, 0.9])  # within half of 2.5 mm
    assert sliceIndexFromSliceNode(node, axisFromSliceNode(node, axial), axial) == 5
    with pytest.raises(PromptError, match="outside"):
        sliceIndexFromRas(node, 2, ijkToRas(node, [[4.0, 6.0, 12.0]])[0])


def test_non_linear_parent_transform_is_refused_with_advice(scene):
    node = _addVolume(DIRECTIONS["ras"])
    spline = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point, shift in (((0, 0, 0), (0, 0, 0)), ((50, 0, 0), (52, 1, 0)), ((0, 50, 0), (0, 50, 3)),
                         ((0, 0, 50), (1, 0, 50)), ((50, 50, 50), (50, 48, 50))):
        source.InsertNextPoint(point)
        target.InsertNextPoint(shift)
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode")
    transform.SetAndObserveTransformToParent(spline)
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(GeometryError, match="[Hh]arden"):
        sliceSourceFromVolume(node)


def test_anisotropic_sagittal_slice_from_a_volume_node_has_square_pixels(scene):
    voxels = np.zeros((8, 20, 24), np.int16)
    voxels[3, 5:15, 10] = 500
    node = _addVolume(DIRECTIONS["lps"], voxels=voxels, spacing=(0.7, 0.7, 5.0))
    source = sliceSourceFromVolume(node, IntensityPolicy.window(0, 500))
    sagittal = _sliceNode((1, 0, 0), (0, -1, 0))
    axis = axisFromSliceNode(node, sagittal)
    assert axis == 0 and source.pixelSpacing(axis) == pytest.approx(0.7)
    assert source.imageShape(axis) == (round(8 * 5 / 0.7), 20)
    native = np.asarray(voxels[:, :, 10] > 0)
    image = source.nativeMaskToImage(axis, native)
    np.testing.assert_array_equal(source.imageMaskToNative(axis, image), native)
    # The bright block is 5 mm tall and 10 x 0.7 mm wide: about 7 x 10 image pixels above half its value.
    bright = source.sliceImage(axis, 10) > 0.5
    rows, cols = np.nonzero(bright)
    assert cols.min() == 5 and cols.max() == 14
    assert abs((rows.max() - rows.min() + 1) - 5 / 0.7) <= 2
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)  # voxels untouched


def test_rgb_photo_as_a_one_slice_vector_volume_gives_a_colour_image(scene):
    photo = np.zeros((1, 30, 40, 3), np.uint8)
    photo[0, 10:20, 5:15] = (200, 30, 90)
    node = _addVolume(np.diag([-1.0, -1.0, 1.0]), voxels=photo, spacing=(0.2, 0.2, 1.0),
                      nodeClassName="vtkMRMLVectorVolumeNode")
    source = sliceSourceFromVolume(node)
    assert source.isRgb and source.shapeKji == (1, 30, 40) and source.sliceCount(2) == 1
    image = source.sliceImage(axisFromSliceNode(node, _sliceNode((0, 0, 1), (1, 0, 0))), 0)
    assert image.shape == (30, 40, 3)
    np.testing.assert_allclose(image[15, 10], np.array([200, 30, 90]) / 255.0, atol=1e-6)
    assert image[0, 0].tolist() == [0.0, 0.0, 0.0]
    rgba = np.concatenate([photo, np.full((1, 30, 40, 1), 255, np.uint8)], axis=3)
    rgbaNode = _addVolume(np.eye(3), voxels=rgba, spacing=(0.2, 0.2, 1.0), nodeClassName="vtkMRMLVectorVolumeNode")
    np.testing.assert_array_equal(sliceSourceFromVolume(rgbaNode).sliceImage(2, 0), image)
    twoComponents = _addVolume(np.eye(3), voxels=np.zeros((1, 5, 5, 2), np.uint8), nodeClassName="vtkMRMLVectorVolumeNode")
    with pytest.raises(InputError, match="components"):
        sliceSourceFromVolume(twoComponents)


def test_signature_follows_voxels_and_geometry_not_the_node(scene):
    voxels = np.random.default_rng(0).integers(0, 100, size=SHAPE_KJI).astype(np.int16)
    first = _addVolume(DIRECTIONS["lps"], voxels=voxels)
    second = _addVolume(DIRECTIONS["lps"], voxels=voxels)
    second.SetName("another name")
    assert sliceSourceFromVolume(first).signature == sliceSourceFromVolume(second).signature
    moved = _addVolume(DIRECTIONS["lps"], voxels=voxels, parentMatrix=_parentMatrix())
    assert sliceSourceFromVolume(moved).signature != sliceSourceFromVolume(first).signature
