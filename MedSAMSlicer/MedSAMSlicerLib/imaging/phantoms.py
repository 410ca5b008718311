"""Synthetic volumes with known truth, for tests, benchmarks and the demo.

Every function returns ``(voxelsKji, truthKji, spacingIjk)``:
voxelsKji float32 in about [0, 1] (or int16 Hounsfield units for the CT-like
phantom), truthKji bool of the same (K, J, I) shape, spacingIjk (si, sj, sk)
in mm. Geometry is defined in millimetres, so an anisotropic spacing samples
the same physical object. Deterministic for a given seed. numpy only.
"""

from typing import Sequence, Tuple

import numpy as np

from ..core.errors import InputError

#: Default phantom size (K, J, I): small enough for fast tests.
DEFAULT_SHAPE_KJI = (40, 64, 64)


def _checkShape(shapeKji: Sequence[int]) -> Tuple[int, int, int]:
    shape = tuple(int(n) for n in shapeKji)
    if len(shape) != 3 or min(shape) < 3:
        raise InputError(f"A phantom needs a (K, J, I) shape with at least 3 voxels per axis, got {shapeKji}.")
    return shape


def _coordinatesMm(shapeKji, spacingIjk):
    """Open grids (z, y, x) of voxel-centre positions in mm, origin at the volume centre."""
    kk, jj, ii = np.ogrid[:shapeKji[0], :shapeKji[1], :shapeKji[2]]
    si, sj, sk = (float(s) for s in spacingIjk)
    return ((kk - (shapeKji[0] - 1) / 2.0) * sk, (jj - (shapeKji[1] - 1) / 2.0) * sj,
            (ii - (shapeKji[2] - 1) / 2.0) * si)


