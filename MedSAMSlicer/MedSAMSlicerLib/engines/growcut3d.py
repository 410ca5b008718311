"""GrowCut3d: the weight-free engine's native 3D mode, seeded by a 3D box and refined click by click.

One object holds the state of a 3D segmentation being built: the cropped,
smoothed intensity block around the box, the seed labels, and one Slicer
vtkImageGrowCutSegment filter that keeps its distance map between runs.

Seeds:

- the 3D box: a shell ``ringVoxels`` thick just outside the box is background,
  except where it looks like the core (every voxel outside the box is
  background in the result); a central ellipsoid (semi-axes
  ``coreFraction`` of the box's half sizes: small, see GrowCut3dSettings),
  less its voxels whose intensity is more than 3 robust standard deviations
  from the median of its inner half, is foreground;
- every click: a 3D seed region around the clicked voxel, labelled as the
  click (clickRegion). It is the click's *reach*: the voxels whose path cost
  from the click (intensity change plus ``distancePenalty`` per mm, by fast
  marching, engines/geodesic.py) is at most ``distancePenalty * clickReach *
  depth``, depth being the distance (mm) from the click to the other label of
  the result it corrects (while the result is empty, at most the click's
  distance to the box's nearest wall: the object lies in its box); kept only
  where the intensity is like the click's and connected to it, and halved
  until a click inside the result takes at most ``negativeShare`` of it. A
  click in the middle of a wide wrong region thus claims a wide
  neighbourhood that stops at edges; a click near a boundary little more
  than its own voxel. Clicks outrank the box's guesses: their seeds replace
  core or shell seeds. Where a click's region overlaps an earlier click's of
  the other label, each voxel there goes to the click with the cheaper path
  to it, and every click's own voxel keeps its label whatever later clicks
  seed: a later click does not undo what an earlier one fixed beside it.

Updates: vtkImageGrowCutSegment keeps its path costs and labels between runs
(Slicer 5.10, Modules/Loadable/Segmentations/Logic/vtkImageGrowCutSegment.cxx:
InitializationAHP's "Already initialized" branch puts only new or relabelled
seeds in the heap, and DijkstraBasedClassificationAHP's "Quick update"
relabels a voxel only where a new path is cheaper). Given the same block with
seeds only added or relabelled, ``Update()`` therefore grows from the new
seeds alone, and the result equals a run from scratch with all seeds.
Removing a click, or a positive click outside the box (which enlarges the
block), resets the filter (``Reset()``) and runs from scratch.

Frames: volumes are (K, J, I) arrays; clicks are (i, j, k) voxel coordinates;
spacing (si, sj, sk) mm. No Slicer scene, no Qt, no torch.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import PromptError
from .base import VolumeClick
from .geodesic import GeodesicReach
from .growcutcore import (SEED_BACKGROUND, SEED_FOREGROUND, ellipsoidMask, growCutFilterClass, robustSpread, runGrowCut,
                          toVtkImage)

#: The smallest intensity tolerance when filtering the box core by its inner half's appearance.
CORE_MIN_TOLERANCE = 0.05
#: A core whose intensities spread less than this (a flat or synthetic image) is compared as if they spread this much.
WIDE_CORE_MIN_SPREAD = 0.005


@dataclass
class GrowCut3dSettings:
    """How the 3D box and the clicks seed GrowCut (chosen on ../shared/data: docs/evaluation.md).

    coreFraction: semi-axes of the foreground core ellipsoid as a fraction of
    the box's half sizes. Small on purpose: an organ fills a quarter of its
    box or less, and a large core puts seeds in the tissue beside it (at
    0.65, 40-60 % of the core lay outside the CT spleen, liver and the MR
    liver), seeds that no negative click undoes. wideCoreFractions,
    wideCoreCover, wideCoreSpreadRatio: the core widens to the first of these
    fractions whose ellipsoid GrowCut from the small core already covers (at
    least wideCoreCover of it) and whose intensities spread no more than
    wideCoreSpreadRatio times the small core's (robust standard deviations):
    inside a homogeneous object that fills its box the box alone then gives
    what a large core gives; elsewhere the core stays small, the box alone
    under-segments and every click grows the result within edges
    (docs/evaluation.md: after 5 clicks 0.71 / 0.83 / 0.76 instead of 0.58 /
    0.68 / 0.75 with the large core).

    ringVoxels: thickness of the background shell outside the box; its voxels
    within shellTolerance robust standard deviations of the core's median
    intensity are left unseeded (0: all seeded): where the object goes on
    through the box's wall, a seeded shell would eat into it from there, a
    small core being far away. smoothingSigma: Gaussian smoothing (voxels) of
    the block before growing. distancePenalty: intensity units added per mm of path (0 =
    intensity only; a little distance keeps a flat region from going to
    whichever seed happens to be cheapest through noise).

    Clicks: clickRadiusVoxels: every click seeds at least the ball of this
    radius (voxels). clickReach: in a flat region a click's seed region reaches
    ``clickReach`` times its depth (mm from the click to the other label of the
    result it corrects; on an empty result at most its distance to the box's
    nearest wall, docs/evaluation.md); intensity changes use up the reach,
    weighted by reachGradientWeight (fast marching on the gradient magnitude
    overstates the intensity steps of a path, hence a weight below 1). clickTolerance,
    clickMinTolerance: the region keeps only voxels within clickTolerance
    robust standard deviations (at least clickMinTolerance) of the click's
    3x3x3 neighbourhood median, connected to the click (0 switches this off).
    negativeShare: a click inside the result takes at most this share of it
    (its reach is halved until it does): a click fixes a part, never most of
    the object at once.
    """

    coreFraction: float = 0.1
    wideCoreFractions: Tuple[float, ...] = (0.65, 0.45)
    wideCoreCover: float = 0.9
    wideCoreSpreadRatio: float = 1.3
    shellTolerance: float = 2.0
    ringVoxels: int = 3
    smoothingSigma: float = 1.0
    distancePenalty: float = 0.005
    clickRadiusVoxels: int = 1
    clickReach: float = 3.0
    reachGradientWeight: float = 0.7
    clickTolerance: float = 4.0
    clickMinTolerance: float = 0.03
    negativeShare: float = 0.5


def boxBoundsKji(boxIjk, shapeKji) -> List[Tuple[int, int]]:
    """[(k0, k1), (j0, j1), (i0, i1)]: voxels whose centres lie in an IJK box; PromptError when none do."""
    (i0, j0, k0), (i1, j1, k1) = boxIjk
    bounds = []
    for low, high, size in zip((k0, j0, i0), (k1, j1, i1), shapeKji):
        low, high = sorted((float(low), float(high)))
        first, last = max(int(np.ceil(low - 1e-6)), 0), min(int(np.floor(high + 1e-6)), size - 1)
        if first > last:
            raise PromptError(f"The 3D box {boxIjk} lies outside the volume {tuple(shapeKji)[::-1]} (IJK): "
                              "draw it on the volume.")
        bounds.append((first, last))
    return bounds


class _Filter:
    """One vtkImageGrowCutSegment over a fixed block; the seed array is shared with VTK (edits need touch())."""

    def __init__(self, intensityZyx: np.ndarray, seedsZyx: np.ndarray, spacingXyz, distancePenalty: float):
        import vtk  # noqa: PLC0415 (lazy on purpose)
        from vtk.util import numpy_support  # noqa: PLC0415

        self._numpySupport = numpy_support
        self.shape = seedsZyx.shape
        self.seeds = np.ascontiguousarray(seedsZyx, dtype=np.uint8)
        self._seedImage = vtk.vtkImageData()
        self._seedImage.SetDimensions(self.shape[2], self.shape[1], self.shape[0])
        self._seedImage.SetSpacing(*[float(s) for s in spacingXyz])
        # deep=False: VTK reads self.seeds' buffer; self keeps the array alive as long as the image.
        self._seedArray = numpy_support.numpy_to_vtk(self.seeds.ravel(), deep=False)
        self._seedImage.GetPointData().SetScalars(self._seedArray)
        self.filter = growCutFilterClass()()
        self.filter.SetIntensityVolume(toVtkImage(intensityZyx.astype(np.float32), spacingXyz))
        self.filter.SetSeedLabelVolume(self._seedImage)
        self.filter.SetDistancePenalty(float(distancePenalty))

    def touch(self):
        """Tell VTK the seed buffer changed, so the next run() re-executes."""
        self._seedArray.Modified()
        self._seedImage.Modified()

    def run(self, fromScratch: bool) -> np.ndarray:
        """Labels of the block (uint8 copy); fromScratch forgets the previous run's path costs first."""
        if fromScratch:
            self.filter.Reset()
        self.touch()
        self.filter.Update()
        scalars = self.filter.GetOutput().GetPointData().GetScalars()
        if scalars is None:
            raise PromptError("GrowCut produced no result: check that the box lies on the image.")
        return self._numpySupport.vtk_to_numpy(scalars).reshape(self.shape).copy()


