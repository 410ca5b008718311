"""A simulated user (robot annotator) that measures any engine on labelled images.

2D (simulate2d): a box from the truth (optional jitter in mm), then corrective
clicks, one at a time up to a budget, each at the interior of the largest error
region (the pixel farthest from its edge): positive on missed foreground,
negative on a false positive. Reports Dice after the box and after each click.

3D (simulate3d): the structure's 3D bounding box is segmented the way the
product does it (workflow/refinement.py BoxRefinement: natively in 3D for the
weight-free engine, MedSAM's middle-slice-and-propagate protocol for the SAM
family); then one click per step, up to a budget, as an annotator clicks in
3D (the CVPR 2025 interactive-3D protocol, ``nextClick3d``): at the interior
of the largest 3D error region, on the slice where that region is largest,
positive on missed foreground and negative on a false positive. Every click
stays with the session and the result is recomputed (incrementally where the
engine can). Reports the 3D Dice after the box and after every click.

NoC@85 / NoC@90: the number of clicks (the box counts as 0 clicks) after which
Dice first reaches 0.85 / 0.90; clickBudget + 1 when it never does.

Works on SliceSource objects and numpy arrays; needs no MRML, Slicer or torch.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..engines.base import Prompts
from ..core.errors import InputError
from .constraints import AnnotationSession
from .propagation import PropagationSettings, asService
from .refinement import BoxRefinement

#: KJI array axis of the slices along each IJK axis.
_ARRAY_AXIS = {2: 0, 1: 1, 0: 2}


def dice(a, b) -> float:
    """Dice coefficient of two bool masks of the same shape; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise InputError(f"Dice of masks with different shapes {a.shape} and {b.shape}.")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def numberOfClicks(dices: List[float], threshold: float, clickBudget: int) -> int:
    """NoC: first index (clicks after the box) where dices reaches threshold; clickBudget + 1 if never."""
    for clicks, value in enumerate(dices):
        if value >= threshold:
            return clicks
    return clickBudget + 1


