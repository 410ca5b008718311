"""Evaluate an engine with the simulated user on the real labelled data in ../shared/data.

Reproduces the figures of docs/evaluation.md:

    .venv/bin/python bench/evaluate_shared_data.py --engine growcut --clicks 5

2D sets (box + corrective clicks per image and structure): sammed2d (CT
slices, one row per organ mask), hc18 (fetal-head ultrasound). 3D sets (3D box
of the structure, propagation within it along K, corrections on the worst
slice): TotalSegmentator CT and MR organs, pyradiomics tumours. Prints a
Markdown table (mean Dice after the box, mean final Dice, mean NoC@85/90); with
--json, also every case. The loaders are imported by Testing/test_real_evaluation.py.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))

from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.workflow.simulateduser import simulate2d, simulate3d  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
TOTALSEG_CT_ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach"}
MIN_VOXELS_3D = 1000
MIN_PIXELS_2D = 50


def _readPng(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path))


def loadSammed2d(dataFolder: Path, limit=None):
    """Yield (caseId, image float32 (H, W, 3) in [0, 1], truth bool (H, W), pixelSpacingMm) per organ mask >= 50 px."""
    count = 0
    for imagePath in sorted((dataFolder / "sammed2d" / "images").glob("*.png")):
        image = _readPng(imagePath).astype(np.float32) / 255.0
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        for maskPath in sorted((dataFolder / "sammed2d" / "masks").glob(imagePath.stem + "_*.png")):
            truth = _readPng(maskPath) > 0
            if truth.ndim == 3:
                truth = truth[..., 0]
            if truth.sum() < MIN_PIXELS_2D:
                continue
            yield maskPath.stem, image[..., :3], truth, 1.0
            count += 1
            if limit is not None and count >= limit:
                return


def loadHc18(dataFolder: Path, limit=None):
    """Yield (caseId, image float32 (H, W) in [0, 1], truth bool (H, W), pixelSpacingMm) per ultrasound image."""
    folder = dataFolder / "hc18"
    spacing = {}
    for line in (folder / "pixel_size_and_HC.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        if len(parts) >= 2:
            spacing[parts[0]] = float(parts[1])
    for index, imagePath in enumerate(sorted((folder / "images").glob("*.png"))):
        if limit is not None and index >= limit:
            return
        image = _readPng(imagePath).astype(np.float32)
        if image.ndim == 3:
            image = image[..., :3].mean(axis=2)
        truth = _readPng(folder / "masks" / (imagePath.stem + "_mask.png")) > 0
        yield imagePath.stem, image / 255.0, truth, spacing.get(imagePath.name, 1.0)


def _readVolume(path: Path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in image.GetSpacing())


def loadTotalSegmentator(dataFolder: Path, modality: str = "ct", limit=None):
    """Yield (caseId, SliceSource, truthKji, axis 2) per organ with >= 1000 voxels (CT: soft tissue window, MR: percentiles)."""
    folder = dataFolder / "totalsegmentator"
    names = json.loads((folder / "class_map_total_and_total_mr.json").read_text())
    if modality == "ct":
        voxels, spacing = _readVolume(folder / "example_ct_sm.nii.gz")
        labels, _ = _readVolume(folder / "example_seg.nii.gz")
        policy, classNames = IntensityPolicy.ct("soft tissue"), names.get("total", {})
    else:
        voxels, spacing = _readVolume(folder / "example_mr_sm.nii.gz")
        labels, _ = _readVolume(folder / "example_seg_mr.nii.gz")
        policy, classNames = IntensityPolicy.percentile(), names.get("total_mr", names.get("total", {}))
    source = SliceSource(voxels, spacing, policy)
    count = 0
    for label in sorted(int(v) for v in np.unique(labels) if v > 0):
        truth = labels == label
        if truth.sum() < MIN_VOXELS_3D:
            continue
        yield f"{modality}:{classNames.get(str(label), label)}", source, truth, 2
        count += 1
        if limit is not None and count >= limit:
            return


def loadPyradiomics(dataFolder: Path, limit=None):
    """Yield (caseId, SliceSource, truthKji, axis 2) for the brain and breast lesions (MR percentiles)."""
    folder = dataFolder / "pyradiomics"
    for index, name in enumerate(("brain1", "brain2", "breast1")):
        if limit is not None and index >= limit:
            return
        voxels, spacing = _readVolume(folder / f"{name}_image.nrrd")
        labels, _ = _readVolume(folder / f"{name}_label.nrrd")
        yield name, SliceSource(voxels, spacing, IntensityPolicy.percentile()), labels == 1, 2


def _caseRow(caseId, outcome, start) -> dict:
    """One case's figures: Dice after the box and at the end, per click, NoC, seconds since ``start``."""
    return {"case": caseId, "diceBox": outcome.dices[0], "diceFinal": outcome.dices[-1], "dices": outcome.dices,
            "noc85": outcome.noc85, "noc90": outcome.noc90, "seconds": time.perf_counter() - start}