@dataclass
class _ClickSeeds:
    """The voxels one click seeds (flat block indices, sorted) and their path costs from it."""

    label: int
    flat: np.ndarray
    costs: np.ndarray


class GrowCut3d:
    """A 3D GrowCut segmentation from a 3D box, updated incrementally as clicks arrive.

    volumeImage: float (K, J, I) in [0, 1] (an intensity policy applied; never
    modified; any array-like with ``shape`` and slicing: only the box's block
    is read). boxIjk: ((i0, j0, k0), (i1, j1, k1)) continuous voxel indices;
    voxels whose centres lie inside are in the box. spacingIjk: mm.
    ``update(clicks)`` returns the bool (K, J, I) mask for the box and exactly
    these clicks. Raises PromptError for a box off the volume or too thin.
    """

    def __init__(self, volumeImage: np.ndarray, boxIjk, spacingIjk=(1.0, 1.0, 1.0),
                 settings: Optional[GrowCut3dSettings] = None):
        sliceable = hasattr(volumeImage, "shape") and hasattr(volumeImage, "__getitem__")
        volume = volumeImage if sliceable else np.asarray(volumeImage)
        if len(volume.shape) != 3:
            raise PromptError(f"3D GrowCut expects a (K, J, I) volume, got shape {volume.shape}.")
        self.settings = settings or GrowCut3dSettings()
        self.volume = volume
        self.spacingKji = tuple(float(s) for s in spacingIjk)[::-1]
        self.boxBounds = boxBoundsKji(boxIjk, volume.shape)
        self.clicks: List[VolumeClick] = []
        self._filter: Optional[_Filter] = None
        self._reach: Optional[GeodesicReach] = None
        self._labels: Optional[np.ndarray] = None
        self.lastUpdate = "none"
        #: [(k0, k1), (j0, j1), (i0, i1)] of the block segmented: the box, enlarged for positive clicks outside it.
        self.blockBounds = self.boxBounds

    # ---------------------------------------------------------------- public

    def update(self, clicks: Sequence[VolumeClick] = ()) -> np.ndarray:
        """The mask for the box and ``clicks`` (bool (K, J, I)); incremental when clicks were only appended.

        ``lastUpdate`` tells what ran: "incremental" (new clicks' seeds only),
        "full" (from scratch: first run, a click removed or changed, or the
        box enlarged for a positive click outside it) or "unchanged".
        """
        clicks = [VolumeClick(tuple(float(v) for v in c.pointIjk), int(c.label)) for c in clicks]
        bounds = self._boundsWith(clicks)
        appended = (self._filter is not None and bounds == self.blockBounds
                    and clicks[:len(self.clicks)] == self.clicks)
        if appended and len(clicks) == len(self.clicks):
            self.lastUpdate = "unchanged"
            return self.mask()
        if not appended:
            self._build(bounds)
            self.clicks = []
            self._labels = self._filter.run(fromScratch=True)
        new = clicks[len(self.clicks):]
        for click in new:
            # Each click's reach depends on the result it corrects: run after each one.
            self._seedClick(click)
            self._labels = self._filter.run(fromScratch=False)
        self.lastUpdate = "incremental" if appended else "full"
        return self.mask()

    def mask(self) -> np.ndarray:
        """The current result as bool (K, J, I) on the whole volume (False outside the box)."""
        out = np.zeros(self.volume.shape, bool)
        if self._labels is not None:
            out[self._crop] = (self._labels[self._inner] == SEED_FOREGROUND) & self._region[self._inner]
        return out

    # ---------------------------------------------------------------- internals

    def _boundsWith(self, clicks) -> List[Tuple[int, int]]:
        """The box, enlarged to hold every positive click (a positive click must end up inside)."""
        bounds = [list(b) for b in self.boxBounds]
        for click in clicks:
            if click.label == 1:
                for axis, index in enumerate(click.voxelKji(self.volume.shape)):
                    bounds[axis] = [min(bounds[axis][0], index), max(bounds[axis][1], index)]
        return [tuple(b) for b in bounds]

    def _build(self, bounds):
        """Crop the box and its shell (clipped to the volume), smooth, pad by one unseeded voxel, seed the box.

        GrowCut's outermost layer receives labels but does not spread them,
        hence the padding. No shell is seeded beyond the volume's edge: an
        object cut by the field of view may go on there.
        """
        from scipy import ndimage  # noqa: PLC0415

        ring, shape, sigma = self.settings.ringVoxels, self.volume.shape, self.settings.smoothingSigma
        self._crop = tuple(slice(max(a - ring, 0), min(b + ring + 1, n)) for (a, b), n in zip(bounds, shape))
        margin = int(np.ceil(3 * sigma)) if sigma > 0 else 0
        outer = tuple(slice(max(c.start - margin, 0), min(c.stop + margin, n)) for c, n in zip(self._crop, shape))
        block = np.asarray(self.volume[outer], dtype=np.float32)
        if sigma > 0:
            block = ndimage.gaussian_filter(block, sigma)
        block = block[tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self._crop, outer))]
        self._image = np.pad(block, 1, mode="edge")
        self._inner = (slice(1, -1),) * 3
        self._offset = np.array([c.start - 1 for c in self._crop])
        region = np.zeros(self._image.shape, bool)
        region[tuple(slice(a - o, b - o + 1) for (a, b), o in zip(bounds, self._offset))] = True
        self._region = region
        self.blockBounds = bounds
        self._filter = _Filter(self._image, self._boxSeeds(region), self.spacingKji[::-1], self.settings.distancePenalty)
        self._reach = None  # built at the first click on this block
        #: Every click's seed region on this block, in click order.
        self._clickRegions: List[_ClickSeeds] = []

    def _boxSeeds(self, region: np.ndarray) -> np.ndarray:
        """Background shell outside the box, foreground core ellipsoid (its look-alike voxels) inside."""
        from scipy import ndimage  # noqa: PLC0415

        seeds = np.zeros(region.shape, np.uint8)
        shell = ndimage.binary_dilation(region, iterations=self.settings.ringVoxels) & ~region
        shell[0, :, :] = shell[-1, :, :] = shell[:, 0, :] = shell[:, -1, :] = shell[:, :, 0] = shell[:, :, -1] = False
        seeds[shell] = SEED_BACKGROUND
        ranges = self._boxInBlock()
        centre = [(a + b) / 2.0 for a, b in ranges]
        semiAxes = [(b - a) / 2.0 * self.settings.coreFraction for a, b in ranges]
        core = ellipsoidMask(region.shape, centre, semiAxes) & region
        inner = ellipsoidMask(region.shape, centre, [0.5 * a for a in semiAxes]) & region
        values = self._image[inner]
        median = np.median(values)
        spread = robustSpread(values)
        # A large core overlaps the background beside a non-convex object: keep what looks like its inner half.
        core &= np.abs(self._image - median) <= max(3.0 * spread, CORE_MIN_TOLERANCE)
        seeds[core] = SEED_FOREGROUND
        if self.settings.shellTolerance > 0 and core.any():
            # Where the object goes on through the box's wall (a vessel, a tube), the shell would eat into it.
            values = self._image[core]
            coreMedian = np.median(values)
            tolerance = max(self.settings.shellTolerance * robustSpread(values), CORE_MIN_TOLERANCE)
            seeds[shell & (np.abs(self._image - coreMedian) <= tolerance)] = 0
        wide = self._wideCore(seeds, region, centre, ranges)
        if wide is not None:
            seeds[wide & (seeds == 0)] = SEED_FOREGROUND
        return seeds

    def _wideCore(self, seeds, region, centre, ranges) -> Optional[np.ndarray]:
        """The wider core ellipsoid's part inside GrowCut's result from ``seeds``, or None (see GrowCut3dSettings)."""
        settings = self.settings
        if not settings.wideCoreFractions:
            return None
        small = self._image[seeds == SEED_FOREGROUND]
        smallSpread = max(robustSpread(small), WIDE_CORE_MIN_SPREAD) if small.size else 0.0
        # The homogeneity test first: it is cheap, and where it fails (most organs) GrowCut need not run twice.
        ellipsoids = [ellipsoidMask(region.shape, centre, [(b - a) / 2.0 * fraction for a, b in ranges]) & region
                      for fraction in settings.wideCoreFractions]
        limit = settings.wideCoreSpreadRatio * smallSpread
        ellipsoids = [e for e in ellipsoids if robustSpread(self._image[e]) <= limit]
        if not ellipsoids:
            return None
        grown = (runGrowCut(self._image, seeds, spacingXyz=self.spacingKji[::-1],
                            distancePenalty=settings.distancePenalty) == SEED_FOREGROUND) & region
        for ellipsoid in ellipsoids:
            if grown[ellipsoid].mean() >= settings.wideCoreCover:
                return ellipsoid & grown
        return None

    def _boxInBlock(self):
        """The original box (not enlarged by clicks) in block indices."""
        return [(a - o, b - o) for (a, b), o in zip(self.boxBounds, self._offset)]

    def _seedClick(self, click: VolumeClick):
        """Seed the click's reach (see the module docstring) with its label; keep every click's own voxel."""
        point = tuple(int(v) - int(o) for v, o in zip(click.voxelKji(self.volume.shape), self._offset))
        current = (self._labels == SEED_FOREGROUND) & self._region
        if self._reach is None and self.settings.distancePenalty > 0 and self.settings.clickReach > 0:
            self._reach = GeodesicReach(self._image, self.spacingKji, self.settings.distancePenalty,
                                        self.settings.reachGradientWeight)
        region, costs = clickRegion(self._reach, self._image, current, point, self.spacingKji, self.settings,
                                    emptyDepth=self._wallDistance(point))
        region = self._shareWithEarlierClicks(click.label, region, costs)
        seeds = self._filter.seeds
        seeds.ravel()[region] = SEED_FOREGROUND if click.label == 1 else SEED_BACKGROUND
        self.clicks.append(click)
        for earlier in self.clicks:
            # A later click's region never takes an earlier click's own voxel: that one stays as clicked.
            voxel = tuple(int(v) - int(o) for v, o in zip(earlier.voxelKji(self.volume.shape), self._offset))
            seeds[voxel] = SEED_FOREGROUND if earlier.label == 1 else SEED_BACKGROUND

    def _wallDistance(self, point) -> float:
        """Distance (mm) from a block voxel to the original box's nearest wall (at least one voxel)."""
        distances = [min(p - a + 0.5, b - p + 0.5) * s for p, (a, b), s in zip(point, self._boxInBlock(), self.spacingKji)]
        return max(min(distances), min(self.spacingKji))

    def _shareWithEarlierClicks(self, label: int, region: np.ndarray, costs: np.ndarray) -> np.ndarray:
        """The part of a new click's region it keeps; earlier clicks of the other label give up what it takes.

        Where the region overlaps an earlier click's of the other label, each
        voxel goes to the click with the cheaper path to it: a later click does
        not undo what an earlier one fixed beside it, and takes what lies nearer
        to itself. Every click's (region, costs) is kept for the clicks after it.
        """
        keep = np.ones(len(region), bool)
        for earlier in self._clickRegions:
            if earlier.label == label:
                continue
            _, mine, theirs = np.intersect1d(region, earlier.flat, assume_unique=True, return_indices=True)
            if not len(mine):
                continue
            taken = costs[mine] < earlier.costs[theirs]
            keep[mine[~taken]] = False
            left = np.ones(len(earlier.flat), bool)
            left[theirs[taken]] = False
            earlier.flat, earlier.costs = earlier.flat[left], earlier.costs[left]
        self._clickRegions.append(_ClickSeeds(label, region[keep], costs[keep]))
        return region[keep]