def boxFromMask(mask, jitterMm: float = 0.0, pixelSpacingMm: float = 1.0, rng=None) -> Tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of a mask's pixel centres, each side moved by up to jitterMm at random.

    Jitter is uniform in [-jitterMm, +jitterMm] per side (converted with
    pixelSpacingMm), from `rng` (a numpy Generator; seed 0 when None); the box
    is clipped to the image. Raises InputError for an empty mask.
    """
    mask = np.asarray(mask, bool)
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        raise InputError("Cannot draw a box around an empty mask.")
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=float)
    if jitterMm > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        box += rng.uniform(-1.0, 1.0, 4) * jitterMm / pixelSpacingMm
    height, width = mask.shape
    x0, x1 = sorted((np.clip(box[0], 0, width - 1), np.clip(box[2], 0, width - 1)))
    y0, y1 = sorted((np.clip(box[1], 0, height - 1), np.clip(box[3], 0, height - 1)))
    return float(x0), float(y0), float(x1), float(y1)


def largestErrorRegion(predicted, truth, fullyConnected: bool = False):
    """(bool mask of the largest connected error region, label) or None when there is no error.

    Missed foreground (label 1) and false positives (label 0) are labelled
    separately (face-connected, or with fullyConnected every neighbour: 8 in
    2D, 26 in 3D); the larger region wins. Raises InputError for masks of
    different shapes.
    """
    from scipy import ndimage  # noqa: PLC0415

    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise InputError(f"Prediction {predicted.shape} and truth {truth.shape} differ in shape.")
    best = None
    for errors, label in ((truth & ~predicted, 1), (predicted & ~truth, 0)):
        components, count = ndimage.label(errors, np.ones((3,) * errors.ndim, bool) if fullyConnected else None)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (sizes[largest - 1], components == largest, label)
    return None if best is None else (best[1], best[2])


def nextClick(predicted, truth) -> Optional[Tuple[np.ndarray, int]]:
    """Where a careful annotator clicks next: ((x, y), label) or None when the mask is perfect.

    The largest connected error region (missed foreground or false positive,
    whichever is larger) is clicked at its interior point farthest from its
    edge (the image border counts as edge); label 1 for missed foreground,
    0 for a false positive.
    """
    from scipy import ndimage  # noqa: PLC0415

    found = largestErrorRegion(predicted, truth)
    if found is None:
        return None
    region = np.pad(found[0], 1)
    depth = ndimage.distance_transform_edt(region)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([col, row], dtype=np.float32), found[1]


@dataclass
class Simulation2d:
    """Outcome of simulate2d: Dice after the box (index 0) and after each click; NoC; clicks (x, y, label)."""

    dices: List[float]
    noc85: int
    noc90: int
    clicks: List[Tuple[float, float, int]] = field(default_factory=list)
    mask: Optional[np.ndarray] = None


def _engineOf(serviceOrEngine):
    return getattr(serviceOrEngine, "engine", serviceOrEngine)


def simulate2d(serviceOrEngine, image, truth, clickBudget: int = 5, jitterMm: float = 0.0,
               pixelSpacingMm: float = 1.0, seed: int = 0, usePreviousLogits: bool = False) -> Simulation2d:
    """Box then corrective clicks on one 2D image; returns Dice per click and NoC@85/90.

    image: float32 (H, W) or (H, W, 3) in [0, 1] (an intensity policy applied).
    truth: bool (H, W). usePreviousLogits: pass the last lowResLogits back
    (SAM-style iterative refinement; GrowCut would keep old mistakes as seeds,
    so it is off by default). Stops early once Dice reaches 1. Raises
    InputError for an empty truth or mismatched shapes.
    """
    engine = _engineOf(serviceOrEngine)
    truth = np.asarray(truth, bool)
    if np.shape(image)[:2] != truth.shape:
        raise InputError(f"Image {np.shape(image)} and truth {truth.shape} differ in size.")
    box = boxFromMask(truth, jitterMm, pixelSpacingMm, np.random.default_rng(seed))
    embedding = engine.encode([np.asarray(image, np.float32)])[0]
    decoded = engine.decode(embedding, Prompts(boxXyxy=box))
    dices, clicks = [dice(decoded.mask, truth)], []
    for _ in range(clickBudget):
        if dices[-1] >= 1.0:
            break
        click = nextClick(decoded.mask, truth)
        if click is None:
            break
        clicks.append((float(click[0][0]), float(click[0][1]), int(click[1])))
        prompts = Prompts(boxXyxy=box, pointsXy=[c[:2] for c in clicks], pointLabels=[c[2] for c in clicks],
                          previousLowResLogits=decoded.lowResLogits if usePreviousLogits else None)
        decoded = engine.decode(embedding, prompts)
        dices.append(dice(decoded.mask, truth))
    return Simulation2d(dices, numberOfClicks(dices, 0.85, clickBudget), numberOfClicks(dices, 0.90, clickBudget),
                        clicks, decoded.mask)


@dataclass
class Simulation3d:
    """Outcome of simulate3d.

    dices: 3D Dice after the box (index 0) and after each click. perSliceDice:
    {slice index: Dice} of the final result on the box's slices. clicks:
    (i, j, k, label) voxel indices in click order. sliceRange: the box's
    slices. result: the final RefinementResult. mask: final bool (K, J, I).
    mode: "native3d" or "propagation". updates: how each click was computed
    ("incremental", "full").
    """

    dices: List[float]
    noc85: int
    noc90: int
    perSliceDice: Dict[int, float]
    clicks: List[Tuple[int, int, int, int]]
    sliceRange: Tuple[int, int]
    result: object = None
    mask: Optional[np.ndarray] = None
    mode: str = ""
    updates: List[str] = field(default_factory=list)


def truthBox3d(source, truthKji, axis: int):
    """(in-plane boxXyxy in slice image pixels, (k0, k1) slice range) of a 3D structure along axis."""
    truthKji = np.asarray(truthKji, bool)
    if not truthKji.any():
        raise InputError("The 3D truth is empty: nothing to box.")
    arrayAxis = _ARRAY_AXIS[axis]
    present = np.nonzero(truthKji.any(axis=tuple(a for a in range(3) if a != arrayAxis)))[0]
    footprint = source.nativeMaskToImage(axis, truthKji.any(axis=arrayAxis))
    return boxFromMask(footprint), (int(present[0]), int(present[-1]))


def _perSliceDice(source, axis, predictedKji, truthKji, sliceRange) -> Dict[int, float]:
    return {k: dice(predictedKji[source.sliceSelector(axis, k)], truthKji[source.sliceSelector(axis, k)])
            for k in range(sliceRange[0], sliceRange[1] + 1)}


def nextClick3d(predictedKji, truthKji, axis: int = 2, spacingIjk=(1.0, 1.0, 1.0)) -> Optional[Tuple[Tuple[int, int, int], int]]:
    """Where an annotator clicks next in 3D: ((i, j, k) voxel, label) or None when the mask is perfect.

    The largest 3D connected error region (26-connected; missed foreground or
    false positive, whichever is larger) is found; on the slice along ``axis``
    where its cross-section is largest, the click goes to the cross-section's
    interior point farthest from its edge (in mm, the slice border counting as
    edge). Label 1 for missed foreground, 0 for a false positive.
    """
    from scipy import ndimage  # noqa: PLC0415

    found = largestErrorRegion(predictedKji, truthKji, fullyConnected=True)
    if found is None:
        return None
    region, label = found
    arrayAxis = _ARRAY_AXIS[axis]
    inPlane = [a for a in range(3) if a != arrayAxis]
    k = int(np.argmax(region.sum(axis=tuple(inPlane))))
    section = np.take(region, k, axis=arrayAxis)
    spacingKji = tuple(float(v) for v in spacingIjk)[::-1]
    depth = ndimage.distance_transform_edt(np.pad(section, 1), sampling=[spacingKji[a] for a in inPlane])[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    voxelKji = [0, 0, 0]
    voxelKji[arrayAxis], voxelKji[inPlane[0]], voxelKji[inPlane[1]] = k, int(row), int(col)
    return (voxelKji[2], voxelKji[1], voxelKji[0]), int(label)


def simulate3d(serviceOrEngine, source, truthKji, axis: int = 2, clickBudget: int = 5, jitterMm: float = 0.0,
               settings: Optional[PropagationSettings] = None, seed: int = 0, native: bool = True) -> Simulation3d:
    """Box the structure in 3D, segment it as the product does, then click where the largest 3D error is.

    source: a SliceSource of the volume; truthKji: bool (K, J, I). Each click
    (nextClick3d) joins the session and the BoxRefinement recomputes the
    result with every click so far. native: let an engine with a native 3D
    mode (GrowCut) use it; False forces slice propagation. Stops early when
    the mask is perfect. Returns a Simulation3d; deterministic for a given seed.
    """
    service = asService(serviceOrEngine)
    truthKji = np.asarray(truthKji, bool)
    box, sliceRange = truthBox3d(source, truthKji, axis)
    if jitterMm > 0:
        footprint = np.zeros(source.imageShape(axis), bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        footprint[y0:y1 + 1, x0:x1 + 1] = True
        box = boxFromMask(footprint, jitterMm, source.pixelSpacing(axis), np.random.default_rng(seed))
    refinement = BoxRefinement(service, source, axis, box, sliceRange, settings, native=native)
    session = AnnotationSession()
    outcome = refinement.run(session)
    dices, clicks, updates = [dice(outcome.maskKji, truthKji)], [], []
    for _ in range(clickBudget):
        click = nextClick3d(outcome.maskKji, truthKji, axis, source.spacingIjk)
        if click is None:
            break
        (i, j, k), label = click
        session.addClick((i, j, k), label)
        clicks.append((i, j, k, label))
        outcome = refinement.run(session)
        updates.append(outcome.update)
        dices.append(dice(outcome.maskKji, truthKji))
    return Simulation3d(dices, numberOfClicks(dices, 0.85, clickBudget), numberOfClicks(dices, 0.90, clickBudget),
                        _perSliceDice(source, axis, outcome.maskKji, truthKji, sliceRange), clicks, sliceRange,
                        outcome, outcome.maskKji, refinement.mode, updates)
