"""Geodesic reach of a click: the voxels within a path-cost budget of it, by fast marching (SimpleITK).

The cost of a path is the intensity change along it plus ``penalty`` per mm,
the same cost GrowCut grows by (vtkImageGrowCutSegment: |intensity step| +
DistancePenalty x step length). In continuous form that is the integral of
``penalty + |grad I|`` along the path, so the arrival time of a front moving
at speed ``1 / (penalty + |grad I|)`` (itk::FastMarchingImageFilter, which
honours the image spacing) is the path cost. The march stops at the budget,
so its work is proportional to the voxels reached, not to the block.

Frames: (K, J, I) numpy arrays, points (k, j, i), spacing (sk, sj, si) in mm.
"""

import numpy as np


class GeodesicReach:
    """Fast-marching reach on one intensity block; the speed image is computed once and reused."""

    def __init__(self, imageKji: np.ndarray, spacingKji, penalty: float, gradientWeight: float = 1.0):
        import SimpleITK as sitk  # noqa: PLC0415 (lazy: bundled with Slicer)

        if penalty <= 0:
            raise ValueError("The geodesic reach needs a positive distance penalty.")
        self.shape = imageKji.shape
        self.penalty = float(penalty)
        image = sitk.GetImageFromArray(np.ascontiguousarray(imageKji, dtype=np.float32))
        image.SetSpacing(tuple(float(s) for s in spacingKji[::-1]))
        gradient = sitk.GetArrayFromImage(sitk.GradientMagnitude(image))
        speed = sitk.GetImageFromArray((1.0 / (self.penalty + gradientWeight * gradient)).astype(np.float32))
        speed.CopyInformation(image)
        self._speed = speed
        self._sitk = sitk

    def reach(self, pointKji, budget: float):
        """(flat indices, path costs) of the voxels whose path cost from ``pointKji`` is at most ``budget``.

        Costs let a caller take a smaller reach (costs <= a smaller budget) without marching again.
        """
        sitk = self._sitk
        marcher = sitk.FastMarchingImageFilter()
        marcher.SetTrialPoints([[int(pointKji[2]), int(pointKji[1]), int(pointKji[0])]])
        # itk marks unreached voxels with a large value; stop a little past the budget.
        marcher.SetStoppingValue(float(budget) * 1.01 + 1e-6)
        arrivalImage = marcher.Execute(self._speed)
        # A view shares the image's buffer: the image must outlive it (a view of a temporary crashes).
        arrival = sitk.GetArrayViewFromImage(arrivalImage).ravel()
        reached = np.flatnonzero(arrival <= budget)
        costs = arrival[reached].astype(np.float32)
        del arrival
        return reached, costs
