"""Benchmark: one propagation through N slices, split into encode / decode / write time.

    .venv/bin/python bench/bench_propagation.py --engine growcut --slices 100
    .venv/bin/python bench/bench_propagation.py --engine vit_b --slices 10 --device cpu
    .venv/bin/python bench/bench_propagation.py --engine vit_b --slices 100 --device cuda

The volume is a drifting-tube phantom spanning every slice (N x 128 x 128,
1 x 1 x 2 mm); propagation starts on the middle slice and runs both ways with
the stop rules off, so N - 1 slices are encoded and decoded (the seed
slice's mask is given, as after a user's first segmentation).
"vit_b" is segment-anything's ViT-B with random weights
(build_sam_vit_b(checkpoint=None)) behind the project's SamEngine (MedSAM
recipe): its speed is that of MedSAM / SAM ViT-B, its masks are meaningless.
encodeWait = time the loop waited for embeddings (on a GPU the next batch is
encoded in the background while this one decodes, so this is less than the
encoding itself); decode = the engine's decode calls; write =
PropagationResult.toVolumeMask (slice masks back to a (K, J, I) volume);
overhead = the rest of the loop (prompts, stop rules); encodeAlone = the same
slices encoded with nothing else running, in the same batches. "beyond
encoding" = (total - encodeAlone) / total: what propagation costs on top of
the encoder passes it cannot avoid. Random weights often give
empty masks, which would end propagation: the engine is wrapped so that an
empty mask is replaced by its prompt box (the decode itself is still run and
timed), which keeps every slice in the loop.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))

from MedSAMSlicerLib.embeddings.service import EmbeddingService  # noqa: E402
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.phantoms import driftingTubePhantom  # noqa: E402
from MedSAMSlicerLib.workflow.propagation import PropagationSettings, lookaheadSlices, propagate  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402

#: Stop rules off: the benchmark times a fixed number of slices, whatever the masks look like.
NO_STOP = dict(minAreaPixels=0, maxAreaRatio=float("inf"), minScore=-1.0, minIouWithPrevious=-1.0)


def buildEngine(name: str, device: str, batchSize=None):
    """The engine to time: "growcut" or "vit_b" (random-weight ViT-B in SamEngine)."""
    if name == "growcut":
        from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine

        return GrowCutEngine()
    if name == "vit_b":
        import torch
        from segment_anything import build_sam_vit_b

        from MedSAMSlicerLib.engines.samengine import SamEngine

        torch.manual_seed(0)
        return SamEngine(model=build_sam_vit_b(checkpoint=None), recipe="medsam", architecture="vit_b",
                         device=device, batchSize=batchSize)
    raise SystemExit(f"Unknown engine {name!r}: use growcut or vit_b.")


class KeepBoxWhenEmpty:
    """Wraps an engine: an empty mask (random weights give many) becomes the prompt's box, so every slice is visited.

    The real decode still runs and is what is timed; only the mask handed to
    propagation is replaced, which keeps the benchmark's slice count fixed.
    """

    def __init__(self, engine):
        self.engine = engine
        self.modelId = engine.modelId
        self.batchSize = getattr(engine, "batchSize", None)
        self.replaced = 0

    @property
    def device(self):
        """The wrapped engine's device."""
        return getattr(self.engine, "device", "cpu")

    def encode(self, images, progress=None):
        """The wrapped engine's encode."""
        return self.engine.encode(images, progress)

    def decode(self, embedding, prompts):
        """The wrapped engine's decode; an empty mask becomes the prompt box."""
        result = self.engine.decode(embedding, prompts)
        if not result.mask.any() and prompts.boxXyxy is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompts.boxXyxy)
            result.mask = np.zeros(result.mask.shape, bool)
            result.mask[y0:y1 + 1, x0:x1 + 1] = True
            self.replaced += 1
        return result

    def decodeMany(self, embedding, promptsList):
        """decode for each prompt."""
        return [self.decode(embedding, prompts) for prompts in promptsList]


