"""What the user has said about the segment being built, kept for every later re-computation.

An AnnotationSession holds:

- **clicks** (engines.base.VolumeClick: a voxel position and a label), in the
  order they were made, from any slice of any view. They are lasting
  constraints: every later result keeps a positive click's voxel inside and a
  negative click's voxel outside (``enforce``), whatever the engine. Clicks on
  one slice accumulate as that slice's prompts (``promptsOnSlice``).
- **accepted slices** per axis: slices the user declared right, each with
  the native mask it showed when accepted (if any), so a later preview of
  another slice does not lose it (the keys of a fill, keyslicefill.py).

Anchored slices along an axis are the slices with a click on them and the
accepted ones. Re-propagation after a correction never replaces an anchored
slice (workflow/propagation.py correctSlice stops there).

No MRML here: clicks arrive as IJK coordinates (the Logic converts markups).
"""

from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..core.errors import InputError
from ..engines.base import Prompts, VolumeClick

#: KJI index of the native slice's rows and columns along each axis (docs/developer.md, "Frames").
_NATIVE_ROW_COL = {2: (1, 2), 1: (0, 2), 0: (0, 1)}
#: Two clicks closer than this (voxels, per coordinate) with the same label are the same click.
SAME_CLICK_TOLERANCE = 1e-3


