"""MRML bridge for volume geometry: IJK <-> world RAS, which IJK axis a view cuts, SliceSources from nodes.

Frames: IJK are continuous voxel indices (voxel centres at integers, i = column
of slicer.util's KJI arrays). "RAS" here is always *world* RAS: the volume's
IJKToRAS composed with its parent transforms, which must be linear. Nothing is
assumed about the direction matrix (flipped, permuted, oblique all work) or
about which view (Red, Yellow, Green) the user works in.
"""

from typing import Optional

import numpy as np
import slicer
import vtk

from ..core.errors import GeometryError, InputError, PromptError
from ..imaging.intensity import IntensityPolicy
from ..imaging.slicesource import SliceSource

#: A view plane matches an IJK plane when their normals differ by at most this (degrees).
AXIS_TOLERANCE_DEGREES = 1.0

_REFORMAT_ADVICE = ("Align the view with the volume: Reformat module (or the slice view's menu) > "
                    "Rotate to volume plane, then segment again")


def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def ijkToWorld(volumeNode) -> np.ndarray:
    """4x4 matrix from the volume's continuous IJK to world RAS (mm).

    IJKToRAS composed with the parent transforms. Raises GeometryError when a
    parent transform is non-linear (harden or remove it) or the matrix is singular.
    """
    if volumeNode is None:
        raise InputError("No volume selected: choose a volume first.")
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = _matrixToArray(ijkToRas)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise GeometryError(f"Volume '{volumeNode.GetName()}' is under a non-linear transform "
                                f"('{parent.GetName()}'): harden the transform on the volume (Data module > "
                                "right-click > Harden transform) or remove it, then try again.")
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        matrix = _matrixToArray(toWorld) @ matrix
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise GeometryError(f"Volume '{volumeNode.GetName()}' has a degenerate geometry (zero spacing or "
                            "collinear axes): fix its spacing and directions in the Volumes module.")
    return matrix


def ijkToRas(volumeNode, pointsIjk) -> np.ndarray:
    """Continuous IJK points (N, 3) -> world RAS points (N, 3) in mm (parent transforms included)."""
    points = np.asarray(pointsIjk, dtype=np.float64).reshape(-1, 3)
    matrix = ijkToWorld(volumeNode)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def rasToIjk(volumeNode, pointsRas) -> np.ndarray:
    """World RAS points (N, 3) in mm -> continuous IJK points (N, 3) (parent transforms included)."""
    points = np.asarray(pointsRas, dtype=np.float64).reshape(-1, 3)
    inverse = np.linalg.inv(ijkToWorld(volumeNode))
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def worldSpacing(volumeNode) -> tuple:
    """Voxel size (si, sj, sk) in world mm: the node's spacing, scaled by any parent transform."""
    matrix = ijkToWorld(volumeNode)
    return tuple(float(v) for v in np.linalg.norm(matrix[:3, :3], axis=0))


