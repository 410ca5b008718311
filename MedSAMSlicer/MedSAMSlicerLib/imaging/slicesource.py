"""SliceSource: the 2D slice images of a KJI voxel array along any IJK axis, in square pixels.

Frames (docs/developer.md): axis 0 = I, 1 = J, 2 = K is the IJK axis a slice
cuts across. The native slice of ``voxelsKji`` along each axis:

    axis 2 (K): voxelsKji[k, :, :]   rows j, columns i
    axis 1 (J): voxelsKji[:, j, :]   rows k, columns i
    axis 0 (I): voxelsKji[:, :, i]   rows k, columns j

A slice image is the native slice resampled to square pixels of the finer of
the two in-plane spacings. A native pixel coordinate u maps to the image
coordinate x = (u + 0.5) * s - 0.5 with s = native spacing / image spacing
(pixel centres at integers, edges at -0.5 and n * s - 0.5).

numpy only: no slicer, no torch. The voxels are never modified.
"""

import hashlib
from typing import Optional, Sequence, Tuple

import numpy as np

from ..core.errors import InputError
from .intensity import IntensityPolicy, ResolvedPolicy

# For each axis: (KJI array axis of the slice, KJI axis of rows, KJI axis of columns,
# IJK index of rows, IJK index of columns).
_AXIS_LAYOUT = {
    2: (0, 1, 2, 1, 0),
    1: (1, 0, 2, 2, 0),
    0: (2, 0, 1, 2, 1),
}


def _checkAxis(axis) -> int:
    if axis not in _AXIS_LAYOUT:
        raise InputError(f"Slice axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}.")
    return int(axis)


