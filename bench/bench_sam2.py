"""Benchmark: MedSAM2 (SAM 2.1 Hiera-T at 512, memory propagation) vs MedSAM (ViT-B at 1024) in one run.

    flock /work/bench.lock .venv/bin/python bench/bench_sam2.py --device cpu --slices 21 --medsam-slices 3

Both models are built from their real architectures with random weights
(sam2.1_hiera_t as MedSAM2's config sam2.1_hiera_t512 builds it; segment-anything's
build_sam_vit_b(checkpoint=None) for MedSAM): speed only, the masks mean nothing.
Per model, on 512 x 512 CT-like slices (a drifting-tube phantom, 1 x 1 x 2 mm):

- encode: seconds per slice for engine.encode of one slice (median);
- interaction: one click-to-mask on an encoded slice (a box, a corrective click
  and the previous low-resolution mask), median;
- propagation: one propagation from the middle slice through the whole volume
  with the stop rules off, end to end (encoder passes, memory or box prompts,
  decoding, masks back to the volume), divided by the slices added. Only the
  middle slice is encoded beforehand, as after the user's first preview on it. MedSAM2 goes through workflow.memorypropagation (one encoder
  pass per slice, SAM 2's memory); MedSAM through workflow.propagation (box from
  the previous mask).

Process CPU time is given next to wall time: the machine is shared, and CPU
time is the less load-sensitive figure. Results are printed and written as JSON.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))

from MedSAMSlicerLib.embeddings.service import EmbeddingService  # noqa: E402
from MedSAMSlicerLib.engines.base import Prompts  # noqa: E402
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.phantoms import driftingTubePhantom  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402
from MedSAMSlicerLib.workflow.memorypropagation import propagateWithMemory  # noqa: E402
from MedSAMSlicerLib.workflow.propagation import PropagationSettings, propagate  # noqa: E402

NO_STOP = PropagationSettings(minAreaPixels=0, maxAreaRatio=float("inf"), minScore=-1.0, minIouWithPrevious=-1.0)
SIZE = 512


def buildMedsam2(device):
    """SAM 2.1 Hiera-T for 512 px inputs (MedSAM2's architecture), random weights, in a Sam2Engine."""
    import torch

    from MedSAMSlicerLib.engines.sam2checkpoints import buildSam2Model, officialArchitecture
    from MedSAMSlicerLib.engines.sam2engine import Sam2Engine

    torch.manual_seed(0)
    return Sam2Engine(model=buildSam2Model(officialArchitecture("hiera_t"), 512), recipe="medsam2", device=device,
                      modelId="medsam2_bench")


def buildMedsam(device):
    """segment-anything's ViT-B with random weights in a SamEngine (MedSAM recipe)."""
    import torch
    from segment_anything import build_sam_vit_b

    from MedSAMSlicerLib.engines.samengine import SamEngine

    torch.manual_seed(0)
    return SamEngine(model=build_sam_vit_b(checkpoint=None), recipe="medsam", architecture="vit_b", device=device,
                     modelId="medsam_bench")


def timed(function, *args, **options):
    """(result, wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **options)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(engine, source, slices: int, interactions: int, memory: bool) -> dict:
    """encode, interaction and propagation figures of one engine on ``slices`` slices of ``source``."""
    images = [source.sliceImage(2, k) for k in range(min(slices, 3))]
    engine.encode(images[:1])  # warm-up (allocations, lazy modules)
    encodes = [timed(engine.encode, [image])[1:] for image in images]
    embedding = engine.encode(images[:1])[0]
    box = (200.0, 200.0, 320.0, 320.0)
    first = engine.decode(embedding, Prompts(boxXyxy=box))
    prompts = Prompts(boxXyxy=box, pointsXy=[[260.0, 250.0]], pointLabels=[0],
                      previousLowResLogits=first.lowResLogits)
    clicks = [timed(engine.decode, embedding, prompts)[1:] for _ in range(interactions)]
    middle = slices // 2
    service = EmbeddingService(engine)
    service.embedding(source, 2, middle)  # the seed slice was encoded for the user's first preview
    if memory:
        run = lambda: propagateWithMemory(service, source, 2, middle, Prompts(boxXyxy=box), NO_STOP,  # noqa: E731
                                          sliceRange=(0, slices - 1))
    else:
        def run():
            seed = engine.decode(service.embedding(source, 2, middle), Prompts(boxXyxy=box))
            mask = seed.mask if seed.mask.any() else np.ones_like(seed.mask)
            return propagate(service, source, 2, middle, mask, NO_STOP, sliceRange=(0, slices - 1))
    _, wall, cpu = timed(lambda: run().toVolumeMask(source))
    added = slices - 1
    return {
        "encodeSecondsPerSlice": statistics.median(w for w, _ in encodes),
        "encodeCpuSecondsPerSlice": statistics.median(c for _, c in encodes),
        "interactionMs": 1000 * statistics.median(w for w, _ in clicks),
        "interactionCpuMs": 1000 * statistics.median(c for _, c in clicks),
        "propagationSecondsPerSlice": wall / added, "propagationCpuSecondsPerSlice": cpu / added,
        "propagatedSlices": added, "encoderPasses": service.stats()["encoded"] - 1,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=21, help="volume slices for MedSAM2 (default 21)")
    parser.add_argument("--medsam-slices", type=int, default=3, help="volume slices for MedSAM (default 3)")
    parser.add_argument("--interactions", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "sam2_vs_medsam_cpu.json"))
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "device": args.device, "models": {}}
    for name, build, slices, memory in (("MedSAM2 (Hiera-T, 512)", buildMedsam2, args.slices, True),
                                        ("MedSAM (ViT-B, 1024)", buildMedsam, args.medsam_slices, False)):
        voxels, _, spacing = driftingTubePhantom((slices, SIZE, SIZE), spacingIjk=(1.0, 1.0, 2.0), radiusMm=40.0,
                                                 driftMm=20.0, marginSlices=0, seed=3)
        source = SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))
        report["models"][name] = figures = measure(build(args.device), source, slices, args.interactions, memory)
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}),
              flush=True)
    two = list(report["models"].values())
    report["speedUp"] = {key: two[1][key] / two[0][key] for key in
                         ("encodeSecondsPerSlice", "interactionMs", "propagationSecondsPerSlice")}
    print("MedSAM / MedSAM2:", json.dumps({k: round(v, 1) for k, v in report["speedUp"].items()}))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
