"""`medsam-slicer demo`: the product in one minute, offline.

Generates a CT-like volume with a known organ (phantoms.ctLikePhantom) on a
realistic, awkward grid: anisotropic voxels (1.5 x 1.5 x 3 mm) and a direction
matrix that is neither identity nor axis-aligned (LPS-style flips and a 12
degree tilt about S). It draws one 3D box around the organ, as a user would with
an ROI in Slicer, segments the middle slice and propagates within the box
through the same MedSAMLogic the Slicer module uses, then writes

    OUT/demo_ct.nrrd        the sample volume
    OUT/demo.seg.nrrd       the result, a Slicer segmentation that opens over demo_ct.nrrd
    OUT/demo_montage.png    slices through the organ, result in red, truth outlined in green

and prints Dice against the known truth and the time taken. Without MedSAM
weights in the cache it uses the weight-free growcut engine and says so.
"""

import json
import math
import os
import time

import numpy as np

from .options import AXES

DEMO_SHAPE_KJI = (40, 112, 112)
DEMO_SPACING_IJK = (1.5, 1.5, 3.0)
DEMO_TILT_DEGREES = 12.0
BOX_MARGIN_VOXELS = 3
MONTAGE_SLICES = 8
MONTAGE_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)


def demoIjkToRas(spacingIjk=DEMO_SPACING_IJK, tiltDegrees=DEMO_TILT_DEGREES, shapeKji=DEMO_SHAPE_KJI) -> np.ndarray:
    """IJKToRAS of the demo volume: i -> left, j -> posterior (as DICOM's LPS), tilted about S, centred on 0."""
    angle = math.radians(tiltDegrees)
    tilt = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    direction = tilt @ np.diag([-1.0, -1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(spacingIjk)
    centreIjk = (np.array(shapeKji[::-1], float) - 1.0) / 2.0
    matrix[:3, 3] = -matrix[:3, :3] @ centreIjk
    return matrix


def boxAroundTruth(truthKji: np.ndarray, marginVoxels: int = BOX_MARGIN_VOXELS):
    """Inclusive voxel box ((i0, j0, k0), (i1, j1, k1)) around the truth: margin in-plane, exact slice range."""
    k, j, i = np.nonzero(truthKji)
    shapeIjk = truthKji.shape[::-1]
    low = [max(i.min() - marginVoxels, 0), max(j.min() - marginVoxels, 0), int(k.min())]
    high = [min(i.max() + marginVoxels, shapeIjk[0] - 1), min(j.max() + marginVoxels, shapeIjk[1] - 1), int(k.max())]
    return tuple(int(v) for v in low), tuple(int(v) for v in high)


def createDemoVolume(scene):
    """(volumeNode, truthKji) for the demo's generated CT-like volume, added to ``scene``."""
    import slicer

    from ..imaging.phantoms import ctLikePhantom

    voxelsKji, truthKji, spacingIjk = ctLikePhantom(shapeKji=DEMO_SHAPE_KJI, spacingIjk=DEMO_SPACING_IJK)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "demo_ct")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(demoIjkToRas(spacingIjk, shapeKji=voxelsKji.shape)))
    slicer.util.updateVolumeFromArray(node, voxelsKji)
    node.CreateDefaultDisplayNodes()
    return node, np.asarray(truthKji, bool)


