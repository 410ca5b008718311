"""The controller's actions on the slice a view shows: Start here / End here, Accept slice, Fill between accepted.

A mixin of InteractionController (controller.py), kept apart so each file
holds one concern. Each takes the slice shown in the view the prompts were
placed in, else the view under the mouse (``_shownSlice``). Accepted slices
live in the Logic's session (workflow/logicclicks.py): Apply, Clear and another
volume forget them. No Qt.
"""

from ..core.errors import MedSAMError
from ..mrml.volumegeometry import axisFromSliceNode, sliceIndexFromSliceNode
from .promptwatcher import sliceNodeUnderCursor


class SliceActionsMixin:
    """Start/End here, Accept slice and Fill for InteractionController (uses its parameters, logic, status...)."""

    def setRangeEnd(self, attribute: str) -> None:
        """Start here / End here: a propagation range end ("rangeStart" or "rangeEnd") at the slice shown in the
        view the prompts were placed in (else the view under the mouse)."""
        shown = self._shownSlice("Start/End take that view's slice.")
        if shown is not None:
            self.parameters.rangeFromBox = False
            setattr(self.parameters, attribute, shown[1])

    def acceptSlice(self) -> None:
        """Accept slice: the slice shown in the view the prompts were placed in (else the view under the mouse)
        keeps the mask it shows: later corrections never replace it, and it is a key of fillBetweenAccepted. The
        status line says which slice and the accepted slices along that view's axis (all forgotten by Apply, Clear
        and another volume, as the Logic's session is)."""
        shown = self._shownSlice("Accept slice takes that view's slice.")
        if shown is None or not self.syncLogicInputs():
            return
        sliceNode, index = shown
        try:
            self.logic.setSliceNode(sliceNode)  # the Logic's axis: that view's
            accepted = self.logic.acceptSlices([index])
        except MedSAMError as error:
            self.status.emit(str(error))
            return
        axis = "IJK"[self.logic.axis]
        more = "Fill segments the slices between them." if len(accepted) > 1 else "Accept another slice to fill between."
        self.status.emit(f"Slice {index} ({axis}) accepted; accepted slices: {', '.join(map(str, accepted))}. {more}")
        self.stateChanged.emit()

    def fillBetweenAccepted(self) -> None:
        """Fill between accepted slices, in the background: every slice between the accepted slices of the Logic's
        axis is segmented from them (logic.prepareFill; the propagation settings' stopping rules); the result is
        the preview, nothing is written until Apply. Fewer than two accepted slices, or one without a mask: the
        library's message in the status line, no job."""
        settings = self._propagationSettings()
        self._withEngine(lambda: self._runTask("Filling between accepted slices", lambda: self.logic.prepareFill(settings)))

    def _shownSlice(self, why: str):
        """(slice node, slice index along its axis) of the view the prompts were placed in, else of the view under
        the mouse; None, with the reason (ending with ``why``) in the status line, when there is none."""
        volume = self.parameters.inputVolume
        sliceNode = self.lastSliceNode or sliceNodeUnderCursor(self.scene)
        if volume is None or sliceNode is None:
            self.status.emit(f"Place a prompt in a slice view first: {why}")
            return None
        try:
            return sliceNode, sliceIndexFromSliceNode(volume, axisFromSliceNode(volume, sliceNode), sliceNode)
        except MedSAMError as error:
            self.status.emit(str(error))
            return None
