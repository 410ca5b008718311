"""Benchmark of the SAM engine with the real ViT-B architecture (random weights: speed, not accuracy).

Measures, in one run on one machine:
- encoder time per slice, batch 1 vs batched, fp32 vs bf16/fp16 autocast (GPU only);
- click-to-mask time on an already encoded 512x512 slice, including prompt
  scaling, decoder and mask post-processing (median over N clicks);
- the plain way as baseline: SamPredictor.set_image + predict for every
  interaction, and the ratio baseline / engine;
- bytes per cached slice embedding.

--decoder-only times click-to-mask alone, without a 35 s ViT-B encoder pass:
ViT-B's prompt encoder and mask decoder (transformer_dim 256: the same for
every SAM size and for MedSAM) behind a one-block image encoder. It compares,
interleaved click by click, the engine's fast decoder (fastdecoder.py) with
the unmodified segment-anything decoder path (SamEngine(fastDecoding=False)
on an untouched copy of the model), for each torch thread count, with a box
and with box + 2 points + the previous mask; and the first click on a slice
(which computes the slice's prompt-independent projections).

Usage:
    .venv/bin/python bench/bench_engine.py --device cpu --slices 2 --batch-sizes 1,2 --clicks 20 --baseline-clicks 2
    .venv/bin/python bench/bench_engine.py --device cuda --slices 16 --batch-sizes 1,4,8 --clicks 50 --json out.json
    .venv/bin/python bench/bench_engine.py --device cpu --decoder-only --decoder-threads 1,2 --clicks 30
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSAMSlicer"))

from MedSAMSlicerLib.engines.devices import autocastDtype, chooseDevice  # noqa: E402
from MedSAMSlicerLib.engines.base import Prompts  # noqa: E402


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
    parser.add_argument("--decoder-only", action="store_true",
                        help="time click-to-mask only (ViT-B-size decoder, tiny encoder): fast vs stock decoder")
    parser.add_argument("--decoder-threads", default="1,2", help="torch thread counts for --decoder-only")
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


def decoderOnlyModel():
    """A Sam with ViT-B's prompt encoder and mask decoder (random weights) behind a one-block, 32-wide encoder."""
    from MedSAMSlicerLib.engines.checkpoints import ArchitectureInfo, buildSamModel

    return buildSamModel(ArchitectureInfo(
        name="custom", embedDim=32, depth=1, numHeads=2, patchSize=16, imgSize=1024, windowSize=14,
        globalAttnIndexes=(), useRelPos=False, mlpRatio=2.0, promptEmbedDim=256, maskInChans=16, decoderDepth=2,
        decoderMlpDim=2048, numMultimaskOutputs=3, iouHeadDepth=3, iouHeadHiddenDim=256))


def clickScenarios(engine, embedding, size):
    """(name, Prompts): a box; the box + a positive and a negative click + the previous low-res mask (slice pixels)."""
    box = (0.4 * size, 0.3 * size, 0.8 * size, 0.6 * size)
    previous = engine.decode(embedding, Prompts(boxXyxy=box)).lowResLogits
    points = np.array([[0.6 * size, 0.45 * size], [0.5 * size, 0.35 * size]], np.float32)
    return [("box", Prompts(boxXyxy=box)),
            ("box + 2 points + previous mask", Prompts(boxXyxy=box, pointsXy=points, pointLabels=[1, 0],
                                                        previousLowResLogits=previous))]


