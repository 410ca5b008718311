"""Read a DICOM series folder with SimpleITK (GDCM) and check it before its voxels are trusted.

ITK's series reader reads a series with a missing or unreadable file without
it, its slice spacing averaged over the gap, and places slice k at
first + k * spacing * normal even when the scanner's slices step along another
direction (CT gantry tilt), shifting every slice but the first. Here a folder
must hold one series whose files are all read, evenly spaced, on one line; a
tilted series is resampled onto a regular grid, as Slicer's DICOM module does
when it hardens its acquisition transform. numpy and SimpleITK only; no `slicer`.
"""

import os
from typing import Optional, Sequence

import numpy as np

from ..core.errors import InputError
from ..core.nativeoutput import quietNativeStderr

DICOM_MAGIC_OFFSET = 128
#: Slice gaps of a DICOM series may differ by this fraction of the median gap (scanner rounding), plus 0.01 mm.
SLICE_GAP_TOLERANCE = 0.01
#: A slice step further than this (degrees) off the slice normal is a tilted acquisition (CT gantry tilt).
TILT_TOLERANCE_DEGREES = 0.05


def readDicomSeries(folder, warn):
    """The single DICOM series in ``folder`` as a SimpleITK image (LPS), checked; a tilted one resampled, said through ``warn``.

    InputError for a folder with no or several series, an unreadable file in
    the series, unevenly spaced slices or slices not on one line.
    """
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
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, seriesIds[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with quietNativeStderr():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(f"the DICOM series in {folder} could not be read (incomplete or corrupt files?): check the folder.") from None
    geometry = _sliceGeometry(reader, len(files))
    if geometry is None:
        checkDicomSeries(folder, files, None)
    else:
        orientation, positions = geometry
        normal = np.cross(orientation[:3], orientation[3:])
        checkDicomSeries(folder, files, [float(p @ normal) for p in positions])
        try:
            step = tiltedSliceStep(orientation, positions)
        except InputError as error:
            raise InputError(f"{folder}: {error}") from None
        if step is not None:
            image = _resampleTiltedSeries(image, positions[0], step, warn)
    return image


def _sliceGeometry(reader, count):
    """(Image Orientation (Patient), [each file's Image Position (Patient)]) as arrays, or None when a file does not say."""
    def values(index, tag):
        if not reader.HasMetaDataKey(index, tag):
            return None
        try:
            return np.array([float(v) for v in reader.GetMetaData(index, tag).split("\\")])
        except ValueError:
            return None

    orientation = values(0, "0020|0037")
    positions = [values(index, "0020|0032") for index in range(count)]
    if orientation is None or len(orientation) != 6 or any(p is None or len(p) != 3 for p in positions):
        return None
    return orientation, positions


def _resampleTiltedSeries(image, firstPosition, step, warn):
    """A tilted series (gantry tilt) resampled onto the rectilinear grid of its slice planes; says so through ``warn``.

    The sheared grid the scanner acquired (slice k at firstPosition + k *
    step) is resampled, linearly, onto a grid with the same in-plane
    directions and spacing, slices along the normal spaced as the planes are,
    covering every acquired voxel; outside the acquired volume the lowest
    intensity. As Slicer's DICOM module does with its "harden transform"
    acquisition geometry regularization (DICOMScalarVolumePlugin, Slicer 5.10).
    """
    import SimpleITK as sitk

    frame = np.array(image.GetDirection(), float).reshape(3, 3)  # columns: row, column, slice normal (LPS)
    sx, sy, _ = image.GetSpacing()
    length = float(np.linalg.norm(step))
    sheared = sitk.Image(image)
    acquired = frame.copy()
    acquired[:, 2] = step / length
    sheared.SetDirection(tuple(acquired.ravel()))
    sheared.SetSpacing((sx, sy, length))
    sheared.SetOrigin(tuple(float(v) for v in firstPosition))
    size = np.array(image.GetSize())
    corners = np.array([sheared.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.array(bits) * (size - 1)])
                        for bits in np.ndindex(2, 2, 2)])
    inFrame = (corners - np.asarray(firstPosition)) @ frame
    spacing = np.array([sx, sy, abs(float(step @ frame[:, 2]))])
    low, high = inFrame.min(axis=0), inFrame.max(axis=0)
    outputSize = [int(n) for n in np.floor((high - low) / spacing + 1e-6) + 1]
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputDirection(tuple(frame.ravel()))
    resampler.SetOutputOrigin(tuple(float(v) for v in np.asarray(firstPosition) + frame @ low))
    resampler.SetOutputSpacing(tuple(float(v) for v in spacing))
    resampler.SetSize(outputSize)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(float(sitk.GetArrayViewFromImage(image).min()))
    angle = np.degrees(np.arccos(min(abs(float(step @ frame[:, 2])) / length, 1.0)))
    warn(f"the DICOM series was acquired with a gantry tilt of {angle:.1f} degrees: it was resampled onto a regular "
         f"grid of {outputSize[0]}x{outputSize[1]}x{outputSize[2]} voxels (as Slicer's DICOM module does when it "
         "hardens the acquisition transform); the segmentation is on that grid.")
    return resampler.Execute(sheared)


