"""Evaluate an engine with the simulated user on the real labelled data in ../shared/data.

Reproduces the figures of docs/evaluation.md and rewrites its tables (one command, under the bench lock):

    flock /work/bench.lock .venv/bin/python bench/evaluate_shared_data.py --json out/evaluation.json \
        --update-doc docs/evaluation.md

2D sets (box + corrective clicks per image and structure): sammed2d (CT
slices, one row per organ mask), hc18 (fetal-head ultrasound). 3D sets
(TotalSegmentator CT and MR organs, pyradiomics tumours): the structure's 3D
box, then one click at a time at the largest 3D error
(simulateduser.simulate3d), in each of --modes-3d:

- "native": the product's default (the weight-free engine segments the box in
  3D and updates it with every click; SAM-family engines propagate);
- "propagation": slice propagation within the box (MedSAM's protocol) with
  clicks as lasting constraints (accumulated per slice, anchored slices);
- "before": the pipeline before this (each click re-segments its slice and
  re-propagates over every neighbour that changes; no anchors, no enforced
  clicks), under the same clicks.

Prints Markdown tables (mean Dice after the box and after every click,
NoC@85/90); --json writes every case (with its ``dices``). The loaders are
imported by Testing/test_real_evaluation.py.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))

from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402
from MedSAMSlicerLib.workflow.simulateduser import (dice, nextClick3d, numberOfClicks, simulate2d,  # noqa: E402
                                                    simulate3d, truthBox3d)

DEFAULT_DATA = REPO.parent / "shared" / "data"
MIN_VOXELS_3D = 1000
MIN_PIXELS_2D = 50
MODES_3D = ("native", "propagation", "before")
DOC_BEGIN = "<!-- evaluation-tables:begin (bench/evaluate_shared_data.py --update-doc) -->"
DOC_END = "<!-- evaluation-tables:end -->"


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



def _caseRow(caseId, dices, noc85, noc90, start) -> dict:
    """One case's figures: Dice after the box, after every click and at the end, NoC, seconds since ``start``."""
    return {"case": caseId, "diceBox": dices[0], "diceFinal": dices[-1], "dices": [float(d) for d in dices],
            "noc85": noc85, "noc90": noc90, "seconds": time.perf_counter() - start}


def evaluate2d(engine, samples, clickBudget=5, jitterMm=0.0):
    """Run simulate2d on every sample; returns a list of per-case dicts."""
    rows = []
    for caseId, image, truth, spacing in samples:
        start = time.perf_counter()
        outcome = simulate2d(engine, image, truth, clickBudget=clickBudget, jitterMm=jitterMm, pixelSpacingMm=spacing)
        rows.append(_caseRow(caseId, outcome.dices, outcome.noc85, outcome.noc90, start))
    return rows


def evaluate3d(engine, cases, clickBudget=5, jitterMm=0.0, mode="native"):
    """Run the 3D simulated user on every case in ``mode`` (see the module docstring); returns per-case dicts."""
    rows = []
    for caseId, source, truth, axis in cases:
        start = time.perf_counter()
        if mode == "before":
            dices = simulateBefore3d(engine, source, truth, axis, clickBudget)
            rows.append(_caseRow(caseId, dices, numberOfClicks(dices, 0.85, clickBudget),
                                 numberOfClicks(dices, 0.90, clickBudget), start))
            continue
        outcome = simulate3d(engine, source, truth, axis=axis, clickBudget=clickBudget, jitterMm=jitterMm,
                             native=mode == "native")
        rows.append(dict(_caseRow(caseId, outcome.dices, outcome.noc85, outcome.noc90, start),
                         slices=outcome.sliceRange, mode=outcome.mode, updates=outcome.updates))
    return rows


def simulateBefore3d(engine, source, truth, axis, clickBudget):
    """The pipeline before clicks were lasting constraints, under the same clicks (simulateduser.nextClick3d).

    The 3D box's middle slice propagated within the box (propagateBox3d); each
    click re-segments its slice with the clicks made on that slice and
    re-propagates over every neighbour that changes (no anchored slices, no
    enforced click voxels). Returns the Dice after the box and after each click.
    """
    from MedSAMSlicerLib.engines.base import Prompts
    from MedSAMSlicerLib.workflow.propagation import asService, correctSlice, propagateBox3d

    service = asService(engine)
    box, sliceRange = truthBox3d(source, truth, axis)
    result = propagateBox3d(service, source, axis, box, sliceRange)
    predicted = result.toVolumeMask(source)
    dices, bySlice = [dice(predicted, truth)], {}
    for _ in range(clickBudget):
        click = nextClick3d(predicted, truth, axis, source.spacingIjk)
        if click is None:
            break
        pointIjk, label = click
        k = int(pointIjk[axis])
        _, xy = source.ijkToImage(axis, np.array([pointIjk], dtype=float))
        bySlice.setdefault(k, []).append((xy[0], label))
        if sliceRange[0] <= k <= sliceRange[1]:
            current = result.masks.get(k)
            points = bySlice[k]
            prompts = Prompts(boxXyxy=None if current is not None and current.any() else box,
                              pointsXy=[p for p, _ in points], pointLabels=[lab for _, lab in points])
            result = correctSlice(service, source, axis, result, k, prompts)
            predicted = result.toVolumeMask(source)
        dices.append(dice(predicted, truth))
    return dices


