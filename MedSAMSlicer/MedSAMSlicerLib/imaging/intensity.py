"""Intensity policies: how a volume's voxel values map to the [0, 1] range engines expect.

A policy (CT window, MR percentiles, the viewer's window, automatic choice) is
*resolved* once against the whole volume, which fixes its numbers (the
percentiles, the auto choice). The ResolvedPolicy then maps any slice with the
same numbers, so every slice of a volume is treated alike and its key can be
part of embedding cache keys. numpy only: no slicer, no torch.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..core.errors import InputError

#: CT window presets: name -> (level, width) in Hounsfield units.
CT_PRESETS = {
    "soft tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: Default MR clipping percentiles (lower, upper), in percent.
DEFAULT_PERCENTILES = (0.5, 99.5)

#: "auto" treats a scalar volume as CT (Hounsfield units) when its minimum is at or below this.
CT_MINIMUM_THRESHOLD = -500.0

#: Volumes larger than this many values are subsampled (deterministic stride) for percentiles.
MAX_PERCENTILE_SAMPLES = 1 << 22


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy with its numbers fixed: values in [low, high] map linearly to [0, 1].

    low, high: window bounds in the volume's own units (HU for CT).
    Colour images use the same window on each of their three channels, so
    colour is kept. `key` identifies the mapping and is part of cache keys.
    """

    low: float
    high: float

    @property
    def key(self) -> str:
        """A short string that identifies this mapping, e.g. "window:-160:240"."""
        return f"window:{self.low:.6g}:{self.high:.6g}"

    def apply(self, array) -> np.ndarray:
        """Map ``array`` (any shape, any numeric dtype) to a new float32 array in [0, 1].

        Values below `low` give 0, above `high` give 1; NaN and +/-inf give 0.
        A degenerate window (high <= low, a constant image) gives 1 above `low`
        and 0 elsewhere. The input is never modified (a new array is returned).
        """
        values = np.asarray(array)
        if values.dtype.kind not in "biuf":
            raise InputError(f"Cannot map voxels of type {values.dtype} to intensities: use a numeric image.")
        values = values.astype(np.float32, copy=False)
        finite = np.isfinite(values)
        if self.high > self.low:
            scale = np.float32(1.0 / (self.high - self.low))
            out = (values - np.float32(self.low)) * scale  # new array: the input stays as it was
            np.clip(out, 0.0, 1.0, out=out)
        else:
            out = (values > np.float32(self.low)).astype(np.float32)
        out[~finite] = 0.0
        return out


