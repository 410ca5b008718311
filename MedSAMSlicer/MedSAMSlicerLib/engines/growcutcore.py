"""Slicer's GrowCut (vtkImageGrowCutSegment) and the seed geometry shared by the 2D and 3D weight-free engines.

vtkImageGrowCutSegment (Slicer Modules/Loadable/Segmentations/Logic, also in
slicer-core) labels every unseeded voxel with the seed of the cheapest path
to it, the cost being the sum of intensity steps plus DistancePenalty per mm
(26-neighbourhood). Voxels on the block's outermost layer receive labels but
do not spread them, so blocks are padded by one voxel. The vtk classes are
imported at first use.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

from ..core.errors import DependencyError, PromptError

#: GrowCut needs a voxel of padding around the region that grows: at least 3 voxels per axis.
MIN_GROWCUT_SIZE = 3
SEED_FOREGROUND = 1
SEED_BACKGROUND = 2


def growCutFilterClass():
    """Slicer's vtkImageGrowCutSegment, from Slicer or slicer-core; DependencyError if neither is there."""
    try:
        from slicer import vtkImageGrowCutSegment  # noqa: PLC0415 (lazy on purpose)
    except ImportError as error:
        raise DependencyError(
            "The weight-free engine needs Slicer's vtkImageGrowCutSegment: run inside 3D Slicer "
            "or install slicer-core (pip install slicer-core)."
        ) from error
    return vtkImageGrowCutSegment


def toVtkImage(arrayZyx: np.ndarray, spacingXyz=(1.0, 1.0, 1.0)):
    """A vtkImageData holding a deep copy of a (Z, Y, X) numpy array."""
    import vtk  # noqa: PLC0415
    from vtk.util import numpy_support  # noqa: PLC0415

    array = np.ascontiguousarray(arrayZyx)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetSpacing(*[float(s) for s in spacingXyz])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    return image


def runGrowCut(intensityZyx: np.ndarray, seedsZyx: np.ndarray, excludedZyx: Optional[np.ndarray] = None,
               spacingXyz=(1.0, 1.0, 1.0), distancePenalty: float = 0.0) -> np.ndarray:
    """Run vtkImageGrowCutSegment on a 3D block; returns the uint8 label of every voxel.

    intensityZyx: float32 (Z, Y, X), every axis >= 3 (voxels on the outermost
    layer receive labels but do not spread them, so callers pad by one voxel).
    seedsZyx: uint8 labels, 0 = unlabelled. excludedZyx: optional bool, True
    where growing must not go. distancePenalty: intensity units added per mm
    of path length (spacingXyz in mm). Raises PromptError for a block too small.
    """
    if min(intensityZyx.shape) < MIN_GROWCUT_SIZE:
        raise PromptError(f"GrowCut needs at least {MIN_GROWCUT_SIZE} voxels along every axis: draw a larger box.")
    from vtk.util import numpy_support  # noqa: PLC0415

    growCut = growCutFilterClass()()
    growCut.SetIntensityVolume(toVtkImage(intensityZyx.astype(np.float32), spacingXyz))
    growCut.SetSeedLabelVolume(toVtkImage(seedsZyx.astype(np.uint8), spacingXyz))
    if excludedZyx is not None:
        growCut.SetMaskVolume(toVtkImage(excludedZyx.astype(np.uint8), spacingXyz))
    growCut.SetDistancePenalty(float(distancePenalty))
    growCut.Update()
    scalars = growCut.GetOutput().GetPointData().GetScalars()
    if scalars is None:
        raise PromptError("GrowCut produced no result: check that the box and points lie on the image.")
    return numpy_support.vtk_to_numpy(scalars).reshape(intensityZyx.shape).copy()


def ellipsoidMask(shape: Tuple[int, ...], centre: Sequence[float], semiAxes: Sequence[float]) -> np.ndarray:
    """Bool array of ``shape``: voxels inside the axis-aligned ellipsoid (same axis order as shape); never empty."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    total = 0.0
    for grid, c, a in zip(grids, centre, semiAxes):
        total = total + ((grid - c) / max(float(a), 0.5)) ** 2
    inside = total <= 1.0
    nearest = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, shape))
    inside[nearest] = True  # at least the centre voxel, however small the box
    return inside


def robustSpread(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the standard deviation of normally spread values, blind to outliers."""
    median = np.median(values)
    return 1.4826 * float(np.median(np.abs(values - median)))
