"""What the integrity checks cost: reading with the NIfTI/DICOM checks, writing with fsync + read-back, SHA-256.

Each figure is paired with a baseline measured in the same run on the same data:
- read: imageio.readImage (header checks, NIfTI length scan, NaN restore, geometry check, node) vs the same
  reading steps without the new checks (ITK header, ITK read, node, NaN count: what readImage did before);
  the NIfTI check alone (checkNiftiFile) is timed too;
- write: imageio.writeLabelmap (temporary name, fsync, read-back of geometry and voxels, rename) vs
  Slicer's storage node writing the same label node directly (what the writer did before);
- hash: hashlib SHA-256 throughput over a file, the cost of a model cache check without a stamp.

    flock /work/bench.lock .venv/bin/python bench/bench_integrity.py [--shape 256,512,512] [--repeats 3]
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSAMSlicer"))


def best(seconds, call, repeats):
    """Best of ``repeats`` wall-clock timings of call() (the least disturbed by other load)."""
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="256,512,512", help="K,J,I voxels of the test volume")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hash-mb", type=int, default=512, help="size of the file hashed")
    args = parser.parse_args()
    shapeKji = tuple(int(v) for v in args.shape.split(","))

    import SimpleITK as sitk
    import slicer

    from MedSAMSlicerLib.imaging.fileintegrity import checkNiftiFile
    from MedSAMSlicerLib.mrml import imageio
    from MedSAMSlicerLib.mrml.headlessscene import createHeadlessScene, silenceNativeMessages

    scene = createHeadlessScene()
    silenceNativeMessages()
    rng = np.random.default_rng(0)
    kk, jj, ii = np.ogrid[: shapeKji[0], : shapeKji[1], : shapeKji[2]]
    body = ((ii - shapeKji[2] / 2) / (shapeKji[2] * 0.4)) ** 2 + ((jj - shapeKji[1] / 2) / (shapeKji[1] * 0.35)) ** 2 <= 1
    voxels = np.where(body, 40, -1000).astype(np.int16) + rng.normal(0, 20, shapeKji).astype(np.int16)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        folder = Path(folder)
        for extension in (".nii.gz", ".nii"):
            path = str(folder / f"ct{extension}")
            sitk.WriteImage(sitk.GetImageFromArray(voxels), path, useCompression=extension.endswith(".gz"))
            def unchecked():
                imageio._readHeader(path)
                node = imageio._nodeFromSitkImage(imageio._readSitk(path), scene, "ct")
                imageio._warnIfNotFinite(node, lambda message: None)
                scene.RemoveNode(node)

            baseline = best([], unchecked, args.repeats)
            checked = best([], lambda: scene.RemoveNode(imageio.readImage(path, scene, warn=lambda m: None)), args.repeats)
            rows.append((f"read {extension} ({os.path.getsize(path) / 1e6:.0f} MB)", checked, baseline))
            alone = best([], lambda: checkNiftiFile(path), args.repeats)
            rows.append((f"  of which checkNiftiFile {extension}", alone, baseline))

        volume = imageio.readImage(str(folder / "ct.nii"), scene)
        mask = voxels > 0
        for extension in (".nii.gz", ".nrrd"):
            path = str(folder / f"mask{extension}")
            label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            label.CopyOrientation(volume)
            slicer.util.updateVolumeFromArray(label, mask.astype(np.uint8))

            def direct():
                storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
                storage.SetUseCompression(True)
                storage.SetFileName(str(folder / f"direct{extension}"))
                assert storage.WriteData(label)

            baseline = best([], direct, args.repeats)
            checked = best([], lambda: imageio.writeLabelmap(mask, volume, path), args.repeats)
            rows.append((f"write labelmap {extension} ({os.path.getsize(path) / 1e6:.1f} MB)", checked, baseline))

        blob = folder / "blob.bin"
        with open(blob, "wb") as stream:
            for _ in range(args.hash_mb):
                stream.write(rng.bytes(1 << 20))

        def hashBlob():
            digest = hashlib.sha256()
            with open(blob, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    digest.update(block)

        hashSeconds = best([], hashBlob, args.repeats)
    print(f"volume {shapeKji} int16; best of {args.repeats}")
    print("| operation | with checks (s) | baseline (s) | ratio |")
    print("|---|---|---|---|")
    for name, checked, baseline in rows:
        print(f"| {name} | {checked:.2f} | {baseline:.2f} | {checked / baseline:.2f} |")
    print(f"SHA-256: {args.hash_mb / hashSeconds:.0f} MB/s ({args.hash_mb} MB in {hashSeconds:.2f} s)")


if __name__ == "__main__":
    main()
