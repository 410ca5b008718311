"""A box drawn in a slice view is a 2D box on that slice until the user gives it a depth. No Qt.

Slicer draws an ROI with two clicks in one view and then pads it along the
view normal to its smallest in-plane size ("give the ROI some thickness along
the 3rd axis", vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints, Slicer
5.10). Taken as a 3D box, that padding would limit propagation to a few slices
around the drawn one, a limit the user never set. So once a box is drawn by
hand, its depth along the view normal is set to one slice of the volume: it is
a 2D box on the drawn slice (markupprompts: thinner than THIN_ROI_SLICES), and
other views show it as a thin slab on that slice. It becomes a 3D range only
when the user drags its handles in a perpendicular view.
"""

import numpy as np

from ..core.errors import MedSAMError
from ..mrml.markupprompts import roiCornersRas
from ..mrml.volumegeometry import axisFromSliceNode, ijkToWorld, sliceNormalRas

# Corner indices of roiCornersRas (signs ordered x, y, z from -1 to +1): the edge from corner 0 along each ROI axis.
_AXIS_CORNERS = (4, 2, 1)


def sliceThicknessMm(volumeNode, sliceNode) -> float:
    """Distance in world mm between two neighbouring slices of ``volumeNode`` in the plane of ``sliceNode``.

    Raises GeometryError when the view is oblique to the volume.
    """
    axis = axisFromSliceNode(volumeNode, sliceNode)
    normal = sliceNormalRas(sliceNode)
    column = ijkToWorld(volumeNode)[:3, axis]
    return float(abs(np.dot(column, normal / np.linalg.norm(normal))))


def flattenDrawnBox(roiNode, volumeNode, sliceNode) -> bool:
    """Give a box just drawn in ``sliceNode``'s view a depth of one slice along the view normal (centre kept).

    Returns False, changing nothing, when the view is unknown or oblique to the
    volume (the box is then used as Slicer made it).
    """
    if roiNode is None or volumeNode is None or sliceNode is None:
        return False
    try:
        thickness = sliceThicknessMm(volumeNode, sliceNode)
    except MedSAMError:
        return False
    corners = roiCornersRas(roiNode)
    edges = np.array([corners[c] - corners[0] for c in _AXIS_CORNERS])  # world vector of each ROI axis
    lengths = np.linalg.norm(edges, axis=1)
    normal = sliceNormalRas(sliceNode)
    alignment = np.abs(edges @ (normal / np.linalg.norm(normal))) / np.maximum(lengths, 1e-12)
    roiAxis = int(np.argmax(alignment))
    size = list(roiNode.GetSize())
    scale = lengths[roiAxis] / size[roiAxis] if size[roiAxis] > 0 else 1.0  # node mm -> world mm (parent transform)
    size[roiAxis] = thickness / scale
    roiNode.SetSize(size)
    return True