def clickRegion(reach, image: np.ndarray, currentMask: np.ndarray, point, spacingKji, settings: GrowCut3dSettings,
                emptyDepth: float = np.inf) -> Tuple[np.ndarray, np.ndarray]:
    """(flat indices, path costs) of the voxels a click at ``point`` (k, j, i) seeds (see the module docstring).

    reach: a geodesic.GeodesicReach on the block, or None (only the small ball
    is seeded). emptyDepth: the depth (mm) to use while the result is empty;
    the caller passes the click's distance to the box's nearest wall. The
    ball's voxels cost 0; indices are sorted and unique.
    """
    shape = currentMask.shape
    radius = int(settings.clickRadiusVoxels)
    lows = [max(p - radius, 0) for p in point]
    grids = np.ogrid[tuple(slice(lo, min(p + radius + 1, n)) for lo, p, n in zip(lows, point, shape))]
    ball = sum((g - p) ** 2 for g, p in zip(grids, point)) <= radius * radius
    near = np.ravel_multi_index(tuple((np.argwhere(ball) + np.array(lows)).T), shape)
    # An empty result has no boundary to measure the error by: the object lies in its box, so the box bounds it.
    depth = depthAt(currentMask, point, spacingKji)
    if not currentMask.any():
        depth = min(depth, emptyDepth)
    budget = settings.distancePenalty * settings.clickReach * depth
    if reach is None or budget <= 0:
        return near, np.zeros(len(near), np.float32)  # argwhere's C order: already sorted
    reached, costs = reach.reach(point, budget)
    if settings.clickTolerance > 0:
        keep = _lookingLikeTheClick(image, point, reached, settings)
        reached, costs = reached[keep], costs[keep]
    limit = settings.negativeShare * np.count_nonzero(currentMask) if currentMask[tuple(point)] else np.inf
    inside = currentMask.ravel()[reached]
    # A click inside the result corrects a part of it, never most of it at once: halve its reach until it does.
    while np.count_nonzero(inside) > limit and len(reached) > len(near):
        budget *= 0.5
        kept = costs <= budget
        reached, costs, inside = reached[kept], costs[kept], inside[kept]
        if settings.clickTolerance > 0 and len(reached):
            keep = _lookingLikeTheClick(image, point, reached, settings)
            reached, costs, inside = reached[keep], costs[keep], inside[keep]
    flat = np.concatenate([near, reached])
    allCosts = np.concatenate([np.zeros(len(near), np.float32), costs.astype(np.float32)])
    # One entry per voxel, at its lowest cost (the ball's 0 where the two overlap).
    order = np.lexsort((allCosts, flat))
    flat, allCosts = flat[order], allCosts[order]
    first = np.r_[True, flat[1:] != flat[:-1]]
    return flat[first], allCosts[first]