class IntensityPolicy:
    """How to choose the intensity window of a volume. Build with a constructor:

    IntensityPolicy.ct("soft tissue") or IntensityPolicy.ct(level=40, width=400)
    IntensityPolicy.percentile(0.5, 99.5)     (MR default)
    IntensityPolicy.window(low, high)         (the viewer's window)
    IntensityPolicy.auto()                    (colour uint8 -> 0..255; CT-looking -> soft tissue; else percentiles)
    """

    def __init__(self, kind: str, low: float = 0.0, high: float = 1.0, name: str = ""):
        self.kind = kind
        self.low = float(low)
        self.high = float(high)
        self.name = name

    def __repr__(self):
        return f"IntensityPolicy({self.describe()})"

    def __eq__(self, other):
        return isinstance(other, IntensityPolicy) and (self.kind, self.low, self.high) == (other.kind, other.low, other.high)

    def __hash__(self):
        return hash((self.kind, self.low, self.high))

    @classmethod
    def ct(cls, preset: Optional[str] = None, level: Optional[float] = None, width: Optional[float] = None) -> "IntensityPolicy":
        """A CT window in Hounsfield units, from a preset name or a level and width.

        Presets (case-insensitive, "_" or "-" may replace spaces): soft tissue
        (40/400), abdomen (60/400), lung (-600/1500), bone (400/1800), brain (40/80).
        Raises InputError for an unknown preset or a width <= 0.
        """
        if preset is not None:
            name = str(preset).strip().lower().replace("_", " ").replace("-", " ")
            if name not in CT_PRESETS:
                raise InputError(f"Unknown CT window preset {preset!r}: use one of {', '.join(CT_PRESETS)}, or give level and width.")
            level, width = CT_PRESETS[name]
        elif level is None or width is None:
            raise InputError("A CT window needs a preset name or both a level and a width (in HU).")
        level, width = float(level), float(width)
        if not width > 0:
            raise InputError(f"CT window width must be positive, got {width}.")
        return cls("window", level - width / 2.0, level + width / 2.0, name=f"ct {preset or ''}".strip())

    @classmethod
    def percentile(cls, lower: float = DEFAULT_PERCENTILES[0], upper: float = DEFAULT_PERCENTILES[1]) -> "IntensityPolicy":
        """Clip to the [lower, upper] percentiles (in percent) of the volume's finite voxels.

        Raises InputError unless 0 <= lower < upper <= 100.
        """
        lower, upper = float(lower), float(upper)
        if not 0.0 <= lower < upper <= 100.0:
            raise InputError(f"Percentiles must satisfy 0 <= lower < upper <= 100, got {lower} and {upper}.")
        return cls("percentile", lower, upper, name="percentile")

    @classmethod
    def window(cls, low: float, high: float) -> "IntensityPolicy":
        """A fixed window [low, high] in the volume's units (e.g. the viewer's window/level).

        Raises InputError when high <= low.
        """
        low, high = float(low), float(high)
        if not high > low:
            raise InputError(f"Window upper bound must exceed the lower one, got {low} and {high}.")
        return cls("window", low, high, name="window")

    @classmethod
    def auto(cls) -> "IntensityPolicy":
        """Choose from the data: colour uint8 -> 0..255 per channel; minimum <= -500 (CT in HU)
        -> soft-tissue window; otherwise percentiles 0.5-99.5."""
        return cls("auto", name="auto")

    @classmethod
    def parse(cls, text: str) -> "IntensityPolicy":
        """Build a policy from text (command line, settings): "auto", "ct:soft tissue",
        "ct:40:400" (level:width), "percentile" or "percentile:0.5:99.5", "window:-100:200",
        or a bare preset name ("lung"). Raises InputError for anything else."""
        parts = [p.strip() for p in str(text).split(":")]
        head = parts[0].lower()
        try:
            if head == "auto" and len(parts) == 1:
                return cls.auto()
            if head == "ct" and len(parts) == 2:
                return cls.ct(parts[1])
            if head == "ct" and len(parts) == 3:
                return cls.ct(level=float(parts[1]), width=float(parts[2]))
            if head == "percentile" and len(parts) in (1, 3):
                return cls.percentile(*(float(p) for p in parts[1:]))
            if head == "window" and len(parts) == 3:
                return cls.window(float(parts[1]), float(parts[2]))
            if len(parts) == 1:
                return cls.ct(head)
        except ValueError:
            pass
        raise InputError(f"Cannot read intensity policy {text!r}: use auto, ct:<preset>, ct:<level>:<width>, "
                         "percentile[:<low>:<high>] or window:<low>:<high>.")

    def describe(self) -> str:
        """A human-readable description, e.g. "window -160..240" or "percentile 0.5..99.5"."""
        if self.kind == "auto":
            return "auto"
        return f"{self.kind} {self.low:g}..{self.high:g}"

    def resolve(self, voxels, isRgb: Optional[bool] = None) -> ResolvedPolicy:
        """Fix this policy's numbers from the whole volume ``voxels`` (never modified).

        isRgb: whether the last axis holds colour channels; when None it is
        guessed (4 dimensions with 3 channels last, or uint8 with 3 last).
        Percentiles are taken over finite voxels (NaN, inf ignored); very large
        volumes are subsampled with a fixed stride, so the result is repeatable.
        Raises InputError when the volume has no finite voxel.
        """
        if self.kind == "window":
            return ResolvedPolicy(self.low, self.high)
        values = np.asarray(voxels)
        if isRgb is None:
            isRgb = values.ndim >= 3 and values.shape[-1] == 3 and (values.ndim == 4 or values.dtype == np.uint8)
        if self.kind == "auto":
            if isRgb and values.dtype == np.uint8:
                return ResolvedPolicy(0.0, 255.0)
            low, high = _finiteRange(values)
            if isRgb:
                return ResolvedPolicy(low, high)
            if low <= CT_MINIMUM_THRESHOLD:
                level, width = CT_PRESETS["soft tissue"]
                return ResolvedPolicy(level - width / 2.0, level + width / 2.0)
            return _percentileWindow(values, *DEFAULT_PERCENTILES)
        if self.kind == "percentile":
            return _percentileWindow(values, self.low, self.high)
        raise InputError(f"Unknown intensity policy kind {self.kind!r}.")


def _sample(values: np.ndarray) -> np.ndarray:
    """A flat view or deterministic strided subsample of at most about MAX_PERCENTILE_SAMPLES values."""
    flat = values.reshape(-1)
    if flat.size > MAX_PERCENTILE_SAMPLES:
        flat = flat[:: int(np.ceil(flat.size / MAX_PERCENTILE_SAMPLES))]
    return flat


def _finiteValues(values: np.ndarray) -> np.ndarray:
    flat = _sample(values)
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise InputError("The volume has no finite voxel value (all NaN or infinite): check the image.")
    return flat


def _finiteRange(values: np.ndarray) -> Tuple[float, float]:
    if values.dtype.kind == "f":
        flat = _finiteValues(values)
        return float(flat.min()), float(flat.max())
    if values.size == 0:
        raise InputError("The volume is empty: check the image.")
    return float(values.min()), float(values.max())


def _percentileWindow(values: np.ndarray, lower: float, upper: float) -> ResolvedPolicy:
    flat = _finiteValues(values)
    low, high = np.percentile(flat, [lower, upper])
    return ResolvedPolicy(float(low), float(high))
