"""InteractionController: everything between a user's events in the slice views and MedSAMLogic. No Qt.

The Slicer module binds its buttons to the controller's methods and shows its
signals; a test drives it with real slice views and synthetic mouse events.
What it decides:

- which changes start work: a change of the defined prompts (PromptWatcher),
  never a hover or a box still being drawn, debounced through the injected
  scheduler, one job at a time (JobRunner; a change while a job runs is
  handled when it ends);
- that a box drawn in one view is 2D on its slice (drawnbox.flattenDrawnBox)
  and which view (axis) the prompts were placed in;
- the propagation range (a box made 3D in another view, or Start/End), the
  accepted slices and the fill between them (sliceactions.py), which
  segmentation and segment Apply writes to (a stale segment never blocks a
  preview), Slicer's Segment Editor node for masking, undo through the
  Segment Editor;
- the preprocessing of a user's checkpoint file: the recipes that fit it
  (recipechoice.py), a new choice loads the file again in the background;
- the state of every button, following Slicer's interaction mode.
"""

import enum
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from ..core.errors import InputError, MedSAMError
from ..core.progress import Signal
from ..imaging.intensity import IntensityPolicy
from ..models import download
from ..models.registry import getModelSpec
from ..mrml.segmenteditornode import userSegmentEditorNode
from ..workflow.logicobservers import DEBOUNCE_MS
from ..workflow.propagation import PropagationSettings
from .drawnbox import flattenDrawnBox
from .engineloader import EngineLoader
from .jobrunner import JobRunner, Task
from .parameters import Recipe
from .placement import PlaceMode, createPromptNode
from .promptwatcher import PromptWatcher, definedPromptSnapshot
from .recipechoice import FileFamilies, parseRecipe, preprocessingText, recipeChoices
from .scheduler import Debouncer, Scheduler
from .sliceactions import SliceActionsMixin

PROMPT_ATTRIBUTES = {"box": "roiNode", "positive": "positiveNode", "negative": "negativeNode"}
PROMPT_BUTTONS = {"box": "boxButton", "positive": "positiveButton", "negative": "negativeButton"}
#: What each of the module's buttons does (the widget connects each button's clicked() to its action).
BUTTON_ACTIONS = {
    "boxButton": lambda controller: controller.togglePlacing("box"),
    "positiveButton": lambda controller: controller.togglePlacing("positive"),
    "negativeButton": lambda controller: controller.togglePlacing("negative"),
    "segmentSliceButton": lambda controller: controller.segmentSlice(),
    "clearButton": lambda controller: controller.clear(),
    "applyButton": lambda controller: controller.apply(),
    "undoButton": lambda controller: controller.undo(),
    "startHereButton": lambda controller: controller.setRangeEnd("rangeStart"),
    "endHereButton": lambda controller: controller.setRangeEnd("rangeEnd"),
    "propagateButton": lambda controller: controller.propagate(),
    "acceptSliceButton": lambda controller: controller.acceptSlice(),
    "fillButton": lambda controller: controller.fillBetweenAccepted(),
    "cancelButton": lambda controller: controller.cancel(),
    "cancelDownloadButton": lambda controller: controller.cancel(),
    "downloadButton": lambda controller: controller.download(),
    "installDependenciesButton": lambda controller: controller.installDependencies(),
    "clearModelFolderButton": lambda controller: controller.clearModelFolder(),
    "clearEmbeddingsButton": lambda controller: controller.clearEmbeddings(),
}
#: Buttons that act on the preview: off while a job runs.
PREVIEW_BUTTONS = ("segmentSliceButton", "propagateButton", "startHereButton", "endHereButton", "acceptSliceButton",
                   "fillButton")


@dataclass(frozen=True)
class ButtonState:
    """What a widget shows: enabled; for the prompt buttons whether it is checked (None: not checkable); whether it
    is shown (None: always)."""

    enabled: bool
    checked: Optional[bool] = None
    visible: Optional[bool] = None


def enumValue(choice):
    """The library value of a choice: an enum's value, or the string itself."""
    return choice.value if isinstance(choice, enum.Enum) else choice


