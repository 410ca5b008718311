"""The `medsam-slicer` commands: segment, evaluate, models, download.

Every command builds a real MRML scene (slicer-core), reads the image into a
volume node, turns the command line's prompts into markups nodes (an ROI for
the box, fiducials for points) and runs the same MedSAMLogic as the Slicer
module, so the CLI exercises the module's geometry code. Parsing and checks
that need no image live in main.py.
"""

import json
import os
import sys
import time

import numpy as np

from .options import AXES
from ..core.errors import DownloadError, InputError, PromptError
from ..mrml.imageio import checkOutputHoldsGeometry, checkOutputPath, readImage, writeLabelmap, writeSegmentation
from ..mrml.volumegeometry import dimensionsIjk, ijkToRas, ijkToWorld, rasToIjk

WEIGHT_FREE_MODEL = "growcut"


def info(message: str) -> None:
    """One human-readable status line on stderr (stdout is kept for results and --json)."""
    print(message, file=sys.stderr, flush=True)


def newScene(args):
    """A headless MRML scene for one command; native libraries' messages silenced unless --debug."""
    from ..mrml.headlessscene import createHeadlessScene, silenceNativeMessages

    scene = createHeadlessScene()
    if not getattr(args, "debug", False):
        silenceNativeMessages()
    return scene


# ---------------------------------------------------------------- models


def resolveModel(value):
    """(modelName, checkpointPath or None, note or None) for --model, checked before any image is read.

    value None: engines.defaultModelName() (MedSAM when cached, else the
    weight-free engine; the note says so, for announceModel after success, so
    that an input error stays the only stderr line). A path to an existing file
    is a custom checkpoint. A registry name must exist and, for downloadable
    weights, be in the cache. Raises InputError (unknown name, missing file) or
    DownloadError (weights not downloaded).
    """
    from ..models import registry

    if value is None:
        name = _defaultModelName()
        return name, None, _weightFreeNote() if name == WEIGHT_FREE_MODEL else None
    if os.path.isfile(value):
        return "custom", os.path.abspath(value), None
    if os.path.isdir(value):
        raise InputError(f"--model {value} is a folder: give the checkpoint file (.pth) inside it, or a model name "
                         f"({', '.join(registry.modelNames())}).")
    if os.path.exists(value):
        raise InputError(f"--model {value} is not a regular file (a pipe, device or socket): give a checkpoint file.")
    if os.sep in value or value.lower().endswith((".pth", ".pt", ".ckpt", ".bin")):
        raise InputError(f"checkpoint file {value} not found: check the path, or give a model name "
                         f"({', '.join(registry.modelNames())}).")
    try:
        spec = registry.getModelSpec(value)
    except InputError as error:
        raise InputError(f"{error} Or give the path of a checkpoint file.") from None
    if spec.kind == "file":
        raise InputError(f"--model {value} needs a checkpoint: give its path as --model PATH.")
    if spec.kind == "download":
        _requireIntact(spec)
    if spec.kind == "download" and not _isCached(spec):
        raise DownloadError(f"the weights of {spec.modelId} are not downloaded: run `medsam-slicer download "
                            f"{spec.modelId}` first, or use --model growcut (weight-free).")
    return spec.modelId, None, None


def _defaultModelName() -> str:
    """engines.defaultModelName(): "medsam" when its weights are cached, else "growcut"."""
    from ..models.enginefactory import defaultModelName

    return defaultModelName()


def _isCached(spec) -> bool:
    """True when the model's weights are in the download cache."""
    from ..models.download import isModelCached

    return isModelCached(spec)


def _requireIntact(spec) -> None:
    """DownloadError with the one damaged-file message when the model's cached weights are damaged."""
    from ..models.download import requireIntactModel

    requireIntactModel(spec)


def _weightFreeNote() -> str:
    """Why the default is the weight-free engine: MedSAM's weights are missing, or damaged (then the way out)."""
    from ..models.download import DAMAGED, cacheStatus, damagedModelMessage
    from ..models.enginefactory import DEFAULT_SAM_MODEL
    from ..models.registry import getModelSpec

    spec = getModelSpec(DEFAULT_SAM_MODEL)
    status, problem = cacheStatus(spec)
    if status == DAMAGED:
        return f"{damagedModelMessage(spec, problem)} Meanwhile using the weight-free growcut engine."
    return ("MedSAM weights are not in the model cache (get them with `medsam-slicer download medsam`): "
            "using the weight-free growcut engine.")


