"""MedSAMSlicer: the thin Qt layer (metadata, parameter node, a widget binding Resources/UI/MedSAMSlicer.ui to
it and calling the Qt-free MedSAMLogic, the self-test entry point). Everything testable without the Slicer
application lives in MedSAMSlicerLib; torch is imported only by the engines, at first use."""

import importlib.util
import logging
import os
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from MedSAMSlicerLib.core.backgroundjob import BackgroundJob
from MedSAMSlicerLib.core.errors import CancelledError, MedSAMError
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
from MedSAMSlicerLib.models import dependencies, download, registry
from MedSAMSlicerLib.models import enginefactory
from MedSAMSlicerLib.models.modelmanager import modelReadiness
from MedSAMSlicerLib.mrml import volumegeometry
from MedSAMSlicerLib.workflow.logic import DEBOUNCE_MS, MedSAMLogic
from MedSAMSlicerLib.workflow.propagation import PropagationSettings

INTENSITY_CHOICES = ("auto", "ct:soft tissue", "ct:abdomen", "ct:lung", "ct:bone", "ct:brain", "percentile", "display")
APPLY_MODES = ("replaceSlices", "add", "remove", "set")
DEVICES = ("auto", "cuda", "mps", "cpu")
SETTINGS_PREFIX = "MedSAMSlicer/"
DEFAULT_CACHE_BUDGET_MB = 1024
POLL_INTERVAL_MS = 50
PROMPT_EVENTS = ("PointAddedEvent", "PointModifiedEvent", "PointRemovedEvent", "ModifiedEvent")  # ModifiedEvent: ROI resized
PROMPT_COLORS = {"roiNode": (1.0, 0.85, 0.15), "positiveNode": (0.2, 0.9, 0.35), "negativeNode": (0.95, 0.25, 0.25)}
SHORTCUTS = {
    "1": "boxButton", "2": "positiveButton", "3": "negativeButton",
    "A": "applyButton", "U": "undoButton", "C": "clearButton", "P": "propagateButton",
}
"""Single keys, active only while the module is shown; each clicks its button (docs/user-guide.md)."""