class InteractionController(SliceActionsMixin):
    """Drive MedSAMLogic from a front end: prompts placed in slice views, buttons, background jobs.

    logic: a MedSAMLogic. parameters: an object with the fields of
    interaction.parameters.ModuleParameters (the module's parameter node).
    scheduler: runs deferred calls on the main thread. confirm(text) -> bool:
    asks the user (default: yes). Signals: status(text), progress(fraction,
    text), error(text) (show as a dialog), stateChanged() (buttons to update).
    """

    def __init__(self, logic, parameters, scheduler: Scheduler, confirm: Callable[[str], bool] = lambda text: True):
        self.logic = logic
        self.scene = logic.scene
        self.parameters = parameters
        self.scheduler = scheduler
        self.device = "auto"
        self.lastSliceNode = None
        self.status, self.progress, self.error, self.stateChanged = Signal(), Signal(), Signal(), Signal()
        self.runner = JobRunner(scheduler)
        self.engines = EngineLoader(logic, self.runner, confirm)
        self.families = FileFamilies(self.runner, scheduler)
        self.watcher = PromptWatcher(self.scene)
        self.placeMode = PlaceMode(self.scene)
        self.previewDebouncer = Debouncer(scheduler, DEBOUNCE_MS, self.refreshPreview)
        self._previewDirty = False
        logic.autoUpdate = False  # the controller refreshes the preview, in the background
        for source, signal in ((self.runner, "status"), (self.runner, "progress"), (self.runner, "error"),
                               (self.engines, "status"), (self.families, "status"), (logic, "status")):
            getattr(source, signal).connect(getattr(self, signal).emit)
        self.runner.busyChanged.connect(self._onBusyChanged)
        logic.previewChanged.connect(self.stateChanged.emit)  # Apply needs a preview
        self.families.changed.connect(self.stateChanged.emit)  # the recipes on offer
        self.placeMode.changed.connect(self.stateChanged.emit)
        self.watcher.changed.connect(self._onPromptsChanged)
        self.watcher.placed.connect(self._onPlaced)
        self.watcher.boxCompleted.connect(self._onBoxCompleted)
        self._sceneObservers = [(self.scene, self.scene.AddObserver(self.scene.StartCloseEvent, self._onSceneStartClose))]

    # ------------------------------------------------------------------ inputs

    def parametersChanged(self) -> None:
        """The parameters changed (the module's parameter node was modified): follow the prompt nodes; another
        volume drops the preview of the previous one."""
        p = self.parameters
        self.watcher.watch(p.roiNode, p.positiveNode, p.negativeNode)
        self.placeMode.setNodes(p.roiNode, p.positiveNode, p.negativeNode)
        if self.logic.volumeNode is not None and p.inputVolume is not self.logic.volumeNode:
            self.syncLogicInputs()
        self.families.request(self.checkpointFile())
        self.stateChanged.emit()

    def setSegmentSelection(self, segmentationNode, segmentId: str) -> None:
        """The segment selector shows ``segmentationNode`` and ``segmentId``: store both at once.

        Read both from the selector on either of its signals:
        qMRMLSegmentSelectorWidget emits currentSegmentChanged for the new
        segmentation before currentNodeChanged, so storing them one by one
        would pair a segment with the wrong segmentation. A segment id that is
        not in the segmentation is stored as none.
        """
        segmentation = segmentationNode.GetSegmentation() if segmentationNode is not None else None
        if segmentation is None or not segmentId or segmentation.GetSegment(segmentId) is None:
            segmentId = ""
        p = self.parameters
        if p.segmentation is not segmentationNode:
            p.segmentation = segmentationNode
        if p.segmentId != segmentId:
            p.segmentId = segmentId

    def intensityPolicy(self) -> IntensityPolicy:
        """The chosen intensity mapping; "display" takes the viewer's window/level of the input volume."""
        choice = enumValue(self.parameters.intensity)
        display = self.parameters.inputVolume.GetDisplayNode() if self.parameters.inputVolume is not None else None
        if choice == "display" and display is not None:
            return IntensityPolicy.window(display.GetWindowLevelMin(), display.GetWindowLevelMax())
        return IntensityPolicy.parse("auto" if choice == "display" else choice)

    def syncLogicInputs(self) -> bool:
        """Give the Logic the volume, intensity policy and prompt nodes; False (and the reason in status) when impossible.

        No segment is needed: previews and propagation work without one (Apply picks or creates it).
        """
        p = self.parameters
        if p.inputVolume is None:
            self.status.emit("Select a volume first.")
            return False
        try:
            policy = self.intensityPolicy()
            if self.logic.volumeNode is not p.inputVolume or self.logic.policy != policy:
                self.logic.setVolume(p.inputVolume, policy)
                if self.lastSliceNode is not None:
                    self.logic.setSliceNode(self.lastSliceNode)
            self.logic.setPromptNodes(p.roiNode, p.positiveNode, p.negativeNode)
            return True
        except MedSAMError as error:
            self.status.emit(str(error))
            return False

    # ------------------------------------------------------------------ prompts

    def promptNode(self, kind: str):
        """The markups node of one prompt kind ("box", "positive", "negative"), created on first use."""
        attribute = PROMPT_ATTRIBUTES[kind]
        node = getattr(self.parameters, attribute)
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            node = createPromptNode(self.scene, kind)
            setattr(self.parameters, attribute, node)
            self.parametersChanged()
        return node

    def togglePlacing(self, kind: str) -> None:
        """The Box / + Point / - Point button: place that prompt, or leave place mode when already placing it."""
        if self.placeMode.kind() == kind:
            self.placeMode.stop()
            return
        node = self.promptNode(kind)
        self.placeMode.start(kind, node)

    def leavePlaceMode(self) -> None:
        """Leave place mode (the module's Esc shortcut; Slicer's views leave it on a right-click)."""
        self.placeMode.stop()

    def _onPromptsChanged(self) -> None:
        if self.parameters.livePreview:
            self.previewDebouncer.trigger()

    def _onPlaced(self, sliceNode) -> None:
        """A prompt was placed: segment in the plane of the view it was placed in (Red, Yellow, Green...)."""
        if sliceNode is None:
            return
        self.lastSliceNode = sliceNode
        if self.syncLogicInputs():
            try:
                self.logic.setSliceNode(sliceNode)
            except MedSAMError as error:
                self.status.emit(str(error))

    def _onBoxCompleted(self, roiNode, sliceNode) -> None:
        # Deferred: the markups widget is still handling the click that completed the box.
        volume = self.parameters.inputVolume
        self.scheduler.callLater(0, lambda: flattenDrawnBox(roiNode, volume, sliceNode or self.lastSliceNode))

    # ------------------------------------------------------------------ jobs

    def refreshPreview(self) -> None:
        """Update the preview from the prompts in the background (the live preview; also after a job ends)."""
        if self.runner.busy:
            self._previewDirty = True
            return
        self._previewDirty = False
        if not self.syncLogicInputs():
            return
        if self.watcher.snapshot == definedPromptSnapshot():  # no box, no point: nothing to segment
            self.logic.clearPreview()
            return
        # prepareUpdate: a slice preview, or a correction of a propagated preview when points are clicked on it.
        self._withEngine(lambda: self._runTask("Updating preview", self.logic.prepareUpdate, interactive=False),
                         interactive=False)

    def segmentSlice(self) -> None:
        """Preview slice: segment the prompted slice now."""
        self._withEngine(lambda: self._runTask("Segmenting slice", self.logic.prepareSegmentSlice))

    def propagate(self) -> None:
        """Carry the mask from the prompted slice through the volume, in the background.

        Range: a box the user made 3D (resized in another view) when "range from
        the box" is on; else Start/End (-1: the volume's end); a box drawn in one
        view sets no range: propagation runs until a stopping rule fires.
        """
        if not self.syncLogicInputs():
            return
        p = self.parameters
        sliceRange = None  # the Logic's default: a 3D box's slices, else the whole volume
        if not p.rangeFromBox:
            last = self.logic.source.sliceCount(self.logic.axis) - 1
            ends = (p.rangeStart if p.rangeStart >= 0 else 0, p.rangeEnd if p.rangeEnd >= 0 else last)
            sliceRange = (min(ends), min(max(ends), last))
        settings = self._propagationSettings()
        self._withEngine(lambda: self._runTask("Propagating", lambda: self.logic.preparePropagation(settings, sliceRange)))

    def apply(self) -> bool:
        """Write the preview into the chosen segment (one undo step, also in the Segment Editor); True when written.

        No segmentation chosen: one is created. No segment, or one that was
        deleted: a new segment is added, never another existing one overwritten.
        """
        if not self.syncLogicInputs():
            return False
        p = self.parameters
        try:
            if self.logic.lastResult is None:  # before a segmentation or a segment is made for nothing
                raise InputError("Nothing to apply: segment a slice or propagate first.")
            segmentId = p.segmentId or None
            if p.segmentation is not None and segmentId is not None and p.segmentation.GetSegmentation().GetSegment(segmentId) is None:
                segmentId = p.segmentation.GetSegmentation().AddEmptySegment("")
            segmentation, segmentId = self.logic.setSegmentation(p.segmentation, segmentId)
            self.setSegmentSelection(segmentation, segmentId)
            self.logic.setSegmentEditorNode(userSegmentEditorNode(self.scene))  # the user's masking and overwrite
            self.logic.apply(enumValue(p.applyMode))
            return True
        except MedSAMError as error:
            self._report(error, interactive=True)
            return False
        finally:
            self.stateChanged.emit()

    def undo(self) -> bool:
        """Undo the last Apply; says why not when the segmentation was edited since (the Segment Editor's Undo can)."""
        try:
            undone = self.logic.undo()
        except MedSAMError as error:
            self._report(error, interactive=True)
            return False
        if not undone:
            self.status.emit("Nothing to undo.")
        self.stateChanged.emit()
        return undone

    def clear(self) -> None:
        """Remove the prompts and the preview (the segment is untouched); stops a running preview job."""
        self.placeMode.stop()
        self.previewDebouncer.cancel()
        self.runner.cancel(sceneBoundOnly=True)
        self._previewDirty = False
        self.logic.clear()
        self.stateChanged.emit()  # no accepted slice left: Fill is off

    def cancel(self) -> None:
        """Cancel the running task (download, install, loading, encoding, propagation); nothing is written."""
        self.runner.cancel()

    def setExternalUndoSaver(self, saver: Optional[Callable]) -> None:
        """``saver(segmentationNode)`` is called just before each Apply writes (the module saves the Segment
        Editor's undo state there, so its Undo takes an Apply back)."""
        self.logic.setExternalUndoSaver(saver)

    # ------------------------------------------------------------------ model

    def modelId(self) -> str:
        """The chosen model id ("growcut" when none is chosen)."""
        return self.parameters.model or "growcut"

    def readiness(self):
        """What the chosen model still needs (packages, download, file)."""
        return self.engines.readiness(self.modelId(), self.device, self.parameters.checkpointPath, self._recipe())

    def checkpointFile(self) -> Optional[str]:
        """The user's checkpoint file when the chosen model is one (the custom model), else None."""
        return (self.parameters.checkpointPath or None) if getModelSpec(self.modelId()).kind == "file" else None

    def recipeChoices(self) -> list:
        """The preprocessing choices to offer ([Recipe]): none unless the model is a user's file; else Automatic and
        the recipes of the file's family (all until the file was read), and the stored choice even when it does not
        fit, so the panel shows what the loader refuses."""
        if getModelSpec(self.modelId()).kind != "file":
            return []
        path = self.parameters.checkpointPath
        return recipeChoices(Recipe(self._recipe()), self.families.recipes(path) if path else None)

    def setRecipe(self, choice) -> None:
        """The user chose the preprocessing of their checkpoint file (a Recipe or its value): store it and load the
        file with it in the background. The status line then says which preprocessing runs, or the library's
        message when the recipe does not fit the file (InputError; an unknown value too)."""
        recipe = parseRecipe(choice)
        if self.parameters.recipe is not recipe:
            self.parameters.recipe = recipe
        if self.checkpointFile():
            self._withEngine(lambda: self.status.emit(self.preprocessingText()))

    def preprocessingText(self) -> str:
        """The preprocessing the loaded engine of the user's file runs with ("" for other models, before loading)."""
        path, engine = self.checkpointFile(), self.logic.engine
        if not path or self.engines.engineKey != self.readiness().engineKey or not hasattr(engine, "recipe"):
            return ""
        return preprocessingText(os.path.basename(path), Recipe(engine.recipe), self._recipe() == Recipe.AUTO.value)

    def modelStatusText(self) -> str:
        """The model section's line: what the model still needs, and for a user's file the preprocessing in use."""
        return " ".join(text for text in (self.readiness().statusText, self.preprocessingText()) if text)

    def download(self) -> None:
        """Download the chosen model's weights in the background."""
        spec = self.readiness().spec
        if spec.isDownloadable:
            self.engines.download(spec)

    def installDependencies(self) -> None:
        """Install the MedSAM/SAM Python packages in the background, after asking."""
        self.engines.installDependencies()

    def clearModelFolder(self) -> None:
        """Delete the downloaded weights, after asking."""
        folder = download.modelCacheFolder()
        if self.engines.confirm(f"Delete every downloaded model in {folder}?"):
            freed = download.clearModelCache()
            self.engines.forget()
            self.status.emit(f"Deleted {freed / 1e6:.0f} MB of model weights.")
            self.stateChanged.emit()

    def clearEmbeddings(self) -> None:
        """Forget the cached slice embeddings (they are encoded again when needed)."""
        self.logic.clearEmbeddings()
        self.status.emit("Embedding cache cleared.")

    def _withEngine(self, then: Callable[[], None], interactive: bool = True) -> None:
        self.engines.withEngine(self.modelId(), self.device, self.parameters.checkpointPath, then, interactive,
                                recipe=self._recipe())

    def _propagationSettings(self) -> PropagationSettings:
        """The stopping rules and box margin of the panel (propagation and fill)."""
        p = self.parameters
        return PropagationSettings(marginMm=p.marginMm, minScore=p.minScore, minIouWithPrevious=p.minIou,
                                   maxAreaRatio=p.maxAreaRatio)

    def _recipe(self) -> str:
        # The parameter node holds a Recipe; ModuleParameters filled by hand may hold its value.
        return enumValue(self.parameters.recipe)

    # ------------------------------------------------------------------ state

    def buttonStates(self) -> Dict[str, ButtonState]:
        """Enabled, checked and shown state of the module's buttons (and other widgets), from the volume, the model,
        the running job and Slicer's place mode (a right-click, the toolbar or the end of a box unchecks the prompt
        buttons)."""
        hasVolume = self.parameters.inputVolume is not None
        busy = self.runner.busy
        spec = getModelSpec(self.modelId())
        placing = self.placeMode.kind()
        states = {name: ButtonState(hasVolume, placing == kind) for kind, name in PROMPT_BUTTONS.items()}
        states.update({name: ButtonState(hasVolume and not busy) for name in PREVIEW_BUTTONS})
        keys = self.logic.session.acceptedSlices(self.logic.axis)
        states["fillButton"] = ButtonState(hasVolume and not busy and len(keys) > 1)  # a fill needs two keys
        states["applyButton"] = ButtonState(hasVolume and not busy and self.logic.lastResult is not None)
        states["undoButton"] = ButtonState(not busy and self.logic.canUndo)
        states["clearButton"] = ButtonState(hasVolume)
        states["cancelButton"] = ButtonState(busy)
        states["progressBar"] = ButtonState(True, visible=busy)
        for name in ("installDependenciesButton", "modelComboBox"):
            states[name] = ButtonState(not busy)
        states["downloadButton"] = ButtonState(not busy, visible=spec.isDownloadable)
        states["cancelDownloadButton"] = ButtonState(busy, visible=spec.isDownloadable)
        states["checkpointPathLineEdit"] = ButtonState(spec.kind == "file")
        # The preprocessing choice: shown for a user's file only, chosen once the file is.
        states["recipeLabel"] = ButtonState(True, visible=spec.kind == "file")
        states["recipeComboBox"] = ButtonState(not busy and self.checkpointFile() is not None, visible=spec.kind == "file")
        return states

    @property
    def idle(self) -> bool:
        """True when no job runs and no preview update waits (tests and the self-test wait for this)."""
        return not (self.runner.busy or self.previewDebouncer.pending or self._previewDirty)

    def cleanup(self) -> None:
        """Stop every timer, job and observer, and release the Logic's nodes (module cleanup, Reload)."""
        self.runner.stop()
        self.previewDebouncer.cancel()
        self.families.close()
        self.watcher.close()
        self.placeMode.close()
        for node, tag in self._sceneObservers:
            node.RemoveObserver(tag)
        self._sceneObservers = []
        self.logic.cleanup()

    def _runTask(self, title: str, prepare: Callable, interactive: bool = True) -> None:
        """prepare() reads MRML on the main thread and returns a job; job.run runs in the worker;
        logic.showResult writes the preview on the main thread."""
        if not self.syncLogicInputs():
            return
        try:
            job = prepare()
        except MedSAMError as error:
            if not interactive and self.logic.lastResult is not None and self.logic.lastResult.kind == "slice":
                self.logic.clearPreview()  # a slice preview of prompts that are no longer valid would mislead
            self._report(error, interactive)
            return
        self.runner.start(Task(title, job.run, self.logic.showResult, interactive=interactive))

    def _report(self, error: MedSAMError, interactive: bool) -> None:
        self.status.emit(str(error))
        if interactive:
            self.error.emit(str(error))

    def _onBusyChanged(self) -> None:
        self.stateChanged.emit()
        if not self.runner.busy:
            self.families.request(self.checkpointFile())  # a read that waited for the runner
        if not self.runner.busy and self._previewDirty:  # prompts changed while the worker was busy
            self._previewDirty = False
            self.previewDebouncer.trigger()

    def _onSceneStartClose(self, caller, event) -> None:
        """The scene closes: stop work on its nodes (a download or an install goes on) and forget them."""
        self.runner.cancel(sceneBoundOnly=True)
        self.previewDebouncer.cancel()
        self._previewDirty = False
        self.placeMode.stop()
        self.watcher.close()
        self.lastSliceNode = None

