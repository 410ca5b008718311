"""GrowCutEngine: a weight-free engine behind the Engine interface (Slicer's "Grow from seeds").

It needs no downloaded weights and is deterministic, so the whole product works
offline and tests have a reproducible engine. Segmentation is Slicer's own
vtkImageGrowCutSegment (present in Slicer and in slicer-core), seeded from the
prompts:

- box: the pixels just outside the box (a ring ``ringPixels`` wide) are
  background seeds; a central ellipse of the box (semi-axes ``coreFraction``
  of the box's half sizes), less its pixels whose intensity is more than 3
  robust standard deviations from the median of its inner half, is the foreground
  seed; the mask is restricted to the box. coreFraction 0.65 was chosen on
  the shared data: mean box-only Dice 0.77 / 0.83 / 0.83 on the 30 sammed2d CT
  organs and 0.68 / 0.88 / 0.92 on 15 hc18 heads for 0.3 / 0.65 / 0.75;
  0.65 rather than 0.75 because a larger core more often covers background
  next to non-convex objects.
- points: a positive point seeds a foreground disc, a negative point a
  background disc (radius ``pointRadiusPixels``). When positive points are
  given and the box core's intensity is unlike all of theirs but like the
  background ring's (the box centre missed the object), the core is not used
  as a seed. Around a negative point (a quarter of the box's smaller side),
  the core and prior seeds are dropped, so the click takes that area back.
- previousLowResLogits (passed by propagation from the neighbouring slice):
  for this engine it is the full-resolution map it returned as
  ``lowResLogits``: -1 outside the mask, 1 + the smoothed intensity inside.
  Its deep interior (pixels at least half its largest inner distance from its
  edge, and ``priorErosionPixels``), clipped to the box and kept only where
  this slice's intensity is within 3 robust standard deviations of the previous
  object's, replaces the central ellipse as foreground seed. This follows
  curved or drifting objects, and when nothing looks like the object any more
  (past its end) the mask is empty, so propagation stops ("vanished").
- no box: the image border is the background seed.

Score (DecodeResult.score), in [0, 1], the lower of two confidences:
- containment: ``1 - (fraction of the box's inner border pixels that the mask
  covers)``. A mask that leaked out to the box edge on every side scores near
  0; a tight box around a convex object about 0.8-0.95 (the object touches the
  box at a few places). Without a box the image border plays the box's role.
- edge evidence: the boundary contrast-to-noise ratio (boundaryContrast),
  mapped linearly from CNR 1.2 -> 0 to CNR >= 3.2 -> 1. Phantom edges measure
  4.6-4.8; masks drawn through noise (a slice past the object's end) 0.8-1.7.
Propagation's ``minScore`` stop rule uses it. An empty mask scores 0.

Frames: prompts and masks are in slice image pixels (x = column, y = row).
The vtk classes are imported lazily, at the first decode.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

from .base import DecodeResult, Engine, Prompts, SliceEmbedding, VolumeClick
from .growcut3d import GrowCut3d, GrowCut3dSettings
from .growcutcore import SEED_BACKGROUND, SEED_FOREGROUND, ellipsoidMask, robustSpread, runGrowCut
from ..core.errors import PromptError
from ..core.progress import ProgressCallback, reportProgress

#: Boundary contrast-to-noise of a boundary drawn through pure noise, and the span above it that maps to score 1.
CONTRAST_NOISE_LEVEL = 1.2
CONTRAST_SPAN = 2.0
#: Smallest intensity tolerance (in [0, 1] units) when matching a previous slice's object appearance.
PRIOR_MIN_TOLERANCE = 0.05
#: Smallest radius (pixels) around a negative point cleared of implicit foreground seeds.
NEGATIVE_CLEAR_MIN_PIXELS = 2.0
#: Smallest intensity difference (in [0, 1] units) at which a box core counts as unlike the positive clicks.
CORE_POINT_TOLERANCE = 0.05


def _boxIndexRange(low: float, high: float, size: int) -> Tuple[int, int]:
    """Pixel indices [first, last] whose centres lie in [low, high], clipped to [0, size - 1]."""
    first = int(np.ceil(low - 1e-6))
    last = int(np.floor(high + 1e-6))
    return max(first, 0), min(last, size - 1)


def _borderFraction(mask: np.ndarray, region: np.ndarray) -> float:
    """Fraction of the region's inner border pixels (along every axis) that the mask covers."""
    from scipy import ndimage  # noqa: PLC0415

    inner = ndimage.binary_erosion(region, border_value=0)
    border = region & ~inner
    if not border.any():
        return 1.0
    return float((mask & border).sum()) / float(border.sum())