def _withNoise(truthKji: np.ndarray, background: float, foreground: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    voxels = np.where(truthKji, foreground, background).astype(np.float32)
    voxels += rng.normal(0.0, noise, truthKji.shape).astype(np.float32)
    return voxels


def ellipsoidPhantom(shapeKji=DEFAULT_SHAPE_KJI, spacingIjk=(1.0, 1.0, 1.0), semiAxesMm=None,
                     centreOffsetMm=(0.0, 0.0, 0.0), noise: float = 0.08, seed: int = 0):
    """A bright ellipsoid (0.7) on a dark background (0.2) with Gaussian noise (sigma `noise`).

    semiAxesMm: (ax, ay, az) along I, J, K in mm; default 35%, 28%, 35% of the
    volume's extent along each axis. centreOffsetMm: (x, y, z) shift from the
    volume centre. Returns (voxelsKji float32, truthKji bool, spacingIjk).
    """
    shape = _checkShape(shapeKji)
    z, y, x = _coordinatesMm(shape, spacingIjk)
    extentIjk = [n * s for n, s in zip(shape[::-1], spacingIjk)]
    if semiAxesMm is None:
        semiAxesMm = (0.35 * extentIjk[0], 0.28 * extentIjk[1], 0.35 * extentIjk[2])
    ax, ay, az = semiAxesMm
    ox, oy, oz = centreOffsetMm
    truth = ((x - ox) / ax) ** 2 + ((y - oy) / ay) ** 2 + ((z - oz) / az) ** 2 <= 1.0
    return _withNoise(truth, 0.2, 0.7, noise, seed), truth, tuple(float(s) for s in spacingIjk)


def driftingTubePhantom(shapeKji=DEFAULT_SHAPE_KJI, spacingIjk=(1.0, 1.0, 1.0), radiusMm: float = 6.0,
                        driftMm: float = 20.0, marginSlices: int = 4, noise: float = 0.08, seed: int = 0):
    """A bright tube along K whose centre drifts by `driftMm` in x (and half in y) from bottom to top.

    The tube spans slices [marginSlices, K - 1 - marginSlices], so propagation
    along K must stop `marginSlices` from each end. Returns (voxelsKji, truthKji, spacingIjk).
    """
    shape = _checkShape(shapeKji)
    z, y, x = _coordinatesMm(shape, spacingIjk)
    k = np.arange(shape[0]).reshape(-1, 1, 1)
    progress = (k - (shape[0] - 1) / 2.0) / max(shape[0] - 1, 1)
    centreX, centreY = driftMm * progress, 0.5 * driftMm * progress
    truth = (x - centreX) ** 2 + (y - centreY) ** 2 <= radiusMm ** 2
    truth = truth & (k >= marginSlices) & (k <= shape[0] - 1 - marginSlices)
    return _withNoise(truth, 0.2, 0.7, noise, seed), truth, tuple(float(s) for s in spacingIjk)


def twoObjectsPhantom(shapeKji=DEFAULT_SHAPE_KJI, spacingIjk=(1.0, 1.0, 1.0), gapMm: float = 3.0,
                      noise: float = 0.08, seed: int = 0):
    """Two bright blobs where a leak would jump: A in the lower half, B in the upper half, side by side.

    A (the truth) is a sphere in slices below the middle; B, equally bright,
    starts where A ends and sits `gapMm` beside A's position in x, inside the
    box a propagation from A would draw. Propagation seeded in A must stop at
    A's top and never label B. Returns (voxelsKji, truthKji of A, spacingIjk);
    the second object's mask is ``voxelsKji``-independent and available from
    twoObjectsLabels.
    """
    voxels, truthA, truthB, spacing = _twoObjects(shapeKji, spacingIjk, gapMm, noise, seed)
    return voxels, truthA, spacing


def twoObjectsLabels(shapeKji=DEFAULT_SHAPE_KJI, spacingIjk=(1.0, 1.0, 1.0), gapMm: float = 3.0):
    """(truthA, truthB) bool (K, J, I) of twoObjectsPhantom with the same arguments."""
    _, truthA, truthB, _ = _twoObjects(shapeKji, spacingIjk, gapMm, 0.0, 0)
    return truthA, truthB


def _twoObjects(shapeKji, spacingIjk, gapMm, noise, seed):
    shape = _checkShape(shapeKji)
    z, y, x = _coordinatesMm(shape, spacingIjk)
    extentZ = shape[0] * spacingIjk[2]
    extentX = shape[2] * spacingIjk[0]
    radius = min(0.22 * extentZ, 0.2 * extentX)
    centreZa = -radius * 0.9
    truthA = (x + 0.5 * radius) ** 2 + y ** 2 + (z - centreZa) ** 2 <= radius ** 2
    # B begins just above A's top, shifted in x so that A's box (plus margin) overlaps it.
    topA = centreZa + radius
    centreXb = -0.5 * radius + radius + gapMm
    truthB = ((x - centreXb) ** 2 + y ** 2 <= (0.8 * radius) ** 2) & (z > topA) & (z <= topA + 1.5 * radius)
    voxels = _withNoise(truthA | truthB, 0.2, 0.7, noise, seed)
    return voxels, truthA, truthB, tuple(float(s) for s in spacingIjk)


def ctLikePhantom(shapeKji=(48, 96, 96), spacingIjk=(1.5, 1.5, 3.0), seed: int = 0):
    """A CT-like int16 volume in Hounsfield units: air, a fat-rimmed body, a liver-like organ, a spine.

    Air -1000 HU, body soft tissue 40 HU with a fat rim of -100 HU, the organ
    (the truth) 90 HU, a bone cylinder 700 HU, noise 15 HU. Returns
    (voxelsKji int16, truthKji bool (the organ), spacingIjk).
    """
    shape = _checkShape(shapeKji)
    z, y, x = _coordinatesMm(shape, spacingIjk)
    extentX, extentY, extentZ = (n * s for n, s in zip(shape[::-1], spacingIjk))
    bodyX, bodyY = 0.42 * extentX, 0.32 * extentY
    body = (x / bodyX) ** 2 + (y / bodyY) ** 2 <= 1.0
    inner = (x / (bodyX - 6.0)) ** 2 + (y / (bodyY - 6.0)) ** 2 <= 1.0
    organ = (((x + 0.12 * extentX) / (0.18 * extentX)) ** 2 + ((y + 0.04 * extentY) / (0.14 * extentY)) ** 2
             + (z / (0.33 * extentZ)) ** 2 <= 1.0) & inner
    spine = ((x ** 2 + (y - 0.2 * extentY) ** 2) <= (0.05 * extentX) ** 2) & inner & np.ones_like(z, bool)
    hu = np.full(shape, -1000.0, np.float32)
    hu[np.broadcast_to(body, shape)] = -100.0
    hu[np.broadcast_to(inner, shape)] = 40.0
    hu[organ] = 90.0
    hu[spine] = 700.0
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16), organ, tuple(float(s) for s in spacingIjk)
