"""Is an image file whole, is its geometry usable, and can an output format hold a geometry?

ITK reads some damaged files without a word (measured with SimpleITK 2.4 / ITK
5.4, Testing/test_fileintegrity.py): a NIfTI file shorter than its header says
is read with the missing voxels as zeros; a zero or NaN voxel size in a NIfTI
header becomes 1 mm (DICOM series: imaging/dicomseries.py). NIfTI's orientation is a
rotation, so a skewed (non-orthogonal) direction matrix written to it comes
back changed. The checks here find each case and name the file and the problem.
numpy and SimpleITK only; no `slicer`.
"""

import gzip
import os
import struct
import zlib
from typing import Optional, Sequence

import numpy as np

from ..core.atomicfiles import lowerExtension, writeFailure
from ..core.errors import InputError

NIFTI_EXTENSIONS = (".nii", ".nii.gz", ".hdr")
METAIMAGE_EXTENSIONS = (".mha", ".mhd")
#: MetaImage header keys holding geometry, and what each is to a user.
METAIMAGE_GEOMETRY_KEYS = {"offset": "origin", "origin": "origin", "position": "origin", "elementspacing": "voxel size",
                           "elementsize": "voxel size", "transformmatrix": "orientation", "rotation": "orientation",
                           "orientation": "orientation"}
