"""Read images into volume nodes and write segmentation results, with the input's geometry.

Images are read with SimpleITK (ITK's readers, the ones Slicer uses) and put
into volume nodes with IJKToRAS converted from ITK's LPS exactly as Slicer
does, but keeping the file's own voxel order: Slicer's archetype reader flips
the k axis of left-handed images, which would break the promise that an output
has the input's size, spacing, origin and direction. The nodes are real MRML
volume nodes; everything downstream is Slicer's geometry. Writing always goes to a temporary name in
the destination folder, renamed at the end, so an error never leaves a
partial output file behind. Qt-free; imports `slicer` (slicer-core headless).
"""

import contextlib
import os
import sys
import uuid
from typing import Callable, Optional

import numpy as np

from ..core.errors import InputError

IMAGE_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SEGMENTATION_EXTENSIONS = (".seg.nrrd",)
LABELMAP_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

WarnCallback = Callable[[str], None]


def warnOnStderr(message: str) -> None:
    """Print ``message`` as one 'warning:' line on stderr (the default warning channel)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quietNativeStderr(enabled: bool = True):
    """Silence stderr written by native libraries (ITK, HDF5, VTK) inside the block.

    ITK's image probing and VTK's error window print to file descriptor 2
    directly; a command line must show one clear line instead. Python-level
    writes to sys.stderr are flushed before and are not affected afterwards.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    savedFd = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(savedFd, 2)
    finally:
        os.close(savedFd)


def lowerExtension(path: str) -> str:
    """The file's extension in lower case, with the double extensions .nii.gz and .seg.nrrd kept whole."""
    name = os.path.basename(str(path)).lower()
    for double in (".seg.nrrd", ".nii.gz"):
        if name.endswith(double):
            return double
    return os.path.splitext(name)[1]


# ---------------------------------------------------------------- reading


def readImage(path, scene, volumeIndex: Optional[int] = None, warn: Optional[WarnCallback] = None):
    """Read an image file or DICOM folder into a new volume node in ``scene``.

    path: NIfTI, NRRD, MHA/MHD (any 3D format ITK reads), a folder holding
    exactly one DICOM series, or a 2D image (PNG, JPEG, TIFF, BMP), which becomes
    a one-slice volume: scalar for grayscale, a 3-component vector volume for
    RGB (alpha dropped in both). 2D spacing is 1 mm unless the file says otherwise. volumeIndex picks one volume (0-based) of a 4D image or one
    component of an image with many components per voxel.
    Returns a vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode. NaN voxels are
    kept as they are and reported through ``warn`` (stderr by default).
    Raises InputError for a missing path, an unreadable or non-image file, a 4D
    image without volumeIndex, more than 4 components, or a folder with no or
    several DICOM series.
    """
    warn = warn or warnOnStderr
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist: check the path of the image.")
    if os.path.isdir(path):
        node = _readDicomFolder(path, scene)
    else:
        node = _readImageFile(path, scene, volumeIndex)
    _warnIfNan(node, warn)
    return node


def _readImageFile(path, scene, volumeIndex):
    """Read one image file: header check first, then SimpleITK (Pillow for 2D images ITK cannot read)."""
    if lowerExtension(path) in IMAGE_2D_EXTENSIONS:
        image = _readWithPillow(path)
        if image is not None:
            if volumeIndex not in (None, 0):
                raise InputError(f"--volume-index {volumeIndex} given, but {os.path.basename(path)} is a 2D image: leave it out.")
            return _nodeFromSitkImage(image, scene, _nodeName(path))
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
    return _nodeFromSitkImage(_readSitk(path), scene, name)


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
    image = _readSitk(path)
    extractor = sitk.ExtractImageFilter()
    extractor.SetSize(list(size[:3]) + [0])
    extractor.SetIndex([0, 0, 0, volumeIndex])
    return extractor.Execute(image)


def _extractComponent(path, components, volumeIndex):
    """Component ``volumeIndex`` of a multi-component image, as a scalar SimpleITK image."""
    import SimpleITK as sitk

    if not 0 <= volumeIndex < components:
        raise InputError(f"--volume-index {volumeIndex} is out of range: the image has {components} components (0 to {components - 1}).")
    return sitk.VectorIndexSelectionCast(_readSitk(path), volumeIndex)


def _readDicomFolder(folder, scene):
    """Read the single DICOM series in ``folder``; InputError for none or several."""
    import SimpleITK as sitk

    with quietNativeStderr():
        seriesIds = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not seriesIds:
        raise InputError(f"{folder} is a folder without a DICOM series: give an image file or a folder holding one DICOM series.")
    if len(seriesIds) > 1:
        listing = "; ".join(
            f"{uid} ({len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))} files)" for uid in seriesIds
        )
        raise InputError(
            f"{folder} holds {len(seriesIds)} DICOM series: {listing}. Copy the one you want into its own folder and give that folder."
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, seriesIds[0]))
    try:
        with quietNativeStderr():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(f"the DICOM series in {folder} could not be read (incomplete or corrupt files?): check the folder.") from None
    return _nodeFromSitkImage(image, scene, os.path.basename(folder.rstrip(os.sep)) or "dicom")


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

    voxels = sitk.GetArrayFromImage(image)  # KJI (or JI for 2D), components last
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    spacing[:dimension] = image.GetSpacing()
    origin[:dimension] = image.GetOrigin()
    direction[:dimension, :dimension] = np.reshape(image.GetDirection(), (dimension, dimension))
    if dimension == 2:
        voxels = voxels[np.newaxis]
    if components == 4:
        voxels = voxels[..., :3]
    elif components == 2:  # grayscale + alpha (a PNG "LA"): the gray channel
        voxels, components = voxels[..., 0], 1
    elif components not in (1, 3):
        raise InputError(f"{name} has {components} components per voxel; only grayscale or RGB(A) images can be segmented.")
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    ijkToRas[:3, 3] = LPS_TO_RAS @ origin
    className = "vtkMRMLScalarVolumeNode" if components == 1 else "vtkMRMLVectorVolumeNode"
    node = scene.AddNewNodeByClass(className, name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(voxels))
    node.CreateDefaultDisplayNodes()
    return node


