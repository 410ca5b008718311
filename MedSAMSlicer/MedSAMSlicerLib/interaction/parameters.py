"""The module's settings as the controller reads them, and the words the panel shows for each choice. No Qt.

The Slicer module stores these in its parameter node (a @parameterNodeWrapper
class in MedSAMSlicer.py with the same field names, saved with the scene);
headless front ends and tests use ModuleParameters. The controller only reads
and sets attributes, so either works. Choices are enums whose ``label()`` is
what a clinician reads in the combo box (Slicer's QComboBoxToEnumConnector
shows ``label``, Slicer 5.10) and whose ``value`` is what the library takes.
"""

import enum
from dataclasses import dataclass
from typing import Any, Optional

from ..workflow.propagation import PropagationSettings


class Intensity(enum.Enum):
    """How voxel values map to the model's input (values: IntensityPolicy.parse strings; "display": the viewer's)."""

    AUTO = "auto"
    CT_SOFT_TISSUE = "ct:soft tissue"
    CT_ABDOMEN = "ct:abdomen"
    CT_LUNG = "ct:lung"
    CT_BONE = "ct:bone"
    CT_BRAIN = "ct:brain"
    PERCENTILE = "percentile"
    DISPLAY = "display"

    def label(self) -> str:
        """The words the combo box shows."""
        return _INTENSITY_LABELS[self]


_INTENSITY_LABELS = {
    Intensity.AUTO: "Automatic (CT window for CT, percentiles otherwise)",
    Intensity.CT_SOFT_TISSUE: "CT soft tissue",
    Intensity.CT_ABDOMEN: "CT abdomen",
    Intensity.CT_LUNG: "CT lung",
    Intensity.CT_BONE: "CT bone",
    Intensity.CT_BRAIN: "CT brain",
    Intensity.PERCENTILE: "MR and others (0.5-99.5 percentiles)",
    Intensity.DISPLAY: "As shown in the viewer (window/level)",
}


class ApplyMode(enum.Enum):
    """What Apply does with the preview (values: the modes MedSAMLogic.apply takes)."""

    REPLACE_SLICES = "replaceSlices"
    ADD = "add"
    REMOVE = "remove"
    SET = "set"

    def label(self) -> str:
        """The words the combo box shows."""
        return _APPLY_LABELS[self]


_APPLY_LABELS = {
    ApplyMode.REPLACE_SLICES: "Replace the previewed slices",
    ApplyMode.ADD: "Add to the segment",
    ApplyMode.REMOVE: "Erase from the segment",
    ApplyMode.SET: "Replace the whole segment",
}


class Recipe(enum.Enum):
    """The preprocessing of a user's checkpoint file (values: the recipes models.enginefactory.createEngine takes;
    "auto": as it chooses without one, from the file's family and name)."""

    AUTO = "auto"
    MEDSAM = "medsam"
    SAM = "sam"
    MEDSAM2 = "medsam2"
    SAM2 = "sam2"

    def label(self) -> str:
        """The words the combo box shows."""
        return _RECIPE_LABELS[self]


_RECIPE_LABELS = {
    Recipe.AUTO: "Automatic (MedSAM or MedSAM2 if the file name says MedSAM, else SAM or SAM 2.1)",
    Recipe.MEDSAM: "MedSAM (image stretched to 1024 x 1024, values scaled to 0-1)",
    Recipe.SAM: "SAM (longest side 1024, padded, SAM's pixel mean and std)",
    Recipe.MEDSAM2: "MedSAM2 (512 x 512, ImageNet mean and std)",
    Recipe.SAM2: "SAM 2.1 (1024 x 1024, ImageNet mean and std)",
}


@dataclass
class ModuleParameters:
    """The settings the controller works from; node fields hold MRML nodes (or None).

    recipe: the preprocessing of the custom model's file (ignored for the other
    models). Start/End slices of -1 mean no limit; rangeFromBox: a box the user made
    3D (resized in another view) limits propagation.
    """

    inputVolume: Any = None
    segmentation: Any = None
    segmentId: str = ""
    model: str = ""
    checkpointPath: str = ""
    recipe: Recipe = Recipe.AUTO
    intensity: Intensity = Intensity.AUTO
    livePreview: bool = True
    applyMode: ApplyMode = ApplyMode.REPLACE_SLICES
    rangeFromBox: bool = True
    rangeStart: int = -1
    rangeEnd: int = -1
    marginMm: float = PropagationSettings.marginMm
    minScore: float = PropagationSettings.minScore
    minIou: float = PropagationSettings.minIouWithPrevious
    maxAreaRatio: float = PropagationSettings.maxAreaRatio
    roiNode: Optional[Any] = None
    positiveNode: Optional[Any] = None
    negativeNode: Optional[Any] = None
