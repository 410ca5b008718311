"""Optional 3D post-processing of a mask (off by default in the Logic): largest component, hole filling.

SimpleITK is imported at first use. Masks are bool (K, J, I) arrays; the input
is never modified. No Slicer, no Qt, no torch.
"""

import numpy as np

from ..core.errors import DependencyError, InputError


def _sitk():
    try:
        import SimpleITK as sitk  # noqa: PLC0415 (lazy: only post-processing needs it)
    except ImportError as error:
        raise DependencyError("Post-processing needs SimpleITK: install it (pip install SimpleITK).") from error
    return sitk


def _checkedMask(maskKji) -> np.ndarray:
    mask = np.asarray(maskKji)
    if mask.ndim not in (2, 3):
        raise InputError(f"Post-processing expects a 2D or 3D mask, got shape {mask.shape}.")
    return mask.astype(bool)


def keepLargestComponent(maskKji, fullyConnected: bool = False) -> np.ndarray:
    """Keep only the largest connected component of a bool mask (2D or 3D); returns a new bool array.

    fullyConnected: False = face connectivity (6 in 3D), True = 26. An empty mask stays empty.
    """
    mask = _checkedMask(maskKji)
    if not mask.any():
        return mask.copy()
    sitk = _sitk()
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), fullyConnected)
    largest = sitk.RelabelComponent(labels, sortByObjectSize=True) == 1
    return sitk.GetArrayFromImage(largest).astype(bool)


def fillHoles(maskKji, perSlice: bool = False, axis: int = 2) -> np.ndarray:
    """Fill holes (background not connected to the mask's outside) of a bool mask; returns a new array.

    perSlice=False fills 3D holes (cavities enclosed in every direction);
    perSlice=True fills 2D holes on every native slice along ``axis`` (0 = I,
    1 = J, 2 = K, as in SliceSource), which also closes a tube's lumen.
    """
    mask = _checkedMask(maskKji)
    sitk = _sitk()
    if not perSlice or mask.ndim == 2:
        filled = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)), fullyConnected=False, foregroundValue=1)
        return sitk.GetArrayFromImage(filled).astype(bool)
    if axis not in (0, 1, 2):
        raise InputError(f"Slice axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}.")
    arrayAxis = {2: 0, 1: 1, 0: 2}[axis]
    moved = np.moveaxis(mask, arrayAxis, 0)
    result = np.stack([fillHoles(plane) if plane.any() else plane.copy() for plane in moved])
    return np.moveaxis(result, 0, arrayAxis)