def _planeNormals(matrix: np.ndarray) -> np.ndarray:
    """Unit world normals (3, 3) of the planes that cut across I, J and K (row a = axis a)."""
    columns = matrix[:3, :3]
    normals = np.array([np.cross(columns[:, (a + 1) % 3], columns[:, (a + 2) % 3]) for a in range(3)])
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def _planeName(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def axisFromNormalRas(volumeNode, normalRas, toleranceDegrees: float = AXIS_TOLERANCE_DEGREES) -> int:
    """The IJK axis (0 = I, 1 = J, 2 = K) whose slice plane is the view plane of normal ``normalRas`` (world).

    The view plane matches the plane across an IJK axis when their normals are
    parallel (either sign) within ``toleranceDegrees``. Raises GeometryError for
    an oblique view, naming the views that work.
    """
    normal = np.asarray(normalRas, dtype=np.float64).reshape(3)
    length = np.linalg.norm(normal)
    if not length > 0:
        raise GeometryError("The view normal is zero: the slice view has no valid orientation.")
    normals = _planeNormals(ijkToWorld(volumeNode))
    angles = np.degrees(np.arccos(np.clip(np.abs(normals @ (normal / length)), 0.0, 1.0)))
    axis = int(np.argmin(angles))
    if angles[axis] > toleranceDegrees:
        planes = ", ".join(f"{'IJK'[a]} ({_planeName(normals[a])}-like)" for a in range(3))
        raise GeometryError(f"The view is oblique to volume '{volumeNode.GetName()}': it is {angles[axis]:.1f} degrees "
                            f"from the nearest voxel plane. Segmentation works in the volume's planes across {planes}. "
                            f"{_REFORMAT_ADVICE}.")
    return axis


def sliceNormalRas(sliceNode) -> np.ndarray:
    """World normal of a slice view: the third column of its SliceToRAS matrix."""
    return _matrixToArray(sliceNode.GetSliceToRAS())[:3, 2].copy()


def axisFromSliceNode(volumeNode, sliceNode) -> int:
    """The IJK axis the slice view ``sliceNode`` cuts across; GeometryError if the view is oblique to the volume."""
    if sliceNode is None:
        raise InputError("No slice view given: pass a vtkMRMLSliceNode or an explicit axis.")
    return axisFromNormalRas(volumeNode, sliceNormalRas(sliceNode))


def sliceIndexFromRas(volumeNode, axis: int, pointRas) -> int:
    """Index of the slice along ``axis`` that contains world point ``pointRas`` (nearest voxel centre).

    Raises PromptError when the point lies outside the volume along that axis.
    """
    if axis not in (0, 1, 2):
        raise InputError(f"Slice axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}.")
    coordinate = float(rasToIjk(volumeNode, pointRas)[0, axis])
    count = dimensionsIjk(volumeNode)[axis]
    if not -0.5 <= coordinate <= count - 0.5:
        raise PromptError(f"The point is outside volume '{volumeNode.GetName()}' along {'IJK'[axis]} "
                          f"(index {coordinate:.1f}, slices 0..{count - 1}): move it onto the volume.")
    return int(min(max(np.floor(coordinate + 0.5), 0), count - 1))


def sliceIndexFromSliceNode(volumeNode, axis: int, sliceNode) -> int:
    """Index of the slice along ``axis`` that the slice view ``sliceNode`` currently shows (PromptError if off the volume)."""
    return sliceIndexFromRas(volumeNode, axis, _matrixToArray(sliceNode.GetSliceToRAS())[:3, 3])


def dimensionsIjk(volumeNode) -> tuple:
    """(I, J, K) voxel counts of a volume node; InputError when it has no voxels."""
    imageData = volumeNode.GetImageData()
    if imageData is None:
        raise InputError(f"Volume '{volumeNode.GetName()}' has no voxels loaded: load or select another volume.")
    return tuple(imageData.GetDimensions())


def geometryKey(volumeNode) -> str:
    """Text identifying where the volume's voxels sit in world space (IJKToRAS with parent transforms)."""
    return ",".join(f"{v:.6g}" for v in ijkToWorld(volumeNode)[:3].ravel())


def sliceSourceFromVolume(volumeNode, policy: Optional[IntensityPolicy] = None) -> SliceSource:
    """A SliceSource over the voxels of a scalar or RGB(A) vector volume node (voxels not copied, never written).

    Spacing is the world voxel size (the node's spacing unless a parent
    transform scales it); geometryKey comes from IJKToRAS and parent transforms.
    RGBA loses its alpha. Raises InputError for a node without voxels, a
    2-component or >4-component vector volume, and GeometryError for a
    non-linear parent transform.
    """
    dimensionsIjk(volumeNode)
    voxelsKji = slicer.util.arrayFromVolume(volumeNode)  # a view: (K, J, I) or (K, J, I, C)
    if voxelsKji.ndim == 4:
        components = voxelsKji.shape[3]
        if components == 1:
            voxelsKji = voxelsKji[..., 0]
        elif components == 4:
            voxelsKji = voxelsKji[..., :3]
        elif components != 3:
            raise InputError(f"Volume '{volumeNode.GetName()}' has {components} components per voxel: only scalar, "
                             "RGB and RGBA images are supported. Extract one component (Vector to Scalar Volume module).")
    return SliceSource(voxelsKji, spacingIjk=worldSpacing(volumeNode),
                       policy=policy if policy is not None else IntensityPolicy.auto(),
                       geometryKey=geometryKey(volumeNode))
