"""The prompt markups and Slicer's place mode for them: which prompt the user is placing now. No Qt.

Slicer's markups widgets do the placing (vtkSlicerMarkupsWidget::PlacePoint,
Slicer 5.10): a box takes two clicks and place mode ends by itself after the
second one when persistence is off; points stay in place mode with
persistence on. The user leaves place mode with a right-click in a view
(WidgetEventStopPlace), the mouse-mode toolbar, or the module's Esc shortcut.
So the state of the Box / + Point / - Point buttons is read from the
interaction and selection nodes, which every one of these paths changes, and
``changed`` fires on their events.
"""

from typing import Optional

from ..core.progress import Signal

#: Prompt kinds, the markups class, base name and colour of the node holding each.
PROMPT_NODES = {
    "box": ("vtkMRMLMarkupsROINode", "MedSAM box", (0.3, 0.75, 1.0)),  # unlike the yellow preview (segmentwriter)
    "positive": ("vtkMRMLMarkupsFiducialNode", "MedSAM positive", (0.2, 0.9, 0.35)),
    "negative": ("vtkMRMLMarkupsFiducialNode", "MedSAM negative", (0.95, 0.25, 0.25)),
}
INTERACTION_NODE_ID = "vtkMRMLInteractionNodeSingleton"
SELECTION_NODE_ID = "vtkMRMLSelectionNodeSingleton"


def createPromptNode(scene, kind: str):
    """A new markups node for prompts of ``kind`` ("box", "positive", "negative"), with its own colour and name."""
    className, baseName, color = PROMPT_NODES[kind]
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(baseName))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetSelectedColor(*color)
    display.SetColor(*color)
    display.SetPointLabelsVisibility(False)  # names over the image hide what is being segmented
    display.SetPropertiesLabelVisibility(False)
    return node


class PlaceMode:
    """Start and stop placing prompts; ``kind()`` says which prompt is being placed, read from Slicer's nodes.

    Signal: changed() when the interaction mode or the active place node changes
    (a click that ends a box, a right-click, the toolbar, start/stop here).
    """

    def __init__(self, scene):
        self.scene = scene
        self.changed = Signal()
        self.nodes = {}
        self._observers = []
        for nodeId, eventName in ((INTERACTION_NODE_ID, "InteractionModeChangedEvent"),
                                  (SELECTION_NODE_ID, "ActivePlaceNodeIDChangedEvent")):
            node = scene.GetNodeByID(nodeId)
            if node is not None:
                self._observers.append((node, node.AddObserver(getattr(node, eventName), self._onChanged)))

    @property
    def interactionNode(self):
        """Slicer's interaction node (mouse mode), or None in a scene without one."""
        return self.scene.GetNodeByID(INTERACTION_NODE_ID)

    @property
    def selectionNode(self):
        """Slicer's selection node (the active place node), or None."""
        return self.scene.GetNodeByID(SELECTION_NODE_ID)

    def setNodes(self, roiNode=None, positiveNode=None, negativeNode=None) -> None:
        """The markups nodes that hold each kind of prompt (any may be None)."""
        self.nodes = {"box": roiNode, "positive": positiveNode, "negative": negativeNode}

    def kind(self) -> Optional[str]:
        """The prompt kind being placed now ("box", "positive", "negative"), or None when not placing ours."""
        interaction, selection = self.interactionNode, self.selectionNode
        if interaction is None or selection is None or interaction.GetCurrentInteractionMode() != interaction.Place:
            return None
        activeId = selection.GetActivePlaceNodeID()
        for kind, node in self.nodes.items():
            if node is not None and node.GetID() == activeId:
                return kind
        return None

    def start(self, kind: str, node) -> None:
        """Place prompts of ``kind`` into ``node`` in any slice view: a box with two clicks (then place mode ends by
        itself; a new box replaces the old one), points until stopped."""
        if kind == "box":
            node.RemoveAllControlPoints()  # the ROI takes 2 points again (UpdateBoxROIFromControlPoints)
        selection, interaction = self.selectionNode, self.interactionNode
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction.SetPlaceModePersistence(kind != "box")
        interaction.SetCurrentInteractionMode(interaction.Place)

    def stop(self) -> None:
        """Leave place mode (what a right-click in a view does); nothing when not placing."""
        interaction = self.interactionNode
        if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SwitchToViewTransformMode()

    def close(self) -> None:
        """Stop observing Slicer's nodes."""
        for node, tag in self._observers:
            node.RemoveObserver(tag)
        self._observers = []

    def _onChanged(self, caller, event) -> None:
        self.changed.emit()
