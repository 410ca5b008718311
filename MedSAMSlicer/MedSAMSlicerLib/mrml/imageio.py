"""Read images into volume nodes and write segmentation results, with the input's geometry.

Images are read with SimpleITK (ITK's readers, the ones Slicer uses) and put
into volume nodes with IJKToRAS converted from ITK's LPS exactly as Slicer
does, but keeping the file's own voxel order: Slicer's archetype reader flips
the k axis of left-handed images, which would break the promise that an output
has the input's size, spacing, origin and direction. The nodes are real MRML
volume nodes; everything downstream is Slicer's geometry.

Inputs are checked before their voxels are trusted (imaging/fileintegrity.py):
a file cut short, a DICOM series with an unreadable file or a gap, an unusable
voxel size or direction are errors naming the file; NaN and infinite voxels are
reported. Outputs are written through core/atomicfiles.atomicOutput: a
temporary name in the destination folder, fsync, then read back (geometry and
voxels compared with what was meant to be written) before the rename, so a full
disk or an interrupted write never leaves a partial or wrong file. Geometry
the output format cannot hold is refused, never changed. Qt-free; imports
`slicer` (slicer-core headless).
"""

import os
import stat
import sys
from typing import Callable, Optional

import numpy as np

from ..core.atomicfiles import atomicOutput, checkOutputLocation, writeFailure  # noqa: F401 (atomicOutput: API)
from ..core.errors import InputError
from ..core.nativeoutput import quietNativeStderr
from ..imaging.fileintegrity import (METAIMAGE_EXTENSIONS, NIFTI_EXTENSIONS, checkMetaImageHeader, checkFormatHoldsGeometry,
                                     checkImageGeometry, checkNiftiFile, lowerExtension, restoreNonFiniteNifti,
                                     sitkIjkToRas, verifyWrittenImage)
from ..imaging.dicomseries import readDicomSeries

IMAGE_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SEGMENTATION_EXTENSIONS = (".seg.nrrd",)
LABELMAP_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")

WarnCallback = Callable[[str], None]


def warnOnStderr(message: str) -> None:
    """Print ``message`` as one 'warning:' line on stderr (the default warning channel)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reading


def readImage(path, scene, volumeIndex: Optional[int] = None, warn: Optional[WarnCallback] = None):
    """Read an image file or DICOM folder into a new volume node in ``scene``.

    path: NIfTI, NRRD, MHA/MHD (any 3D format ITK reads), a folder holding
    exactly one DICOM series, or a 2D image (PNG, JPEG, TIFF, BMP), which becomes
    a one-slice volume: scalar for grayscale, a 3-component vector volume for
    RGB (alpha dropped in both). 2D spacing is 1 mm unless the file says otherwise. volumeIndex picks one volume (0-based) of a 4D image or one
    component of an image with many components per voxel.
    Returns a vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode. NaN and
    infinite voxels are kept as they are and reported through ``warn`` (stderr
    by default).
    Raises InputError for a missing path, something that is not a regular file
    or folder (a pipe, a device), an unreadable or non-image file, a file
    shorter than its header says, a voxel size that is zero or not a number, a
    non-finite or degenerate direction, a 4D image without volumeIndex, more
    than 4 components, or a folder with no or several DICOM series, an
    unreadable file in its series, unevenly spaced slices or slices not on one
    line. A DICOM series acquired with gantry tilt is resampled onto a regular
    grid, and ``warn`` says so.
    """
    warn = warn or warnOnStderr
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist: check the path of the image.")
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        node = _nodeFromSitkImage(readDicomSeries(path, warn), scene, os.path.basename(path.rstrip(os.sep)) or "dicom")
    elif stat.S_ISREG(mode):
        node = _readImageFile(path, scene, volumeIndex)
    else:  # a FIFO would block the reader forever; a device or socket is no image either
        raise InputError(f"{path} is not a regular file (a pipe, device or socket): give an image file or a DICOM folder.")
    _warnIfNotFinite(node, warn)
    return node


def _readImageFile(path, scene, volumeIndex):
    """Read one image file: header check first, then SimpleITK (Pillow for 2D images ITK cannot read)."""
    if lowerExtension(path) in IMAGE_2D_EXTENSIONS:
        image = _readWithPillow(path)
        if image is not None:
            if volumeIndex not in (None, 0):
                raise InputError(f"--volume-index {volumeIndex} given, but {os.path.basename(path)} is a 2D image: leave it out.")
            return _nodeFromSitkImage(image, scene, _nodeName(path))
    if lowerExtension(path) in METAIMAGE_EXTENSIONS:
        checkMetaImageHeader(path)
    info = _readHeader(path)
    dimension, components = info.GetDimension(), info.GetNumberOfComponents()
    size = info.GetSize()
    name = _nodeName(path)
    if dimension >= 4:
        count = int(np.prod(size[3:]))
        if volumeIndex is None:
            raise InputError(
                f"{os.path.basename(path)} is a 4D image holding {count} volumes of size "
                f"{size[0]}x{size[1]}x{size[2]}: pick one with --volume-index N (0 to {count - 1})."
            )
        return _nodeFromSitkImage(_extractVolume(path, size, volumeIndex), scene, name)
    grayAlpha = components == 2 and lowerExtension(path) in IMAGE_2D_EXTENSIONS
    if components not in (1, 3, 4) and not grayAlpha:
        if volumeIndex is None:
            raise InputError(
                f"{os.path.basename(path)} has {components} components per voxel; only grayscale or RGB(A) "
                f"images can be segmented: pick one component with --volume-index N (0 to {components - 1})."
            )
        return _nodeFromSitkImage(_extractComponent(path, components, volumeIndex), scene, name)
    if volumeIndex not in (None, 0):
        raise InputError(f"--volume-index {volumeIndex} given, but {os.path.basename(path)} holds a single volume: leave it out.")
    return _nodeFromSitkImage(_readSitkChecked(path), scene, name)


def _readSitkChecked(path):
    """_readSitk after the checks ITK's readers skip: a NIfTI file cut short (read as zeros), its NaN voxels (read as 0)."""
    if lowerExtension(path) not in NIFTI_EXTENSIONS:
        return _readSitk(path)
    checkNiftiFile(path)
    return restoreNonFiniteNifti(_readSitk(path), path)