def announceModel(model) -> None:
    """Say on stderr which engine ran and why, when resolveModel left a note (called after success, so that
    an error stays the only stderr line)."""
    if model[2]:
        info(model[2])


def createLogic(scene, volumeNode, model, device, recipe=None):
    """A MedSAMLogic on ``scene`` with ``volumeNode`` and the model ``(name, checkpointPath, note)`` of resolveModel;
    ``recipe`` (--recipe) chooses the preprocessing of a checkpoint file."""
    from ..workflow.logic import MedSAMLogic

    modelName, checkpointPath, _ = model
    logic = MedSAMLogic(scene)
    logic.setVolume(volumeNode)
    logic.setModel(modelName, device=device, checkpointPath=checkpointPath, recipe=recipe)
    return logic


# ---------------------------------------------------------------- prompts as markups


def checkBoxIjk(boxIjk, dimensionsIjk, text="--box"):
    """PromptError when the inclusive voxel box lies entirely outside an image of ``dimensionsIjk``."""
    low, high = boxIjk
    for axis in range(3):
        if high[axis] < 0 or low[axis] > dimensionsIjk[axis] - 1:
            raise PromptError(
                f"{text} is entirely outside the image ({'x'.join(str(d) for d in dimensionsIjk)} voxels; "
                f"{'xyz'[axis]} runs 0..{dimensionsIjk[axis] - 1}): give voxel indices inside the image."
            )


def addBoxRoiIjk(scene, volumeNode, boxIjk, axis):
    """An ROI node covering the inclusive voxel box, oriented along the volume's IJK axes.

    In-plane the box edges pass through the centres of the first and last
    voxels (the pixel-coordinate box SAM and MedSAM are trained with); across
    the slicing axis the ROI spans whole slices Z0-0.5 .. Z1+0.5, so Z0 == Z1
    is a thin (2D) box and Z0 < Z1 a 3D box over those slices.
    """
    import slicer

    low, high = (np.asarray(corner, float) for corner in boxIjk)
    low[axis] -= 0.5
    high[axis] += 0.5
    ijkToWorldMatrix = ijkToWorld(volumeNode)
    spacing = np.linalg.norm(ijkToWorldMatrix[:3, :3], axis=0)
    rotation = ijkToWorldMatrix[:3, :3] / spacing
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] = -rotation[:, 2]  # same 8 corners, a proper rotation for the ROI's frame
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = rotation
    objectToNode[:3, 3] = (ijkToWorldMatrix @ np.append((low + high) / 2.0, 1.0))[:3]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
    roi.SetRadiusXYZ(*((high - low) / 2.0 * spacing))
    return roi