def _warnIfNan(node, warn):
    """Report NaN voxels (kept as they are: the intensity policy replaces them for the model only)."""
    import slicer

    voxels = slicer.util.arrayFromVolume(node)
    if np.issubdtype(voxels.dtype, np.floating):
        nanCount = int(np.isnan(voxels).sum())
        if nanCount:
            warn(
                f"the image has {nanCount} NaN voxels; they are treated as the lowest intensity for the model "
                "and left unchanged in the image."
            )


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
    """Check, before any work, that ``path`` can be written; create its folder if missing.

    Returns outputKind(path). Raises InputError for an unsupported extension,
    a folder that cannot be created or written, or a path that is a folder.
    """
    kind = outputKind(path)
    prepareOutputFolder(path)
    return kind


def prepareOutputFolder(path) -> None:
    """Create the folder of output file ``path`` if needed; InputError when it cannot be created or written."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder: give a file name for the output.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder {folder} ({error.strerror}): choose another --out.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the output folder {folder} is not writable: choose another --out.")


@contextlib.contextmanager
def atomicOutput(path):
    """Yield a temporary file name beside ``path`` (same extension); rename it to ``path`` on success.

    On any error the temporary file is removed and ``path`` is left as it was.
    Raises InputError when the folder is not writable.
    """
    path = os.path.abspath(os.fspath(path))
    prepareOutputFolder(path)
    folder, extension = os.path.dirname(path), lowerExtension(path)
    # A fresh, not yet existing name: writers refuse or complain about existing files.
    temporaryPath = os.path.join(folder, f".medsam-{os.getpid()}-{uuid.uuid4().hex[:8]}{extension}")
    try:
        yield temporaryPath
        if not os.path.isfile(temporaryPath) or os.path.getsize(temporaryPath) == 0:
            raise InputError(f"writing {os.path.basename(path)} failed (disk full or not writable?): choose another --out.")
        os.replace(temporaryPath, path)
    finally:
        if os.path.exists(temporaryPath):
            os.remove(temporaryPath)


def writeSegmentation(segmentationNode, path, referenceVolume=None) -> str:
    """Write ``segmentationNode`` as a Slicer .seg.nrrd that opens in Slicer over its image.

    referenceVolume (optional) sets the segmentation's reference geometry first,
    so the file holds the image's full grid. Written atomically. Returns the
    absolute path. Raises InputError when the path is not .seg.nrrd or cannot
    be written.
    """
    import slicer

    if outputKind(path) != "segmentation":
        raise InputError(f"{path}: a segmentation is written as *.seg.nrrd; use writeLabelmap for other types.")
    if referenceVolume is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetCropToMinimumExtent(False)
    return _writeWithStorageNode(storage, segmentationNode, path)


def writeLabelmap(maskOrSegmentation, referenceVolume, path, segmentIds=None) -> str:
    """Write a labelmap (.nii.gz / .nii / .nrrd) on ``referenceVolume``'s grid: same size, spacing, origin, direction.

    maskOrSegmentation: a bool/int array, KJI-ordered with the reference's
    shape (non-zero voxels written as given, bool as 1), or a
    vtkMRMLSegmentationNode whose segments (all, or ``segmentIds``) are exported
    with label values 1, 2, ... in segment order. Written atomically through
    Slicer's volume storage node. Returns the absolute path.
    Raises InputError for a wrong shape, an unsupported type or an unwritable path.
    """
    import slicer

    outputKind(path)
    scene = referenceVolume.GetScene()
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "medsam-output")
    try:
        if isinstance(maskOrSegmentation, np.ndarray):
            _fillLabelFromArray(labelNode, maskOrSegmentation, referenceVolume)
        else:
            _fillLabelFromSegmentation(labelNode, maskOrSegmentation, referenceVolume, segmentIds)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetUseCompression(True)
        return _writeWithStorageNode(storage, labelNode, path)
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
    """Write a volume node (e.g. a generated sample image) to .nrrd / .nii.gz / .mha, atomically.

    Uses Slicer's volume storage node, so the file opens in Slicer with the
    node's geometry. Returns the absolute path; InputError when it cannot be written.
    """
    import slicer

    if lowerExtension(path) not in (".nrrd", ".nii.gz", ".nii", ".mha"):
        raise InputError(f"{path}: write volumes as *.nrrd, *.nii.gz or *.mha.")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(True)
    return _writeWithStorageNode(storage, volumeNode, path)


def _writeWithStorageNode(storage, node, path) -> str:
    """Write ``node`` with a Slicer storage node to a temporary name beside ``path``, then rename; absolute path."""
    with atomicOutput(path) as temporaryPath:
        storage.SetFileName(temporaryPath)
        with quietNativeStderr():
            written = storage.WriteData(node)
        if not written:
            raise InputError(f"writing {os.path.basename(path)} failed: check the folder is writable and has space.")
    return os.path.abspath(path)
