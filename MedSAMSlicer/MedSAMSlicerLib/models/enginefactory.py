"""Create an engine by name: "growcut", a registry model ("medsam", "sam_vit_b", ...) or a checkpoint file.

Never downloads: a registry model whose weights are not cached gives a
DownloadError saying how to get them (`medsam-slicer download medsam`, the
module's Download button, or copying the file into the cache folder).
"""

from pathlib import Path
from typing import Optional

from ..core.errors import DownloadError, InputError
from .registry import RECIPES, SAM2_RECIPES, getModelSpec, modelNames

DEFAULT_SAM_MODEL = "medsam"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: The recipe value that means "as createEngine would choose without one" (the same as None).
AUTO_RECIPE = "auto"


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


def fileRecipes(sam2: bool) -> tuple:
    """The recipes a checkpoint file of one family can run with, MedSAM's first: ("medsam", "sam") for a
    SAM / MedSAM (ViT) file, ("medsam2", "sam2") for a SAM 2.1 / MedSAM2 (Hiera) file."""
    return SAM2_RECIPES if sam2 else tuple(r for r in RECIPES if r not in SAM2_RECIPES and r != "none")


def recipesForFile(path) -> tuple:
    """fileRecipes of the family the checkpoint at ``path`` belongs to, judged from its parameter names.

    Reads only the names (a memory-mapped load; needs torch). Raises InputError
    (no such file), CheckpointError (unreadable), DependencyError (no torch).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint file not found: {path}. Check the path.")
    from ..engines.sam2checkpoints import isSam2Checkpoint

    return fileRecipes(isSam2Checkpoint(path))


def _recipeForFile(path: Path, recipe: Optional[str], sam2: bool = False) -> str:
    """The recipe for a user's checkpoint: the override, else "medsam" ("medsam2" for a SAM 2 file) for a
    MedSAM fine-tune by name, else "sam" ("sam2"). InputError when the override is of the other family."""
    family = fileRecipes(sam2)
    if recipe:
        if recipe not in family:
            kind = "a SAM 2.1 / MedSAM2 (Hiera)" if sam2 else "a SAM / MedSAM (ViT)"
            raise InputError(f"{path.name} is {kind} checkpoint: its recipe is one of {', '.join(family)}, "
                             f"not {recipe!r}.")
        return recipe
    return family[0] if "medsam" in path.name.lower() else family[1]


def createEngine(name: str = "auto", device: str = "auto", checkpointPath=None, recipe: Optional[str] = None,
                 **engineOptions):
    """Build the engine called ``name``.

    name: "auto" (defaultModelName()), "growcut", a registry id or alias
    ("medsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam2", "sam2.1_hiera_t",
    ...), "custom" (with checkpointPath), or a checkpoint file path.
    checkpointPath: use this file instead of the cached one (architecture
    checked against the registry's, or detected for custom files). recipe:
    override for files: "medsam"/"sam" for SAM files, "medsam2"/"sam2" for SAM 2
    files (recognised from their keys); None or "auto": "sam"/"sam2" unless the
    registry entry or the file name says MedSAM. engineOptions go to SamEngine or
    Sam2Engine (batchSize, modelName, ...).
    Raises InputError (unknown name, missing file), DownloadError (weights not
    cached), CheckpointError (bad file), DependencyError (no torch).
    """
    if name is None or str(name).lower() == "auto":
        name = defaultModelName()
    if recipe == AUTO_RECIPE:
        recipe = None
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
    from ..engines.sam2checkpoints import isSam2Checkpoint

    architecture = spec.architecture if spec is not None and spec.kind == "download" else None
    sam2 = isSam2Checkpoint(path)
    if spec is not None and spec.kind == "download" and spec.isSam2 != sam2:
        raise InputError(f"{path.name} is not a {spec.displayName} checkpoint (it is a "
                         f"{'SAM 2' if sam2 else 'SAM'} model): choose the matching model or file.")
    return _samEngine(path, _recipeForFile(path, recipe, sam2), architecture, device, spec, engineOptions)


def _samEngine(path: Path, recipe: str, architecture, device: str, spec, engineOptions):
    options = dict(engineOptions)
    if spec is not None and spec.kind == "download":
        options.setdefault("modelName", spec.modelId)
        options.setdefault("displayName", spec.displayName)
    else:
        options.setdefault("modelName", f"{path.stem}_{recipe}")
    if recipe in SAM2_RECIPES:
        from ..engines.sam2engine import Sam2Engine

        return Sam2Engine(path, recipe=recipe, architecture=architecture, device=device, **options)
    from ..engines.samengine import SamEngine

    return SamEngine(path, recipe=recipe, architecture=architecture, device=device, **options)
