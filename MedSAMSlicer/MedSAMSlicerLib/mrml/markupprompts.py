"""MRML bridge for prompts: ROI and point markups -> Prompts in slice image pixels of one slice.

Every markup goes world RAS -> the volume's IJK (parent transforms of both the
markup and the volume honoured) -> slice pixels of a SliceSource along one axis.

Point labels: points of ``positiveNode`` are positive (label 1) and points of
``negativeNode`` negative (label 0). A single node may also carry per-point
labels: a control point whose description is "negative" is negative (in either
node, a description "positive" makes it positive). Points still being placed
(position not defined) are skipped, and so is a box still being drawn
(isBoxComplete).

A box comes from a vtkMRMLMarkupsROINode. An ROI thinner than
THIN_ROI_SLICES slices across the slice axis is a 2D box on the slice through
its centre; a thicker one spans the slices whose centres it contains, giving
PromptSet.sliceRange and, as the slice to prompt, the points' slice when
points are given, else the middle slice.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import slicer
import vtk

from ..engines.base import Prompts
from ..core.errors import PromptError
from .volumegeometry import rasToIjk

#: An ROI thinner than this (in slices along the slice axis) is a 2D box on one slice.
THIN_ROI_SLICES = 1.5

#: Points count as on a slice when within this many slices of its centre (plus a small tolerance).
ON_SLICE_TOLERANCE = 0.5 + 1e-3


@dataclass
class PromptSet:
    """Prompts for one slice: sliceIndex along the axis, Prompts in slice image pixels,
    and sliceRange (k0, k1), inclusive, when a 3D ROI spans several slices (else None)."""

    sliceIndex: int
    prompts: Prompts
    sliceRange: Optional[Tuple[int, int]] = None


def roiCornersRas(roiNode) -> np.ndarray:
    """The 8 corners (8, 3) of an ROI markup in world RAS (its own and parent transforms included)."""
    radius = [0.0, 0.0, 0.0]
    roiNode.GetRadiusXYZ(radius)
    radius = np.array(radius, dtype=np.float64)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    cornersObject = np.hstack([signs * radius, np.ones((8, 1))])
    objectToNode = vtk.vtkMatrix4x4()
    objectToNode.DeepCopy(roiNode.GetObjectToNodeMatrix())
    cornersNode = [objectToNode.MultiplyPoint(tuple(c))[:3] for c in cornersObject]
    parent = roiNode.GetParentTransformNode()
    if parent is None:
        return np.array(cornersNode, dtype=np.float64)
    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, toWorld)
    return np.array([toWorld.TransformPoint(c) for c in cornersNode], dtype=np.float64)


def isBoxComplete(roiNode) -> bool:
    """True when ``roiNode`` (a vtkMRMLMarkupsROINode, or None) holds a whole box, not one still being drawn.

    Slicer draws a box with two clicks (NUMBER_OF_BOX_CONTROL_POINTS = 2 in
    vtkMRMLMarkupsROINode.cxx, Slicer 5.10): between them the ROI holds one
    defined corner and a preview corner that follows the mouse, and requires 2
    points. Once both corners are placed, UpdateBoxROIFromControlPoints replaces
    them by one control point at the centre and requires 1; an ROI sized in code
    (SetSize) or loaded from a file is in that state too.
    """
    if roiNode is None:
        return False
    count = roiNode.GetNumberOfControlPoints()
    return (count > 0 and roiNode.GetNumberOfDefinedControlPoints() == count
            and count >= roiNode.GetRequiredNumberOfControlPoints())


def pointsFromMarkups(positiveNode=None, negativeNode=None) -> Tuple[np.ndarray, np.ndarray]:
    """World RAS positions (N, 3) and labels (N,) (1 positive, 0 negative) of the defined control points."""
    points, labels = [], []
    for node, defaultLabel in ((positiveNode, 1), (negativeNode, 0)):
        if node is None:
            continue
        for index in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
                continue
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            description = (node.GetNthControlPointDescription(index) or "").strip().lower()
            label = 0 if description == "negative" else 1 if description == "positive" else defaultLabel
            points.append(position)
            labels.append(label)
    return np.array(points, dtype=np.float64).reshape(-1, 3), np.array(labels, dtype=np.int32)


def _boxFromRoi(volumeNode, source, axis: int, roiNode):
    """(boxXyxy clipped to the image, centre slice, sliceRange or None) of an ROI."""
    cornersIjk = rasToIjk(volumeNode, roiCornersRas(roiNode))
    if not np.all(np.isfinite(cornersIjk)):
        raise PromptError(f"The box '{roiNode.GetName()}' has a position or size that is not a number: draw it again.")
    box, (s0, s1) = source.boxIjkToImage(axis, (cornersIjk.min(axis=0), cornersIjk.max(axis=0)))
    height, width = source.imageShape(axis)
    count = source.sliceCount(axis)
    name = roiNode.GetName()
    x0, y0, x1, y1 = box
    if x1 <= -0.5 or y1 <= -0.5 or x0 >= width - 0.5 or y0 >= height - 0.5 or s1 < -0.5 or s0 > count - 0.5:
        raise PromptError(f"The box '{name}' is entirely outside the volume: place it over the image.")
    clipped = (max(x0, -0.5), max(y0, -0.5), min(x1, width - 0.5), min(y1, height - 0.5))
    if clipped[2] - clipped[0] < 1.0 or clipped[3] - clipped[1] < 1.0:
        raise PromptError(f"The box '{name}' is thinner than a pixel in this view: draw it larger, in the view "
                          "where you segment.")
    if s1 - s0 < THIN_ROI_SLICES:
        centre = int(np.floor((s0 + s1) / 2.0 + 0.5))
        return clipped, min(max(centre, 0), count - 1), None
    k0, k1 = max(int(np.ceil(s0)), 0), min(int(np.floor(s1)), count - 1)
    if k0 > k1:
        raise PromptError(f"The box '{name}' contains no slice centre of the volume: move it onto the volume.")
    return clipped, (k0 + k1) // 2, (k0, k1)


def _pointsOnImage(source, axis: int, pointsIjk: np.ndarray):
    """(continuous slice coordinates (N,), xy clipped to pixel centres (N, 2)); PromptError for points off the image."""
    slices, xy = source.ijkToImage(axis, pointsIjk)
    height, width = source.imageShape(axis)
    count = source.sliceCount(axis)
    outside = ((xy[:, 0] < -0.5) | (xy[:, 0] > width - 0.5) | (xy[:, 1] < -0.5) | (xy[:, 1] > height - 0.5)
               | (slices < -0.5) | (slices > count - 0.5))
    if outside.any():
        raise PromptError(f"{int(outside.sum())} point(s) are outside the volume: move or delete them.")
    xy[:, 0] = np.clip(xy[:, 0], 0, width - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, height - 1)
    return slices, xy


def _chooseSlice(sliceIndex, roiSlice, roiRange, pointSlices) -> int:
    """The slice to prompt on: explicit, else the points' slice within a 3D box, else the box's, else the points'."""
    if sliceIndex is not None:
        return int(sliceIndex)
    pointSlice = None
    if len(pointSlices):
        rounded = np.unique(np.floor(pointSlices + 0.5).astype(int))
        if len(rounded) > 1:
            raise PromptError(f"The points are on different slices ({', '.join(str(k) for k in rounded)}): "
                              "put all points of one prompt on the same slice.")
        pointSlice = int(rounded[0])
    if roiSlice is None:
        return pointSlice
    if roiRange is not None and pointSlice is not None and roiRange[0] <= pointSlice <= roiRange[1]:
        return pointSlice
    return roiSlice