def boundaryContrast(image: np.ndarray, mask: np.ndarray, windowPixels: int = 5, bandPixels: int = 2) -> float:
    """Contrast-to-noise ratio across a mask's boundary (dimensionless, >= 0).

    For every pixel within `bandPixels` of the boundary, the mean intensity of
    the mask pixels and of the non-mask pixels in a `windowPixels` window are
    compared; the mean absolute difference is divided by the pooled local
    standard deviation. A boundary on a real edge scores several units (4-5 on
    the phantoms); a boundary drawn through noise (a leak, a slice past the
    object's end) scores about 1.
    """
    from scipy import ndimage  # noqa: PLC0415

    inside = mask.astype(np.float32)
    band = (mask & ~ndimage.binary_erosion(mask, iterations=bandPixels)) | (ndimage.binary_dilation(mask, iterations=bandPixels) & ~mask)
    moments = []
    for weight in (inside, 1.0 - inside):
        total = ndimage.uniform_filter(weight, windowPixels)
        safe = np.maximum(total, 1e-6)
        mean = ndimage.uniform_filter(weight * image, windowPixels) / safe
        variance = np.maximum(ndimage.uniform_filter(weight * image * image, windowPixels) / safe - mean * mean, 0.0)
        moments.append((mean, variance, total))
    (meanIn, varIn, shareIn), (meanOut, varOut, shareOut) = moments
    band &= (shareIn > 0.15) & (shareOut > 0.15)
    if not band.any():
        return 0.0
    noise = np.sqrt(np.mean((0.5 * (varIn + varOut))[band]) + 1e-8)
    return float(np.mean(np.abs(meanIn - meanOut)[band]) / noise)


def _contrastScore(image: np.ndarray, mask: np.ndarray, region: np.ndarray) -> float:
    """boundaryContrast mapped to [0, 1]: CNR 1.2 (noise) -> 0, CNR 3.2 or more -> 1; computed near the region."""
    rows, cols = np.nonzero(region)
    r0, r1 = max(rows.min() - 4, 0), rows.max() + 5
    c0, c1 = max(cols.min() - 4, 0), cols.max() + 5
    cnr = boundaryContrast(image[r0:r1, c0:c1], mask[r0:r1, c0:c1])
    return float(np.clip((cnr - CONTRAST_NOISE_LEVEL) / CONTRAST_SPAN, 0.0, 1.0))