def summarize(rows):
    """Means over the cases: Dice after the box, after each click (``dices``), at the end; NoC@85/90; seconds."""
    if not rows:
        return {"cases": 0}
    length = max(len(r["dices"]) for r in rows)
    # A case that stopped early (perfect mask) keeps its last Dice for the remaining clicks.
    padded = np.array([r["dices"] + [r["dices"][-1]] * (length - len(r["dices"])) for r in rows])
    return {"cases": len(rows),
            "diceBox": float(np.mean([r["diceBox"] for r in rows])),
            "diceFinal": float(np.mean([r["diceFinal"] for r in rows])),
            "dices": [float(v) for v in padded.mean(axis=0)],
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


def tables(results, clicks) -> str:
    """Markdown tables of the 2D and 3D results (means per dataset and mode)."""
    lines = ["| dataset | cases | Dice (box) | Dice (after up to %d clicks) | NoC@85 | NoC@90 |" % clicks, "|---|---|---|---|---|---|"]
    for key, entry in results.items():
        summary = entry["summary"]
        if entry["kind"] == "2d" and summary["cases"]:
            lines.append(f"| {key} | {summary['cases']} | {summary['diceBox']:.3f} | {summary['diceFinal']:.3f} | "
                         f"{summary['noc85']:.2f} | {summary['noc90']:.2f} |")
    header = " | ".join(f"click {n}" for n in range(1, clicks + 1))
    lines += ["", f"| dataset | mode | cases | box | {header} | NoC@85 | NoC@90 | never lower | s/case |",
              "|---|---|---|---|" + "---|" * clicks + "---|---|---|---|"]
    for key, entry in results.items():
        summary = entry["summary"]
        if entry["kind"] != "3d" or not summary["cases"]:
            continue
        means = summary["dices"] + [summary["dices"][-1]] * (clicks + 1 - len(summary["dices"]))
        monotone = all(b >= a - 1e-12 for a, b in zip(means, means[1:]))
        lines.append(f"| {entry['dataset']} | {entry['mode']} | {summary['cases']} | "
                     + " | ".join(f"{v:.3f}" for v in means) +
                     f" | {summary['noc85']:.2f} | {summary['noc90']:.2f} | {'yes' if monotone else 'NO'} | "
                     f"{summary['seconds'] / summary['cases']:.2f} |")
    return "\n".join(lines)


def updateDoc(path: Path, text: str):
    """Replace the block between DOC_BEGIN and DOC_END in ``path`` with ``text`` (InputError-free: exits on a missing block)."""
    content = path.read_text(encoding="utf-8")
    if DOC_BEGIN not in content or DOC_END not in content:
        raise SystemExit(f"{path} has no block {DOC_BEGIN} ... {DOC_END} to update.")
    before, rest = content.split(DOC_BEGIN, 1)
    _, after = rest.split(DOC_END, 1)
    path.write_text(before + DOC_BEGIN + "\n" + text + "\n" + DOC_END + after, encoding="utf-8")


def main(argv=None):
    """Command line: evaluate the datasets, print the tables, optionally write JSON and update the doc."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="growcut", help="growcut, or a model name / checkpoint for engines.createEngine")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clicks", type=int, default=5, help="click budget after the box")
    parser.add_argument("--jitter-mm", type=float, default=0.0, help="box jitter per side, mm")
    parser.add_argument("--limit", type=int, default=None, help="cases per dataset (default all)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--modes-3d", default=",".join(MODES_3D), help="comma-separated: " + ", ".join(MODES_3D))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--json", default=None, help="write every case to this JSON file")
    parser.add_argument("--update-doc", default=None, help="rewrite the tables block of this Markdown file")
    args = parser.parse_args(argv)
    engine = createEngine(args.engine, args.device, args.checkpoint)
    folder = Path(args.data)
    started = time.perf_counter()
    results = {}
    for name in args.datasets.split(","):
        kind, loader = DATASETS[name]
        for mode in (args.modes_3d.split(",") if kind == "3d" else ["2d"]):
            if kind == "2d":
                rows = evaluate2d(engine, loader(folder, args.limit), args.clicks, args.jitter_mm)
            else:
                rows = evaluate3d(engine, loader(folder, args.limit), args.clicks, args.jitter_mm, mode)
            key = name if kind == "2d" else f"{name}:{mode}"
            results[key] = {"dataset": name, "kind": kind, "mode": mode, "summary": summarize(rows), "cases": rows}
            summary = results[key]["summary"]
            print(f"{key}: {summary['cases']} cases, Dice " + " ".join(f"{v:.3f}" for v in summary.get("dices", [])),
                  flush=True)
    text = tables(results, args.clicks)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    text += (f"\n\nEngine {args.engine}, click budget {args.clicks}, box jitter {args.jitter_mm} mm; "
             f"{machine}; whole run {time.perf_counter() - started:.0f} s.")
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"engine": args.engine, "clicks": args.clicks, "jitterMm": args.jitter_mm,
                                               "results": results}, indent=1, default=float))
    if args.update_doc:
        updateDoc(Path(args.update_doc), text)
    return results


if __name__ == "__main__":
    main()
