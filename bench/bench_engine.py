"""Benchmark of the SAM engine with the real ViT-B architecture (random weights: speed, not accuracy).

Measures, in one run on one machine:
- encoder time per slice, batch 1 vs batched, fp32 vs bf16/fp16 autocast (GPU only);
- click-to-mask time on an already encoded 512x512 slice, including prompt
  scaling, decoder and mask post-processing (median over N clicks);
- the plain way as baseline: SamPredictor.set_image + predict for every
  interaction, and the ratio baseline / engine;
- bytes per cached slice embedding.

Usage:
    .venv/bin/python bench/bench_engine.py --device cpu --slices 2 --batch-sizes 1,2 --clicks 20 --baseline-clicks 2
    .venv/bin/python bench/bench_engine.py --device cuda --slices 16 --batch-sizes 1,4,8 --clicks 50 --json out.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSAMSlicer"))

from MedSAMSlicerLib.devices import autocastDtype, chooseDevice  # noqa: E402
from MedSAMSlicerLib.engine import Prompts  # noqa: E402


def parseArgs(argv=None):
    """Command-line options (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--slices", type=int, default=4, help="slices encoded per configuration")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated encoder batch sizes")
    parser.add_argument("--clicks", type=int, default=20, help="interactions timed on the encoded slice")
    parser.add_argument("--baseline-clicks", type=int, default=None,
                        help="interactions timed the plain way (each re-encodes; default: --clicks)")
    parser.add_argument("--size", type=int, default=512, help="slice height and width in pixels")
    parser.add_argument("--recipe", default="medsam", choices=("medsam", "sam"))
    parser.add_argument("--precisions", default="fp32,mixed", help="fp32 and/or mixed (bf16/fp16 autocast, GPU only)")
    parser.add_argument("--model", default="vit_b", choices=("vit_b", "tiny"),
                        help="vit_b (the real architecture) or tiny (a smoke test of this script)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", dest="jsonPath", default=None, help="write the results here as JSON")
    return parser.parse_args(argv)


def synchronize(device):
    """Wait for queued GPU work so wall-clock timings are honest; nothing on CPU."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def syntheticSlice(size, seed):
    """A CT-like slice in [0, 1]: a bright ellipse on a darker disc, with noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size
    body = ((rows - 0.5) ** 2 + (cols - 0.5) ** 2 < 0.18).astype(np.float32) * 0.4
    organ = (((rows - 0.45) / 0.12) ** 2 + ((cols - 0.6) / 0.18) ** 2 < 1).astype(np.float32) * 0.4
    return np.clip(body + organ + 0.05 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)


def interactions(size, count, seed=0):
    """A box, then corrective clicks alternating positive/negative, as (Prompts builder args) per interaction."""
    rng = np.random.default_rng(seed)
    box = (0.4 * size, 0.3 * size, 0.8 * size, 0.6 * size)
    points, labels, steps = [], [], []
    for index in range(count):
        if index:
            points.append(rng.uniform(0.3, 0.7, 2) * size)
            labels.append(index % 2)
        steps.append((box, np.array(points, np.float32).reshape(-1, 2), np.array(labels, np.int32)))
    return steps


def timeEncoder(engine, images, batchSize, device):
    """Seconds per slice encoding ``images`` with ``batchSize`` slices per pass (after one warm-up on GPU)."""
    engine.batchSize = batchSize
    if device != "cpu":
        engine.encode(images[:batchSize])
        synchronize(device)
    start = time.perf_counter()
    embeddings = engine.encode(images)
    synchronize(device)
    return (time.perf_counter() - start) / len(images), embeddings


def timeClicks(engine, embedding, steps, device):
    """Median seconds of one interaction (decode with the previous low-res mask), and all timings."""
    timings, cpuTimes, previous = [], [], None
    for box, points, labels in steps:
        start, cpuStart = time.perf_counter(), time.process_time()
        result = engine.decode(embedding, Prompts(boxXyxy=box, pointsXy=points, pointLabels=labels,
                                                  previousLowResLogits=previous))
        synchronize(device)
        timings.append(time.perf_counter() - start)
        cpuTimes.append(time.process_time() - cpuStart)
        previous = result.lowResLogits
    return statistics.median(timings), timings, statistics.median(cpuTimes)


