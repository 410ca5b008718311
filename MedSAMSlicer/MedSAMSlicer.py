"""MedSAMSlicer: the Qt layer. Module metadata, the parameter node, a widget binding Resources/UI/MedSAMSlicer.ui
to the parameter node and to MedSAMSlicerLib's InteractionController (which decides everything else), keyboard
shortcuts, and the self-test entry point. torch is imported only by the engines, at first use."""

import importlib.util
import os
import types
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

MINIMUM_SLICER_VERSION = (5, 10)  # vtkSlicerSegmentEditorLogic, which every write goes through, is new in 5.10
SLICER_VERSION = (int(getattr(slicer.app, "majorVersion", 0)), int(getattr(slicer.app, "minorVersion", 0)))
SUPPORTED = SLICER_VERSION >= MINIMUM_SLICER_VERSION
DEVICES = ("auto", "cuda", "mps", "cpu")
SETTINGS_PREFIX = "MedSAMSlicer/"
DEFAULT_CACHE_BUDGET_MB = 1024
SHORTCUTS = {"1": "boxButton", "2": "positiveButton", "3": "negativeButton", "A": "applyButton", "U": "undoButton",
             "C": "clearButton", "P": "propagateButton", "Esc": None}
"""Keys active only while the module is shown: each clicks its button; Esc leaves place mode (docs/user-guide.md)."""

if SUPPORTED:  # on an older Slicer nothing else loads: the panel only says which Slicer it needs
    from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

    from MedSAMSlicerLib.interaction.controller import BUTTON_ACTIONS, InteractionController
    from MedSAMSlicerLib.interaction.engineloader import dependencyStatusLine
    from MedSAMSlicerLib.interaction.parameters import ApplyMode, Intensity, ModuleParameters, Recipe
    from MedSAMSlicerLib.interaction.reloading import reloadLibrary
    from MedSAMSlicerLib.models import download, enginefactory, registry
    from MedSAMSlicerLib.workflow.logic import MedSAMLogic

    @parameterNodeWrapper
    class MedSAMSlicerParameterNode:
        """Scene state of the module (saved with the scene): the fields of ModuleParameters."""

        inputVolume: vtkMRMLScalarVolumeNode
        segmentation: vtkMRMLSegmentationNode
        segmentId: str = ""
        model: str = ""
        checkpointPath: str = ""
        recipe: Recipe = ModuleParameters.recipe
        intensity: Intensity = ModuleParameters.intensity
        livePreview: bool = ModuleParameters.livePreview
        applyMode: ApplyMode = ModuleParameters.applyMode
        rangeFromBox: bool = ModuleParameters.rangeFromBox
        rangeStart: Annotated[int, WithinRange(-1, 100000)] = -1
        rangeEnd: Annotated[int, WithinRange(-1, 100000)] = -1
        marginMm: Annotated[float, WithinRange(0.0, 50.0)] = ModuleParameters.marginMm
        minScore: Annotated[float, WithinRange(0.0, 1.0)] = ModuleParameters.minScore
        minIou: Annotated[float, WithinRange(0.0, 1.0)] = ModuleParameters.minIou
        maxAreaRatio: Annotated[float, WithinRange(1.0, 10.0)] = ModuleParameters.maxAreaRatio
        roiNode: vtkMRMLMarkupsROINode
        positiveNode: vtkMRMLMarkupsFiducialNode
        negativeNode: vtkMRMLMarkupsFiducialNode

    class MedSAMSlicerLogic(MedSAMLogic, ScriptedLoadableModuleLogic):
        """Slicer's module-logic convention over the Qt-free MedSAMLogic: adds the parameter node."""

        def __init__(self, scene=None):
            MedSAMLogic.__init__(self, scene)
            ScriptedLoadableModuleLogic.__init__(self)  # its super().__init__() is object's here
            self._parameterWrapper = None

        def getParameterNode(self) -> "MedSAMSlicerParameterNode":
            """The module's typed parameter node: one wrapper per MRML node, so GUI connections never pile up."""
            node = super().getParameterNode()
            if self._parameterWrapper is None or self._parameterWrapper.parameterNode is not node:
                self._parameterWrapper = MedSAMSlicerParameterNode(node)
            return self._parameterWrapper