def checkDicomSeries(folder, seriesFiles: Sequence[str], positionsAlongNormal: Optional[Sequence[float]]) -> None:
    """InputError when a DICOM series folder has files that could not be read into the series, or uneven slices.

    seriesFiles: the files ITK's series reader uses, in slice order.
    positionsAlongNormal: each file's Image Position (Patient) projected on the
    slice normal (mm), or None when the files do not say (no check then).
    """
    used = {os.path.abspath(f) for f in seriesFiles}
    unreadable = [name for name in sorted(os.listdir(folder))
                  if os.path.abspath(os.path.join(folder, name)) not in used and _looksLikeDicom(os.path.join(folder, name))]
    if unreadable:
        shown = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        raise InputError(f"{folder}: {len(unreadable)} DICOM file(s) could not be read as part of its series: {shown} "
                         "(truncated or corrupt?). Read without them the volume would have a gap. Copy the series "
                         "again, or move files that do not belong to it out of the folder.")
    if positionsAlongNormal is None or len(seriesFiles) < 3:
        return
    gaps = np.diff(np.asarray(positionsAlongNormal, float))
    typical = float(np.median(np.abs(gaps)))
    worst = int(np.argmax(np.abs(np.abs(gaps) - typical)))
    if typical <= 0 or abs(abs(gaps[worst]) - typical) > SLICE_GAP_TOLERANCE * typical + 0.01:
        first, second = (os.path.basename(seriesFiles[worst + n]) for n in (0, 1))
        raise InputError(f"{folder}: the slices are unevenly spaced: {abs(gaps[worst]):.3g} mm between {first} and "
                         f"{second}, {typical:.3g} mm between the others (a missing or duplicated slice?). Read as one "
                         "volume its geometry would be wrong: copy the complete series again, or resample it to even "
                         "spacing first.")


def tiltedSliceStep(orientation: Sequence[float], positions: Sequence[Sequence[float]]) -> Optional[np.ndarray]:
    """The step (mm, DICOM's LPS frame) from one slice to the next when the series is tilted; None when it is not.

    orientation: Image Orientation (Patient), six values (row and column
    directions); positions: each slice's Image Position (Patient), in slice
    order. Tilted: the line through the positions leaves the slice normal by
    more than TILT_TOLERANCE_DEGREES (a CT acquired with gantry tilt). ITK
    places slice k at first + k * |step| * normal, shifting every slice after
    the first sideways and stretching the spacing; the caller resamples
    instead. InputError when the positions do not lie on one line (a tilt that
    changes within the series).
    """
    orientation = np.asarray(orientation, float)
    positions = np.asarray(positions, float)
    if len(positions) < 2:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    length = float(np.linalg.norm(step))
    if length == 0:
        return None
    expected = positions[0] + np.outer(np.arange(len(positions)), step)
    if float(np.abs(positions - expected).max()) > SLICE_GAP_TOLERANCE * length + 0.01:
        raise InputError("the slices of the DICOM series do not lie on one line (a gantry tilt that changes within "
                         "the series?): its geometry cannot be read as one volume. Load it with Slicer's DICOM "
                         "module, which regularizes such series, or split the series.")
    angle = np.degrees(np.arccos(min(abs(float(step @ normal)) / (length * np.linalg.norm(normal)), 1.0)))
    return step if angle > TILT_TOLERANCE_DEGREES else None


def _looksLikeDicom(path) -> bool:
    """A regular file with the DICOM preamble marker ('DICM' at byte 128); DICOMDIR index files excepted."""
    if os.path.basename(path).upper() == "DICOMDIR" or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as stream:
            stream.seek(DICOM_MAGIC_OFFSET)
            return stream.read(4) == b"DICM"
    except OSError:
        return False