def promptsFromMarkups(volumeNode, source, axis: int, roiNode=None, positiveNode=None, negativeNode=None,
                       sliceIndex: Optional[int] = None) -> PromptSet:
    """Prompts on one slice along ``axis`` of ``source`` (built from ``volumeNode``) from markups.

    roiNode: vtkMRMLMarkupsROINode giving the box (or None); positiveNode /
    negativeNode: vtkMRMLMarkupsFiducialNode with positive / negative points (see
    the module docstring for per-point labels). sliceIndex: the slice to prompt
    on; by default the box's slice, else the points' slice. Boxes partly outside
    the volume are clipped to the image. Raises PromptError when there is no
    prompt, a prompt is entirely outside the volume, the points lie on
    different slices, or a prompt is not on the chosen slice.
    """
    pointsRas, labels = pointsFromMarkups(positiveNode, negativeNode)
    if roiNode is None and len(pointsRas) == 0:
        raise PromptError("No prompt: draw a box (ROI) or place points on the slice to segment.")
    if not np.all(np.isfinite(pointsRas)):  # NaN positions would pass every bounds check (comparisons are False)
        raise PromptError("A point's position is not a number (NaN or infinite): delete the point and place it again.")
    box, roiSlice, roiRange = (None, None, None)
    if roiNode is not None:
        box, roiSlice, roiRange = _boxFromRoi(volumeNode, source, axis, roiNode)
    pointSlices, pointsXy = np.zeros(0), np.zeros((0, 2))
    if len(pointsRas):
        pointSlices, pointsXy = _pointsOnImage(source, axis, rasToIjk(volumeNode, pointsRas))
    chosen = _chooseSlice(sliceIndex, roiSlice, roiRange, pointSlices)
    count = source.sliceCount(axis)
    if not 0 <= chosen < count:
        raise PromptError(f"Slice {chosen} is outside the volume along {'IJK'[axis]} (0..{count - 1}).")
    if roiNode is not None and chosen != roiSlice and not (roiRange and roiRange[0] <= chosen <= roiRange[1]):
        where = f"slices {roiRange[0]}..{roiRange[1]}" if roiRange else f"slice {roiSlice}"
        raise PromptError(f"The box is on {where}, not on slice {chosen}: go to {where} or redraw the box here.")
    offSlice = np.abs(pointSlices - chosen) > ON_SLICE_TOLERANCE
    if offSlice.any():
        others = sorted(set(np.floor(pointSlices[offSlice] + 0.5).astype(int).tolist()))
        raise PromptError(f"{int(offSlice.sum())} point(s) are on slice(s) {others}, not on slice {chosen} of the "
                          "box: put the points on the box's slice or delete them.")
    prompts = Prompts(boxXyxy=box, pointsXy=pointsXy, pointLabels=labels)
    return PromptSet(sliceIndex=int(chosen), prompts=prompts, sliceRange=roiRange)
