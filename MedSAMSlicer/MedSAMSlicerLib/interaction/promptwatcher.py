"""Which markup events change the prompts: a snapshot of the *defined* prompts, compared at every event. No Qt.

In place mode Slicer moves a preview control point with the mouse and fires
PointModifiedEvent at every move (vtkSlicerMarkupsWidget::UpdatePreviewPoint,
Slicer 5.10); a box is drawn with two clicks, each placed on button release,
with PointPositionDefinedEvent per corner. None of that is a new prompt until
the box is whole or the point is placed. So every markup event recomputes a
snapshot of what is defined (a complete box's corners, placed points and their
labels) and ``changed`` fires only when it differs: hovering never starts work.
"""

import numpy as np
import vtk

from ..core.progress import Signal
from ..mrml.markupprompts import isBoxComplete, roiCornersRas

#: Markup events after which the snapshot is compared (ModifiedEvent: an ROI resized by its handles).
WATCHED_EVENTS = ("PointAddedEvent", "PointRemovedEvent", "PointModifiedEvent", "PointPositionDefinedEvent",
                  "PointPositionUndefinedEvent", "ModifiedEvent", "TransformModifiedEvent")
#: Positions are compared to this many decimals of a millimetre.
DECIMALS = 4


def _pointsSnapshot(node):
    if node is None:
        return ()
    points = []
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        points.append((tuple(np.round(position, DECIMALS)), (node.GetNthControlPointDescription(index) or "").strip().lower()))
    return tuple(points)


def definedPromptSnapshot(roiNode=None, positiveNode=None, negativeNode=None) -> tuple:
    """A comparable value of the prompts that are defined: a complete box's corners (world RAS) and the placed points.

    Equal snapshots mean the same prompts (a hover, a preview point or a
    half-drawn box change nothing).
    """
    box = tuple(map(tuple, np.round(roiCornersRas(roiNode), DECIMALS))) if isBoxComplete(roiNode) else None
    return box, _pointsSnapshot(positiveNode), _pointsSnapshot(negativeNode)


def sliceNodeUnderCursor(scene):
    """The vtkMRMLSliceNode the mouse is over, from Slicer's crosshair node (set by vtkMRMLSliceViewInteractorStyle
    on every mouse move), or None (no crosshair node, or the mouse is in a 3D view or outside the views)."""
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:
        return None
    return crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0])


class PromptWatcher:
    """Observe the prompt markups and say when the defined prompts change.

    Signals: changed() when the snapshot differs from the last one;
    placed(sliceNode or None) when a control point is placed by a click (the
    view the mouse is in); boxCompleted(roiNode, sliceNode or None) when the second
    click completes a box.
    """

    def __init__(self, scene):
        self.scene = scene
        self.changed = Signal()
        self.placed = Signal()
        self.boxCompleted = Signal()
        self.nodes = (None, None, None)
        self.snapshot = definedPromptSnapshot()
        self._observers = []
        self._boxDrawing = False

    def watch(self, roiNode=None, positiveNode=None, negativeNode=None) -> None:
        """Observe these nodes (any may be None) instead of the previous ones; emits changed() if that changes the prompts."""
        nodes = (roiNode, positiveNode, negativeNode)
        if nodes == self.nodes:
            return
        self.close()
        self.nodes = nodes
        for node in nodes:
            if node is None:
                continue
            for name in WATCHED_EVENTS:
                event = getattr(node, name, None) or getattr(vtk.vtkCommand, name)
                # VTK hands a custom event to Python as a number or "UserEvent": one callback per kind of event.
                callback = self._onPlaced if name == "PointPositionDefinedEvent" else self._onEvent
                self._observers.append((node, node.AddObserver(event, callback)))
        self._boxDrawing = roiNode is not None and _isBoxBeingDrawn(roiNode)
        self.check()

    def check(self) -> bool:
        """Recompute the snapshot; emit changed() and return True when it differs from the last one."""
        snapshot = definedPromptSnapshot(*self.nodes)
        if snapshot == self.snapshot:
            return False
        self.snapshot = snapshot
        self.changed.emit()
        return True

    def close(self) -> None:
        """Stop observing."""
        for node, tag in self._observers:
            node.RemoveObserver(tag)
        self._observers = []
        self.nodes = (None, None, None)

    def _onPlaced(self, caller, event) -> None:
        # Placed by a click: Slicer is in place mode (vtkSlicerMarkupsWidget::PlacePoint defines the point before
        # it ends place mode). A point defined in code (an ROI sized by a script) says nothing about a view.
        interaction = self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
            self.placed.emit(sliceNodeUnderCursor(self.scene))
        self._onEvent(caller, event)

    def _onEvent(self, caller, event) -> None:
        roiNode = self.nodes[0]
        if caller is roiNode:
            wasDrawing, self._boxDrawing = self._boxDrawing, _isBoxBeingDrawn(roiNode)
            # Drawn by hand: a first corner was placed, and now the box is whole (not a box sized in code).
            if wasDrawing and isBoxComplete(roiNode):
                self.boxCompleted.emit(roiNode, sliceNodeUnderCursor(self.scene))
        self.check()


def _isBoxBeingDrawn(roiNode) -> bool:
    """True between the first and the second click of a box: a corner is placed, the box is not whole yet."""
    return roiNode.GetNumberOfDefinedControlPoints() > 0 and not isBoxComplete(roiNode)
