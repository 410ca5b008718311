"""Benchmark: a SAM encode run through the interaction controller's job runner while the main thread idles
as Slicer's does, against the same encode on a bare thread.

In Slicer the main thread holds the GIL while it idles in the Qt event loop,
so a worker thread runs Python only when the main thread gives the GIL up
(interaction/jobrunner.py). Three ways of running one ``SamEngine.encode``:

- bare: a plain thread, the main thread blocked in join() (GIL released): the baseline;
- runner: the controller's JobRunner (its default poll interval and GIL yield), polled by a main loop that
  sleeps holding the GIL between ticks (Testing/realviews.SlicerLikeMainLoop, as Slicer's event loop);
- starving (optional): the same runner with no GIL yield, as the module polled before (a reference).

Runs alternate (bare, runner, starving, bare, ...) so load changes hit all alike;
the ratio runner / bare is taken from the medians of the same run.

Usage (on a shared machine, under the benchmark lock):
    flock /work/bench.lock .venv/bin/python bench/bench_poll_gil.py --model tiny --repeats 15 --starving
    flock /work/bench.lock .venv/bin/python bench/bench_poll_gil.py --model vit_b --repeats 3 --json bench/results/poll_gil_vit_b.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))
sys.path.insert(0, str(REPO / "MedSAMSlicer" / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "Testing"))

from MedSAMSlicerLib.interaction.jobrunner import JobRunner, Task  # noqa: E402
from MedSAMSlicerLib.interaction.scheduler import ManualScheduler  # noqa: E402


def parseArgs(argv=None):
    """Command-line options (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=("vit_b", "tiny"),
                        help="vit_b: the real SAM/MedSAM encoder (random weights); tiny: many small operations")
    parser.add_argument("--repeats", type=int, default=5, help="encodes per way of running")
    parser.add_argument("--size", type=int, default=512, help="slice height and width in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--starving", action="store_true", help="also time a runner that never yields the GIL")
    parser.add_argument("--json", dest="jsonPath", default=None, help="write the results here as JSON")
    return parser.parse_args(argv)


def buildEngine(modelName):
    """A CPU SamEngine on the real ViT-B architecture or the tiny test model (random weights)."""
    from MedSAMSlicerLib.engines.samengine import SamEngine
    from MedSAMSlicerLib.engines.tinymodel import buildTinySam

    if modelName == "vit_b":
        from segment_anything import build_sam_vit_b

        model = build_sam_vit_b(checkpoint=None)
    else:
        model = buildTinySam()
    return SamEngine(model=model, recipe="medsam", device="cpu", modelId=f"bench_{modelName}")


def timeBare(encode):
    """Seconds for ``encode()`` on a plain thread while the main thread waits in join()."""
    started = time.perf_counter()
    thread = threading.Thread(target=encode)
    thread.start()
    thread.join()
    return time.perf_counter() - started


def timeRunner(encode, yieldMs=None):
    """Seconds from starting ``encode`` as a JobRunner task until its result is handed back on the main thread,
    the main thread idling with the GIL held between the runner's polls."""
    from realviews import SlicerLikeMainLoop

    scheduler = ManualScheduler()
    runner = JobRunner(scheduler) if yieldMs is None else JobRunner(scheduler, yieldMs=yieldMs)
    loop = SlicerLikeMainLoop(scheduler)
    finished = []
    started = time.perf_counter()
    runner.start(Task("Encoding", lambda progress, cancel: encode(), lambda result: finished.append(time.perf_counter())))
    while not finished:
        loop.run(loop.tickMs)
    return finished[0] - started


def main(argv=None):
    """Run the benchmark and print (and optionally save) the medians and the ratio."""
    args = parseArgs(argv)
    import torch

    torch.set_num_threads(args.threads)
    engine = buildEngine(args.model)
    rng = np.random.default_rng(0)
    image = np.clip(0.5 + 0.1 * rng.standard_normal((args.size, args.size)), 0, 1).astype(np.float32)
    encode = lambda: engine.encode([image])  # noqa: E731
    encode()  # warm-up (allocations, kernels)
    ways = {"bare": timeBare, "runner": timeRunner}
    if args.starving:
        ways["starving"] = lambda work: timeRunner(work, yieldMs=0)
    times = {name: [] for name in ways}
    for repeat in range(args.repeats):
        for name, run in ways.items():
            times[name].append(run(encode))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{name} {values[-1]:.3f} s" for name, values in times.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "model": args.model, "size": args.size, "threads": args.threads, "repeats": args.repeats,
        "medianSeconds": medians, "allSeconds": times,
        "ratioRunnerToBare": medians["runner"] / medians["bare"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "loadAverage": os.getloadavg()},
    }
    if "starving" in medians:
        result["ratioStarvingToBare"] = medians["starving"] / medians["bare"]
    print(json.dumps({key: result[key] for key in result if key != "allSeconds"}, indent=2))
    if args.jsonPath:
        Path(args.jsonPath).parent.mkdir(parents=True, exist_ok=True)
        Path(args.jsonPath).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
