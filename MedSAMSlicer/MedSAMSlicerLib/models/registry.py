"""The model registry: which models exist, where their weights come from, how to preprocess for them.

The registry is declarative (Resources/Models.json) so a new checkpoint needs no
code change. Plain Python: no torch, no Slicer.
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..core.errors import InputError

REGISTRY_PATH = Path(__file__).resolve().parents[2] / "Resources" / "Models.json"
RECIPES = ("medsam", "sam", "medsam2", "sam2", "none")
#: Recipes of SAM 2-family models (Sam2Engine, memory propagation); the others are SamEngine's.
SAM2_RECIPES = ("medsam2", "sam2")
ARCHITECTURES = ("vit_b", "vit_l", "vit_h", "hiera_t", "hiera_s", "hiera_b+", "hiera_l")
KINDS = ("download", "file", "builtin")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of Models.json.

    modelId: registry id ("medsam_vit_b"); aliases: other accepted names ("medsam").
    kind: "download" (official weights, cached), "file" (a checkpoint the user picks),
    "builtin" (weight-free). fileName/sizeBytes/sha256/urls describe the official
    file (None / () when unknown or not applicable). architecture: "vit_b",
    "vit_l", "vit_h" (SAM), "hiera_t", "hiera_s", "hiera_b+", "hiera_l" (SAM 2.1) or
    None (detected from the file). recipe: "medsam", "sam", "medsam2", "sam2" or "none".
    """

    modelId: str
    displayName: str
    kind: str
    recipe: str
    architecture: Optional[str] = None
    fileName: Optional[str] = None
    sizeBytes: Optional[int] = None
    sha256: Optional[str] = None
    urls: Tuple[str, ...] = ()
    licence: str = ""
    homepage: Optional[str] = None
    description: str = ""
    aliases: Tuple[str, ...] = ()

    @property
    def needsWeights(self) -> bool:
        """True when the model runs on a checkpoint file (everything but weight-free engines)."""
        return self.kind != "builtin"

    @property
    def isSam2(self) -> bool:
        """True for a SAM 2-family model (SAM 2.1, MedSAM2): it propagates with a memory."""
        return self.recipe in SAM2_RECIPES

    @property
    def isDownloadable(self) -> bool:
        """True when the registry knows where to download the weights from."""
        return self.kind == "download" and bool(self.urls) and bool(self.fileName)


def _specFromEntry(entry: dict, source: Path) -> ModelSpec:
    """Validate one JSON entry and turn it into a ModelSpec (InputError naming the entry if malformed)."""
    modelId = entry.get("id")
    problems = []
    if not isinstance(modelId, str) or not modelId:
        problems.append("missing 'id'")
    if entry.get("kind") not in KINDS:
        problems.append(f"'kind' must be one of {KINDS}")
    if entry.get("recipe") not in RECIPES:
        problems.append(f"'recipe' must be one of {RECIPES}")
    architecture = entry.get("architecture")
    if architecture is not None and architecture not in ARCHITECTURES:
        problems.append(f"'architecture' must be one of {ARCHITECTURES} or null")
    sha256 = entry.get("sha256")
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        problems.append("'sha256' must be 64 lowercase hex digits or null")
    if entry.get("kind") == "download" and not entry.get("fileName"):
        problems.append("a 'download' model needs a 'fileName'")
    if problems:
        raise InputError(f"The model registry {source} has a bad entry {modelId!r}: {'; '.join(problems)}. "
                         "Fix the file or reinstall the extension.")
    return ModelSpec(
        modelId=modelId,
        displayName=entry.get("displayName") or modelId,
        kind=entry["kind"],
        recipe=entry["recipe"],
        architecture=architecture,
        fileName=entry.get("fileName"),
        sizeBytes=entry.get("sizeBytes"),
        sha256=sha256,
        urls=tuple(entry.get("urls") or ()),
        licence=entry.get("licence") or "",
        homepage=entry.get("homepage"),
        description=entry.get("description") or "",
        aliases=tuple(entry.get("aliases") or ()),
    )


def loadRegistry(path: Optional[Path] = None) -> Dict[str, ModelSpec]:
    """Read Models.json and return {modelId: ModelSpec} in file order.

    path: another registry file (tests); default REGISTRY_PATH. The default
    registry is read once per process. Raises InputError when the file is
    missing or malformed.
    """
    if path is None:
        return dict(_loadDefaultRegistry())
    return _readRegistry(Path(path))


@lru_cache(maxsize=1)
def _loadDefaultRegistry() -> Tuple[Tuple[str, ModelSpec], ...]:
    return tuple(_readRegistry(REGISTRY_PATH).items())


def _readRegistry(path: Path) -> Dict[str, ModelSpec]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"The model registry {path} is missing; reinstall the extension.") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"The model registry {path} cannot be read ({exc}); reinstall the extension.") from None
    specs: Dict[str, ModelSpec] = {}
    for entry in document.get("models", []):
        spec = _specFromEntry(entry, path)
        if spec.modelId in specs:
            raise InputError(f"The model registry {path} lists {spec.modelId!r} twice; keep one entry.")
        specs[spec.modelId] = spec
    return specs


def modelNames(registry: Optional[Dict[str, ModelSpec]] = None) -> list:
    """Every name getModelSpec accepts: ids and aliases, in registry order."""
    registry = registry if registry is not None else loadRegistry()
    names = []
    for spec in registry.values():
        names.append(spec.modelId)
        names.extend(spec.aliases)
    return names


def getModelSpec(modelId: str, registry: Optional[Dict[str, ModelSpec]] = None) -> ModelSpec:
    """The ModelSpec for an id or alias ("medsam" -> medsam_vit_b), case-insensitive.

    Raises InputError listing the valid names when the id is unknown.
    """
    registry = registry if registry is not None else loadRegistry()
    wanted = str(modelId).strip().lower()
    for spec in registry.values():
        if wanted == spec.modelId.lower() or wanted in (alias.lower() for alias in spec.aliases):
            return spec
    raise InputError(f"Unknown model {modelId!r}. Valid models: {', '.join(modelNames(registry))}.")