def evaluate2d(engine, samples, clickBudget=5, jitterMm=0.0):
    """Run simulate2d on every sample; returns a list of per-case dicts."""
    rows = []
    for caseId, image, truth, spacing in samples:
        start = time.perf_counter()
        outcome = simulate2d(engine, image, truth, clickBudget=clickBudget, jitterMm=jitterMm, pixelSpacingMm=spacing)
        rows.append(_caseRow(caseId, outcome, start))
    return rows


def evaluate3d(engine, cases, clickBudget=5, jitterMm=0.0):
    """Run simulate3d on every case; returns a list of per-case dicts."""
    rows = []
    for caseId, source, truth, axis in cases:
        start = time.perf_counter()
        outcome = simulate3d(engine, source, truth, axis=axis, clickBudget=clickBudget, jitterMm=jitterMm)
        rows.append(dict(_caseRow(caseId, outcome, start), slices=outcome.sliceRange))
    return rows


def evaluateNative3d(engine, cases):
    """GrowCut's native 3D segmentation from the structure's 3D bounding box (no propagation, no clicks)."""
    from MedSAMSlicerLib.workflow.simulateduser import dice

    rows = []
    for caseId, source, truth, _ in cases:
        start = time.perf_counter()
        k, j, i = np.nonzero(truth)
        volume = source.resolvedPolicy.apply(source.voxelsKji)
        mask = engine.segmentVolume(volume, ((i.min(), j.min(), k.min()), (i.max(), j.max(), k.max())),
                                    spacingIjk=source.spacingIjk)
        score = dice(mask, truth)
        rows.append({"case": caseId, "diceBox": score, "diceFinal": score, "dices": [score], "noc85": 0 if score >= 0.85 else 1,
                     "noc90": 0 if score >= 0.9 else 1, "seconds": time.perf_counter() - start})
    return rows


def summarize(rows):
    """Mean Dice after the box and at the end, mean NoC@85/90, number of cases."""
    if not rows:
        return {"cases": 0}
    return {"cases": len(rows),
            "diceBox": float(np.mean([r["diceBox"] for r in rows])),
            "diceFinal": float(np.mean([r["diceFinal"] for r in rows])),
            "noc85": float(np.mean([r["noc85"] for r in rows])),
            "noc90": float(np.mean([r["noc90"] for r in rows])),
            "seconds": float(np.sum([r["seconds"] for r in rows]))}


def createEngine(name: str, device: str = "auto", checkpoint=None):
    """The engine to evaluate: "growcut" here; other names through engines.createEngine when available."""
    if name == "growcut":
        from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine

        return GrowCutEngine()
    from MedSAMSlicerLib.models.enginefactory import createEngine as create

    return create(name, device=device, checkpointPath=checkpoint)


DATASETS = {
    "sammed2d": ("2d", lambda folder, limit: loadSammed2d(folder, limit)),
    "hc18": ("2d", lambda folder, limit: loadHc18(folder, limit)),
    "totalseg_ct": ("3d", lambda folder, limit: loadTotalSegmentator(folder, "ct", limit)),
    "totalseg_mr": ("3d", lambda folder, limit: loadTotalSegmentator(folder, "mr", limit)),
    "pyradiomics": ("3d", lambda folder, limit: loadPyradiomics(folder, limit)),
}


def main(argv=None):
    """Command line: evaluate the datasets, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="growcut", help="growcut, or a model name / checkpoint for engines.createEngine")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clicks", type=int, default=5, help="click budget after the box")
    parser.add_argument("--jitter-mm", type=float, default=0.0, help="box jitter per side, mm")
    parser.add_argument("--limit", type=int, default=None, help="cases per dataset (default all)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--json", default=None, help="write every case to this JSON file")
    parser.add_argument("--native-3d", action="store_true",
                        help="also segment the 3D sets with GrowCut's native 3D box (segmentVolume; growcut only)")
    args = parser.parse_args(argv)
    engine = createEngine(args.engine, args.device, args.checkpoint)
    folder = Path(args.data)
    results = {}
    print(f"| dataset | kind | cases | Dice (box) | Dice ({args.clicks} clicks max) | NoC@85 | NoC@90 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        kind, loader = DATASETS[name]
        evaluate = evaluate2d if kind == "2d" else evaluate3d
        rows = evaluate(engine, loader(folder, args.limit), args.clicks, args.jitter_mm)
        summary = summarize(rows)
        results[name] = {"summary": summary, "cases": rows}
        if summary["cases"]:
            print(f"| {name} | {kind} | {summary['cases']} | {summary['diceBox']:.3f} | {summary['diceFinal']:.3f} | "
                  f"{summary['noc85']:.2f} | {summary['noc90']:.2f} | {summary['seconds']:.1f} |", flush=True)
        if args.native_3d and kind == "3d" and hasattr(engine, "segmentVolume"):
            native = summarize(evaluateNative3d(engine, loader(folder, args.limit)))
            results[name + "_native3d"] = {"summary": native}
            print(f"| {name} (native 3D box) | 3d | {native['cases']} | {native['diceBox']:.3f} | - | - | - | "
                  f"{native['seconds']:.1f} |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"engine": args.engine, "clicks": args.clicks, "jitterMm": args.jitter_mm,
                                               "results": results}, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