def _grayscale(image: np.ndarray) -> np.ndarray:
    """float32 (H, W) from a (H, W) or (H, W, 3) image in [0, 1] (RGB: channel mean)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=2)
    if image.ndim != 2:
        raise PromptError(f"GrowCut expects (H, W) or (H, W, 3) images, got shape {image.shape}.")
    return image


class GrowCutEngine(Engine):
    """Weight-free promptable segmentation with Slicer's GrowCut, per slice or natively in 3D.

    coreFraction: foreground seed = central ellipse of the box with semi-axes
    this fraction of the box's half sizes. ringPixels: width of the background
    ring outside the box. pointRadiusPixels: radius of point seed discs.
    smoothingSigma: Gaussian smoothing (pixels) of the image before growing,
    against noise. distancePenalty: intensity units per pixel of path length
    (0 = intensity only, as Slicer's default). priorErosionPixels: erosion of a
    previous mask used as seed; priorDepthFraction: of that mask, only pixels
    at least this fraction of its largest inner distance from its edge seed
    (its deep interior: the object may shrink or shift). maxWorkPixels: a box
    (or, without a box, an image) larger than this is segmented on a
    block-averaged image, for speed.
    """

    modelId = "growcut"
    displayName = "GrowCut (weight-free)"

    def __init__(self, coreFraction: float = 0.65, ringPixels: int = 3, pointRadiusPixels: int = 1,
                 smoothingSigma: float = 1.0, distancePenalty: float = 0.0, priorErosionPixels: int = 2,
                 maxWorkPixels: int = 384 * 384, priorDepthFraction: float = 0.5):
        self.coreFraction = float(coreFraction)
        self.ringPixels = max(1, int(ringPixels))
        self.pointRadiusPixels = max(0, int(pointRadiusPixels))
        self.smoothingSigma = float(smoothingSigma)
        self.distancePenalty = float(distancePenalty)
        self.priorErosionPixels = max(0, int(priorErosionPixels))
        self.maxWorkPixels = max(1024, int(maxWorkPixels))
        self.priorDepthFraction = float(priorDepthFraction)
        # The 3D core keeps its own (small) coreFraction: a 2D box core and a 3D one are chosen on different data.
        self.volumeSettings = GrowCut3dSettings(ringVoxels=self.ringPixels, smoothingSigma=self.smoothingSigma)

    def encode(self, images: Sequence[np.ndarray], progress: Optional[ProgressCallback] = None) -> list:
        """Store each image (smoothed, grayscale float32) as its embedding; cheap, never modifies input."""
        from scipy import ndimage  # noqa: PLC0415

        embeddings = []
        for index, image in enumerate(images):
            gray = _grayscale(image)
            if self.smoothingSigma > 0:
                gray = ndimage.gaussian_filter(gray, self.smoothingSigma)
            gray = np.ascontiguousarray(gray, dtype=np.float32)
            embeddings.append(SliceEmbedding(features=gray, imageSize=gray.shape, nbytes=int(gray.nbytes)))
            reportProgress(progress, (index + 1) / max(len(images), 1), "GrowCut: image stored")
        return embeddings

    def decode(self, embedding: SliceEmbedding, prompts: Prompts) -> DecodeResult:
        """Grow the object from the prompts' seeds; see the module docstring for seeds and score.

        Raises PromptError when the prompts are empty or the box and points lie off the image.
        """
        if prompts.isEmpty:
            raise PromptError("No prompt given: draw a box or click a point on the object.")
        image = np.asarray(embedding.features, dtype=np.float32)
        height, width = image.shape
        factor = self._downsampleFactor(prompts, (height, width))
        if factor > 1:
            return self._decodeDownsampled(image, prompts, factor)
        region = self._promptRegion(prompts, (height, width))
        seeds = self._seedImage(image, prompts, region, (height, width))
        if not (seeds == SEED_FOREGROUND).any():
            empty = np.zeros((height, width), bool)
            return DecodeResult(mask=empty, score=0.0, lowResLogits=self._logits(empty, image))
        mask = self._growInCrop(image, seeds, region)
        mask &= region
        score = min(1.0 - _borderFraction(mask, region), _contrastScore(image, mask, region)) if mask.any() else 0.0
        return DecodeResult(mask=mask, score=float(score), lowResLogits=self._logits(mask, image))

    def _downsampleFactor(self, prompts: Prompts, shape: Tuple[int, int]) -> int:
        """Integer factor that brings the working area (box, or image) under maxWorkPixels."""
        if prompts.boxXyxy is None:
            area = shape[0] * shape[1]
        else:
            x0, y0, x1, y1 = prompts.boxXyxy
            area = (min(x1, shape[1]) - max(x0, 0) + 2 * self.ringPixels) * (min(y1, shape[0]) - max(y0, 0) + 2 * self.ringPixels)
        return max(1, int(np.ceil(np.sqrt(max(area, 1) / self.maxWorkPixels))))

    def _decodeDownsampled(self, image: np.ndarray, prompts: Prompts, factor: int) -> DecodeResult:
        """Decode on an image block-averaged by `factor`, then bring the mask back to full size."""
        height, width = image.shape
        padded = np.pad(image, ((0, -height % factor), (0, -width % factor)), mode="edge")
        small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))

        def toSmall(values):
            """Full-size pixel coordinates -> downsampled pixel coordinates (pixel centres kept)."""
            return (np.asarray(values, dtype=np.float64) + 0.5) / factor - 0.5

        prior = prompts.previousLowResLogits
        if prior is not None and np.shape(prior) == image.shape:
            prior = np.pad(prior, ((0, -height % factor), (0, -width % factor)), constant_values=-1.0)
            prior = prior.reshape(small.shape[0], factor, small.shape[1], factor).mean(axis=(1, 3))
        smallPrompts = Prompts(boxXyxy=None if prompts.boxXyxy is None else tuple(toSmall(prompts.boxXyxy)),
                               pointsXy=toSmall(prompts.pointsXy), pointLabels=prompts.pointLabels,
                               previousLowResLogits=prior)
        smallResult = self.decode(SliceEmbedding(small, small.shape, int(small.nbytes)), smallPrompts)
        mask = np.repeat(np.repeat(smallResult.mask, factor, axis=0), factor, axis=1)[:height, :width]
        mask &= self._promptRegion(prompts, (height, width))
        return DecodeResult(mask=mask, score=smallResult.score, lowResLogits=self._logits(mask, image))

    def priorFromMask(self, embedding: SliceEmbedding, mask: np.ndarray) -> np.ndarray:
        """The lowResLogits this engine would have returned for `mask` on this slice.

        Propagation calls it for a seed mask that did not come from a decode
        (a user's painted or imported mask), so that the next slice is seeded
        from the mask's interior instead of the box centre.
        """
        image = np.asarray(embedding.features, dtype=np.float32)
        mask = np.asarray(mask, bool)
        if mask.shape != image.shape:
            raise PromptError(f"Mask shape {mask.shape} does not match the slice {image.shape}.")
        return self._logits(mask, image)

    @staticmethod
    def _logits(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
        """-1 outside the mask, 1 + the (smoothed) intensity inside: shape and appearance for the next slice."""
        return np.where(mask, 1.0 + np.clip(image, 0.0, 1.0), -1.0).astype(np.float32)

    def _promptRegion(self, prompts: Prompts, shape: Tuple[int, int]) -> np.ndarray:
        """Bool image: where the mask may be (inside the box, or the whole image without a box)."""
        height, width = shape
        region = np.zeros(shape, bool)
        if prompts.boxXyxy is None:
            inImage = ((prompts.pointsXy[:, 0] > -0.5) & (prompts.pointsXy[:, 0] < width - 0.5)
                       & (prompts.pointsXy[:, 1] > -0.5) & (prompts.pointsXy[:, 1] < height - 0.5))
            if not inImage.any():
                raise PromptError("Every point lies outside the image: click on the image.")
            region[:] = True
            return region
        x0, y0, x1, y1 = prompts.boxXyxy
        c0, c1 = _boxIndexRange(x0, x1, width)
        r0, r1 = _boxIndexRange(y0, y1, height)
        if c0 > c1 or r0 > r1:
            raise PromptError(f"The box {prompts.boxXyxy} lies outside the {width}x{height} image: draw it on the image.")
        region[r0:r1 + 1, c0:c1 + 1] = True
        return region

    def _seedImage(self, image: np.ndarray, prompts: Prompts, region: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
        """uint8 seed labels: box ring / image border background, core or prior foreground, point discs."""
        from scipy import ndimage  # noqa: PLC0415

        seeds = np.zeros(shape, np.uint8)
        if prompts.boxXyxy is not None:
            ring = ndimage.binary_dilation(region, iterations=self.ringPixels) & ~region
            seeds[ring] = SEED_BACKGROUND
            core = self._foregroundCore(image, prompts, region)
            if self._agreesWithPositivePoints(image, core, ring, prompts):
                seeds[core & ~self._nearNegativePoints(prompts, region)] = SEED_FOREGROUND
        else:
            seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = SEED_BACKGROUND
        yy, xx = np.ogrid[:shape[0], :shape[1]]
        radiusSquared = (self.pointRadiusPixels + 0.5) ** 2
        for (x, y), label in zip(prompts.pointsXy, prompts.pointLabels):
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= radiusSquared
            seeds[disc] = SEED_FOREGROUND if label == 1 else SEED_BACKGROUND
        return seeds

    @staticmethod
    def _lookAlike(image: np.ndarray, seeds: np.ndarray, previousValues: np.ndarray) -> np.ndarray:
        """The seeds whose intensity here lies within 3 robust standard deviations of the previous object's.

        A previous slice's mask may cover background where the object ended or
        moved; those pixels look unlike the object and must not seed foreground.
        When no seed looks alike the object has ended: the result is empty.
        """
        median = np.median(previousValues)
        return seeds & (np.abs(image - median) <= max(3.0 * robustSpread(previousValues), PRIOR_MIN_TOLERANCE))

    @staticmethod
    def _nearNegativePoints(prompts: Prompts, region: np.ndarray) -> np.ndarray:
        """Pixels within a quarter of the box's smaller side of a negative point.

        Implicit foreground seeds (box core, previous mask) there are dropped,
        so that a negative click inside them can take its surroundings back.
        """
        near = np.zeros(region.shape, bool)
        negative = prompts.pointsXy[prompts.pointLabels != 1]
        if len(negative) == 0:
            return near
        rows, cols = np.nonzero(region)
        radius = max(NEGATIVE_CLEAR_MIN_PIXELS, 0.25 * min(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
        yy, xx = np.ogrid[:region.shape[0], :region.shape[1]]
        for x, y in negative:
            near |= (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        return near

    @staticmethod
    def _agreesWithPositivePoints(image: np.ndarray, core: np.ndarray, ring: np.ndarray, prompts: Prompts) -> bool:
        """False when positive clicks exist and the box core looks like the background ring, not like them.

        The box centre may miss the object (a C shape, two objects in one box);
        the user's positive clicks then say what the object looks like. A core
        unlike the clicks but unlike the background too is kept (an object of
        two intensities).
        """
        positive = prompts.pointsXy[prompts.pointLabels == 1]
        if len(positive) == 0 or not core.any():
            return True
        cols = np.clip(np.round(positive[:, 0]).astype(int), 0, image.shape[1] - 1)
        rows = np.clip(np.round(positive[:, 1]).astype(int), 0, image.shape[0] - 1)
        values = image[core]
        median = np.median(values)
        tolerance = max(3.0 * robustSpread(values), CORE_POINT_TOLERANCE)
        if np.any(np.abs(image[rows, cols] - median) <= tolerance):
            return True
        return not (ring.any() and abs(np.median(image[ring]) - median) <= tolerance)

    def _foregroundCore(self, image: np.ndarray, prompts: Prompts, region: np.ndarray) -> np.ndarray:
        """Foreground seed inside the box: the eroded previous mask if given, else the central ellipse."""
        from scipy import ndimage  # noqa: PLC0415

        prior = prompts.previousLowResLogits
        if prior is not None and np.shape(prior) == region.shape:
            inside = np.asarray(prior) > 0
            # Keep the deep interior only: the object may shrink or shift between slices.
            depth = ndimage.distance_transform_edt(inside)
            inside = depth >= max(self.priorErosionPixels, self.priorDepthFraction * depth.max())
            inside &= region
            if inside.any():
                return self._lookAlike(image, inside, np.asarray(prior)[np.asarray(prior) > 0] - 1.0)
            return inside  # the previous mask does not reach into this box: no foreground seed
        rows, cols = np.nonzero(region)
        centre = ((rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0)
        semiAxes = ((rows.max() - rows.min()) / 2.0 * self.coreFraction,
                    (cols.max() - cols.min()) / 2.0 * self.coreFraction)
        core = ellipsoidMask(region.shape, centre, semiAxes) & region
        # A large core may overlap the background next to the object: keep the pixels that look
        # like its inner half (the part most likely on the object).
        inner = ellipsoidMask(region.shape, centre, [0.5 * a for a in semiAxes]) & region
        return self._lookAlike(image, core, image[inner])

    def _growInCrop(self, image: np.ndarray, seeds: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Run GrowCut on the seeds' bounding box (+1 pixel padding), as 3 identical slices."""
        rows, cols = np.nonzero((seeds > 0) | region)
        r0, r1 = max(rows.min() - 1, 0), min(rows.max() + 2, image.shape[0])
        c0, c1 = max(cols.min() - 1, 0), min(cols.max() + 2, image.shape[1])
        cropImage = np.pad(image[r0:r1, c0:c1], 1, mode="edge")
        cropSeeds = np.pad(seeds[r0:r1, c0:c1], 1)
        # The copies above and below let the middle slice grow (outermost voxels do not spread labels).
        # Excluding the two copies from growing makes the run ~10x faster with the same result.
        excluded = np.ones((3,) + cropSeeds.shape, bool)
        excluded[1] = False
        zeros = np.zeros_like(cropSeeds)
        labels = runGrowCut(np.repeat(cropImage[None], 3, axis=0), np.stack([zeros, cropSeeds, zeros]),
                            excluded, distancePenalty=self.distancePenalty)
        mask = np.zeros(image.shape, bool)
        mask[r0:r1, c0:c1] = labels[1, 1:-1, 1:-1] == SEED_FOREGROUND
        return mask

    def volumeSegmenter(self, volumeImage: np.ndarray, boxIjk, spacingIjk=(1.0, 1.0, 1.0)):
        """A GrowCut3d (engines/growcut3d.py) for a 3D box: native 3D segmentation, updated click by click.

        volumeImage: float (K, J, I) in [0, 1] (an intensity policy applied).
        boxIjk: ((i0, j0, k0), (i1, j1, k1)) continuous voxel indices. The
        workflow uses it for a 3D box with this engine; ``volumeSettings``
        (GrowCut3dSettings) says how it seeds. Raises PromptError for a box off the volume.
        """
        return GrowCut3d(volumeImage, boxIjk, spacingIjk, self.volumeSettings)

    def segmentVolume(self, volumeImage: np.ndarray, boxIjk, pointsIjk=None, labels=None,
                      spacingIjk=(1.0, 1.0, 1.0)) -> np.ndarray:
        """Native 3D GrowCut from a 3D box and optional clicks; returns bool (K, J, I).

        One-shot form of volumeSegmenter: pointsIjk (N, 3) voxel coordinates
        (i, j, k), labels (N,) 1 positive / 0 negative, applied in order.
        Raises PromptError for a box off the volume or points without labels.
        """
        clicks = []
        if pointsIjk is not None and len(pointsIjk):
            pointsIjk = np.asarray(pointsIjk, dtype=float).reshape(-1, 3)
            labels = np.ones(len(pointsIjk), int) if labels is None else np.asarray(labels).reshape(-1)
            if len(labels) != len(pointsIjk):
                raise PromptError(f"{len(pointsIjk)} points but {len(labels)} labels: give one label per point.")
            clicks = [VolumeClick(tuple(point), int(label)) for point, label in zip(pointsIjk, labels)]
        return self.volumeSegmenter(volumeImage, boxIjk, spacingIjk).update(clicks)