def timeInterleaved(engines, embedding, prompts, clicks, device):
    """Median seconds per decode for each named engine, alternating engines click by click (same load for both)."""
    timings = {name: [] for name in engines}
    for engine in engines.values():
        for _ in range(2):  # warm-up; the fast engine also computes the slice's projections here
            engine.decode(embedding, prompts)
    for _ in range(clicks):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.decode(embedding, prompts)
            synchronize(device)
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def timeFirstClicks(engine, embedding, prompts, count, device):
    """Median seconds of a click on a slice the engine has not decoded on yet (a new SliceEmbedding object)."""
    from MedSAMSlicerLib.engines.base import SliceEmbedding

    timings = []
    for _ in range(count):
        fresh = SliceEmbedding(features=embedding.features.clone(), imageSize=embedding.imageSize,
                               nbytes=embedding.nbytes, extra=dict(embedding.extra))
        start = time.perf_counter()
        engine.decode(fresh, prompts)
        synchronize(device)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def loadAverage():
    """1-minute load average, or None where the OS has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def runDecoderOnly(args):
    """Click-to-mask, fast vs stock decoder, per thread count and prompt form; results as a dict (seconds)."""
    import torch

    from MedSAMSlicerLib.engines.samengine import SamEngine

    device = chooseDevice(args.device)
    torch.manual_seed(0)
    model = decoderOnlyModel()
    options = dict(recipe=args.recipe, device=device, modelId="bench_decoder", architecture="custom")
    engines = {"stock": SamEngine(model=copy.deepcopy(model), fastDecoding=False, **options),
               "fast": SamEngine(model=model, **options)}
    embedding = engines["fast"].encode([syntheticSlice(args.size, 0)])[0]
    scenarios = clickScenarios(engines["fast"], embedding, args.size)
    results = {"mode": "decoder-only", "machine": machineDescription(device), "device": device, "recipe": args.recipe,
               "sliceSize": args.size, "clicks": args.clicks, "command": " ".join(sys.argv), "rows": [],
               "loadAverageAtStart": loadAverage()}
    for threads in [int(t) for t in args.decoder_threads.split(",") if t]:
        torch.set_num_threads(threads)
        for name, prompts in scenarios:
            medians = timeInterleaved(engines, embedding, prompts, args.clicks, device)
            results["rows"].append({"threads": threads, "prompts": name, "stockMedianSeconds": medians["stock"],
                                    "fastMedianSeconds": medians["fast"], "speedup": medians["stock"] / medians["fast"],
                                    "loadAverage": loadAverage()})
            print(f"{threads} thread(s), {name}: stock {medians['stock'] * 1000:.1f} ms, "
                  f"fast {medians['fast'] * 1000:.1f} ms", flush=True)
        first = timeFirstClicks(engines["fast"], embedding, scenarios[0][1], max(3, args.clicks // 3), device)
        results["rows"].append({"threads": threads, "prompts": "box, first click on a slice", "stockMedianSeconds": None,
                                "fastMedianSeconds": first, "speedup": None, "loadAverage": loadAverage()})
    results["loadAverageAtEnd"] = loadAverage()
    return results


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

    from MedSAMSlicerLib.engines.samengine import SamEngine
    from MedSAMSlicerLib.engines.tinymodel import buildTinySam

    device = chooseDevice(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam_vit_b(checkpoint=None) if args.model == "vit_b" else buildTinySam()
    stockModel = copy.deepcopy(model)  # before any engine swaps in the fast layers
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
    stockEngine = SamEngine(model=stockModel, recipe=args.recipe, device=device, modelId="bench_vit_b",
                            fastDecoding=False)
    timeClicks(stockEngine, embedding, steps[:2], device)
    stockMedian = timeClicks(stockEngine, embedding, steps, device)[0]
    baselineSteps = steps[: args.baseline_clicks or args.clicks]
    baselineMedian, baselineTimes = timeBaseline(engine.model, images[0], baselineSteps, device)
    results.update(clickMedianSeconds=clickMedian, clickTimes=clickTimes, clicks=len(steps), clickCpuSeconds=clickCpu,
                   stockDecoderClickMedianSeconds=stockMedian,
                   loadAverageAtEnd=round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
                   baselineMedianSeconds=baselineMedian, baselineTimes=baselineTimes, baselineClicks=len(baselineSteps),
                   speedupVsBaseline=baselineMedian / clickMedian, bytesPerCachedSlice=embedding.nbytes)
    return results


def decoderMarkdown(results):
    """--decoder-only results as a markdown table."""
    lines = [f"Machine: {results['machine']} (device {results['device']}); ViT-B-size prompt encoder + mask decoder "
             f"(random weights); recipe {results['recipe']}; {results['sliceSize']}x{results['sliceSize']} slice; "
             f"median of {results['clicks']} interleaved clicks; 1-min load average {results['loadAverageAtStart']} "
             f"at start, {results['loadAverageAtEnd']} at end.", "",
             "| torch threads | prompts | stock decoder | fast decoder | speed-up | load |", "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        stock = "" if row["stockMedianSeconds"] is None else f"{row['stockMedianSeconds'] * 1000:.1f} ms"
        speedup = "" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(f"| {row['threads']} | {row['prompts']} | {stock} | {row['fastMedianSeconds'] * 1000:.1f} ms | "
                     f"{speedup} | {row['loadAverage']} |")
    return "\n".join(lines)


def markdown(results):
    """The results as a markdown table for docs/benchmarks.md."""
    if results.get("mode") == "decoder-only":
        return decoderMarkdown(results)
    lines = [f"Machine: {results['machine']} (device {results['device']}); model {results['model']} "
             f"(random weights); recipe {results['recipe']}; "
             f"{results['slices']} slices of {results['sliceSize']}x{results['sliceSize']}; 1-min load average "
             f"{results['loadAverageAtStart']} at start, {results['loadAverageAtEnd']} at end.", "",
             "| measure | value |", "|---|---|"]
    for row in results["encoder"]:
        lines.append(f"| encoder, {row['precision']}, batch {row['batchSize']} | {row['secondsPerSlice']:.3f} s/slice |")
    lines += [f"| click-to-mask on an encoded slice, median of {results['clicks']} | "
              f"{results['clickMedianSeconds'] * 1000:.1f} ms (process CPU time {results['clickCpuSeconds'] * 1000:.0f} ms) |",
              f"| the same clicks through the stock segment-anything decoder | "
              f"{results['stockDecoderClickMedianSeconds'] * 1000:.1f} ms |",
              f"| plain SamPredictor.set_image + predict per interaction, median of {results['baselineClicks']} | "
              f"{results['baselineMedianSeconds'] * 1000:.0f} ms |",
              f"| speed-up of an interaction vs the plain way | {results['speedupVsBaseline']:.0f}x |",
              f"| bytes per cached slice (fp16 embedding) | {results['bytesPerCachedSlice']:,} |"]
    return "\n".join(lines)


def main(argv=None):
    """Entry point: measure, print the table, optionally write JSON."""
    args = parseArgs(argv)
    results = runDecoderOnly(args) if args.decoder_only else run(args)
    print(markdown(results))
    if args.jsonPath:
        Path(args.jsonPath).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
