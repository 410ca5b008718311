"""The `medsam-slicer` command line, run as a user runs it: a subprocess on files, checked on its outputs.

Every run uses an empty model cache (MEDSAM_SLICER_CACHE), so the default model
is the weight-free growcut engine and the results are deterministic.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
JSON_KEYS = {"voxels", "slices", "timings", "cache"}


def cliCommand():
    """The installed console script beside this Python, else the module."""
    script = Path(sys.executable).parent / "medsam-slicer"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "MedSAMSlicerLib.cli"]


@pytest.fixture
def runCli(tmp_path):
    """Run `medsam-slicer ARGS` with an empty model cache; returns the CompletedProcess."""
    environment = dict(os.environ, MEDSAM_SLICER_CACHE=str(tmp_path / "cache"))
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "MedSAMSlicer"), environment.get("PYTHONPATH", "")])

    def run(*args, timeout=300):
        return subprocess.run(cliCommand() + [str(a) for a in args], capture_output=True, text=True,
                              env=environment, timeout=timeout)
    return run


def writeEllipsoid(path, spacing=(0.8, 1.1, 2.0), shapeKji=(18, 40, 56)):
    """A noisy bright ellipsoid on a tilted, left-handed, anisotropic grid; returns (image, truthKji)."""
    from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom

    voxels, truth, spacing = ellipsoidPhantom(shapeKji=shapeKji, spacingIjk=spacing)
    image = sitk.GetImageFromArray(voxels.astype(np.float32))
    c, s = math.cos(0.4), math.sin(0.4)
    image.SetDirection((c, 0.0, -s, 0.0, -1.0, 0.0, s, 0.0, c))  # rotated about y, j flipped
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 35.5, 102.0))
    sitk.WriteImage(image, str(path))
    return image, truth


def boxText(truth, marginVoxels=2, sliceAxis=2, sliceIndex=None):
    """--box text around the truth (inclusive voxel indices); a 2D box on sliceIndex when given."""
    k, j, i = np.nonzero(truth)
    shape = truth.shape[::-1]
    low = [max(int(v.min()) - marginVoxels, 0) for v in (i, j, k)]
    high = [min(int(v.max()) + marginVoxels, n - 1) for v, n in zip((i, j, k), shape)]
    low[sliceAxis], high[sliceAxis] = (int((low[sliceAxis] + high[sliceAxis]) // 2),) * 2 if sliceIndex is None \
        else (sliceIndex, sliceIndex)
    return ",".join(str(v) for v in low + high)


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def assertSameGeometry(written, reference):
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)


def lastJson(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("inputName, outputName, axis", [
    ("volume.nii.gz", "mask.nii.gz", "k"),
    ("volume.nrrd", "result.seg.nrrd", "i"),
])
def test_segment_keeps_input_geometry_and_covers_the_object(runCli, tmp_path, inputName, outputName, axis):
    image, truth = writeEllipsoid(tmp_path / inputName)
    sliceAxis = "ijk".index(axis)
    out = tmp_path / "results" / outputName  # a folder that does not exist yet is created
    done = runCli("segment", tmp_path / inputName, "--out", out, "--box", boxText(truth, sliceAxis=sliceAxis),
                  "--axis", axis, "--propagate", "--json")
    assert done.returncode == 0, done.stderr
    assert "weight-free" in done.stderr  # no MedSAM weights cached: says which engine it used
    written = sitk.ReadImage(str(out))
    assertSameGeometry(written, image)
    mask = sitk.GetArrayFromImage(written) > 0
    assert dice(mask, truth) >= 0.9

    summary = lastJson(done.stdout)
    assert set(summary) == JSON_KEYS
    assert set(summary["timings"]) == {"encode", "decode", "write", "total"}
    assert set(summary["cache"]) == {"encoded", "hits", "misses"}
    assert summary["voxels"] == int(mask.sum())
    arrayAxis = 2 - sliceAxis
    assert summary["slices"] == int(mask.any(axis=tuple(a for a in range(3) if a != arrayAxis)).sum()) > 1
    assert summary["cache"]["encoded"] >= summary["slices"]
    assert all(isinstance(v, float) and v >= 0 for v in summary["timings"].values())
    assert summary["timings"]["total"] >= summary["timings"]["encode"]
    assert sorted(os.listdir(out.parent)) == [outputName]


def test_single_slice_box_ras_and_points(runCli, tmp_path):
    """Without --propagate only the box's slice is segmented; RAS boxes and negative points are honoured."""
    image, truth = writeEllipsoid(tmp_path / "volume.nii.gz")
    middle = int(np.nonzero(truth.any(axis=(1, 2)))[0].mean())
    done = runCli("segment", tmp_path / "volume.nii.gz", "--out", tmp_path / "slice.nrrd",
                  "--box", boxText(truth, sliceIndex=middle), "--json")
    assert done.returncode == 0, done.stderr
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "slice.nrrd"))) > 0
    assert lastJson(done.stdout)["slices"] == 1 and mask[middle].any() and not np.delete(mask, middle, 0).any()
    assert dice(mask[middle], truth[middle]) >= 0.9

    # The same box given in RAS millimetres (corners through the volume's own geometry).
    j, i = np.nonzero(truth[middle])
    cornersIjk = [(int(i.min()) - 2, int(j.min()) - 2, middle), (int(i.max()) + 2, int(j.max()) + 2, middle)]
    cornersLps = [np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])) for c in cornersIjk]
    # The image is tilted: give the RAS bounding box of the slice box, thin across the slice.
    ras = [c * [-1, -1, 1] for c in cornersLps]
    low, high = np.minimum(*ras), np.maximum(*ras)
    done = runCli("segment", tmp_path / "volume.nii.gz", "--out", tmp_path / "ras.nii.gz",
                  "--box-ras", ",".join(f"{v:.3f}" for v in np.concatenate([low, high])),
                  "--point", f"{int(i.mean())},{int(j.mean())},{middle},1", "--axis", "k")
    assert done.returncode == 0, done.stderr
    rasMask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ras.nii.gz"))) > 0
    assert rasMask.any(axis=(1, 2)).sum() == 1
    assert dice(rasMask, np.where(rasMask.any(axis=(1, 2))[:, None, None], truth, False)) >= 0.85