def _readWithPillow(path):
    """A 2D image that SimpleITK cannot read (grayscale + alpha, palette PNG) as a SimpleITK image, via Pillow.

    Returns None when SimpleITK can read the file itself (its reader keeps
    spacing information) or when Pillow is not installed or cannot read it either.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        with quietNativeStderr():
            reader.ReadImageInformation()
        return None
    except RuntimeError:
        pass
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as picture:
            mode = "RGB" if picture.mode in ("RGBA", "RGB", "P", "PA", "CMYK", "YCbCr") else "L"
            pixels = np.asarray(picture.convert(mode) if picture.mode not in ("I", "I;16", "F") else picture)
    except (OSError, ValueError):
        return None
    return sitk.GetImageFromArray(np.ascontiguousarray(pixels), isVector=pixels.ndim == 3)


def _readHeader(path):
    """SimpleITK header of ``path`` (no voxels read); InputError when no reader accepts the file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        with quietNativeStderr():
            reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(
            f"{os.path.basename(path)} is not an image this tool can read: give a NIfTI, NRRD, MHA, "
            "PNG, JPEG or TIFF file, or a folder holding one DICOM series."
        ) from None
    return reader


def _readSitk(path):
    """Read ``path`` fully with SimpleITK; InputError when the voxels cannot be read."""
    import SimpleITK as sitk

    try:
        with quietNativeStderr():
            return sitk.ReadImage(path)
    except RuntimeError:
        raise InputError(f"{os.path.basename(path)} could not be read (truncated or corrupt?): check the file.") from None


def _extractVolume(path, size, volumeIndex):
    """Volume ``volumeIndex`` (0-based) of a 4D image, as a 3D SimpleITK image."""
    import SimpleITK as sitk

    count = int(np.prod(size[3:]))
    if not 0 <= volumeIndex < count:
        raise InputError(f"--volume-index {volumeIndex} is out of range: the image holds {count} volumes (0 to {count - 1}).")
    image = _readSitkChecked(path)
    extractor = sitk.ExtractImageFilter()
    extractor.SetSize(list(size[:3]) + [0])
    extractor.SetIndex([0, 0, 0, volumeIndex])
    return extractor.Execute(image)


def _extractComponent(path, components, volumeIndex):
    """Component ``volumeIndex`` of a multi-component image, as a scalar SimpleITK image."""
    import SimpleITK as sitk

    if not 0 <= volumeIndex < components:
        raise InputError(f"--volume-index {volumeIndex} is out of range: the image has {components} components (0 to {components - 1}).")
    return sitk.VectorIndexSelectionCast(_readSitkChecked(path), volumeIndex)


def _nodeName(path):
    """A node name from the file name without its (double) extension."""
    base = os.path.basename(path)
    extension = lowerExtension(path)
    return base[: len(base) - len(extension)] if extension else base


