"""What a chosen model needs before it can run, in the order the model manager resolves it. Qt-free.

A model needs, in turn: its Python packages (torch, segment-anything; not for
the weight-free engine), its weights (downloaded into the model folder, or a
file the user picks), then an engine loaded on a device. The module panel asks
this module what is missing and shows ``statusText``.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from . import dependencies, download
from .enginefactory import AUTO_RECIPE
from .registry import ModelSpec, getModelSpec


@dataclass(frozen=True)
class ModelReadiness:
    """What stands between a model choice and a loaded engine.

    missingPackages: import names to install first. needsDownload: official
    weights not yet in the model folder. needsFile: the custom model has no
    checkpoint file. engineKey: identity of the engine to load (model, device,
    file, recipe): equal keys mean the loaded engine can be reused.
    """

    spec: ModelSpec
    missingPackages: tuple
    needsDownload: bool
    needsFile: bool
    engineKey: tuple

    @property
    def ready(self) -> bool:
        """True when an engine can be created now."""
        return not (self.missingPackages or self.needsDownload or self.needsFile)

    @property
    def statusText(self) -> str:
        """One line for the panel: ready, or what to do next (and where weights go without network)."""
        spec = self.spec
        if self.missingPackages:
            return f"{spec.displayName} needs Python packages ({', '.join(self.missingPackages)}): click 'Install Python packages'."
        if self.needsFile:
            return "Choose a SAM-family checkpoint file (.pth) for the custom model."
        if self.needsDownload:
            size = f", {spec.sizeBytes / 1e6:.0f} MB" if spec.sizeBytes else ""
            return (f"Weights not downloaded yet ({spec.fileName}{size}): click Download. Without network, "
                    f"copy {spec.fileName} into {download.modelCacheFolder()}.")
        if not spec.needsWeights:
            return f"{spec.displayName}: ready, needs no download and no GPU."
        if spec.kind == "file":
            return f"{spec.displayName}: {self.engineKey[2]}"
        return f"{spec.displayName}: ready ({download.modelPath(spec)})."


def modelReadiness(modelId: str, device: str = "auto", checkpointPath: Optional[str] = None,
                   importable: Callable[[str], bool] = dependencies.isImportable,
                   recipe: Optional[str] = None) -> ModelReadiness:
    """Check what ``modelId`` (a registry id or alias) needs before createEngine can build it.

    checkpointPath, recipe: the file for the custom model and its preprocessing
    (createEngine's recipe; None or "auto": automatic); both ignored for the others.
    importable: ``moduleName -> bool`` (injected by tests). Raises InputError
    for an unknown model id. Touches no file beyond the model folder listing.
    """
    spec = getModelSpec(modelId)
    checkpoint = (checkpointPath or None) if spec.kind == "file" else None
    recipe = (recipe or AUTO_RECIPE) if spec.kind == "file" else None
    missing = ()
    if spec.needsWeights:
        status = dependencies.checkDependencies(importable=importable)
        missing = tuple(status.missingTorch + [dependencies.importName(r) for r in status.missingRequirements])
    return ModelReadiness(
        spec=spec,
        missingPackages=missing,
        needsDownload=spec.isDownloadable and not download.isModelCached(spec),
        needsFile=spec.kind == "file" and not checkpoint,
        engineKey=(spec.modelId, device, checkpoint, recipe),
    )