#: A MetaImage header is read up to ElementDataFile, and never beyond this many bytes.
METAIMAGE_HEADER_LIMIT = 65536
#: NIfTI datatype codes of float voxels (FLOAT32, FLOAT64) and their numpy types.
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
#: Largest movement of a voxel corner (fraction of the smallest voxel size) a write may cause before it is refused.
CORNER_TOLERANCE_VOXELS = 0.01
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_NIFTI1 = {"size": 348, "datatype": (70, "h"), "dim": (40, "8h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "voxOffset": (108, "f"),
           "codes": (252, "2h"), "quatern": (256, "6f"), "srow": (280, "12f"), "magic": (344, 4)}
_NIFTI2 = {"size": 540, "datatype": (12, "h"), "dim": (16, "8q"), "bitpix": (14, "h"), "pixdim": (104, "8d"), "voxOffset": (168, "q"),
           "codes": (344, "2i"), "quatern": (352, "6d"), "srow": (400, "12d"), "magic": (4, 8)}


# ---------------------------------------------------------------- NIfTI


def readNiftiHeader(path) -> Optional[dict]:
    """The NIfTI-1 or NIfTI-2 header fields these checks need, or None when the file is not NIfTI."""
    try:
        opener = gzip.open if str(path).lower().endswith(".gz") else open
        with opener(path, "rb") as stream:
            raw = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for layout in (_NIFTI1, _NIFTI2):
        for order in "<>":
            if len(raw) >= layout["size"] and struct.unpack_from(order + "i", raw, 0)[0] == layout["size"]:
                return _niftiFields(raw, layout, order)
    return None


def _niftiFields(raw, layout, order) -> dict:
    fields = {key: struct.unpack_from(order + layout[key][1], raw, layout[key][0])
              for key in ("datatype", "dim", "bitpix", "pixdim", "voxOffset", "codes", "quatern", "srow")}
    offset, length = layout["magic"]
    magic = raw[offset:offset + length]
    return {"order": order, "datatype": fields["datatype"][0], "dim": fields["dim"], "bitpix": fields["bitpix"][0], "pixdim": fields["pixdim"],
            "voxOffset": int(fields["voxOffset"][0]), "qformCode": fields["codes"][0], "sformCode": fields["codes"][1],
            "quatern": fields["quatern"], "srow": fields["srow"], "singleFile": magic[:3] in (b"n+1", b"n+2")}


def checkNiftiFile(path, name: Optional[str] = None) -> None:
    """InputError when a NIfTI file holds fewer voxel bytes than its header says, or its header's geometry is unusable.

    Unusable: a voxel size that is zero or not finite along an image axis, or
    a non-finite orientation (quaternion, offset or affine rows) that the
    header says to use. Files that are not NIfTI are left to the reader.
    """
    name = name or os.path.basename(str(path))
    header = readNiftiHeader(path)
    if header is None:
        return
    dim = header["dim"]
    rank = int(dim[0])
    if not 1 <= rank <= 7 or any(int(n) <= 0 for n in dim[1:rank + 1]) or header["bitpix"] <= 0:
        return  # not a header these checks understand; the reader reports it
    spacing = np.asarray(header["pixdim"][1:min(rank, 3) + 1], float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing == 0):
        shown = ", ".join(f"{v:g}" for v in spacing)
        raise InputError(f"{name}: its header gives the voxel size ({shown}) mm, zero or not a number along an "
                         "axis, so the image cannot be placed in space: fix the header (pixdim) or export the image again.")
    used = (header["quatern"] if header["qformCode"] > 0 else ()) + (header["srow"] if header["sformCode"] > 0 else ())
    if not np.all(np.isfinite(used)):
        raise InputError(f"{name}: its header's orientation (qform/sform) holds values that are not numbers: fix "
                         "the header or export the image again.")
    # vox_offset is where the voxels start: in the .nii itself, or in the .img of a two-file pair.
    expected = header["voxOffset"] + int(np.prod([int(n) for n in dim[1:rank + 1]])) * header["bitpix"] // 8
    dataPath = path if header["singleFile"] else _niftiImageFile(path)
    if dataPath is None:
        return
    held, damaged = payloadLength(dataPath, expected)
    if held < expected or damaged:
        shape = "x".join(str(int(n)) for n in dim[1:rank + 1])
        found = f"it holds {held} of the {expected} bytes its header describes ({shape} voxels)" if held < expected \
            else "its compressed data is damaged"
        raise InputError(f"{name} is incomplete or corrupt: {found}. The file was probably cut short (an "
                         "interrupted copy, download or save): copy or export it again.")


def restoreNonFiniteNifti(image, path):
    """``image`` (read by ITK from NIfTI file ``path``) with its NaN and infinite voxels put back.

    ITK's NIfTI reader (nifticlib's nifti_read_buffer) replaces every NaN and
    infinite float voxel with 0 without a word: 0 is a real intensity (water in
    CT), so the caller could neither warn nor keep them out of the model. Only
    scalar float images are affected; others are returned as they are.
    """
    import SimpleITK as sitk

    header = readNiftiHeader(path)
    dtype = NIFTI_FLOAT_TYPES.get(header["datatype"]) if header else None
    if dtype is None or image.GetNumberOfComponentsPerPixel() != 1:
        return image
    dataPath = path if header["singleFile"] else _niftiImageFile(path)
    count = int(image.GetNumberOfPixels())
    fileValues = np.frombuffer(_payload(dataPath, header["voxOffset"], count * np.dtype(dtype).itemsize),
                               np.dtype(dtype).newbyteorder(header["order"]))
    bad = np.flatnonzero(~np.isfinite(fileValues))
    if len(bad) == 0 or len(fileValues) != count:
        return image
    voxels = sitk.GetArrayFromImage(image)
    voxels.reshape(-1)[bad] = fileValues[bad]  # NIfTI and ITK both store i fastest: the same flat order
    restored = sitk.GetImageFromArray(voxels)
    restored.CopyInformation(image)
    return restored


def _payload(path, offset, length) -> bytes:
    """``length`` bytes of a (possibly gzip-compressed) file from ``offset``."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        stream.seek(offset)
        return stream.read(length)


def _niftiImageFile(headerPath) -> Optional[str]:
    """The .img (or .img.gz) beside a two-file NIfTI/Analyze .hdr; None when there is none."""
    base = str(headerPath)[: -len(".hdr")] if str(headerPath).lower().endswith(".hdr") else None
    for candidate in ((base + ".img", base + ".img.gz") if base else ()):
        if os.path.isfile(candidate):
            return candidate
    return None


def payloadLength(path, needed: int):
    """(bytes the file holds, up to ``needed``; True when a gzip stream is damaged or cut short)."""
    if not str(path).lower().endswith(".gz"):
        return os.path.getsize(path), False
    held = 0
    try:
        with gzip.open(path, "rb") as stream:
            while held < needed:
                block = stream.read(min(1 << 22, needed - held))
                if not block:
                    break
                held += len(block)
    except (EOFError, OSError, zlib.error):  # gzip.BadGzipFile is an OSError
        return held, True
    return held, False


# ---------------------------------------------------------------- geometry


def checkMetaImageHeader(path) -> None:
    """InputError when a MetaImage (.mha/.mhd) header gives its origin, voxel size or orientation as NaN, infinity or text.

    ITK's MetaImage reader reads ``Offset = nan 0 0`` as origin 0 without a
    word (SimpleITK 2.4), which would put every output in the wrong place.
    """
    with open(path, "rb") as stream:
        header = stream.read(METAIMAGE_HEADER_LIMIT).split(b"ElementDataFile", 1)[0]
    for line in header.decode("latin-1").splitlines():
        key, equals, value = line.partition("=")
        meaning = METAIMAGE_GEOMETRY_KEYS.get(key.strip().lower())
        if not equals or meaning is None:
            continue
        try:
            numbers = [float(v) for v in value.split()]
        except ValueError:
            numbers = [float("nan")]
        if not numbers or not np.all(np.isfinite(numbers)):
            raise InputError(f"{os.path.basename(path)}: its header gives the {meaning} as '{key.strip()} ={value}', "
                             "which is not a list of numbers; ITK would read it as something else without a word. "
                             "Correct the header, or export the image again.")


def checkImageGeometry(spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray, name: str) -> None:
    """InputError when a voxel size is zero, negative or not finite, or the origin or direction is unusable.

    direction: the 3x3 (or 2x2) direction cosines, columns = image axes.
    Unusable: not finite, or so close to singular that the axes do not span space.
    """
    spacing = np.asarray(spacing, float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        shown = ", ".join(f"{v:g}" for v in spacing)
        raise InputError(f"{name}: the voxel size is ({shown}) mm -- zero, negative or not a number -- so the "
                         "image cannot be placed in space: fix the file's header or export the image again.")
    direction = np.asarray(direction, float)
    if not np.all(np.isfinite(origin)) or not np.all(np.isfinite(direction)):
        raise InputError(f"{name}: the image's origin or axis directions are not numbers (NaN or infinite): fix "
                         "the file's header or export the image again.")
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{name}: the image's axis directions are parallel (a degenerate direction matrix), so "
                         "the image cannot be placed in space: fix the file's header or export the image again.")


def orthonormalCornerShift(ijkToRas: np.ndarray, shapeIjk: Sequence[int]) -> float:
    """Largest movement (mm) of a grid corner when the direction matrix is made orthonormal (what NIfTI stores)."""
    linear = np.asarray(ijkToRas, float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    u, _, vt = np.linalg.svd(direction)
    nearest = u @ vt  # the closest rotation (polar decomposition), as nifti_mat44_to_quatern makes it
    corners = np.array([[i, j, k] for i in (0, shapeIjk[0] - 1) for j in (0, shapeIjk[1] - 1)
                        for k in (0, shapeIjk[2] - 1)], float)
    return float(np.abs(corners @ (linear - nearest * spacing).T).max())


def checkFormatHoldsGeometry(path, ijkToRas: np.ndarray, shapeIjk: Sequence[int]) -> None:
    """InputError when writing a grid of ``ijkToRas`` to ``path``'s format would move its voxels.

    NIfTI stores the orientation as a rotation: a skewed direction matrix cannot
    be kept. NRRD, MetaImage and .seg.nrrd hold any matrix.
    """
    if lowerExtension(path) not in NIFTI_EXTENSIONS:
        return
    spacing = np.linalg.norm(np.asarray(ijkToRas, float)[:3, :3], axis=0)
    shift = orthonormalCornerShift(ijkToRas, shapeIjk)
    if shift > CORNER_TOLERANCE_VOXELS * spacing.min():
        raise InputError(f"{os.path.basename(str(path))}: the image's axes are not perpendicular (a skewed grid), "
                         f"which NIfTI cannot store: written as NIfTI its voxels would move by up to {shift:.2f} mm. "
                         "Write a .nrrd labelmap or a .seg.nrrd segmentation instead; they keep the geometry exactly.")


def cornerDistance(ijkToRasA: np.ndarray, ijkToRasB: np.ndarray, shapeIjk: Sequence[int]) -> float:
    """Largest distance (mm) between the grid corners placed by two IJK-to-RAS matrices."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shapeIjk[0] - 1) for j in (0, shapeIjk[1] - 1)
                        for k in (0, shapeIjk[2] - 1)])
    return float(np.abs(corners @ (np.asarray(ijkToRasA) - np.asarray(ijkToRasB)).T)[:, :3].max())