class MedSAMSlicer(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSAMSlicer developers"]
        self.parent.helpText = (
            "Promptable segmentation with MedSAM and SAM. Choose a volume and a segment, draw a box (1) or click "
            "positive (2) / negative (3) points in the Red, Yellow or Green view, check the preview, Apply (A). "
            "Propagate (P) carries the mask through the volume. GrowCut works without any download; MedSAM and "
            "SAM install their Python packages and download their weights on first use. "
            '<a href="https://github.com/MedSAMSlicer/MedSAMSlicer/blob/main/docs/user-guide.md">User guide</a>.'
        )
        self.parent.acknowledgementText = (
            "MedSAM: Ma J. et al., Segment anything in medical images, Nature Communications 15, 654 (2024). "
            "Segment Anything: Kirillov A. et al., ICCV 2023. Built on 3D Slicer and its PyTorch extension."
        )


@parameterNodeWrapper
class MedSAMSlicerParameterNode:
    """Scene state of the module (saved with the scene); device and cache budget are application settings."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    model: str = ""
    checkpointPath: str = ""
    intensity: Annotated[str, Choice(INTENSITY_CHOICES)] = "auto"
    livePreview: bool = True
    applyMode: Annotated[str, Choice(APPLY_MODES)] = "replaceSlices"
    rangeFromBox: bool = True
    rangeStart: Annotated[int, WithinRange(-1, 100000)] = -1
    rangeEnd: Annotated[int, WithinRange(-1, 100000)] = -1
    marginMm: Annotated[float, WithinRange(0.0, 50.0)] = PropagationSettings.marginMm
    minScore: Annotated[float, WithinRange(0.0, 1.0)] = PropagationSettings.minScore
    minIou: Annotated[float, WithinRange(0.0, 1.0)] = PropagationSettings.minIouWithPrevious
    maxAreaRatio: Annotated[float, WithinRange(1.0, 10.0)] = PropagationSettings.maxAreaRatio
    roiNode: vtkMRMLMarkupsROINode
    positiveNode: vtkMRMLMarkupsFiducialNode
    negativeNode: vtkMRMLMarkupsFiducialNode


class MedSAMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and calls the Logic.

    Encoding, propagation, weight loading and downloads run in a BackgroundJob polled by a QTimer;
    MRML is read before (logic.prepare...) and written after (logic.showResult)
    on the main thread.
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self._job = self._jobFinish = self._lastSliceNode = self._engineKey = None
        self._shortcuts, self._observedPromptNodes = [], []
        self._previewDirty = self._dependenciesDeclined = self._updatingGui = False

    def setup(self):
        """Load the .ui, create the Logic, connect the widgets, restore the application settings."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSAMSlicerLogic()
        self.logic.status.connect(self._showStatus)
        # The widget refreshes the preview itself, in the background, so that encoding a new
        # slice never blocks the application (the Logic's own refresh is synchronous).
        self.logic.autoUpdate = False
        self._previewTimer = qt.QTimer()
        self._previewTimer.singleShot = True
        self._previewTimer.interval = DEBOUNCE_MS
        self._previewTimer.connect("timeout()", self._refreshPreview)
        self._pollTimer = qt.QTimer()
        self._pollTimer.interval = POLL_INTERVAL_MS
        self._pollTimer.connect("timeout()", self._pollJob)

        for spec in registry.loadRegistry().values():
            self.ui.modelComboBox.addItem(spec.displayName, spec.modelId)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, spec.description, qt.Qt.ToolTipRole)
        self.ui.deviceComboBox.addItems(DEVICES)
        self._restoreSettings()

        # Widgets the parameter node wrapper cannot bind (no connector for them), synced by hand.
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self._setParameter("segmentation", node))
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", lambda segmentId: self._setParameter("segmentId", segmentId or ""))
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", lambda path: self._setParameter("checkpointPath", path))
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", lambda device: qt.QSettings().setValue(SETTINGS_PREFIX + "device", device))
        self.ui.modelFolderButton.connect("directoryChanged(QString)", self.onModelFolderChanged)
        self.ui.cacheBudgetSpinBox.connect("valueChanged(int)", self.onCacheBudgetChanged)
        for name, slot in [
            ("boxButton", lambda: self._startPlacing("roiNode", self.ui.boxButton)),
            ("positiveButton", lambda: self._startPlacing("positiveNode", self.ui.positiveButton)),
            ("negativeButton", lambda: self._startPlacing("negativeNode", self.ui.negativeButton)),
            ("segmentSliceButton", self.onSegmentSlice), ("clearButton", self.onClear), ("applyButton", self.onApply),
            ("undoButton", self.onUndo), ("startHereButton", lambda: self._setRangeEnd("rangeStart")),
            ("endHereButton", lambda: self._setRangeEnd("rangeEnd")),
            ("propagateButton", self.onPropagate), ("cancelButton", self.onCancel), ("downloadButton", self.onDownload),
            ("cancelDownloadButton", self.onCancel), ("openModelFolderButton", self.onOpenModelFolder),
            ("clearModelFolderButton", self.onClearModelFolder), ("clearEmbeddingsButton", self.onClearEmbeddings),
            ("installDependenciesButton", self.onInstallDependencies),
        ]:
            getattr(self.ui, name).connect("clicked()", slot)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self._updateDependencyStatus()

    def cleanup(self):
        """The application closes: stop the worker, observers and shortcuts; release the Logic."""
        self.onCancel()
        self.removeObservers()
        self._removeShortcuts()
        self.logic.cleanup()

    def enter(self):
        """Module shown: bind the parameter node, install the keyboard shortcuts."""
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self):
        """Module hidden: unbind the GUI, leave place mode, remove the single-key shortcuts."""
        self._removeShortcuts()
        self._stopPlacing()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        """Forget every node before the scene closes."""
        self.onCancel()
        self.setParameterNode(None)
        self._observePromptNodes([])
        self.logic.clear()

    def onSceneEndClose(self, caller, event):
        """Start afresh on the new, empty scene."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Bind the module's parameter node; pick the first volume and the default model if none is set."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.model:
            self._parameterNode.model = enginefactory.defaultModelName()  # MedSAM once its weights are here

    def setParameterNode(self, parameterNode: Optional[MedSAMSlicerParameterNode]):
        """Connect the GUI to ``parameterNode`` (disconnect when None)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        """Show what the GUI connector does not bind (segment, model, file) and hand the inputs to the Logic."""
        node = self._parameterNode
        if node is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            self.ui.segmentSelector.setCurrentNode(node.segmentation)
            if node.segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(node.segmentId)
            self.ui.modelComboBox.setCurrentIndex(max(self.ui.modelComboBox.findData(node.model), 0))
            self.ui.checkpointPathLineEdit.currentPath = node.checkpointPath
            self._observePromptNodes([node.roiNode, node.positiveNode, node.negativeNode])
            self._syncLogicInputs()
        finally:
            self._updatingGui = False
        self._updateModelInfo()
        self._updateButtons()

    def _syncLogicInputs(self) -> bool:
        """Give the Logic the volume, intensity policy, segment and prompt nodes; False (and why) if not possible."""
        node = self._parameterNode
        if node is None or node.inputVolume is None:
            return False
        try:
            policy = self._intensityPolicy()
            if self.logic.volumeNode is not node.inputVolume or self.logic.policy != policy:
                self.logic.setVolume(node.inputVolume, policy)
            if node.segmentation is not None and node.segmentId:
                self.logic.setSegmentation(node.segmentation, node.segmentId)
            self.logic.setSegmentEditorNode(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentEditorNode"))
            self.logic.setPromptNodes(node.roiNode, node.positiveNode, node.negativeNode)
            return True
        except MedSAMError as error:
            self._showStatus(str(error))
            return False

    def _intensityPolicy(self) -> IntensityPolicy:
        """The GUI's choice; "display" takes the viewer's window/level of the input volume."""
        choice = self._parameterNode.intensity
        display = self._parameterNode.inputVolume.GetDisplayNode()
        if choice == "display" and display is not None:
            return IntensityPolicy.window(display.GetWindowLevelMin(), display.GetWindowLevelMax())
        return IntensityPolicy.parse("auto" if choice == "display" else choice)

    def _setParameter(self, name: str, value):
        """A hand-synced widget changed: store its value in the parameter node (not while the GUI is being updated)."""
        if self._parameterNode and not self._updatingGui:
            setattr(self._parameterNode, name, value)

    def _updateButtons(self):
        """Enable what can be done now."""
        busy = self._job is not None
        hasVolume = self._parameterNode is not None and self._parameterNode.inputVolume is not None
        for name in ("boxButton", "positiveButton", "negativeButton", "segmentSliceButton", "clearButton",
                     "applyButton", "undoButton", "propagateButton", "startHereButton", "endHereButton"):
            getattr(self.ui, name).enabled = hasVolume and not busy
        self.ui.cancelButton.enabled = self.ui.cancelDownloadButton.enabled = busy
        self.ui.downloadButton.enabled = self.ui.modelComboBox.enabled = not busy
        self.ui.checkpointPathLineEdit.enabled = self._currentModel() == "custom"

    def _promptNode(self, attribute: str):
        """The markups node holding one kind of prompt, created with its own colour on first use."""
        node = getattr(self._parameterNode, attribute)
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            className = "vtkMRMLMarkupsROINode" if attribute == "roiNode" else "vtkMRMLMarkupsFiducialNode"
            baseName = {"roiNode": "MedSAM box", "positiveNode": "MedSAM positive", "negativeNode": "MedSAM negative"}[attribute]
            node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(baseName))
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetSelectedColor(*PROMPT_COLORS[attribute])
            display.SetColor(*PROMPT_COLORS[attribute])
            if attribute != "roiNode":
                display.SetPointLabelsVisibility(False)
            setattr(self._parameterNode, attribute, node)  # onParameterNodeModified observes it
        return node

    def _observePromptNodes(self, nodes):
        """Watch the prompt nodes: placing tells which view; any change schedules a preview refresh."""
        nodes = [node for node in nodes if node is not None]
        if nodes == self._observedPromptNodes:
            return
        events = [(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPromptPlaced)] + [
            (getattr(slicer.vtkMRMLMarkupsNode, name, None) or getattr(vtk.vtkCommand, name), self.onPromptChanged)
            for name in PROMPT_EVENTS]
        for node in self._observedPromptNodes:
            for event, method in events:
                self.removeObserver(node, event, method)
        for node in nodes:
            for event, method in events:
                self.addObserver(node, event, method)
        self._observedPromptNodes = nodes

    def _startPlacing(self, attribute: str, button):
        """Place mode for one prompt node: a box (one at a time) or points (until toggled off), in any slice view."""
        if not button.checked:
            self._stopPlacing()
            return
        for other in (self.ui.boxButton, self.ui.positiveButton, self.ui.negativeButton):
            other.checked = other is button
        node = self._promptNode(attribute)
        if attribute == "roiNode":
            node.RemoveAllControlPoints()  # a new box replaces the old one
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(attribute != "roiNode")
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def _stopPlacing(self):
        """Back to the view-transform mode, prompt buttons up."""
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() == interactionNode.Place:
            interactionNode.SwitchToViewTransformMode()
        for button in (self.ui.boxButton, self.ui.positiveButton, self.ui.negativeButton):
            button.checked = False

    def onPromptPlaced(self, caller, event):
        """A prompt was placed: the Logic segments in the plane of the view under the mouse (Red, Yellow, Green)."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        sliceNode = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0]) if crosshair else None
        if sliceNode is not None and self._syncLogicInputs():
            self._lastSliceNode = sliceNode
            try:
                self.logic.setSliceNode(sliceNode)
            except MedSAMError as error:
                self._showStatus(str(error))
        if caller.IsA("vtkMRMLMarkupsROINode"):
            self._stopPlacing()
        self.onPromptChanged()

    def onPromptChanged(self, caller=None, event=None):
        """Prompts placed, dragged or removed: refresh the preview after a short pause (debounced)."""
        if self._parameterNode is not None and self._parameterNode.livePreview:
            self._previewTimer.start()

    def _refreshPreview(self):
        """Segment the prompted slice in the background; with no prompts left, drop the preview."""
        node = self._parameterNode
        if node is None or self._job is not None:
            self._previewDirty = node is not None
            return
        nodes = [n for n in (node.roiNode, node.positiveNode, node.negativeNode) if n is not None]
        if not any(n.GetNumberOfControlPoints() for n in nodes):
            if self.logic.previewMaskKji is not None:
                self.logic.clear()
            return
        # prepareUpdate: a slice preview, or a correction of a propagated preview when points are clicked on it.
        self._withEngine(lambda: self._runTask("Updating preview", self.logic.prepareUpdate, interactive=False), interactive=False)

    def onSegmentSlice(self):
        """Preview the prompted slice now."""
        self._withEngine(lambda: self._runTask("Segmenting slice", self.logic.prepareSegmentSlice))

    def onPropagate(self):
        """Carry the mask through the volume in the background; the 3D preview shows the result."""
        node = self._parameterNode
        if not self._syncLogicInputs():
            return
        sliceRange = None  # the Logic's default: the 3D box's slices, else the whole volume
        if not node.rangeFromBox:  # Start here / End here; an end left at "no limit" is the volume's end
            last = self.logic.source.sliceCount(self.logic.axis) - 1
            ends = (node.rangeStart if node.rangeStart >= 0 else 0, node.rangeEnd if node.rangeEnd >= 0 else last)
            sliceRange = (min(ends), min(max(ends), last))
        settings = PropagationSettings(marginMm=node.marginMm, minScore=node.minScore,
                                       minIouWithPrevious=node.minIou, maxAreaRatio=node.maxAreaRatio)
        self._withEngine(lambda: self._runTask("Propagating", lambda: self.logic.preparePropagation(settings, sliceRange)))

    def onApply(self):
        """Write the preview into the selected segment (one undo step); creates a segmentation if none is chosen."""
        if not self._syncLogicInputs():
            return
        node = self._parameterNode
        segmentation, segmentId = self._guarded(self.logic.setSegmentation, node.segmentation, node.segmentId or None) or (None, None)
        if segmentation is not None:
            node.segmentation, node.segmentId = segmentation, segmentId
            self._guarded(self.logic.apply, node.applyMode)

    def onUndo(self):
        """Undo the last Apply."""
        if not self._guarded(self.logic.undo):
            self._showStatus("Nothing to undo.")

    def onClear(self):
        """Remove the prompts and the preview; the segment is not touched."""
        self._stopPlacing()
        self._previewTimer.stop()
        self.logic.clear()

    def _setRangeEnd(self, attribute: str):
        """Start here / End here: a propagation range end at the slice shown in the last used view (else Red)."""
        volumeNode = self._parameterNode.inputVolume
        sliceNode = self._lastSliceNode or slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        try:
            axis = volumegeometry.axisFromSliceNode(volumeNode, sliceNode)
            index = volumegeometry.sliceIndexFromSliceNode(volumeNode, axis, sliceNode)
        except MedSAMError as error:
            return self._showStatus(str(error))
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.rangeFromBox = False
            setattr(self._parameterNode, attribute, index)

    def onCancel(self):
        """Cancel the running background task (download, loading, encoding, propagation); nothing is written."""
        if self._job is not None:
            self._job.cancel()
            self._showStatus("Cancelling...")

    def _guarded(self, function: Callable, *args):
        """Call ``function``; a MedSAMError (a user-caused problem) is shown with what to do, and None returned."""
        try:
            with slicer.util.WaitCursor():
                return function(*args)
        except MedSAMError as error:
            self._showStatus(str(error))
            slicer.util.errorDisplay(str(error))
            return None

    def _runTask(self, title: str, prepare: Callable, interactive: bool = True):
        """prepare() reads MRML on the main thread and returns a job; job.run() runs in the worker;
        logic.showResult() writes the preview on the main thread."""
        if not self._syncLogicInputs():
            return
        try:
            job = prepare()
        except MedSAMError as error:
            self._showStatus(str(error))
            return
        self._startTask(title, job.run, self.logic.showResult, interactive)

    def _startTask(self, title: str, work: Callable, finish: Callable, interactive: bool = True):
        """Run ``work(progress, cancel)`` in the background with the progress bar and Cancel; then ``finish(result)``.
        Not interactive (live preview): errors go to the status line only, never to a dialog."""
        if self._job is not None:
            self._showStatus("Busy: wait for the running task or cancel it.")
            return
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self._showStatus(f"{title}...")
        self._jobFinish = (title, finish, interactive)
        self._job = BackgroundJob(work).start()
        self._pollTimer.start()
        self._updateButtons()

    def _pollJob(self):
        """Main thread, every POLL_INTERVAL_MS: show progress; when the worker is done, hand over its result."""
        fraction, text = self._job.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        if text:
            self._showStatus(text)
        if not self._job.done:
            return
        self._pollTimer.stop()
        job, (title, finish, interactive) = self._job, self._jobFinish
        self._job = None
        self.ui.progressBar.visible = False
        self._updateButtons()
        try:
            finish(job.result())
        except MedSAMError as error:  # CancelledError included: its message says nothing was written
            self._showStatus(str(error))
            if interactive and not isinstance(error, CancelledError):
                slicer.util.errorDisplay(str(error))
        except Exception as error:
            logging.exception("MedSAMSlicer: %s failed", title)
            self._showStatus(f"{title} failed: {error}")
        if self._previewDirty:  # prompts changed while the worker was busy
            self._previewDirty = False
            self._previewTimer.start()

    def _showStatus(self, text: str):
        self.ui.statusLabel.text = text

    def _currentModel(self) -> str:
        return self.ui.modelComboBox.currentData or "growcut"

    def onModelChanged(self, index):
        """Another model chosen: remember it in the scene; the engine loads at next use."""
        self._setParameter("model", self._currentModel())
        self._updateModelInfo()
        self._updateButtons()

    def _readiness(self):
        return modelReadiness(self._currentModel(), self.ui.deviceComboBox.currentText, self._parameterNode.checkpointPath
                              if self._parameterNode else None)

    def _updateModelInfo(self):
        """Say whether the chosen model is ready, needs packages, a download (and where its file goes) or a file."""
        readiness = self._readiness()
        self.ui.downloadButton.visible = self.ui.cancelDownloadButton.visible = readiness.spec.isDownloadable
        self.ui.modelInfoLabel.text = readiness.statusText

    def _withEngine(self, then: Callable[[], None], interactive: bool = True):
        """Run ``then`` once the chosen model is usable: packages installed (asks first), weights downloaded
        and engine loaded, each in the background. Not interactive (live preview): no dialogs, no downloads."""
        readiness = self._readiness()
        if self._engineKey == readiness.engineKey:
            return then()
        if readiness.missingPackages and not self._ensureDependencies(interactive):
            return None
        if readiness.needsFile or (readiness.needsDownload and not interactive):
            return self._showStatus(readiness.statusText)
        if readiness.needsDownload:
            return self._startDownload(readiness.spec, lambda path: self._withEngine(then))
        modelId, device, checkpoint = readiness.engineKey

        def loaded(engine):
            self.logic.setEngine(engine)
            self._engineKey = readiness.engineKey
            then()

        self._startTask(f"Loading {readiness.spec.displayName}", lambda progress, cancel: enginefactory.createEngine(
            modelId, device=device, checkpointPath=checkpoint), loaded)
        return None

    def _ensureDependencies(self, interactive: bool = True) -> bool:
        """torch and segment-anything importable, installing them after asking once; False when not."""
        if dependencies.checkDependencies().ok:
            return True
        if self._dependenciesDeclined or not interactive:
            self._showStatus("MedSAM/SAM need Python packages: click 'Install Python packages' in the Model section.")
            return False
        try:
            with slicer.util.WaitCursor():
                dependencies.ensureDependencies(slicer.util.confirmOkCancelDisplay)
            return True
        except MedSAMError as error:
            self._dependenciesDeclined = "declined" in str(error)
            slicer.util.errorDisplay(str(error))
            return False
        finally:
            self._updateDependencyStatus()

    def onInstallDependencies(self):
        """Install the Python packages now (asks first)."""
        self._dependenciesDeclined = False
        if self._ensureDependencies():
            self._showStatus("The Python packages for MedSAM and SAM are installed.")

    def _updateDependencyStatus(self):
        status = dependencies.checkDependencies()
        missing = status.missingTorch + status.missingRequirements
        self.ui.dependencyStatusLabel.text = "MedSAM/SAM packages: " + ("installed" if status.ok else "missing " + ", ".join(missing))
        self.ui.installDependenciesButton.visible = not status.ok

    def onDownload(self):
        """Download the chosen model's weights (resumable, checksum verified)."""
        spec = self._readiness().spec
        if spec.isDownloadable:
            self._startDownload(spec, lambda path: self._showStatus(f"{spec.displayName} is ready: {path}"))

    def _startDownload(self, spec, then: Callable):
        """Download ``spec``'s weights in the background (resumable, checksum verified), then ``then(path)``."""
        self._startTask(f"Downloading {spec.displayName}", lambda progress, cancel: download.ensureModel(
            spec, progress=progress, cancel=cancel), lambda path: (self._updateModelInfo(), then(path)))

    def onOpenModelFolder(self):
        """Show the model folder in the system's file browser (to copy weights there by hand)."""
        folder = download.modelCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onClearModelFolder(self):
        """Delete the downloaded weights after asking."""
        if slicer.util.confirmOkCancelDisplay(f"Delete every downloaded model in {download.modelCacheFolder()}?"):
            freed = download.clearModelCache()
            self._engineKey = None
            self._showStatus(f"Deleted {freed / 1e6:.0f} MB of model weights.")
            self._updateModelInfo()

    def onClearEmbeddings(self):
        """Forget the cached slice embeddings."""
        self.logic.clearEmbeddings()
        self._showStatus("Embedding cache cleared.")

    def _restoreSettings(self):
        """Device, model folder and embedding budget from the application settings."""
        settings = qt.QSettings()
        self.ui.deviceComboBox.currentText = settings.value(SETTINGS_PREFIX + "device", "auto")
        folder = settings.value(SETTINGS_PREFIX + "modelFolder", os.path.join(slicer.app.cachePath, "MedSAMSlicer", "models"))
        self.ui.modelFolderButton.directory = folder
        download.setModelCacheFolder(folder)
        budget = int(settings.value(SETTINGS_PREFIX + "cacheBudgetMB", DEFAULT_CACHE_BUDGET_MB))
        self.ui.cacheBudgetSpinBox.value = budget
        self.logic.setCacheBudget(budget * 1024 * 1024)

    def onModelFolderChanged(self, folder):
        """Model folder: an application setting."""
        qt.QSettings().setValue(SETTINGS_PREFIX + "modelFolder", folder)
        download.setModelCacheFolder(folder)
        self._updateModelInfo()

    def onCacheBudgetChanged(self, megabytes):
        """Embedding memory budget: an application setting."""
        qt.QSettings().setValue(SETTINGS_PREFIX + "cacheBudgetMB", int(megabytes))
        self.logic.setCacheBudget(int(megabytes) * 1024 * 1024)

    def _installShortcuts(self):
        """Single-key shortcuts, only while the module is shown; each clicks its button (a disabled one ignores it)."""
        self._removeShortcuts()
        for key, buttonName in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda buttonName=buttonName: self._onShortcut(buttonName))
            self._shortcuts.append(shortcut)

    def _onShortcut(self, buttonName: str):
        # A key typed into a text field or spin box (Python console included) is text, not a command.
        focus = slicer.app.focusWidget()
        if focus is None or not any(focus.inherits(c) for c in ("QLineEdit", "QTextEdit", "QPlainTextEdit", "QAbstractSpinBox")):
            getattr(self.ui, buttonName).click()

    def _removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []


class MedSAMSlicerLogic(MedSAMLogic, ScriptedLoadableModuleLogic):
    """Slicer's module-logic convention over the Qt-free MedSAMLogic: adds the parameter node."""

    def __init__(self, scene=None):
        MedSAMLogic.__init__(self, scene)
        ScriptedLoadableModuleLogic.__init__(self)  # its super().__init__() is object's here: no second MedSAMLogic init

    def getParameterNode(self) -> MedSAMSlicerParameterNode:
        """The module's typed parameter node (created in the scene on first use)."""
        return MedSAMSlicerParameterNode(super().getParameterNode())


class MedSAMSlicerTest(ScriptedLoadableModuleTest):
    """"Reload and Test": runs the scenarios of Testing/Python/MedSAMSlicerTest.py (also registered with CTest)."""

    def runTest(self):
        """Load the scenarios next to this file and run every test_ method; fail if any fails."""
        path = os.path.join(os.path.dirname(__file__), "Testing", "Python", "MedSAMSlicerTest.py")
        spec = importlib.util.spec_from_file_location("MedSAMSlicerSelfTestScenarios", path)
        scenarios = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scenarios)
        self.assertTrue(scenarios.runTests(), "a MedSAMSlicer self-test scenario failed; see the log above")