def timeEncodingAlone(engineName, device, batchSize, source, count):
    """Seconds to encode ``count`` slices of ``source`` alone (fresh engine and cache, the propagation's batch size)."""
    engine = buildEngine(engineName, device, batchSize)
    service = EmbeddingService(engine, batchSize=lookaheadSlices(PropagationSettings(), EmbeddingService(engine)))
    service.embeddings(source, 2, [0])  # warm-up (kernels, allocator), as the propagation's seed encode was
    indices = list(range(1, count + 1))
    start = time.perf_counter()
    service.embeddings(source, 2, indices)
    if str(getattr(engine, "device", "cpu")).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(engineName: str, slices: int, device: str = "auto", size: int = 128, batchSize=None, lookahead=None):
    """Propagate through `slices` slices; returns a dict of timings (seconds) and counts.

    encodeAlone: the same number of slices encoded with nothing else running; the
    propagation's cost beyond encoding is (total - encodeAlone) / total, which stays
    honest when encoding and decoding overlap (on a GPU the next batch is encoded
    while this one is decoded, so the "encode" wait inside the loop is shorter).
    """
    voxels, truth, spacing = driftingTubePhantom((slices, size, size), spacingIjk=(1.0, 1.0, 2.0),
                                                 radiusMm=size / 8.0, driftMm=size / 6.0, marginSlices=0)
    source = SliceSource(voxels, spacing, IntensityPolicy.window(0.0, 1.0))
    engine = KeepBoxWhenEmpty(buildEngine(engineName, device, batchSize))
    service = EmbeddingService(engine)
    settings = PropagationSettings(maxSlices=None, lookaheadSlices=lookahead, **NO_STOP)
    seed = slices // 2
    seedMask = source.nativeMaskToImage(2, truth[seed])
    service.embeddings(source, 2, [seed])  # the seed slice was encoded when the user drew the box
    start = time.perf_counter()
    result = propagate(service, source, 2, seed, seedMask, settings)
    propagated = time.perf_counter() - start
    start = time.perf_counter()
    volume = result.toVolumeMask(source)
    write = time.perf_counter() - start
    service.close(timeout=60.0)
    encode, decode = result.timings["encode"], result.timings["decode"]
    total = propagated + write
    encoded = service.stats().get("encoded") - 1
    encodeAlone = timeEncodingAlone(engineName, device, batchSize, source, encoded)
    return {"engine": engineName, "device": str(getattr(engine, "device", "cpu")), "slices": slices,
            "imageSize": list(source.imageShape(2)), "slicesWithMask": len(result.masks),
            "encoded": encoded, "emptyMasksReplaced": engine.replaced, "encodeWait": encode, "decode": decode,
            "write": write, "overhead": propagated - encode - decode, "total": total, "encodeAlone": encodeAlone,
            "beyondEncodingFraction": (total - encodeAlone) / total if total > 0 else 0.0,
            "stopReasons": result.stopReasons, "voxels": int(volume.sum()),
            "machine": f"{platform.processor() or platform.machine()}, {platform.system()}"}


def main(argv=None):
    """Command line: run the benchmark and print the split."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="growcut", choices=["growcut", "vit_b"])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--size", type=int, default=128, help="in-plane size of the phantom (pixels)")
    parser.add_argument("--batch", type=int, default=None, help="encoder batch size (default: the engine's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--lookahead", type=int, default=None,
                        help="slices per encoder request (default: PropagationSettings' 1 on a CPU, 8 on a GPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    figures = run(args.engine, args.slices, args.device, args.size, args.batch, args.lookahead)
    print(f"engine {figures['engine']} on {figures['device']}: {figures['slices']} slices "
          f"({figures['encoded']} encoded, {figures['slicesWithMask']} with a mask), image {figures['imageSize']}")
    steps = max(figures["encoded"] or 1, 1)
    for name in ("encodeWait", "decode", "write", "overhead", "total", "encodeAlone"):
        print(f"  {name:11s} {figures[name]:9.3f} s  ({1000 * figures[name] / steps:8.2f} ms per propagated slice)")
    if figures["emptyMasksReplaced"]:
        print(f"  ({figures['emptyMasksReplaced']} empty masks replaced by their prompt box to keep going)")
    print(f"  beyond encoding: {100 * figures['beyondEncodingFraction']:.2f}% of the total "
          "((total - encodeAlone) / total)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