def _lookingLikeTheClick(image, point, flat, settings) -> np.ndarray:
    """Bool over ``flat``: the voxels within the click's intensity tolerance that connect to the click through such voxels."""
    from scipy import ndimage  # noqa: PLC0415

    local = image[tuple(slice(max(p - 1, 0), p + 2) for p in point)]
    median = float(np.median(local))
    tolerance = max(settings.clickTolerance * robustSpread(local), settings.clickMinTolerance)
    like = np.abs(image.ravel()[flat] - median) <= tolerance
    like[flat == np.ravel_multi_index(tuple(point), image.shape)] = True
    # Connected components on the reached voxels' bounding block only.
    coords = np.unravel_index(flat, image.shape)
    lows = [int(c.min()) for c in coords]
    block = np.zeros([int(c.max()) - lo + 1 for c, lo in zip(coords, lows)], bool)
    local = tuple(c - lo for c, lo in zip(coords, lows))
    block[local] = like
    components, _ = ndimage.label(block, np.ones((3, 3, 3), bool))
    centre = tuple(p - lo for p, lo in zip(point, lows))
    return components[local] == components[centre]


def depthAt(mask: np.ndarray, point, spacingKji) -> float:
    """Distance (mm) from ``point`` to the nearest voxel whose label in ``mask`` differs from the point's.

    The block's border does not count as the other label (a mask of one label
    everywhere gives the block's diagonal). Computed on a window around the
    point, doubled until the answer is shorter than the window's half size.
    """
    from scipy import ndimage  # noqa: PLC0415

    label = bool(mask[tuple(point)])
    half = 8
    while True:
        window = tuple(slice(max(p - half, 0), min(p + half + 1, n)) for p, n in zip(point, mask.shape))
        same = mask[window] == label
        whole = all(w.start == 0 and w.stop == n for w, n in zip(window, mask.shape))
        if not same.all():
            local = tuple(p - w.start for p, w in zip(point, window))
            distance = float(ndimage.distance_transform_edt(same, sampling=spacingKji)[local])
            if whole or distance <= half * min(spacingKji):
                return distance
        elif whole:
            return float(np.linalg.norm(np.array(mask.shape) * np.array(spacingKji)))
        half *= 2
