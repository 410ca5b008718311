"""Get the chosen model running before a job needs it: packages, weights, engine, each in the background. No Qt.

A model needs, in turn, its Python packages (installed after the user
confirms once), its weights (downloaded, resumable, checksum verified) and an
engine loaded on a device (models/modelmanager.modelReadiness says which step
is missing). Every step that takes time runs as a JobRunner task, so the window
stays usable; installs and downloads are not bound to the scene (closing the
scene does not cancel them). A live preview never asks or downloads: it only
says what to do.
"""

from typing import Callable, Optional, Tuple

from ..core.progress import Signal
from ..models import dependencies, download, enginefactory
from ..models.modelmanager import ModelReadiness, modelReadiness
from .jobrunner import JobRunner, Task

NEEDS_PACKAGES = "MedSAM/SAM need Python packages: click 'Install Python packages' in the Model section."


class EngineLoader:
    """Bring ``logic``'s engine to the chosen model, then run what needed it.

    confirm(text) -> bool asks the user (the module passes a dialog; default:
    yes). Signal: status(text). ``engineKey`` identifies the loaded engine.
    """

    def __init__(self, logic, runner: JobRunner, confirm: Callable[[str], bool] = lambda text: True):
        self.logic = logic
        self.runner = runner
        self.confirm = confirm
        self.status = Signal()
        self.engineKey = None
        self.dependenciesDeclined = False
        #: Keyword arguments for dependencies.checkDependencies/ensureDependencies (requirements, importable,
        #: torchInstaller, pipInstaller); empty: Resources/requirements.txt, PyTorchUtils and pip, as in Slicer.
        self.dependencyOptions = {}

    def readiness(self, modelId: str, device: str, checkpointPath: Optional[str],
                  recipe: Optional[str] = None) -> ModelReadiness:
        """What the model still needs (models/modelmanager.modelReadiness)."""
        return modelReadiness(modelId, device, checkpointPath or None, recipe=recipe)

    def withEngine(self, modelId: str, device: str, checkpointPath: Optional[str], then: Callable[[], None],
                   interactive: bool = True, recipe: Optional[str] = None) -> None:
        """Call ``then()`` once the model's engine is loaded; the missing steps run first, in the background.

        recipe: the preprocessing of a checkpoint file (createEngine's; a new one loads the file again).
        Not interactive (live preview): nothing is asked or downloaded, the status says what to do.
        """
        readiness = self.readiness(modelId, device, checkpointPath, recipe)
        if self.engineKey == readiness.engineKey:
            then()
            return
        again = lambda *ignored: self.withEngine(modelId, device, checkpointPath, then, interactive, recipe)  # noqa: E731
        if readiness.missingPackages:
            if interactive and not self.dependenciesDeclined:
                self.installDependencies(then=again)
            else:
                self.status.emit(NEEDS_PACKAGES)
            return
        if readiness.needsFile or (readiness.needsDownload and not interactive):
            self.status.emit(readiness.statusText)
            return
        if readiness.needsDownload:
            self.download(readiness.spec, then=again)
            return
        self._load(readiness, then)

    def installDependencies(self, then: Optional[Callable[[], None]] = None) -> bool:
        """Ask once, then install torch and segment-anything in the background; ``then()`` afterwards.

        Returns False when nothing was started (declined, already installed, or busy).
        """
        options = self.dependencyOptions
        status = dependencies.checkDependencies(options.get("requirements"), options.get("importable", dependencies.isImportable))
        if status.ok:
            self.status.emit("The Python packages for MedSAM and SAM are installed.")
            if then is not None:
                then()
            return False
        if not self.confirm(status.describe()):
            self.dependenciesDeclined = True
            self.status.emit("Installation declined; nothing was installed. GrowCut works without these packages.")
            return False
        self.dependenciesDeclined = False

        def work(progress, cancel):
            # The user already said yes. In Slicer the installers read pip's output line by line and call
            # slicer.app.processEvents() (slicer.util.logProcessOutput, 5.10): on a thread without a Qt event
            # loop that returns at once (QCoreApplication::processEvents), and the window stays usable meanwhile.
            return dependencies.ensureDependencies(lambda text: True, progress=progress, **options)

        def installed(result):
            self.status.emit("The Python packages for MedSAM and SAM are installed.")
            if then is not None:
                then()

        return self.runner.start(Task("Installing Python packages", work, installed, interactive=True, sceneBound=False))

    def download(self, spec, then: Optional[Callable[[object], None]] = None) -> bool:
        """Download ``spec``'s weights in the background (resumable, checksum verified), then ``then(path)``."""
        def downloaded(path):
            self.status.emit(f"{spec.displayName} is ready: {path}")
            if then is not None:
                then(path)

        return self.runner.start(Task(f"Downloading {spec.displayName}", lambda progress, cancel: download.ensureModel(
            spec, progress=progress, cancel=cancel), downloaded, interactive=True, sceneBound=False))

    def forget(self) -> None:
        """The loaded engine no longer matches what is on disk (weights deleted): load again at next use."""
        self.engineKey = None

    def _load(self, readiness: ModelReadiness, then: Callable[[], None]) -> None:
        modelId, device, checkpoint, recipe = readiness.engineKey

        def loaded(engine):
            self.logic.setEngine(engine)
            self.engineKey = readiness.engineKey
            then()

        self.runner.start(Task(f"Loading {readiness.spec.displayName}", lambda progress, cancel: enginefactory.createEngine(
            modelId, device=device, checkpointPath=checkpoint, recipe=recipe), loaded, interactive=True, sceneBound=False))


def dependencyStatusLine() -> Tuple[str, bool]:
    """(one line for the panel: the MedSAM/SAM packages are installed, or which are missing; True when installed)."""
    status = dependencies.checkDependencies()
    missing = status.missingTorch + status.missingRequirements
    return "MedSAM/SAM packages: " + ("installed" if status.ok else "missing " + ", ".join(missing)), status.ok
