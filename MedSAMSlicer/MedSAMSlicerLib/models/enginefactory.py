"""Create an engine by name: "growcut", a registry model ("medsam", "sam_vit_b", ...) or a checkpoint file.

Never downloads: a registry model whose weights are not cached gives a
DownloadError saying how to get them (`medsam-slicer download medsam`, the
module's Download button, or copying the file into the cache folder).
"""

from pathlib import Path
from typing import Optional

from ..core.errors import DownloadError, InputError
from .registry import getModelSpec, modelNames

DEFAULT_SAM_MODEL = "medsam"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def engineNames() -> list:
    """Every name createEngine accepts besides a file path: "auto", registry ids and aliases."""
    return ["auto"] + modelNames()


def defaultModelName() -> str:
    """"medsam" when its weights are in the model cache, else the weight-free "growcut"."""
    from .download import isModelCached

    return DEFAULT_SAM_MODEL if isModelCached(getModelSpec(DEFAULT_SAM_MODEL)) else "growcut"


def _looksLikePath(name) -> bool:
    text = str(name)
    return isinstance(name, Path) or Path(text).suffix.lower() in CHECKPOINT_SUFFIXES or "/" in text or "\\" in text


def _recipeForFile(path: Path, recipe: Optional[str]) -> str:
    """The recipe for a user's checkpoint: the override, else "medsam" for a MedSAM fine-tune by name, else "sam"."""
    if recipe:
        return recipe
    return "medsam" if "medsam" in path.name.lower() else "sam"


def createEngine(name: str = "auto", device: str = "auto", checkpointPath=None, recipe: Optional[str] = None,
                 **engineOptions):
    """Build the engine called ``name``.

    name: "auto" (defaultModelName()), "growcut", a registry id or alias
    ("medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"), "custom" (with
    checkpointPath), or a checkpoint file path. checkpointPath: use this file
    instead of the cached one (architecture checked against the registry's, or
    detected for custom files). recipe: "medsam"/"sam" override for files
    (default "sam" unless the registry entry or the file name says MedSAM).
    engineOptions go to SamEngine (batchSize, modelName, ...).
    Raises InputError (unknown name, missing file), DownloadError (weights not
    cached), CheckpointError (bad file), DependencyError (no torch).
    """
    if name is None or str(name).lower() == "auto":
        name = defaultModelName()
    if _looksLikePath(name) and str(name).lower() not in {n.lower() for n in modelNames()}:
        return _engineFromFile(Path(name), device, recipe, None, engineOptions)
    try:
        spec = getModelSpec(name)
    except InputError:
        raise InputError(f"Unknown engine {name!r}. Choose one of: {', '.join(engineNames())}, "
                         "or give the path of a checkpoint file (.pth).") from None
    if spec.kind == "builtin":
        from ..engines.growcutengine import GrowCutEngine

        return GrowCutEngine()
    if spec.kind == "file" or checkpointPath is not None:
        if checkpointPath is None:
            raise InputError("The custom model needs a checkpoint file: give its path (checkpointPath).")
        return _engineFromFile(Path(checkpointPath), device, recipe or (spec.recipe if spec.kind != "file" else None),
                               spec, engineOptions)
    from .download import isModelCached, modelPath, requireIntactModel

    path = modelPath(spec)
    requireIntactModel(spec)  # a damaged file gets the one message with the way out, not "not downloaded"
    if not isModelCached(spec):
        size = f", {spec.sizeBytes / 1e6:.0f} MB" if spec.sizeBytes else ""
        raise DownloadError(
            f"The weights of {spec.displayName} ({spec.fileName}{size}) are not in the model cache {path.parent}. "
            f"Download them with `medsam-slicer download {spec.aliases[0] if spec.aliases else spec.modelId}` or the "
            f"module's Download button, or download {' or '.join(spec.urls)} by hand and put the file there. "
            "Meanwhile the weight-free 'growcut' engine works without them.")
    return _samEngine(path, recipe or spec.recipe, spec.architecture, device, spec, engineOptions)


def _engineFromFile(path: Path, device: str, recipe: Optional[str], spec, engineOptions):
    if not path.is_file():
        raise InputError(f"Checkpoint file not found: {path}. Check the path.")
    architecture = spec.architecture if spec is not None and spec.kind == "download" else None
    return _samEngine(path, _recipeForFile(path, recipe), architecture, device, spec, engineOptions)


def _samEngine(path: Path, recipe: str, architecture, device: str, spec, engineOptions):
    from ..engines.samengine import SamEngine

    options = dict(engineOptions)
    if spec is not None and spec.kind == "download":
        options.setdefault("modelName", spec.modelId)
        options.setdefault("displayName", spec.displayName)
    else:
        options.setdefault("modelName", f"{path.stem}_{recipe}")
    return SamEngine(path, recipe=recipe, architecture=architecture, device=device, **options)