def addBoxRoiRas(scene, volumeNode, boxRas, axis=2):
    """An ROI node for a RAS box (axis-aligned in RAS); PromptError when it misses the image entirely
    or spans less than 2 voxel centres in an in-plane direction of ``axis``."""
    low, high = (np.asarray(corner, float) for corner in boxRas)
    cornersRas = [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    cornersIjk = rasToIjk(volumeNode, cornersRas)
    dims = dimensionsIjk(volumeNode)
    lowIjk, highIjk = cornersIjk.min(axis=0), cornersIjk.max(axis=0)
    if any(highIjk[a] < -0.5 or lowIjk[a] > dims[a] - 0.5 for a in range(3)):
        raise PromptError("--box-ras is entirely outside the image: give RAS millimetres inside it "
                          "(or use --box with voxel indices).")
    for inPlane in (a for a in range(3) if a != axis):
        if highIjk[inPlane] - lowIjk[inPlane] < 1.0:
            raise PromptError(f"--box-ras is {highIjk[inPlane] - lowIjk[inPlane]:.2f} voxel wide along "
                              f"{'ijk'[inPlane]}: draw it at least 2 voxels wide in both in-plane directions.")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetXYZ(*((low + high) / 2.0))
    roi.SetRadiusXYZ(*((high - low) / 2.0))
    return roi


def addPointNodes(scene, volumeNode, prompts):
    """(positiveNode, negativeNode) fiducial nodes with the command line's points in RAS (None when empty)."""
    pointsRas = [(ijkToRas(volumeNode, p)[0], label) for p, label in prompts.pointsIjk]
    pointsRas += [(np.asarray(p, float), label) for p, label in prompts.pointsRas]
    nodes = {1: None, 0: None}
    for positionRas, label in pointsRas:
        if nodes[label] is None:
            nodes[label] = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive" if label else "negative")
        nodes[label].AddControlPoint([float(v) for v in positionRas])
    return nodes[1], nodes[0]


def addPromptNodes(scene, volumeNode, prompts, axis):
    """(roiNode, positiveNode, negativeNode) for the parsed command-line prompts; PromptError when off the image."""
    dims = dimensionsIjk(volumeNode)
    if dims[axis] == 1 and axis != 2:
        raise PromptError(f"the image is a single slice: segment it along k (leave out --axis {'ijk'[axis]}).")
    roi = None
    if prompts.boxIjk is not None:
        checkBoxIjk(prompts.boxIjk, dims)
        roi = addBoxRoiIjk(scene, volumeNode, prompts.boxIjk, axis)
    elif prompts.boxRas is not None:
        roi = addBoxRoiRas(scene, volumeNode, prompts.boxRas, axis)
    positive, negative = addPointNodes(scene, volumeNode, prompts)
    return roi, positive, negative


# ---------------------------------------------------------------- segment


def runSegment(args) -> int:
    """`segment`: read IMAGE, prompt, segment (and propagate), write OUT with IMAGE's geometry."""
    started = time.perf_counter()
    outputKind = checkOutputPath(args.out)
    if os.path.exists(args.image) and os.path.realpath(args.image) == os.path.realpath(args.out):
        raise InputError(f"--out {args.out} is the input image: choose another output file name.")
    model = resolveModel(args.model)
    scene = newScene(args)
    volumeNode = readImage(args.image, scene, args.volume_index)
    checkOutputHoldsGeometry(args.out, volumeNode)  # a skewed grid in NIfTI: refused now, not after segmenting
    axis = AXES[args.axis]
    roi, positive, negative = addPromptNodes(scene, volumeNode, args.prompts, axis)
    logic = createLogic(scene, volumeNode, model, args.device, args.recipe)
    segmentationNode, segmentId = logic.setSegmentation()
    logic.setAxis(axis)
    logic.setPromptNodes(roiNode=roi, positiveNode=positive, negativeNode=negative)
    progress = StderrProgress("segmenting")
    logic.progress.connect(progress)
    try:
        if args.propagate:
            logic.propagate()
        else:
            logic.segmentSlice()
    finally:
        progress.finish()
    maskKji = logic.previewMaskKji
    maskKji = np.zeros(dimensionsIjk(volumeNode)[::-1], bool) if maskKji is None else np.asarray(maskKji, bool)
    announceModel(model)
    if not maskKji.any():
        info("warning: the result is empty (the model found nothing in the prompt); writing an empty segment.")
    logic.apply(mode="add")
    writeStarted = time.perf_counter()
    if outputKind == "segmentation":
        writeSegmentation(segmentationNode, args.out, referenceVolume=volumeNode)
    else:
        writeLabelmap(segmentationNode, volumeNode, args.out, segmentIds=[segmentId])
    writeSeconds = time.perf_counter() - writeStarted
    summary = segmentSummary(logic, maskKji, axis, writeSeconds, time.perf_counter() - started)
    print(f"wrote {os.path.abspath(args.out)}: {summary['voxels']} voxels on {summary['slices']} slice(s) "
          f"in {summary['timings']['total']:.2f} s (encode {summary['timings']['encode']:.2f} s, "
          f"{summary['cache']['encoded']} encoder passes)")
    if args.json:
        print(json.dumps(summary))
    return 0


def segmentSummary(logic, maskKji, axis, writeSeconds, totalSeconds) -> dict:
    """The --json object: voxels, slices (slices along the axis holding the result), timings, cache counters."""
    nonEmpty = maskKji.any(axis=tuple(a for a in range(3) if a != 2 - axis)) if maskKji.size else np.zeros(0)
    timings = dict(logic.timings or {})
    stats = dict(logic.cacheStats() or {})
    return {
        "voxels": int(maskKji.sum()),
        "slices": int(np.count_nonzero(nonEmpty)),
        "timings": {
            "encode": round(float(timings.get("encode", 0.0)), 4),
            "decode": round(float(timings.get("decode", 0.0)), 4),
            "write": round(float(timings.get("write", 0.0)) + writeSeconds, 4),
            "total": round(float(totalSeconds), 4),
        },
        "cache": {key: int(stats.get(key, 0)) for key in ("encoded", "hits", "misses")},
    }


# ---------------------------------------------------------------- models, download


def runModels(args) -> int:
    """`models`: the registry with each model's cache status (and --json)."""
    from ..models.download import CACHED, DAMAGED, cacheStatus, modelCacheFolder, modelPath
    from ..models.registry import loadRegistry

    rows = []
    for spec in loadRegistry().values():
        if spec.kind == "download":
            state, problem = cacheStatus(spec)
            cached = state == CACHED
            status = f"cached at {modelPath(spec)}" if cached else f"not downloaded ({_megabytes(spec.sizeBytes)})"
            if state == DAMAGED:
                status = f"DAMAGED ({problem}): run `medsam-slicer download {spec.modelId} --force`"
        else:
            cached = None
            status = "weight-free, always available" if spec.kind == "builtin" else "your checkpoint: --model PATH"
        names = ", ".join((spec.modelId,) + tuple(spec.aliases))
        rows.append({"id": spec.modelId, "aliases": list(spec.aliases), "name": spec.displayName,
                     "kind": spec.kind, "cached": cached, "status": status, "names": names})
    if args.json:
        print(json.dumps([{k: v for k, v in row.items() if k != "names"} for row in rows]))
        return 0
    width = max(len(row["names"]) for row in rows)
    for row in rows:
        print(f"{row['names']:<{width}}  {row['name']}: {row['status']}")
    print(f"model cache folder: {modelCacheFolder()} (set MEDSAM_SLICER_CACHE to move it)")
    return 0


def _megabytes(sizeBytes) -> str:
    """'375 MB' or 'size unknown'."""
    return f"{sizeBytes / 1e6:.0f} MB" if sizeBytes else "size unknown"


class StderrProgress:
    """Progress on stderr: one rewritten line on a terminal (cleared by finish()); when stderr is not a
    terminal, a line every 10% if ``pipedLines`` else nothing (logs stay short)."""

    def __init__(self, label, pipedLines=False):
        self.label = label
        self.pipedLines = pipedLines
        self.lastTenth = -1
        self.lastShown = 0.0
        self.terminal = sys.stderr.isatty()
        self.shown = False

    def __call__(self, fraction, text=""):
        """Show ``fraction`` (0..1) and ``text``; at most 5 updates a second on a terminal."""
        if self.terminal:
            now = time.monotonic()
            if now - self.lastShown >= 0.2 or fraction >= 1.0:
                self.lastShown, self.shown = now, True
                print(f"\r\033[K{self.label}: {fraction * 100:5.1f}% {text}"[:200], end="", file=sys.stderr, flush=True)
        elif self.pipedLines and int(fraction * 10) != self.lastTenth:
            self.lastTenth = int(fraction * 10)
            info(f"{self.label}: {self.lastTenth * 10}%")

    def finish(self):
        """Clear the terminal line, so that what follows starts on a clean line."""
        if self.terminal and self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.shown = False


def runDownload(args) -> int:
    """`download MODEL [--force]`: fetch a registry model's weights into the cache (resumes, verifies SHA-256).

    A cached file that is damaged (another size or SHA-256) is an error with the
    way out unless --force, which downloads the model again whatever is cached.
    """
    from ..models.download import (CACHED, DAMAGED, cacheStatus, damagedModelMessage, ensureModel, modelPath,
                                   prepareCacheFolder)
    from ..models.registry import getModelSpec

    spec = getModelSpec(args.model)
    if spec.kind != "download":
        raise InputError(f"{spec.modelId} has nothing to download ({'weight-free' if spec.kind == 'builtin' else 'you give its file'}).")
    prepareCacheFolder(modelPath(spec).parent)
    status, problem = cacheStatus(spec)
    if status == CACHED and not args.force:
        print(f"{spec.modelId} is already in the cache (size and SHA-256 checked): {modelPath(spec)}")
        return 0
    if status == DAMAGED and not args.force:
        raise DownloadError(damagedModelMessage(spec, problem))
    info(f"downloading {spec.displayName} ({_megabytes(spec.sizeBytes)}) to {modelPath(spec).parent}")
    progress = StderrProgress(f"downloading {spec.fileName}", pipedLines=True)
    try:
        path = ensureModel(spec, progress=progress, force=args.force)
    finally:
        progress.finish()
    print(f"{spec.modelId} downloaded and verified: {path}")
    return 0


# ---------------------------------------------------------------- evaluate


def labelOnImageGrid(labelNode, volumeNode) -> np.ndarray:
    """The label's voxels on the image's voxel grid (KJI), matched by physical (RAS) position.

    Identical grids are returned as they are; otherwise each image voxel takes
    the nearest label voxel (e.g. a label stored with a flipped axis), and
    voxels outside the label's grid get 0.
    """
    import slicer

    labelKji = slicer.util.arrayFromVolume(labelNode)
    if labelKji.ndim != 3:
        raise InputError("the label image has several components per voxel: give a single-component label map.")
    imageToLabel = np.linalg.inv(ijkToWorld(labelNode)) @ ijkToWorld(volumeNode)
    dims = dimensionsIjk(volumeNode)
    if labelKji.shape == dims[::-1] and np.allclose(imageToLabel, np.eye(4), atol=1e-3):
        return np.array(labelKji)
    k, j, i = np.meshgrid(*(np.arange(n) for n in dims[::-1]), indexing="ij")
    pointsIjk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    labelIjk = np.rint(imageToLabel @ pointsIjk)[:3].astype(np.int64)
    inside = np.all((labelIjk >= 0) & (labelIjk < np.array(labelKji.shape[::-1])[:, None]), axis=0)
    values = np.zeros(i.size, labelKji.dtype)
    values[inside] = labelKji[labelIjk[2, inside], labelIjk[1, inside], labelIjk[0, inside]]
    if not inside.any():
        raise InputError("the label image does not overlap the image in space: give the label map of this image.")
    return values.reshape(dims[::-1])


def truthFromLabel(labelKji, labelValue=None) -> np.ndarray:
    """bool truth of ``labelValue`` (default: the only non-zero value); InputError naming the values present."""
    present = [v.item() for v in np.unique(labelKji) if v != 0]
    if not present:
        raise InputError("the label image is empty (all zero) over the image: give a label map with the structure.")
    if labelValue is None:
        if len(present) > 1:
            shown = ", ".join(str(v) for v in present[:20]) + (" ..." if len(present) > 20 else "")
            raise InputError(f"the label image holds several labels ({shown}): choose one with --label N.")
        labelValue = present[0]
    truth = labelKji == labelValue
    if not truth.any():
        raise InputError(f"label {labelValue} is not in the label image (values: {', '.join(str(v) for v in present[:20])}).")
    return truth


def runEvaluate(args) -> int:
    """`evaluate IMAGE LABEL`: the simulated user (box from the truth, corrective clicks); Dice and NoC@85/90."""
    from ..workflow.simulateduser import simulate2d, simulate3d

    started = time.perf_counter()
    model = resolveModel(args.model)
    modelName = model[0]
    scene = newScene(args)
    volumeNode = readImage(args.image, scene, args.volume_index)
    labelNode = readImage(args.labelImage, scene)
    truthKji = truthFromLabel(labelOnImageGrid(labelNode, volumeNode), args.label)
    logic = createLogic(scene, volumeNode, model, args.device, args.recipe)
    axis = AXES[args.axis]
    source = logic.source
    if source.sliceCount(axis) == 1:
        native = truthKji[source.sliceSelector(axis, 0)]
        outcome = simulate2d(logic.service, source.sliceImage(axis, 0), source.nativeMaskToImage(axis, native),
                             clickBudget=args.clicks, pixelSpacingMm=source.pixelSpacing(axis))
        dimension = "2D"
    else:
        outcome = simulate3d(logic.service, source, truthKji, axis=axis, clickBudget=args.clicks)
        dimension = "3D"
    announceModel(model)
    summary = {
        "dice": round(float(outcome.dices[-1]), 4),
        "noc85": int(outcome.noc85),
        "noc90": int(outcome.noc90),
        "clicks": len(outcome.clicks),
        "diceAfterBox": round(float(outcome.dices[0]), 4),
        "dices": [round(float(d), 4) for d in outcome.dices],
        "dimension": dimension,
        "model": modelName,
        "clickBudget": args.clicks,
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(f"{dimension} Dice {summary['dice']:.3f} after {summary['clicks']} click(s) "
          f"(box only {summary['diceAfterBox']:.3f}); NoC@85 {summary['noc85']}, NoC@90 {summary['noc90']} "
          f"(budget {args.clicks}; budget + 1 = never reached); model {modelName}")
    if args.json:
        print(json.dumps(summary))
    return 0