def _nodeFromSitkImage(image, scene, name):
    """A new volume node in ``scene`` holding a 2D or 3D SimpleITK image (LPS), geometry converted to RAS.

    Grayscale -> vtkMRMLScalarVolumeNode; 3 or 4 components -> a 3-component
    vtkMRMLVectorVolumeNode (alpha dropped). 2D images become one slice.
    """
    import SimpleITK as sitk
    import slicer

    dimension = image.GetDimension()
    checkImageGeometry(image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (dimension, dimension)), name)
    voxels = sitk.GetArrayFromImage(image)  # KJI (or JI for 2D), components last
    components = image.GetNumberOfComponentsPerPixel()
    if dimension == 2:
        voxels = voxels[np.newaxis]
    if components == 4:
        voxels = voxels[..., :3]
    elif components == 2:  # grayscale + alpha (a PNG "LA"): the gray channel
        voxels, components = voxels[..., 0], 1
    elif components not in (1, 3):
        raise InputError(f"{name} has {components} components per voxel; only grayscale or RGB(A) images can be segmented.")
    className = "vtkMRMLScalarVolumeNode" if components == 1 else "vtkMRMLVectorVolumeNode"
    node = scene.AddNewNodeByClass(className, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(sitkIjkToRas(image)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(voxels))
    node.CreateDefaultDisplayNodes()
    return node


def _warnIfNotFinite(node, warn):
    """Report NaN and infinite voxels (kept as they are: the intensity policy replaces them for the model only)."""
    import slicer

    voxels = slicer.util.arrayFromVolume(node)
    if not np.issubdtype(voxels.dtype, np.floating):
        return
    nanCount = int(np.isnan(voxels).sum())
    infiniteCount = int(np.isinf(voxels).sum())
    found = [f"{nanCount} NaN voxels"] * bool(nanCount) + [f"{infiniteCount} infinite voxels"] * bool(infiniteCount)
    if found:
        warn(f"the image has {' and '.join(found)}; they are treated as the lowest intensity for the model "
             "and left unchanged in the image.")


# ---------------------------------------------------------------- writing


def outputKind(path) -> str:
    """"segmentation" for .seg.nrrd, "labelmap" for .nii.gz / .nii / .nrrd; InputError otherwise."""
    extension = lowerExtension(path)
    if extension in SEGMENTATION_EXTENSIONS:
        return "segmentation"
    if extension in LABELMAP_EXTENSIONS:
        return "labelmap"
    raise InputError(
        f"{os.path.basename(str(path))}: unsupported output type; name the output *.seg.nrrd (Slicer segmentation) "
        "or *.nii.gz / *.nrrd (labelmap)."
    )


def checkOutputPath(path) -> str:
    """Check, before any work, that ``path`` can be written as a segmentation or labelmap; create its folder if missing.

    Returns outputKind(path). Raises InputError for a folder given as the
    output, an unsupported extension, an existing non-regular file, a name too
    long for the disk, or a folder that cannot be created or written.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        checkOutputLocation(path)  # says it is a folder and how to name a file in it
    kind = outputKind(path)
    checkOutputLocation(path)
    return kind


def checkOutputHoldsGeometry(path, volumeNode) -> None:
    """InputError, before any work, when ``path``'s format cannot hold ``volumeNode``'s grid (NIfTI and a skewed grid)."""
    checkFormatHoldsGeometry(path, _nodeIjkToRas(volumeNode), volumeNode.GetImageData().GetDimensions())


def writeSegmentation(segmentationNode, path, referenceVolume=None) -> str:
    """Write ``segmentationNode`` as a Slicer .seg.nrrd that opens in Slicer over its image.

    referenceVolume (optional) sets the segmentation's reference geometry first,
    so the file holds the image's full grid. Written atomically and read back
    (complete, and on the reference's grid) before it is put in place. Returns
    the absolute path. Raises InputError when the path is not .seg.nrrd or the
    file cannot be written whole.
    """
    import slicer

    if outputKind(path) != "segmentation":
        raise InputError(f"{path}: a segmentation is written as *.seg.nrrd; use writeLabelmap for other types.")
    if referenceVolume is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetCropToMinimumExtent(False)
    return _writeWithStorageNode(storage, segmentationNode, path, _segmentationVerifier(path, referenceVolume))


def writeLabelmap(maskOrSegmentation, referenceVolume, path, segmentIds=None) -> str:
    """Write a labelmap (.nii.gz / .nii / .nrrd) on ``referenceVolume``'s grid: same size, spacing, origin, direction.

    maskOrSegmentation: a bool/int array, KJI-ordered with the reference's
    shape (non-zero voxels written as given, bool as 1), or a
    vtkMRMLSegmentationNode whose segments (all, or ``segmentIds``) are exported
    with label values 1, 2, ... in segment order. Written atomically through
    Slicer's volume storage node and read back (geometry and voxels) before it
    is put in place. Returns the absolute path. Raises InputError for a wrong
    shape, an unsupported type, a grid the format cannot hold (a skewed grid
    in NIfTI: the message names .nrrd / .seg.nrrd), or a file that cannot be
    written whole (disk full).
    """
    import slicer

    outputKind(path)
    checkOutputHoldsGeometry(path, referenceVolume)
    scene = referenceVolume.GetScene()
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "medsam-output")
    try:
        if isinstance(maskOrSegmentation, np.ndarray):
            _fillLabelFromArray(labelNode, maskOrSegmentation, referenceVolume)
        else:
            _fillLabelFromSegmentation(labelNode, maskOrSegmentation, referenceVolume, segmentIds)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetUseCompression(True)
        return _writeWithStorageNode(storage, labelNode, path, _volumeVerifier(path, labelNode))
    finally:
        scene.RemoveNode(labelNode)


def _fillLabelFromArray(labelNode, maskKji, referenceVolume):
    """Set the label node's voxels from a KJI array on the reference's grid."""
    import slicer
    import vtk

    shapeKji = tuple(reversed(referenceVolume.GetImageData().GetDimensions()))
    if tuple(maskKji.shape) != shapeKji:
        raise InputError(f"mask shape {tuple(maskKji.shape)} does not match the image's {shapeKji} (KJI).")
    matrix = vtk.vtkMatrix4x4()
    referenceVolume.GetIJKToRASMatrix(matrix)
    labelNode.SetIJKToRASMatrix(matrix)
    labels = maskKji.astype(np.uint8) if maskKji.dtype == bool else np.asarray(maskKji)
    if labels.dtype.kind == "i" and labels.dtype.itemsize > 2:
        labels = labels.astype(np.int16 if labels.max(initial=0) < 32768 else np.int32)
    slicer.util.updateVolumeFromArray(labelNode, np.ascontiguousarray(labels))


def _fillLabelFromSegmentation(labelNode, segmentationNode, referenceVolume, segmentIds):
    """Export segments into the label node on the reference's grid (Slicer's segmentation logic)."""
    import slicer
    import vtk

    ids = vtk.vtkStringArray()
    for segmentId in segmentIds or segmentationNode.GetSegmentation().GetSegmentIDs():
        ids.InsertNextValue(segmentId)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelNode, referenceVolume):
        raise InputError("the segmentation could not be exported to a labelmap on the image's grid.")


def writeVolume(volumeNode, path) -> str:
    """Write a volume node (e.g. a generated sample image) to .nrrd / .nii.gz / .mha, atomically and read back.

    Uses Slicer's volume storage node, so the file opens in Slicer with the
    node's geometry. Returns the absolute path; InputError when the format
    cannot hold the node's grid or the file cannot be written whole.
    """
    import slicer

    if lowerExtension(path) not in (".nrrd", ".nii.gz", ".nii", ".mha"):
        raise InputError(f"{path}: write volumes as *.nrrd, *.nii.gz or *.mha.")
    checkOutputHoldsGeometry(path, volumeNode)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(True)
    return _writeWithStorageNode(storage, volumeNode, path, _volumeVerifier(path, volumeNode))


def _writeWithStorageNode(storage, node, path, verify) -> str:
    """Write ``node`` with a Slicer storage node to a temporary name beside ``path``, verify, rename; absolute path."""
    with atomicOutput(path, verify) as temporaryPath:
        storage.SetFileName(temporaryPath)
        with quietNativeStderr():
            written = storage.WriteData(node)
        if not written:
            raise writeFailure(path, "the writer reported an error")
    return os.path.abspath(path)


# ---------------------------------------------------------------- reading back what was written


def _nodeIjkToRas(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _volumeVerifier(path, node):
    """verify(temporaryPath) for a volume node's file: complete, on the node's grid, holding the node's voxels."""
    def verify(temporaryPath):
        import slicer

        with quietNativeStderr():
            verifyWrittenImage(temporaryPath, path, _nodeIjkToRas(node), node.GetImageData().GetDimensions(),
                               slicer.util.arrayFromVolume(node))
    return verify


def _segmentationVerifier(path, referenceVolume):
    """verify(temporaryPath) for a .seg.nrrd: complete (NRRD's reader checks the data length), on the reference grid."""
    def verify(temporaryPath):
        grid = (_nodeIjkToRas(referenceVolume), referenceVolume.GetImageData().GetDimensions()) if referenceVolume else ()
        with quietNativeStderr():
            verifyWrittenImage(temporaryPath, path, *grid)
    return verify
