"""The one interface every segmentation engine implements (SAM, MedSAM, GrowCut).

Frames: every prompt and mask here is in *slice image pixels* of the image that
was encoded: x = column, y = row, origin at the centre of the top-left pixel.
Images reach an engine already mapped to [0, 1] by an intensity policy
(imaging layer), as float32 arrays of shape (H, W) or (H, W, 3).
No Slicer, no Qt, and no torch at import time.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import PromptError
from ..core.progress import ProgressCallback


@dataclass
class Prompts:
    """Prompts for one object on one slice, in slice pixels (x = column, y = row).

    boxXyxy: (x0, y0, x1, y1) with x0 < x1, y0 < y1, or None.
    pointsXy: (N, 2) float array of clicks; pointLabels: (N,) int, 1 = positive, 0 = negative.
    previousLowResLogits: the lowResLogits of an earlier DecodeResult on the same
    slice, for iterative refinement (SAM family only; other engines ignore it).
    """

    boxXyxy: Optional[Tuple[float, float, float, float]] = None
    pointsXy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    pointLabels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    previousLowResLogits: Optional[np.ndarray] = None

    def __post_init__(self):
        self.pointsXy = np.asarray(self.pointsXy, dtype=np.float32).reshape(-1, 2)
        self.pointLabels = np.asarray(self.pointLabels, dtype=np.int32).reshape(-1)
        if len(self.pointsXy) != len(self.pointLabels):
            raise PromptError(f"{len(self.pointsXy)} points but {len(self.pointLabels)} labels: give one label per point.")
        if not np.all(np.isfinite(self.pointsXy)):
            raise PromptError("A point's position is not a number (NaN or infinite): place the point again.")
        if self.boxXyxy is not None:
            x0, y0, x1, y1 = (float(v) for v in self.boxXyxy)
            if not np.all(np.isfinite((x0, y0, x1, y1))):
                raise PromptError("The box's corners are not numbers (NaN or infinite): draw the box again.")
            self.boxXyxy = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def isEmpty(self) -> bool:
        """True when there is neither a box nor a point."""
        return self.boxXyxy is None and len(self.pointsXy) == 0

    @property
    def isAmbiguous(self) -> bool:
        """True for a single point and no box: SAM then picks among 3 candidate masks."""
        return self.boxXyxy is None and len(self.pointsXy) == 1


@dataclass(frozen=True)
class VolumeClick:
    """One click in a volume: pointIjk (i, j, k) continuous voxel coordinates; label 1 positive, 0 negative.

    Engines that segment natively in 3D take clicks in this form; the workflow
    keeps them as the lasting constraints of the segment being built.
    """

    pointIjk: Tuple[float, float, float]
    label: int

    def voxelKji(self, shapeKji) -> Tuple[int, int, int]:
        """The (k, j, i) index of the voxel the click lies in, clipped to a volume of shape (K, J, I)."""
        i, j, k = (int(np.floor(float(v) + 0.5)) for v in self.pointIjk)
        return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip((k, j, i), tuple(shapeKji)[:3]))


@dataclass
class SliceEmbedding:
    """What an engine's encoder made of one slice image.

    features: engine-specific payload (a half-precision torch tensor for SAM,
    the image itself for GrowCut). imageSize: (H, W) of the encoded image, the
    frame of every prompt and mask. nbytes: memory it holds, for the cache budget.
    """

    features: Any
    imageSize: Tuple[int, int]
    nbytes: int
    extra: dict = field(default_factory=dict)


@dataclass
class DecodeResult:
    """One object's mask on one slice.

    mask: bool (H, W) in slice pixels. score: the model's predicted IoU in [0, 1]
    (engines without one report 1.0 for a non-empty mask). lowResLogits: the
    decoder's low-resolution logits (SAM family; else None), to pass back as
    Prompts.previousLowResLogits.
    """

    mask: np.ndarray
    score: float
    lowResLogits: Optional[np.ndarray] = None


class Engine(ABC):
    """A promptable 2D segmentation model: encode slices once, decode prompts many times."""

    #: Unique id of model + weights (e.g. "medsam_vit_b:<sha256 prefix>"); part of cache keys.
    modelId: str = "engine"
    #: Human-readable name for messages and the UI.
    displayName: str = "Engine"

    @abstractmethod
    def encode(self, images: Sequence[np.ndarray], progress: Optional[ProgressCallback] = None) -> list:
        """Encode slice images ((H, W) or (H, W, 3) float32 in [0, 1]) into SliceEmbeddings.

        Batches internally; never modifies the given arrays. Returns one
        SliceEmbedding per image, in order.
        """

    @abstractmethod
    def decode(self, embedding: SliceEmbedding, prompts: Prompts) -> DecodeResult:
        """Decode one object's prompts on an encoded slice into a mask in slice pixels.

        Raises PromptError when the prompts are empty or entirely off the image.
        """

    def decodeMany(self, embedding: SliceEmbedding, promptsList: Sequence[Prompts]) -> list:
        """Decode several objects on one slice; engines that can batch override this."""
        return [self.decode(embedding, prompts) for prompts in promptsList]

    @property
    def device(self) -> str:
        """Where the engine computes: "cpu", "cuda", "mps"."""
        return "cpu"