def timeBaseline(model, image, steps, device):
    """Median seconds per interaction the plain way: SamPredictor.set_image + predict every time."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(model)
    image8 = np.repeat((image * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
    timings, previous = [], None
    for box, points, labels in steps:
        start = time.perf_counter()
        predictor.set_image(image8)
        _, _, lowRes = predictor.predict(point_coords=points if len(points) else None,
                                         point_labels=labels if len(points) else None, box=np.array(box),
                                         mask_input=previous, multimask_output=False)
        synchronize(device)
        timings.append(time.perf_counter() - start)
        previous = lowRes
    return statistics.median(timings), timings


def machineDescription(device):
    """CPU/GPU, core and thread counts and torch version, for the results table."""
    import torch

    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        text = f"{torch.cuda.get_device_name(torch.device(device))}; " + text
    return text


def run(args):
    """Run every measurement and return the results as a dict (seconds, bytes)."""
    import torch
    from segment_anything import build_sam_vit_b

    from MedSAMSlicerLib.samengine import SamEngine
    from MedSAMSlicerLib.tinymodel import buildTinySam

    device = chooseDevice(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam_vit_b(checkpoint=None) if args.model == "vit_b" else buildTinySam()
    images = [syntheticSlice(args.size, seed) for seed in range(args.slices)]
    batchSizes = [int(b) for b in args.batch_sizes.split(",") if b]
    precisions = [p for p in args.precisions.split(",") if p == "fp32" or autocastDtype(device) is not None]
    results = {"machine": machineDescription(device), "device": device, "model": args.model, "recipe": args.recipe,
               "sliceSize": args.size, "slices": args.slices, "command": " ".join(sys.argv), "encoder": [],
               "loadAverageAtStart": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}
    embedding = None
    for precision in precisions:
        engine = SamEngine(model=model, recipe=args.recipe, device=device, modelId="bench_vit_b",
                           mixedPrecision=precision != "fp32")
        for batchSize in batchSizes:
            perSlice, embeddings = timeEncoder(engine, images, batchSize, device)
            dtype = str(autocastDtype(device)).replace("torch.", "") if precision != "fp32" else "fp32"
            results["encoder"].append({"precision": dtype, "batchSize": batchSize, "secondsPerSlice": perSlice})
            print(f"encoder {dtype} batch {batchSize}: {perSlice:.3f} s/slice", flush=True)
            embedding = embedding or embeddings[0]
    steps = interactions(args.size, args.clicks)
    engine = SamEngine(model=model, recipe=args.recipe, device=device, modelId="bench_vit_b")
    timeClicks(engine, embedding, steps[:2], device)  # warm-up
    clickMedian, clickTimes, clickCpu = timeClicks(engine, embedding, steps, device)
    baselineSteps = steps[: args.baseline_clicks or args.clicks]
    baselineMedian, baselineTimes = timeBaseline(engine.model, images[0], baselineSteps, device)
    results.update(clickMedianSeconds=clickMedian, clickTimes=clickTimes, clicks=len(steps), clickCpuSeconds=clickCpu,
                   loadAverageAtEnd=round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
                   baselineMedianSeconds=baselineMedian, baselineTimes=baselineTimes, baselineClicks=len(baselineSteps),
                   speedupVsBaseline=baselineMedian / clickMedian, bytesPerCachedSlice=embedding.nbytes)
    return results


def markdown(results):
    """The results as a markdown table for docs/benchmarks.md."""
    lines = [f"Machine: {results['machine']} (device {results['device']}); model {results['model']} "
             f"(random weights); recipe {results['recipe']}; "
             f"{results['slices']} slices of {results['sliceSize']}x{results['sliceSize']}; 1-min load average "
             f"{results['loadAverageAtStart']} at start, {results['loadAverageAtEnd']} at end.", "",
             "| measure | value |", "|---|---|"]
    for row in results["encoder"]:
        lines.append(f"| encoder, {row['precision']}, batch {row['batchSize']} | {row['secondsPerSlice']:.3f} s/slice |")
    lines += [f"| click-to-mask on an encoded slice, median of {results['clicks']} | "
              f"{results['clickMedianSeconds'] * 1000:.1f} ms (process CPU time {results['clickCpuSeconds'] * 1000:.0f} ms) |",
              f"| plain SamPredictor.set_image + predict per interaction, median of {results['baselineClicks']} | "
              f"{results['baselineMedianSeconds'] * 1000:.0f} ms |",
              f"| speed-up of an interaction vs the plain way | {results['speedupVsBaseline']:.0f}x |",
              f"| bytes per cached slice (fp16 embedding) | {results['bytesPerCachedSlice']:,} |"]
    return "\n".join(lines)


def main(argv=None):
    """Entry point: measure, print the table, optionally write JSON."""
    args = parseArgs(argv)
    results = run(args)
    print(markdown(results))
    if args.jsonPath:
        Path(args.jsonPath).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