class AnnotationSession:
    """Clicks (lasting constraints) and accepted slices of one segment being built."""

    def __init__(self):
        self.clicks: List[VolumeClick] = []
        self._accepted: Dict[int, Set[int]] = {0: set(), 1: set(), 2: set()}
        self._acceptedMasks: Dict[int, Dict[int, np.ndarray]] = {0: {}, 1: {}, 2: {}}

    # ---------------------------------------------------------------- editing

    def addClick(self, pointIjk, label: int) -> VolumeClick:
        """Append a click at continuous voxel coordinates (i, j, k); label 1 positive, 0 negative."""
        click = _makeClick(pointIjk, label)
        self.clicks.append(click)
        return click

    def sync(self, pointsIjk, labels) -> Tuple[List[VolumeClick], List[VolumeClick]]:
        """Make the clicks equal to these points (the markups), keeping the order of the ones already known.

        pointsIjk: (N, 3) voxel coordinates; labels: (N,). Known clicks keep
        their place; new ones are appended in the given order. Returns (added,
        removed). A moved point is a removed click plus an added one.
        """
        pointsIjk = np.asarray(pointsIjk, dtype=float).reshape(-1, 3)
        labels = np.asarray(labels).reshape(-1)
        if len(pointsIjk) != len(labels):
            raise InputError(f"{len(pointsIjk)} points but {len(labels)} labels: give one label per point.")
        wanted = [_makeClick(point, label) for point, label in zip(pointsIjk, labels)]
        kept, removed = [], []
        remaining = list(wanted)
        for click in self.clicks:
            match = next((index for index, other in enumerate(remaining) if _same(click, other)), None)
            if match is None:
                removed.append(click)
            else:
                kept.append(click)
                remaining.pop(match)
        self.clicks = kept + remaining
        return remaining, removed

    def accept(self, axis: int, sliceIndices: Sequence[int], nativeMasks: Optional[Dict[int, np.ndarray]] = None):
        """Declare these slices along ``axis`` right: later re-propagations never replace them.

        nativeMasks: {slice index: bool native slice mask} each accepted slice
        shows now (kept, replacing an earlier one; see acceptedMasks).
        """
        axis = _checkAxis(axis)
        self._accepted[axis].update(int(k) for k in sliceIndices)
        for k, mask in (nativeMasks or {}).items():
            self._acceptedMasks[axis][int(k)] = np.array(mask, dtype=bool, copy=True)

    def acceptedSlices(self, axis: int) -> Set[int]:
        """The slices accepted along ``axis`` (a copy)."""
        return set(self._accepted[_checkAxis(axis)])

    def acceptedMasks(self, axis: int) -> Dict[int, np.ndarray]:
        """{accepted slice along ``axis``: the bool native slice mask it showed when accepted} (a copy of the dict)."""
        return dict(self._acceptedMasks[_checkAxis(axis)])

    def snapshot(self) -> "AnnotationSession":
        """An independent copy (for a job that runs while the user goes on clicking)."""
        copy = AnnotationSession()
        copy.clicks = list(self.clicks)
        copy._accepted = {axis: set(slices) for axis, slices in self._accepted.items()}
        copy._acceptedMasks = {axis: dict(masks) for axis, masks in self._acceptedMasks.items()}  # never modified
        return copy

    def clear(self):
        """Forget every click and accepted slice (a new segment begins)."""
        self.clicks = []
        for accepted in (*self._accepted.values(), *self._acceptedMasks.values()):
            accepted.clear()

    # ---------------------------------------------------------------- reading

    def clickedSlices(self, source, axis: int, clicks=None) -> Dict[int, List[VolumeClick]]:
        """{slice index along axis: clicks on it}, in click order; clicks off the volume are left out."""
        grouped: Dict[int, List[VolumeClick]] = {}
        count = source.sliceCount(axis)
        for click in self.clicks if clicks is None else clicks:
            k = sliceOf(click, axis)
            if 0 <= k < count:
                grouped.setdefault(k, []).append(click)
        return grouped

    def anchoredSlices(self, source, axis: int) -> Set[int]:
        """Slices along ``axis`` that a re-propagation must not replace: clicked or accepted."""
        return set(self.clickedSlices(source, axis)) | self.acceptedSlices(axis)

    def promptsOnSlice(self, source, axis: int, sliceIndex: int, boxXyxy=None, previousLowResLogits=None) -> Prompts:
        """Every click on slice ``sliceIndex`` along ``axis`` as Prompts in slice image pixels (plus the given box, logits)."""
        clicks = self.clickedSlices(source, axis).get(int(sliceIndex), [])
        if not clicks:
            return Prompts(boxXyxy=boxXyxy, previousLowResLogits=previousLowResLogits)
        _, xy = source.ijkToImage(axis, np.array([c.pointIjk for c in clicks], dtype=float))
        height, width = source.imageShape(axis)
        xy[:, 0] = np.clip(xy[:, 0], 0, width - 1)
        xy[:, 1] = np.clip(xy[:, 1], 0, height - 1)
        return Prompts(boxXyxy=boxXyxy, pointsXy=xy, pointLabels=[c.label for c in clicks],
                       previousLowResLogits=previousLowResLogits)

    def enforce(self, maskKji: np.ndarray) -> np.ndarray:
        """A copy of a bool (K, J, I) mask with every click's voxel set to its label (later clicks win)."""
        mask = np.array(maskKji, dtype=bool, copy=True)
        for click in self.clicks:
            mask[click.voxelKji(mask.shape)] = click.label == 1
        return mask

    def enforceOnSlices(self, masks: Dict[int, np.ndarray], source, axis: int) -> Dict[int, np.ndarray]:
        """Slice image masks {k: bool (H, W)} with each click's voxel set to its label (a new dict; changed masks copied).

        Every image pixel of the click's native voxel is set, so the native
        mask (source.imageMaskToNative, area voting) has the click's label
        there. A clicked slice without a mask gets one (empty but for
        positive clicks).
        """
        result = dict(masks)
        rowAxis, colAxis = _NATIVE_ROW_COL[_checkAxis(axis)]
        for k, clicks in self.clickedSlices(source, axis).items():
            mask = np.array(result.get(k, np.zeros(source.imageShape(axis), bool)), dtype=bool, copy=True)
            for click in clicks:
                voxel = click.voxelKji(source.shapeKji)
                native = np.zeros(source.nativeShape(axis), bool)
                native[voxel[rowAxis], voxel[colAxis]] = True
                mask[source.nativeMaskToImage(axis, native)] = click.label == 1
            if mask.any() or k in result:
                result[k] = mask
        return result


def sliceOf(click: VolumeClick, axis: int) -> int:
    """The native slice index along ``axis`` (0 = I, 1 = J, 2 = K) the click lies on."""
    return int(np.floor(float(click.pointIjk[_checkAxis(axis)]) + 0.5))


def _makeClick(pointIjk, label) -> VolumeClick:
    point = tuple(float(v) for v in np.asarray(pointIjk, dtype=float).reshape(-1))
    if len(point) != 3 or not np.all(np.isfinite(point)):
        raise InputError(f"A click needs three finite voxel coordinates (i, j, k), got {pointIjk!r}.")
    if int(label) not in (0, 1):
        raise InputError(f"A click's label is 1 (positive) or 0 (negative), got {label!r}.")
    return VolumeClick(point, int(label))


def _same(a: VolumeClick, b: VolumeClick) -> bool:
    return a.label == b.label and all(abs(x - y) <= SAME_CLICK_TOLERANCE for x, y in zip(a.pointIjk, b.pointIjk))


def _checkAxis(axis) -> int:
    if axis not in (0, 1, 2):
        raise InputError(f"Slice axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}.")
    return int(axis)
