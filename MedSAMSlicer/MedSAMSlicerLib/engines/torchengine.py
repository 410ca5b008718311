"""TorchEngine: what every torch model engine (SAM/MedSAM, SAM 2.1/MedSAM2) shares.

Placing the model on its device (a GPU too small for the weights leaves it on
the CPU with a warning), batched encoding whose batch halves on a GPU
out-of-memory error and which moves the engine to the CPU when even one slice
does not fit, checks of slice images and prompts, checkpoint digests and the
float RGB copy of a slice. Subclasses provide ``_encodeBatch`` and
``_estimatedBytesPerSlice``, and reset their device-bound caches in
``_afterFallback``. torch is imported at first use only.
"""

import hashlib
import logging
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import Engine, Prompts
from .devices import batchSizeForMemory, emptyDeviceCache, isOutOfMemory
from ..core.errors import InputError, PromptError
from ..core.progress import ProgressCallback, reportProgress

logger = logging.getLogger(__name__)

_digests = {}
_digestLock = threading.Lock()


def checkpointDigest(path) -> str:
    """SHA-256 (hex) of a file, computed once per (path, modification time, size) in this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _digestLock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    with _digestLock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def asRgb(image) -> np.ndarray:
    """A new float32 (H, W, 3) array from (H, W), (H, W, 1) or (H, W, 3); NaN/inf -> 0; the input is not modified."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    rgb = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else np.array(array, dtype=np.float32, copy=True)
    return np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0)


def checkPromptsOnImage(prompts: Prompts, height: int, width: int) -> None:
    """PromptError when ``prompts`` are empty, or their box (else every point) lies off a height x width slice."""
    if prompts.isEmpty:
        raise PromptError("No prompt given: draw a box or click at least one point on the slice.")
    if prompts.boxXyxy is not None:
        x0, y0, x1, y1 = prompts.boxXyxy
        if x1 < -0.5 or y1 < -0.5 or x0 > width - 0.5 or y0 > height - 0.5:
            raise PromptError(f"The box {prompts.boxXyxy} lies entirely off the {width}x{height} slice; "
                              "draw it on the image.")
        return
    points = prompts.pointsXy
    inside = ((points[:, 0] >= -0.5) & (points[:, 0] <= width - 0.5)
              & (points[:, 1] >= -0.5) & (points[:, 1] <= height - 0.5))
    if not inside.any():
        raise PromptError(f"Every point lies off the {width}x{height} slice; click on the image.")


class TorchEngine(Engine):
    """An Engine over a torch model on a device, with batched, out-of-memory-safe encoding.

    Subclasses set ``_device`` (chooseDevice) before calling ``_placeModel`` and
    ``_initEncoding(batchSize)`` in their constructor.
    """

    _device = "cpu"
    fallbackMessage: Optional[str] = None  # set when a GPU out-of-memory error moved the engine to the CPU

    def _initEncoding(self, batchSize: Optional[int]) -> None:
        self.batchSize = batchSize
        self._batchCap: Optional[int] = None  # lowered after an out-of-memory error
        self._fallbackLock = threading.Lock()

    def _placeModel(self, model):
        """The model moved to the engine's device; on a GPU too small for the weights, kept on the CPU with a warning."""
        try:
            return model.to(self._device)
        except Exception as exc:
            if not isOutOfMemory(exc) or self._device == "cpu":
                raise
            self._warnFallback(f"The model does not fit in the memory of the GPU ({self._device}); it runs on the "
                               "CPU, which is slower. Close other GPU programs or choose a smaller model.")
            emptyDeviceCache(self._device)
            self._device = "cpu"
            return model.to("cpu")

    def _warnFallback(self, message: str) -> None:
        self.fallbackMessage = message
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    @property
    def device(self) -> str:
        """Where the engine computes now ("cuda", "mps", "cpu"); "cpu" after an out-of-memory fallback."""
        return self._device

    def encode(self, images: Sequence[np.ndarray], progress: Optional[ProgressCallback] = None) -> list:
        """Encode slice images (float32 (H, W) or (H, W, 3) in [0, 1]) into SliceEmbeddings, in batches.

        A GPU out-of-memory error halves the batch and retries down to one
        slice, then moves the engine to the CPU with a warning
        (``fallbackMessage``); it never fails for lack of GPU memory.
        Raises InputError for an image of the wrong shape.
        """
        images = list(images)
        sizes = [self._checkImage(image, index) for index, image in enumerate(images)]
        embeddings: list = []
        batch = self._currentBatchSize()
        start = 0
        while start < len(images):
            chunk = images[start:start + batch]
            try:
                embeddings.extend(self._encodeBatch(chunk, sizes[start:start + batch]))
            except Exception as exc:
                if not isOutOfMemory(exc):
                    raise
                batch = self._recoverFromOutOfMemory(batch, exc)
                continue
            start += len(chunk)
            reportProgress(progress, start / len(images), f"Encoded {start} of {len(images)} slices")
        return embeddings

    def _encodeBatch(self, images: Sequence[np.ndarray], sizes: Sequence[tuple]) -> list:
        raise NotImplementedError

    def _estimatedBytesPerSlice(self) -> int:
        raise NotImplementedError

    @staticmethod
    def _checkImage(image, index: int) -> tuple:
        shape = np.shape(image)
        if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)):
            if shape[0] >= 1 and shape[1] >= 1:
                return (int(shape[0]), int(shape[1]))
        raise InputError(f"Slice image {index} has shape {shape}; the engine needs (H, W) grayscale or "
                         "(H, W, 3) colour. Pick a 2D slice of a scalar or RGB volume.")

    def _currentBatchSize(self) -> int:
        if self.batchSize is not None:
            size = max(1, int(self.batchSize))
        else:
            size = batchSizeForMemory(self._device, self._estimatedBytesPerSlice())
        return min(size, self._batchCap) if self._batchCap else size

    def _recoverFromOutOfMemory(self, batch: int, exc: BaseException) -> int:
        """Halve the batch after an OOM; at one slice move to the CPU. Returns the batch to retry with."""
        emptyDeviceCache(self._device)
        if batch > 1:
            self._batchCap = max(1, batch // 2)
            logger.warning("Out of memory encoding %d slices on %s; retrying with %d.", batch, self._device,
                           self._batchCap)
            return self._batchCap
        if not self._accelerated():
            raise InputError("Not enough memory to encode even one slice on the CPU. Close other programs, "
                             "or use smaller images or a smaller model.") from exc
        self._fallBackToCpu(exc)
        return 1

    def _accelerated(self) -> bool:
        """True while computing on a GPU (there is a CPU to fall back to)."""
        return self._device != "cpu"

    def _fallBackToCpu(self, exc: BaseException) -> None:
        with self._fallbackLock:
            previous = self._device
            self._warnFallback(
                f"The GPU ({previous}) ran out of memory even for one slice ({str(exc).splitlines()[0][:120]}); "
                "MedSAMSlicer continues on the CPU, which is slower. Close other GPU programs or choose a "
                "smaller model, then reload the model to use the GPU again.")
            self.model.to("cpu")
            self._device = "cpu"
            self._batchCap = None
            self._afterFallback()
        emptyDeviceCache(previous)

    def _afterFallback(self) -> None:
        """Reset what was bound to the GPU (called with the engine already on the CPU)."""
