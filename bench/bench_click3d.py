"""Benchmark: what one click costs in the weight-free engine's 3D mode, incremental update vs a re-run from scratch.

    flock /work/bench.lock .venv/bin/python bench/bench_click3d.py --json bench/results/click3d_cpu.json

The volume is 240 x 240 x 155 voxels of 1 mm (a BraTS-sized brain MRI) with
a large ellipsoidal "tumour" (semi-axes 45 x 40 x 30 mm, intensity 0.7 on
0.3, noise sigma 0.06) around a darker "necrotic" core (0.45, semi-axes
22 x 20 x 15 mm, part of the tumour) and, touching it inside its box, a slab
as bright as the tumour that is not tumour (what a box alone leaks into). Its
3D box is the tumour's bounding box (91 x 81 x 61 voxels). The box is
segmented through the product's path (workflow/refinement.py BoxRefinement
on a SliceSource, native 3D), then the simulated user clicks --clicks times
(simulateduser.nextClick3d). For every click, in the same run:

- incremental: ``refinement.run(session)`` with the new click appended (what
  the product does: GrowCut3d seeds the click and lets Slicer's GrowCut
  update from its kept path costs);
- scratch: a new BoxRefinement run on the box and all clicks so far (the same
  result computed from nothing: box run plus every click).

Both report process CPU time (all threads) and wall time; the ratio is
incremental / scratch. The results must be equal (checked).
--whole-volume-box boxes all 240 x 240 x 155 voxels instead (the worst case:
Slicer's quick update still puts every voxel of the block in its heap once).
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

from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine  # noqa: E402
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402
from MedSAMSlicerLib.workflow.constraints import AnnotationSession  # noqa: E402
from MedSAMSlicerLib.workflow.refinement import BoxRefinement  # noqa: E402
from MedSAMSlicerLib.workflow.simulateduser import dice, nextClick3d, truthBox3d  # noqa: E402


def tumourPhantom():
    """(voxelsKji float32, truthKji, spacingIjk): the volume described in the module docstring."""
    _, truth, spacing = ellipsoidPhantom((155, 240, 240), semiAxesMm=(45.0, 40.0, 30.0), noise=0.0)
    _, core, _ = ellipsoidPhantom((155, 240, 240), semiAxesMm=(22.0, 20.0, 15.0), noise=0.0)
    k, j, i = np.nonzero(truth)
    slab = np.zeros(truth.shape, bool)
    slab[k.min() + 5:k.max() - 5, j.max() - 25:j.max() + 1, i.max() - 30:i.max() + 1] = True
    slab &= ~truth
    voxels = np.where(truth | slab, 0.7, 0.3).astype(np.float32)
    voxels[core] = 0.45
    voxels += np.random.default_rng(1).normal(0.0, 0.06, truth.shape).astype(np.float32)
    return voxels, truth, spacing


def timed(function):
    """(result, cpu seconds, wall seconds) of function()."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None):
    """Run the benchmark; print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--whole-volume-box", action="store_true",
                        help="box the whole volume instead of the tumour (the worst case: the block is every voxel)")
    args = parser.parse_args(argv)
    voxels, truth, spacing = tumourPhantom()
    source = SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))
    box, sliceRange = truthBox3d(source, truth, 2)
    if args.whole_volume_box:
        (height, width), count = source.imageShape(2), source.sliceCount(2)
        box, sliceRange = (0.0, 0.0, width - 1.0, height - 1.0), (0, count - 1)
    engine = GrowCutEngine()
    refinement = BoxRefinement(engine, source, 2, box, sliceRange)
    session = AnnotationSession()
    outcome, cpu, wall = timed(lambda: refinement.run(session))
    rows = [{"step": "box", "incrementalCpu": cpu, "incrementalWall": wall, "dice": dice(outcome.maskKji, truth)}]
    for step in range(1, args.clicks + 1):
        click = nextClick3d(outcome.maskKji, truth, 2, spacing)
        if click is None:
            break
        session.addClick(*click)
        outcome, cpu, wall = timed(lambda: refinement.run(session))
        fresh = BoxRefinement(engine, source, 2, box, sliceRange)
        scratch, scratchCpu, scratchWall = timed(lambda: fresh.run(session))
        if not np.array_equal(outcome.maskKji, scratch.maskKji):
            raise SystemExit(f"click {step}: the incremental result differs from the one computed from scratch")
        rows.append({"step": f"click {step} ({'+' if click[1] else '-'})", "update": outcome.update,
                     "incrementalCpu": cpu, "incrementalWall": wall, "scratchCpu": scratchCpu,
                     "scratchWall": scratchWall, "ratioCpu": cpu / scratchCpu, "dice": dice(outcome.maskKji, truth)})
    block = refinement._grower.blockBounds
    blockShape = [b - a + 1 for a, b in block]
    print(f"volume 240 x 240 x 155 (I x J x K), box {blockShape[2]} x {blockShape[1]} x {blockShape[0]} voxels; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| step | update | incremental CPU s (wall) | from scratch CPU s (wall) | ratio (CPU) | Dice |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        scratch = f"{row['scratchCpu']:.2f} ({row['scratchWall']:.2f})" if "scratchCpu" in row else "-"
        ratio = f"{row['ratioCpu']:.2f}" if "ratioCpu" in row else "-"
        print(f"| {row['step']} | {row.get('update', 'full')} | {row['incrementalCpu']:.2f} ({row['incrementalWall']:.2f}) | "
              f"{scratch} | {ratio} | {row['dice']:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "boxVoxelsKji": blockShape,
                                               "machine": platform.platform(), "cpus": os.cpu_count()}, indent=1))
    return rows


if __name__ == "__main__":
    main()