def test_2d_grayscale_and_rgb_images_segment(runCli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    rows, columns = np.mgrid[:90, :120]
    truth = (rows - 40) ** 2 + (columns - 70) ** 2 <= 22 ** 2
    gray = np.clip(60 + 120 * truth + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
    rgb = np.stack([np.where(truth, 200, 90), np.where(truth, 80, 90), np.where(truth, 60, 110)], -1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    box = "44,14,0,96,66,0"  # x = column, y = row, inclusive

    for name in ("gray.png", "rgb.png"):
        out = tmp_path / f"{name[:-4]}.nii.gz"
        done = runCli("segment", tmp_path / name, "--out", out, "--box", box)
        assert done.returncode == 0, done.stderr
        written = sitk.ReadImage(str(out))
        assert written.GetSize() == (120, 90, 1)
        assert dice(sitk.GetArrayFromImage(written)[0] > 0, truth) >= 0.9, name


def test_dicom_series_folder_segments_on_its_grid(runCli, tmp_path, sharedData):
    folder = sharedData / "dcmqi_ct3slice" / "ct-3slice"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    done = runCli("segment", folder, "--out", tmp_path / "ct.nii.gz", "--box", "250,200,1,330,280,1")
    assert done.returncode == 0, done.stderr
    written = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    assertSameGeometry(written, series)
    mask = sitk.GetArrayFromImage(written) > 0
    assert mask[1].any() and not mask[0].any() and not mask[2].any()
    k, j, i = np.nonzero(mask)
    assert i.min() >= 250 - 1 and i.max() <= 330 + 1 and j.min() >= 200 - 1 and j.max() <= 280 + 1


def test_nan_voxels_warn_and_segment(runCli, tmp_path):
    image, truth = writeEllipsoid(tmp_path / "clean.nrrd")
    voxels = sitk.GetArrayFromImage(image)
    voxels[0, :3, :3] = np.nan
    withNan = sitk.GetImageFromArray(voxels)
    withNan.CopyInformation(image)
    sitk.WriteImage(withNan, str(tmp_path / "nan.nrrd"))
    done = runCli("segment", tmp_path / "nan.nrrd", "--out", tmp_path / "nan.seg.nrrd", "--box", boxText(truth))
    assert done.returncode == 0, done.stderr
    assert "9 NaN voxels" in done.stderr
    assert (tmp_path / "nan.seg.nrrd").is_file()


def badInputs(tmp_path):
    """(name, arguments, expected words) for every bad input of issue 7 item 6; OUT is tmp_path/out/out.nii.gz."""
    import torch

    _, truth = writeEllipsoid(tmp_path / "good.nii.gz", shapeKji=(8, 24, 32))
    good = boxText(truth)
    (tmp_path / "notes.txt").write_text("hello, I am not an image")
    sitk.WriteImage(sitk.JoinSeries([sitk.Image(8, 8, 4, sitk.sitkInt16)] * 3), str(tmp_path / "fourd.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorFloat32, 5), str(tmp_path / "five.nrrd"))
    (tmp_path / "corrupt.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"backbone.conv.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "other.pth"))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    image = tmp_path / "good.nii.gz"
    return [
        ("missing file", [tmp_path / "nothere.nii.gz", "--box", good], "does not exist"),
        ("not an image", [tmp_path / "notes.txt", "--box", good], "not an image"),
        ("4D image", [tmp_path / "fourd.nii.gz", "--box", "1,1,1,5,5,1"], "3 volumes"),
        ("5 components", [tmp_path / "five.nrrd", "--box", "1,1,1,5,5,1"], "5 components"),
        ("box outside", [image, "--box", "100,100,2,120,120,2"], "outside the image"),
        ("degenerate box", [image, "--box", "5,5,2,5,15,2"], "at least 2 voxels"),
        ("unknown model", [image, "--box", good, "--model", "medsam_vit_z"], "unknown model"),
        ("corrupt checkpoint", [image, "--box", good, "--model", tmp_path / "corrupt.pth"], "corrupt.pth"),
        ("unknown architecture", [image, "--box", good, "--model", tmp_path / "other.pth"], "segment anything"),
        ("unwritable folder", [image, "--box", good, "--out", tmp_path / "blocker" / "out.nii.gz"], "output folder"),
        ("output is the input", [image, "--box", good, "--out", image], "is the input image"),
    ]


def test_every_bad_input_exits_nonzero_with_one_clear_line_and_no_output(runCli, tmp_path):
    out = tmp_path / "out" / "out.nii.gz"
    out.parent.mkdir()
    for name, arguments, words in badInputs(tmp_path):
        done = runCli("segment", *(arguments if "--out" in arguments else arguments + ["--out", out]))
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0, name
        assert len(lines) == 1, f"{name}: {done.stderr}"
        assert words.lower() in lines[0].lower(), f"{name}: {lines[0]}"
        assert "Traceback" not in done.stderr
        assert os.listdir(out.parent) == [], name  # no OUT, no temporary file
    assert sitk.ReadImage(str(tmp_path / "good.nii.gz")).GetSize() == (32, 24, 8)  # the input is untouched


def test_debug_shows_the_traceback(runCli, tmp_path):
    done = runCli("segment", tmp_path / "nothere.nrrd", "--out", tmp_path / "o.nrrd", "--box", "0,0,0,3,3,0", "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and "InputError" in done.stderr


def test_models_lists_registry_with_cache_status(runCli, tmp_path):
    done = runCli("models", "--json")
    assert done.returncode == 0, done.stderr
    models = {row["id"]: row for row in json.loads(done.stdout)}
    assert {"medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h", "growcut"} <= set(models)
    assert models["medsam_vit_b"]["cached"] is False and "medsam" in models["medsam_vit_b"]["aliases"]
    done = runCli("download", "growcut")
    assert done.returncode != 0 and "nothing to download" in done.stderr
    done = runCli("segment", tmp_path / "x.nii.gz", "--out", tmp_path / "o.nii.gz", "--box", "0,0,0,3,3,0",
                  "--model", "medsam")
    assert done.returncode != 0 and "medsam-slicer download" in done.stderr


def test_evaluate_reports_dice_and_noc(runCli, tmp_path):
    image, truth = writeEllipsoid(tmp_path / "volume.nii.gz")
    label = sitk.GetImageFromArray(truth.astype(np.uint8) * 3)
    label.CopyInformation(image)
    sitk.WriteImage(label, str(tmp_path / "label.nrrd"))
    done = runCli("evaluate", tmp_path / "volume.nii.gz", tmp_path / "label.nrrd", "--clicks", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = lastJson(done.stdout)
    assert {"dice", "noc85", "noc90", "clicks"} <= set(summary)
    assert summary["dimension"] == "3D" and summary["dice"] >= 0.9
    assert summary["noc90"] <= 2 and summary["clicks"] <= 2
    done = runCli("evaluate", tmp_path / "volume.nii.gz", tmp_path / "label.nrrd", "--label", "1")
    assert done.returncode != 0 and "label 1 is not in the label image" in done.stderr


def test_evaluate_2d_image(runCli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    rows, columns = np.mgrid[:80, :100]
    truth = ((rows - 42) / 20.0) ** 2 + ((columns - 45) / 28.0) ** 2 <= 1.0
    Image.fromarray(np.clip(70 + 110 * truth + rng.normal(0, 10, truth.shape), 0, 255).astype(np.uint8)).save(
        tmp_path / "image.png")
    Image.fromarray((truth * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    done = runCli("evaluate", tmp_path / "image.png", tmp_path / "mask.png", "--clicks", "1", "--json")
    assert done.returncode == 0, done.stderr
    summary = lastJson(done.stdout)
    assert summary["dimension"] == "2D" and summary["dice"] >= 0.9 and len(summary["dices"]) == summary["clicks"] + 1


def test_real_2d_images_segment(runCli, tmp_path, sharedData):
    """A colour CT slice (SAM-Med2D) and a grayscale ultrasound (HC18), boxed from their masks."""
    from PIL import Image

    cases = [("sammed2d/images/amos_0004_75.png", "sammed2d/masks/amos_0004_75_liver_000.png", 0.8),
             ("hc18/images/000_HC.png", "hc18/masks/000_HC_mask.png", 0.5)]
    for imageName, maskName, minimumDice in cases:
        truth = np.array(Image.open(sharedData / maskName)) > 0
        rows, columns = np.nonzero(truth)
        box = f"{columns.min()},{rows.min()},0,{columns.max()},{rows.max()},0"
        out = tmp_path / (Path(imageName).stem + ".nii.gz")
        done = runCli("segment", sharedData / imageName, "--out", out, "--box", box)
        assert done.returncode == 0, done.stderr
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[0] > 0
        assert mask.shape == truth.shape
        outsideBox = mask.copy()
        outsideBox[rows.min():rows.max() + 1, columns.min():columns.max() + 1] = False
        assert not outsideBox.any(), imageName
        assert dice(mask, truth) >= minimumDice, imageName



def test_model_choice(tmp_path, monkeypatch):
    """--model: a file is a custom checkpoint, names and aliases resolve, and the default says why it is growcut."""
    from MedSAMSlicerLib.cli.commands import resolveModel
    from MedSAMSlicerLib.core.errors import DownloadError, InputError

    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "my_finetune.pth"
    checkpoint.write_bytes(b"weights")
    assert resolveModel(str(checkpoint)) == ("custom", str(checkpoint), None)
    assert resolveModel("GrowCut") == ("growcut", None, None)
    name, path, note = resolveModel(None)
    assert (name, path) == ("growcut", None) and "medsam-slicer download medsam" in note
    with pytest.raises(DownloadError, match="medsam-slicer download medsam_vit_b"):
        resolveModel("medsam")
    with pytest.raises(InputError, match="Unknown model"):
        resolveModel("sam2")
    with pytest.raises(InputError, match="not found"):
        resolveModel(str(tmp_path / "missing.pth"))
