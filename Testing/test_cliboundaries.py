"""The command line checks its numbers and paths before any work: one clear line, exit status 2, no traceback.

Each case runs `medsam-slicer` as a real subprocess, as a user would type it.
"""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from test_cli import runCli, writeEllipsoid  # noqa: F401 (runCli is a fixture)


@pytest.fixture
def images(tmp_path):
    """(image, label) files: an ellipsoid volume and its truth as label 3."""
    image, truth = writeEllipsoid(tmp_path / "volume.nrrd", shapeKji=(8, 24, 32))
    label = sitk.GetImageFromArray(truth.astype(np.uint8) * 3)
    label.CopyInformation(image)
    sitk.WriteImage(label, str(tmp_path / "label.nrrd"))
    return tmp_path / "volume.nrrd", tmp_path / "label.nrrd"


def assertRefused(done, words):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


@pytest.mark.parametrize("option, value", [("--box-ras", "nan,0,0,10,10,10"), ("--box-ras", "0,0,0,inf,10,10"),
                                           ("--point-ras", "1,2,nan,1"), ("--point", "1,2,inf,1"),
                                           ("--point", "nan,2,3,1")])
def test_coordinates_must_be_finite(runCli, tmp_path, images, option, value):
    done = runCli("segment", images[0], "--out", tmp_path / "out.nrrd", option, value)
    assertRefused(done, "finite number")
    assert not (tmp_path / "out.nrrd").exists()


@pytest.mark.parametrize("clicks", ["-1", "51", "1000000"])
def test_click_budget_has_a_sensible_range(runCli, images, clicks):
    assertRefused(runCli("evaluate", *images, "--clicks", clicks), "from 0 to 50")


def test_label_zero_is_the_background(runCli, images):
    assertRefused(runCli("evaluate", *images, "--label", "0"), "--label 0 is the background")
    assertRefused(runCli("evaluate", *images, "--label", "2"), "label 2 is not in the label image (values: 3)")


def test_model_path_of_the_wrong_kind(runCli, tmp_path, images):
    (tmp_path / "weights").mkdir()
    os.mkfifo(tmp_path / "pipe.pth")
    out = tmp_path / "out.nrrd"
    assertRefused(runCli("segment", images[0], "--out", out, "--box", "2,2,3,20,20,3", "--model", tmp_path / "weights"),
                  "is a folder: give the checkpoint file (.pth) inside it")
    assertRefused(runCli("segment", images[0], "--out", out, "--box", "2,2,3,20,20,3", "--model", tmp_path / "pipe.pth",
                         timeout=60), "not a regular file")
    assert not out.exists()


def test_label_image_that_is_a_pipe(runCli, tmp_path, images):
    os.mkfifo(tmp_path / "label.nii.gz")
    assertRefused(runCli("evaluate", images[0], tmp_path / "label.nii.gz", timeout=60), "not a regular file")