class SliceSource:
    """Slices of one volume along any IJK axis, mapped to [0, 1] by an intensity policy.

    voxelsKji: (K, J, I) scalar or (K, J, I, 3) colour array (a (K, J, I, 4) RGBA
    array loses its alpha; a (J, I) array is one slice). Kept by reference, never
    written: if the caller changes it in place, build a new SliceSource.
    spacingIjk: voxel size (si, sj, sk) in mm. policy: an IntensityPolicy,
    resolved once against the whole volume. geometryKey: text that identifies the
    volume's placement in space (part of the signature).
    Raises InputError for other shapes or a non-positive spacing.
    """

    def __init__(self, voxelsKji, spacingIjk: Sequence[float] = (1.0, 1.0, 1.0),
                 policy: Optional[IntensityPolicy] = None, geometryKey: str = ""):
        voxels = np.asarray(voxelsKji)
        if voxels.ndim == 2:
            voxels = voxels[np.newaxis]
        if voxels.ndim == 4 and voxels.shape[-1] == 4:
            voxels = voxels[..., :3]
        if not (voxels.ndim == 3 or (voxels.ndim == 4 and voxels.shape[-1] == 3)):
            raise InputError(f"Expected a (K, J, I) scalar or (K, J, I, 3) colour volume, got shape {voxels.shape}: "
                             "4D or multi-channel images other than RGB are not supported; extract one frame or channel.")
        if min(voxels.shape[:3]) < 1:
            raise InputError(f"The volume is empty (shape {voxels.shape}).")
        spacing = tuple(float(s) for s in spacingIjk)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"Voxel spacing must be three positive numbers (mm), got {spacingIjk!r}.")
        self.voxelsKji = voxels
        self.spacingIjk = spacing
        self.policy = policy if policy is not None else IntensityPolicy.auto()
        self.geometryKey = str(geometryKey)
        self._resolved: Optional[ResolvedPolicy] = None
        self._signature: Optional[str] = None

    # ---- identity ---------------------------------------------------------------

    @property
    def shapeKji(self) -> Tuple[int, int, int]:
        """(K, J, I): number of slices along K, rows J, columns I."""
        return tuple(int(n) for n in self.voxelsKji.shape[:3])

    @property
    def isRgb(self) -> bool:
        """True for a colour (K, J, I, 3) volume."""
        return self.voxelsKji.ndim == 4

    @property
    def resolvedPolicy(self) -> ResolvedPolicy:
        """The intensity policy with its numbers fixed from the whole volume (computed once)."""
        if self._resolved is None:
            self._resolved = self.policy.resolve(self.voxelsKji, isRgb=self.isRgb)
        return self._resolved

    @property
    def policyKey(self) -> str:
        """Key of the resolved intensity mapping, part of embedding cache keys."""
        return self.resolvedPolicy.key

    @property
    def signature(self) -> str:
        """Content hash (blake2b) of voxels, shape, dtype, spacing and geometryKey; computed once.

        Two sources with equal voxels and geometry share it whatever the node's name.
        """
        if self._signature is None:
            digest = hashlib.blake2b(digest_size=16)
            header = f"{self.voxelsKji.shape}|{self.voxelsKji.dtype.str}|{self.spacingIjk}|{self.geometryKey}"
            digest.update(header.encode("utf-8"))
            digest.update(memoryview(np.ascontiguousarray(self.voxelsKji)).cast("B"))
            self._signature = digest.hexdigest()
        return self._signature

    # ---- sizes ------------------------------------------------------------------

    def sliceCount(self, axis: int) -> int:
        """Number of slices along ``axis`` (0 = I, 1 = J, 2 = K)."""
        return self.voxelsKji.shape[_AXIS_LAYOUT[_checkAxis(axis)][0]]

    def nativeShape(self, axis: int) -> Tuple[int, int]:
        """(rows, columns) of the native slice along ``axis`` (see the module table)."""
        _, rowAxis, colAxis, _, _ = _AXIS_LAYOUT[_checkAxis(axis)]
        return self.voxelsKji.shape[rowAxis], self.voxelsKji.shape[colAxis]

    def pixelSpacing(self, axis: int) -> float:
        """Size in mm of a (square) slice image pixel: the finer in-plane spacing."""
        _, _, _, rowIjk, colIjk = _AXIS_LAYOUT[_checkAxis(axis)]
        return min(self.spacingIjk[rowIjk], self.spacingIjk[colIjk])

    def scaleFactors(self, axis: int) -> Tuple[float, float]:
        """(row scale, column scale): image pixels per native pixel along rows (y) and columns (x), >= 1."""
        _, _, _, rowIjk, colIjk = _AXIS_LAYOUT[_checkAxis(axis)]
        pixel = self.pixelSpacing(axis)
        return self.spacingIjk[rowIjk] / pixel, self.spacingIjk[colIjk] / pixel

    def imageShape(self, axis: int) -> Tuple[int, int]:
        """(H, W) of the square-pixel slice image along ``axis``."""
        rows, cols = self.nativeShape(axis)
        rowScale, colScale = self.scaleFactors(axis)
        return max(1, int(round(rows * rowScale))), max(1, int(round(cols * colScale)))

    # ---- slices -----------------------------------------------------------------

    def sliceSelector(self, axis: int, k: int) -> tuple:
        """Index tuple that selects native slice ``k`` along ``axis`` from a (K, J, I) array.

        Raises InputError when k is outside 0..sliceCount(axis) - 1.
        """
        count = self.sliceCount(axis)
        if not 0 <= int(k) < count or int(k) != k:
            raise InputError(f"Slice {k} is outside the volume along axis {'IJK'[axis]} (0..{count - 1}).")
        selector = [slice(None)] * 3
        selector[_AXIS_LAYOUT[axis][0]] = int(k)
        return tuple(selector)

    def nativeSlice(self, axis: int, k: int) -> np.ndarray:
        """Raw voxels of native slice ``k`` (rows, columns[, 3]): a read-only view, do not modify."""
        view = self.voxelsKji[self.sliceSelector(axis, k)].view()
        view.flags.writeable = False
        return view

    def sliceImage(self, axis: int, k: int) -> np.ndarray:
        """Slice ``k`` along ``axis`` as float32 (H, W) or (H, W, 3) in [0, 1], square pixels.

        The intensity policy is applied to the native slice, which is then
        resampled with linear interpolation. Raises InputError for a bad axis or k.
        """
        mapped = self.resolvedPolicy.apply(self.nativeSlice(axis, k))
        (height, width), (rowScale, colScale) = self.imageShape(axis), self.scaleFactors(axis)
        mapped = _resampleLinear(mapped, 0, height, rowScale)
        return np.ascontiguousarray(_resampleLinear(mapped, 1, width, colScale))

    # ---- coordinates ------------------------------------------------------------

    def ijkToImage(self, axis: int, pointsIjk) -> Tuple[np.ndarray, np.ndarray]:
        """Continuous IJK points (N, 3) -> (slice coordinate along axis (N,), image xy (N, 2)).

        The slice coordinate is the continuous index along ``axis`` (round it for
        the slice index); xy are slice image pixels (x = column, y = row).
        """
        points = np.asarray(pointsIjk, dtype=np.float64).reshape(-1, 3)
        _, _, _, rowIjk, colIjk = _AXIS_LAYOUT[_checkAxis(axis)]
        rowScale, colScale = self.scaleFactors(axis)
        xy = np.stack([(points[:, colIjk] + 0.5) * colScale - 0.5, (points[:, rowIjk] + 0.5) * rowScale - 0.5], axis=1)
        return points[:, axis].copy(), xy

    def imageToIjk(self, axis: int, k: float, xy) -> np.ndarray:
        """Image pixels xy (N, 2) on slice ``k`` along ``axis`` -> continuous IJK points (N, 3)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        _, _, _, rowIjk, colIjk = _AXIS_LAYOUT[_checkAxis(axis)]
        rowScale, colScale = self.scaleFactors(axis)
        points = np.empty((len(xy), 3))
        points[:, axis] = k
        points[:, colIjk] = (xy[:, 0] + 0.5) / colScale - 0.5
        points[:, rowIjk] = (xy[:, 1] + 0.5) / rowScale - 0.5
        return points

    def boxIjkToImage(self, axis: int, boxIjk) -> Tuple[Tuple[float, float, float, float], Tuple[float, float]]:
        """A box given by two opposite IJK corners ((i0, j0, k0), (i1, j1, k1)), continuous
        coordinates -> (boxXyxy in image pixels, (s0, s1) continuous slice extent along axis).

        Both outputs are sorted (x0 <= x1, y0 <= y1, s0 <= s1); no clipping here.
        """
        corners = np.asarray(boxIjk, dtype=np.float64).reshape(2, 3)
        slices, xy = self.ijkToImage(axis, corners)
        box = (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))
        return box, (float(slices.min()), float(slices.max()))

    # ---- masks ------------------------------------------------------------------

    def _nativeIndexMaps(self, axis: int) -> Tuple[np.ndarray, np.ndarray]:
        """For each image row / column, the native row / column whose area holds its centre."""
        rows, cols = self.nativeShape(axis)
        (height, width), (rowScale, colScale) = self.imageShape(axis), self.scaleFactors(axis)
        rowMap = np.clip(np.floor((np.arange(height) + 0.5) / rowScale).astype(np.int64), 0, rows - 1)
        colMap = np.clip(np.floor((np.arange(width) + 0.5) / colScale).astype(np.int64), 0, cols - 1)
        return rowMap, colMap

    def nativeMaskToImage(self, axis: int, nativeMask) -> np.ndarray:
        """A native-slice mask (rows, columns) -> bool (H, W) slice image mask (nearest native pixel).

        Raises InputError for a mask of the wrong shape.
        """
        mask = np.asarray(nativeMask)
        if mask.shape != self.nativeShape(axis):
            raise InputError(f"Native mask shape {mask.shape} does not match the slice {self.nativeShape(axis)} along axis {axis}.")
        rowMap, colMap = self._nativeIndexMaps(axis)
        return mask.astype(bool)[np.ix_(rowMap, colMap)]

    def imageMaskToNative(self, axis: int, maskImage) -> np.ndarray:
        """A slice image mask (H, W) -> bool native slice (rows, columns) by area voting.

        A native pixel is set when at least half of the image pixels whose centres
        fall in it are set, so native -> image -> native is exact for any native
        mask. Raises InputError for a mask of the wrong shape.
        """
        mask = np.asarray(maskImage)
        if mask.shape != self.imageShape(axis):
            raise InputError(f"Mask shape {mask.shape} does not match the slice image {self.imageShape(axis)} along axis {axis}.")
        rows, cols = self.nativeShape(axis)
        rowMap, colMap = self._nativeIndexMaps(axis)
        if len(rowMap) == rows and len(colMap) == cols:
            return mask.astype(bool)
        flatIndex = (rowMap[:, None] * cols + colMap[None, :]).ravel()
        votes = np.bincount(flatIndex, weights=mask.astype(bool).ravel(), minlength=rows * cols)
        counts = np.bincount(flatIndex, minlength=rows * cols)
        return (2 * votes >= counts).reshape(rows, cols) & (counts > 0).reshape(rows, cols)


def _resampleLinear(array: np.ndarray, axis: int, size: int, scale: float) -> np.ndarray:
    """Resample ``array`` along ``axis`` to ``size`` samples at x = (u + 0.5) * scale - 0.5 (linear, edge-clamped)."""
    count = array.shape[axis]
    if size == count and scale == 1.0:
        return array
    positions = np.clip((np.arange(size) + 0.5) / scale - 0.5, 0.0, count - 1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, count - 1)
    weight = (positions - lower).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = size
    weight = weight.reshape(shape)
    return np.take(array, lower, axis=axis) * (1 - weight) + np.take(array, upper, axis=axis) * weight