class MedSAMSlicer(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSAMSlicer maintainers (MedSAMSlicer project)"]
        self.parent.helpText = (
            "Promptable segmentation with MedSAM and SAM. Choose a volume; press Box (1), then click two opposite "
            "corners of the object in the Red, Yellow or Green view, or press + Point (2) / - Point (3) and click; "
            "check the preview, Apply (A). Propagate (P) carries the mask through the volume. GrowCut works without "
            "any download. Needs Slicer 5.10 or later. "
            '<a href="https://github.com/MedSAMSlicer/MedSAMSlicer/blob/main/docs/user-guide.md">User guide</a>.')
        self.parent.acknowledgementText = (
            "MedSAM: Ma J. et al., Segment anything in medical images, Nature Communications 15, 654 (2024). "
            "Segment Anything: Kirillov A. et al., ICCV 2023. Built on 3D Slicer and its PyTorch extension.")


class QtScheduler:
    """The controller's Scheduler on single-shot QTimers: calls run on the main thread from the event loop."""

    def __init__(self):
        self._timers = set()

    def callLater(self, delayMs, callback):
        """Run ``callback`` after ``delayMs`` ms; returns a handle whose cancel() stops the timer."""
        timer = qt.QTimer()
        timer.singleShot, timer.interval = True, int(delayMs)
        timer.connect("timeout()", lambda: (self._timers.discard(timer), callback()))
        self._timers.add(timer)
        timer.start()
        return types.SimpleNamespace(cancel=lambda: (timer.stop(), self._timers.discard(timer)))

    def stop(self):
        """Stop every pending timer (cleanup, Reload)."""
        for timer in list(self._timers):
            timer.stop()
        self._timers.clear()


def saveSegmentEditorUndoState(segmentationNode):
    """Before an Apply writes: save the Segment Editor's undo state when it edits the same segmentation, so its
    Undo (Ctrl+Z) takes the Apply back. slicer.modules.SegmentEditorWidget exists once the editor was shown."""
    editor = getattr(getattr(slicer.modules, "SegmentEditorWidget", None), "editor", None)
    if editor is not None and editor.segmentationNode() is segmentationNode:
        editor.saveStateForUndo()


class MedSAMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and the buttons to the InteractionController."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self.controller = self._parameterNode = self._guiTag = self._scheduler = None
        self._shortcuts = []
        self._updatingGui = False

    def setup(self):
        """Load the .ui, create the Logic and the controller, connect the widgets, restore the settings."""
        ScriptedLoadableModuleWidget.setup(self)
        if not SUPPORTED:
            self.layout.addWidget(qt.QLabel("MedSAM needs Slicer %d.%d or later." % MINIMUM_SLICER_VERSION))
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSAMSlicerLogic()
        self._scheduler = QtScheduler()
        self.controller = InteractionController(self.logic, self.logic.getParameterNode(), self._scheduler,
                                                confirm=slicer.util.confirmOkCancelDisplay)
        self.controller.setExternalUndoSaver(saveSegmentEditorUndoState)
        self.controller.status.connect(lambda text: setattr(self.ui.statusLabel, "text", text))
        self.controller.progress.connect(lambda fraction, text: setattr(self.ui.progressBar, "value", int(100 * fraction)))
        self.controller.error.connect(slicer.util.errorDisplay)
        self.controller.stateChanged.connect(self._updateButtons)
        for spec in registry.loadRegistry().values():
            self.ui.modelComboBox.addItem(spec.displayName, spec.modelId)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, spec.description, qt.Qt.ToolTipRole)
        self.ui.deviceComboBox.addItems(DEVICES)
        self._restoreSettings()
        # Widgets the parameter node wrapper has no connector for, synced by hand.
        for signal in ("currentNodeChanged(vtkMRMLNode*)", "currentSegmentChanged(QString)"):
            self.ui.segmentSelector.connect(signal, self._onSegmentSelectorChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", lambda path: self._setParameter("checkpointPath", path))
        self.ui.modelComboBox.connect("currentIndexChanged(int)", lambda index: self._setParameter("model", self.ui.modelComboBox.currentData))
        # Filled by _updateButtons, not bound: Slicer 5.10's QComboBoxToEnumConnector (parameterNodeWrapper/guiConnectors.py) lists
        # every enum member. activated(int), as SegmentEditorThresholdEffect's boxes: the user's choice only, never a refill.
        self.ui.recipeComboBox.connect("activated(int)", lambda index: self.controller.setRecipe(self.ui.recipeComboBox.itemData(index)))
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", self._onDeviceChanged)
        self.ui.modelFolderButton.connect("directoryChanged(QString)", self._onModelFolderChanged)
        self.ui.cacheBudgetSpinBox.connect("valueChanged(int)", self._onCacheBudgetChanged)
        self.ui.openModelFolderButton.connect("clicked()", self._openModelFolder)
        for name, action in BUTTON_ACTIONS.items():
            getattr(self.ui, name).connect("clicked()", lambda action=action: (action(self.controller), self._updateButtons()))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        """Module unloaded or reloaded: stop timers, jobs, observers and shortcuts; remove the Logic's nodes."""
        self._removeShortcuts()
        self.removeObservers()
        if self.controller is not None:
            self.setParameterNode(None)
            self._scheduler.stop()
            self.controller.cleanup()

    def onReload(self):
        """Reload the library (each module after the ones it imports), then this file, as Slicer's Reload does."""
        if SUPPORTED:
            reloadLibrary()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        """Module shown: bind the parameter node, install the keyboard shortcuts."""
        if self.controller is not None:
            self.initializeParameterNode()
            self._installShortcuts()

    def exit(self):
        """Module hidden: unbind the GUI, leave place mode, remove the shortcuts."""
        if self.controller is not None:
            self._removeShortcuts()
            self.controller.leavePlaceMode()
            self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        """A new, empty scene: start afresh (the controller stopped work on the old one at StartCloseEvent)."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        """Bind the module's parameter node; pick the first volume and the default model if none is set."""
        parameters = self.logic.getParameterNode()
        self.controller.parameters = parameters
        self.setParameterNode(parameters)
        if not parameters.inputVolume:
            parameters.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not parameters.model:
            parameters.model = enginefactory.defaultModelName()  # MedSAM once its weights are here

    def setParameterNode(self, parameterNode: Optional["MedSAMSlicerParameterNode"]):
        """Connect the GUI to ``parameterNode`` (disconnect when None); at most one connection at a time."""
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._guiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None):
        """Show what the connector does not bind (segment, model, file); tell the controller."""
        node = self._parameterNode
        if node is None or self._updatingGui:
            return
        self._updatingGui = True
        selector = self.ui.segmentSelector
        wasBlocked = selector.blockSignals(True)  # no signal back into the parameter node while it is shown
        try:
            if selector.currentNode() is not node.segmentation:
                selector.setCurrentNode(node.segmentation)
            if node.segmentId and selector.currentSegmentID() != node.segmentId:
                selector.setCurrentSegmentID(node.segmentId)
            self.ui.modelComboBox.setCurrentIndex(max(self.ui.modelComboBox.findData(node.model), 0))
            self.ui.checkpointPathLineEdit.currentPath = node.checkpointPath
        finally:
            selector.blockSignals(wasBlocked)
            self._updatingGui = False
        self.controller.parametersChanged()
        self._updateButtons()

    def _onSegmentSelectorChanged(self, *ignored):
        # Both values from the selector at once: it announces the new segment before the new segmentation.
        if self._parameterNode is not None and not self._updatingGui:
            self.controller.setSegmentSelection(self.ui.segmentSelector.currentNode(), self.ui.segmentSelector.currentSegmentID())

    def _setParameter(self, name, value):
        if self._parameterNode is not None and not self._updatingGui:
            setattr(self._parameterNode, name, value or "")

    def _updateButtons(self):
        """Show the controller's state: enabled, checked and shown widgets, what the model needs, the recipes."""
        for name, state in self.controller.buttonStates().items():
            widget = getattr(self.ui, name)
            widget.enabled = state.enabled
            if state.checked is not None:
                widget.checked = state.checked
            if state.visible is not None:
                widget.visible = state.visible
        self.ui.modelInfoLabel.text = self.controller.modelStatusText()
        self.ui.dependencyStatusLabel.text, installed = dependencyStatusLine()
        self.ui.installDependenciesButton.visible = not installed
        choices, combo = self.controller.recipeChoices(), self.ui.recipeComboBox
        if [combo.itemData(index) for index in range(combo.count)] != [choice.value for choice in choices]:
            combo.clear()
            for choice in choices:
                combo.addItem(choice.label(), choice.value)
        combo.setCurrentIndex(combo.findData(self.controller.parameters.recipe.value))

    def _restoreSettings(self):
        """Device, model folder and embedding budget from the application settings."""
        settings = qt.QSettings()
        self.ui.deviceComboBox.currentText = self.controller.device = settings.value(SETTINGS_PREFIX + "device", "auto")
        folder = settings.value(SETTINGS_PREFIX + "modelFolder", os.path.join(slicer.app.cachePath, "MedSAMSlicer", "models"))
        self.ui.modelFolderButton.directory = folder
        download.setModelCacheFolder(folder)
        budget = int(settings.value(SETTINGS_PREFIX + "cacheBudgetMB", DEFAULT_CACHE_BUDGET_MB))
        self.ui.cacheBudgetSpinBox.value = budget
        self.logic.setCacheBudget(budget * 1024 * 1024)

    def _onDeviceChanged(self, device):
        qt.QSettings().setValue(SETTINGS_PREFIX + "device", device)
        self.controller.device = device
        self._updateButtons()

    def _onModelFolderChanged(self, folder):
        qt.QSettings().setValue(SETTINGS_PREFIX + "modelFolder", folder)
        download.setModelCacheFolder(folder)
        self._updateButtons()

    def _onCacheBudgetChanged(self, megabytes):
        qt.QSettings().setValue(SETTINGS_PREFIX + "cacheBudgetMB", int(megabytes))
        self.logic.setCacheBudget(int(megabytes) * 1024 * 1024)

    def _openModelFolder(self):
        """Show the model folder in the system's file browser (to copy weights there by hand)."""
        folder = download.modelCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def _installShortcuts(self):
        """Single-key shortcuts, only while the module is shown (a disabled button ignores its key)."""
        self._removeShortcuts()
        for key, buttonName in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda buttonName=buttonName: self._onShortcut(buttonName))
            self._shortcuts.append(shortcut)

    def _onShortcut(self, buttonName):
        # A key typed into a text field or spin box (Python console included) is text, not a command.
        focus = slicer.app.focusWidget()
        if focus is not None and any(focus.inherits(c) for c in ("QLineEdit", "QTextEdit", "QPlainTextEdit", "QAbstractSpinBox")):
            return
        if buttonName is None:
            self.controller.leavePlaceMode()  # Esc: Slicer's views leave place mode only on a right-click
        else:
            getattr(self.ui, buttonName).click()

    def _removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = []


class MedSAMSlicerTest(ScriptedLoadableModuleTest):
    """"Reload and Test": runs the scenarios of Testing/Python/MedSAMSlicerTest.py (also registered with CTest)."""

    def runTest(self):
        """Load the scenarios next to this file and run every test_ method; fail if any fails."""
        if not SUPPORTED:
            self.skipTest("MedSAM needs Slicer %d.%d or later" % MINIMUM_SLICER_VERSION)
        path = os.path.join(os.path.dirname(__file__), "Testing", "Python", "MedSAMSlicerTest.py")
        spec = importlib.util.spec_from_file_location("MedSAMSlicerSelfTestScenarios", path)
        scenarios = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scenarios)
        self.assertTrue(scenarios.runTests(), "a MedSAMSlicer self-test scenario failed; see the log above")