def sitkIjkToRas(image) -> np.ndarray:
    """IJKToRAS (4x4) of a 2D or 3D SimpleITK image: its LPS geometry converted to RAS (2D: one slice, 1 mm)."""
    dimension = min(image.GetDimension(), 3)
    spacing, origin, direction = np.ones(3), np.zeros(3), np.eye(3)
    spacing[:dimension] = image.GetSpacing()[:dimension]
    origin[:dimension] = image.GetOrigin()[:dimension]
    full = np.reshape(image.GetDirection(), (image.GetDimension(),) * 2)
    direction[:dimension, :dimension] = full[:dimension, :dimension]
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    matrix[:3, 3] = LPS_TO_RAS @ origin
    return matrix


# ---------------------------------------------------------------- reading back a written file


def verifyWrittenImage(writtenPath, path, ijkToRas=None, shapeIjk=None, voxels=None) -> None:
    """Read ``writtenPath`` back whole and compare it with what was meant; InputError naming ``path`` when it differs.

    ijkToRas / shapeIjk: the grid it must have (voxel corners within
    CORNER_TOLERANCE_VOXELS); voxels: the KJI array it must hold. NIfTI is
    checked against its own header first (ITK reads a short file as zeros).
    """
    import SimpleITK as sitk

    try:
        nifti = lowerExtension(path) in NIFTI_EXTENSIONS
        if nifti:
            checkNiftiFile(writtenPath)
        image = sitk.ReadImage(str(writtenPath))
        if nifti:
            image = restoreNonFiniteNifti(image, writtenPath)
    except (InputError, RuntimeError):
        raise writeFailure(path, "the file read back is incomplete") from None
    if shapeIjk is not None:
        size = tuple(image.GetSize())[:3] + (1,) * (3 - image.GetDimension())
        if size != tuple(shapeIjk):
            raise writeFailure(path, f"the file read back has {size} voxels instead of {tuple(shapeIjk)}")
        spacing = np.linalg.norm(np.asarray(ijkToRas, float)[:3, :3], axis=0)
        moved = cornerDistance(sitkIjkToRas(image), ijkToRas, shapeIjk)
        if moved > CORNER_TOLERANCE_VOXELS * spacing.min():
            raise writeFailure(path, f"the file read back places the voxels up to {moved:.3g} mm from where they are")
    if voxels is not None:
        written = sitk.GetArrayFromImage(image).reshape(voxels.shape)
        if not np.array_equal(written, voxels, equal_nan=voxels.dtype.kind in "fc"):
            raise writeFailure(path, "the voxels read back differ from those written")
