"""Where the engine computes: device choice, mixed precision, batch size from free memory, OOM detection.

torch is imported at first use only.
"""

import contextlib
import logging
from typing import Optional

from ..core.errors import DependencyError, InputError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
#: Fraction of free GPU memory left alone when sizing a batch (allocator slack, other tensors).
MEMORY_HEADROOM = 0.25
MAX_GPU_BATCH = 16
CPU_BATCH = 1  # a batch does not make a CPU encoder faster and multiplies peak memory


def _torch():
    try:
        import torch
    except ImportError:
        raise DependencyError("PyTorch is not installed; SAM engines need it. Install it (in Slicer: the PyTorch "
                              "extension) or use the weight-free GrowCut engine.") from None
    return torch


def _mpsAvailable(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def chooseDevice(requested: str = "auto") -> str:
    """Resolve a device request to "cuda", "cuda:N", "mps" or "cpu".

    "auto": CUDA if available, else MPS (Apple silicon), else CPU. An explicit
    device that is not available raises InputError saying what is available.
    """
    torch = _torch()
    wanted = (requested or "auto").strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mpsAvailable(torch) else "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted == "mps":
        if _mpsAvailable(torch):
            return "mps"
        raise InputError(f"Device 'mps' (Apple GPU) is not available here; choose one of: {availableDevices()}.")
    if wanted == "cuda" or wanted.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"Device {requested!r} is not available (no CUDA GPU visible to PyTorch); "
                             f"choose one of: {availableDevices()}.")
        index = wanted.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InputError(f"Device {requested!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found.")
        return wanted
    raise InputError(f"Unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}.")


def availableDevices() -> str:
    """Comma-separated devices usable here, for messages (e.g. "cuda, cpu")."""
    torch = _torch()
    devices = ["cuda"] if torch.cuda.is_available() else []
    devices += ["mps"] if _mpsAvailable(torch) else []
    return ", ".join(devices + ["cpu"])


def autocastDtype(device: str):
    """The reduced precision the encoder runs in on ``device``: bf16 on CUDA GPUs that support it,
    else fp16 on CUDA; None (full fp32) on CPU and MPS."""
    torch = _torch()
    if not device.startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocastContext(device: str, enabled: bool = True):
    """A context manager running the enclosed torch ops in mixed precision on CUDA; a no-op elsewhere."""
    torch = _torch()
    dtype = autocastDtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def freeMemoryBytes(device: str) -> Optional[int]:
    """Free memory on a CUDA device in bytes (torch.cuda.mem_get_info); None for CPU and MPS."""
    torch = _torch()
    if not device.startswith("cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def batchSizeForMemory(device: str, bytesPerItem: int, maxBatch: int = MAX_GPU_BATCH) -> int:
    """How many slices to encode at once on ``device``.

    CUDA: as many as fit in the free memory (minus MEMORY_HEADROOM) at
    ``bytesPerItem`` each, between 1 and maxBatch. CPU and MPS: CPU_BATCH.
    """
    free = freeMemoryBytes(device)
    if free is None:
        return max(1, min(CPU_BATCH, maxBatch))
    usable = free * (1.0 - MEMORY_HEADROOM)
    return int(max(1, min(maxBatch, usable // max(1, bytesPerItem))))


def isOutOfMemory(exc: BaseException) -> bool:
    """True when ``exc`` is a device out-of-memory error (CUDA, MPS, or a CPU allocation failure)."""
    try:
        import torch
        oomType = getattr(torch.cuda, "OutOfMemoryError", None)
        if oomType is not None and isinstance(exc, oomType):
            return True
    except ImportError:
        pass
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def emptyDeviceCache(device: str) -> None:
    """Give cached, unused GPU memory back to the driver (after an OOM); nothing on CPU."""
    torch = _torch()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