def runDemo(args) -> int:
    """Generate, segment from one box with propagation, write the outputs, print Dice and the time taken."""
    from ..workflow import simulateduser
    from .commands import addBoxRoiIjk, announceModel, createLogic, info, newScene, resolveModel
    from ..core.atomicfiles import checkOutputLocation
    from ..mrml.imageio import writeSegmentation, writeVolume

    started = time.perf_counter()
    outFolder = os.path.abspath(args.out)
    checkOutputLocation(os.path.join(outFolder, "demo.seg.nrrd"), what="demo output")
    model = resolveModel(args.model)
    modelName = model[0]
    announceModel(model)
    scene = newScene(args)
    volumeNode, truthKji = createDemoVolume(scene)
    axis = AXES["k"]
    boxIjk = boxAroundTruth(truthKji)
    info(f"demo: CT-like volume {volumeNode.GetImageData().GetDimensions()} voxels of {DEMO_SPACING_IJK} mm, "
         f"tilted {DEMO_TILT_DEGREES:g} degrees; box {boxIjk[0]}..{boxIjk[1]} (voxel indices); model {modelName}")
    logic = createLogic(scene, volumeNode, model, getattr(args, "device", "auto"))
    segmentationNode, segmentId = logic.setSegmentation()
    logic.setAxis(axis)
    logic.setPromptNodes(roiNode=addBoxRoiIjk(scene, volumeNode, boxIjk, axis))
    logic.propagate()
    maskKji = logic.previewMaskKji
    maskKji = np.zeros_like(truthKji) if maskKji is None else np.asarray(maskKji, bool)
    logic.apply(mode="add")
    paths = {
        "volume": writeVolume(volumeNode, os.path.join(outFolder, "demo_ct.nrrd")),
        "segmentation": writeSegmentation(segmentationNode, os.path.join(outFolder, "demo.seg.nrrd"), volumeNode),
        "montage": writeMontage(volumeNode, maskKji, truthKji, os.path.join(outFolder, "demo_montage.png")),
    }
    seconds = time.perf_counter() - started
    dice = simulateduser.dice(maskKji, truthKji)
    summary = {"dice": round(dice, 4), "seconds": round(seconds, 2), "model": modelName,
               "voxels": int(maskKji.sum()), "truthVoxels": int(truthKji.sum()), "files": paths}
    print(f"demo: Dice {dice:.3f} against the known truth, {seconds:.1f} s in total with the {modelName} engine")
    for kind, path in paths.items():
        print(f"  {kind:<12} {path}")
    print("  open demo_ct.nrrd and demo.seg.nrrd together in 3D Slicer to inspect the result.")
    if getattr(args, "json", False):
        print(json.dumps(summary))
    return 0


def _windowed(sliceHu: np.ndarray) -> np.ndarray:
    """uint8 grey levels of a CT slice in the soft-tissue window."""
    low, high = MONTAGE_WINDOW_HU
    return (np.clip((sliceHu.astype(np.float32) - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask (pixels of the mask with a 4-neighbour outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def writeMontage(volumeNode, maskKji, truthKji, path, sliceCount: int = MONTAGE_SLICES) -> str:
    """PNG montage of axial slices through the truth: the result filled in red, the truth outlined in green.

    Rows are drawn with pixel aspect from the voxel spacing, so anatomy is not
    squashed. Written atomically. Returns the absolute path.
    """
    import slicer
    from PIL import Image

    from ..core.atomicfiles import atomicOutput

    voxels = slicer.util.arrayFromVolume(volumeNode)
    rows = np.nonzero(truthKji.any(axis=(1, 2)))[0]
    first, last = (int(rows.min()), int(rows.max())) if len(rows) else (0, voxels.shape[0] - 1)
    indices = np.unique(np.linspace(first, last, sliceCount).round().astype(int))
    tiles = []
    for k in indices:
        rgb = np.repeat(_windowed(voxels[k])[..., None], 3, axis=2).astype(np.float32)
        result = maskKji[k]
        rgb[result] = 0.55 * rgb[result] + 0.45 * np.array([255.0, 40.0, 40.0])
        rgb[_outline(truthKji[k])] = (60.0, 255.0, 60.0)
        tiles.append(rgb.astype(np.uint8))
    columns = 4
    height, width = tiles[0].shape[:2]
    canvas = np.zeros((height * math.ceil(len(tiles) / columns), width * columns, 3), np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        canvas[row * height:(row + 1) * height, column * width:(column + 1) * width] = tile
    spacing = volumeNode.GetSpacing()
    image = Image.fromarray(canvas)
    scale = 2
    image = image.resize((canvas.shape[1] * scale, int(round(canvas.shape[0] * scale * spacing[1] / spacing[0]))),
                         Image.NEAREST)
    with atomicOutput(path) as temporaryPath:
        image.save(temporaryPath, format="PNG")
    return os.path.abspath(path)
