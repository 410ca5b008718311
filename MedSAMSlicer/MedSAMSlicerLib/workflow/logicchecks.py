"""Argument and scene checks for MedSAMLogic: wrong types and ranges, and nodes that left the scene.

The Logic is driven from the Python console too, where anything can be passed
and any node removed at any time. Each check raises InputError (a MedSAMError)
saying what was expected and what was given, instead of an AttributeError deep
inside; forgetRemovedNodes() makes the Logic drop every node that is no longer
in its scene (vtkMRMLScene::RemoveNode sets the node's scene to None), so a
removed ROI is never used again and an undo history never outlives its
segmentation. No Qt.
"""

import math
import numbers
import os

from ..core.errors import InputError

VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")


def describe(value) -> str:
    """A short description of what was given, for messages ("a str 'abc'", "a vtkMRMLModelNode 'Model'")."""
    if hasattr(value, "GetClassName"):
        name = value.GetName() if hasattr(value, "GetName") else None
        return f"a {value.GetClassName()}" + (f" '{name}'" if name else "")
    shown = repr(value)
    return f"a {type(value).__name__} {shown[:40]}"


def requireNode(node, classNames, role: str, scene, optional: bool = True):
    """``node`` when it is an MRML node of one of ``classNames`` in ``scene`` (None passes when optional).

    Raises InputError for another type, or a node removed from (or never in) the scene.
    """
    if node is None:
        if optional:
            return None
        raise InputError(f"No {role} given: select a {' or '.join(classNames)}.")
    if not hasattr(node, "IsA") or not any(node.IsA(name) for name in classNames):
        raise InputError(f"The {role} must be a {' or '.join(classNames)}; got {describe(node)}.")
    if node.GetScene() is not scene:
        raise InputError(f"The {role} '{node.GetName()}' is not in the Logic's scene (removed, or from another "
                         "scene): select one that is in the scene.")
    return node


def requireVolumeArguments(scene, volumeNode, policy) -> None:
    """setVolume's arguments: a scalar or vector volume node in ``scene``, an IntensityPolicy or None."""
    from ..imaging.intensity import IntensityPolicy

    requireNode(volumeNode, VOLUME_CLASSES, "volume", scene)
    requireInstance(policy, IntensityPolicy, "intensity policy")


def requirePromptNodes(scene, roiNode, positiveNode, negativeNode) -> None:
    """setPromptNodes' arguments: an ROI markup and two point lists in ``scene``, each optional."""
    requireNode(roiNode, ("vtkMRMLMarkupsROINode",), "ROI", scene)
    for node, role in ((positiveNode, "positive points"), (negativeNode, "negative points")):
        requireNode(node, ("vtkMRMLMarkupsFiducialNode",), role, scene)


def requireModelArguments(name, device, checkpointPath) -> None:
    """setModel's arguments: a model name or path (or None), a device name, a checkpoint path or None."""
    requireInstance(name, (str, os.PathLike), "model name or checkpoint path")
    requireInstance(device, str, "device")
    requireInstance(checkpointPath, (str, os.PathLike), "checkpoint path")


def requireInteger(value, role: str, low: int, high: int) -> int:
    """``value`` as an int when it is an integer (not a bool) in [low, high]; InputError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"The {role} must be a whole number from {low} to {high}; got {describe(value)}.")
    if not low <= int(value) <= high:
        raise InputError(f"The {role} {int(value)} is out of range: give a number from {low} to {high}.")
    return int(value)


def requireAxis(axis) -> int:
    """The IJK axis as an int (0 = I, 1 = J, 2 = K); InputError for anything else."""
    return requireInteger(axis, "slice axis (0 = I, 1 = J, 2 = K)", 0, 2)


def requireSliceRange(sliceRange, count: int):
    """(k0, k1) inclusive and within 0..count-1, k0 <= k1, or None; InputError otherwise."""
    if sliceRange is None:
        return None
    try:
        k0, k1 = sliceRange
    except (TypeError, ValueError):
        raise InputError(f"The slice range must be a pair (first, last) of slice numbers; got {describe(sliceRange)}.") from None
    k0 = requireInteger(k0, "first slice of the range", 0, count - 1)
    k1 = requireInteger(k1, "last slice of the range", 0, count - 1)
    if k0 > k1:
        raise InputError(f"The slice range ({k0}, {k1}) is reversed: give (first, last) with first <= last.")
    return k0, k1


def requireInstance(value, classes, role: str, optional: bool = True):
    """``value`` when it is an instance of ``classes`` (None passes when optional); InputError otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, classes):
        names = " or ".join(cls.__name__ for cls in (classes if isinstance(classes, tuple) else (classes,)))
        raise InputError(f"The {role} must be a {names}; got {describe(value)}.")
    return value


def requirePositiveNumber(value, role: str) -> float:
    """``value`` as a float when it is a finite number > 0; InputError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InputError(f"The {role} must be a positive number; got {describe(value)}.")
    return float(value)


def requireEngine(engine):
    """``engine`` when it has the Engine interface (encode, decode, modelId); InputError otherwise."""
    if not all(callable(getattr(engine, name, None)) for name in ("encode", "decode")) or not hasattr(engine, "modelId"):
        raise InputError(f"The engine must implement MedSAMSlicer's Engine interface (encode, decode, modelId); got "
                         f"{describe(engine)}. Use setModel(name) to build one.")
    return engine


def requireCancelToken(cancel):
    """``cancel`` when it is None or a CancelToken-like object (raiseIfCancelled); InputError otherwise."""
    if cancel is not None and not callable(getattr(cancel, "raiseIfCancelled", None)):
        raise InputError(f"cancel must be a CancelToken (core.progress) or None; got {describe(cancel)}.")
    return cancel


def _gone(node, scene) -> bool:
    return node is not None and node.GetScene() is not scene


def forgetRemovedNodes(logic) -> list:
    """Make ``logic`` drop every node that left its scene; returns the roles dropped (e.g. ["volume", "ROI"]).

    Prompt nodes are dropped with their observers. A removed segmentation is
    dropped with its undo history (the preview stays; apply() writes into a
    new segmentation). A removed volume is dropped with its preview and slices.
    """
    dropped = []
    prompts = {"roiNode": "ROI", "positiveNode": "positive points", "negativeNode": "negative points"}
    for attribute, role in prompts.items():
        node = getattr(logic, attribute)
        if _gone(node, logic.scene):
            setattr(logic, attribute, None)
            stale = [(owner, tag) for owner, tag in logic._markupObservers if owner is node]
            logic._removeObservers(stale)
            logic._markupObservers = [entry for entry in logic._markupObservers if entry[0] is not node]
            dropped.append(role)
    for attribute, role in (("sliceNode", "slice view"), ("segmentEditorNode", "segment editor settings")):
        if _gone(getattr(logic, attribute), logic.scene):
            setattr(logic, attribute, None)
            dropped.append(role)
    if _gone(logic.segmentationNode, logic.scene):
        logic.segmentationNode = logic.segmentId = None
        if logic.writer is not None:
            logic.writer.setSegmentationNode(None)  # its undo states belong to the removed node
        dropped.append("segmentation")
    if _gone(logic.volumeNode, logic.scene):
        logic._removeObservers(logic._volumeObservers)
        if logic.writer is not None:
            logic.writer.close()
            logic.writer = None
        logic.volumeNode = logic.source = logic.lastResult = None
        logic.previewChanged.emit()
        dropped.append("volume")
    return dropped
