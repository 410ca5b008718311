"""A checkpoint whose tensors do not fit its architecture names the first missing, unexpected and wrong-shape ones.

Real checkpoint files: a tiny SAM built from segment-anything's classes, saved with torch.save, then edited as
a checkpoint from another variant or a damaged export would be (a tensor dropped, one added, one reshaped).
"""

import pytest
import torch

from MedSAMSlicerLib.core.errors import CheckpointError
from MedSAMSlicerLib.engines.checkpoints import loadSamModel
from MedSAMSlicerLib.engines.tinymodel import buildTinySam
from test_cli import runCli  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("oneTorchThread")


def editedCheckpoint(path):
    """A tiny SAM checkpoint with one tensor missing, one unexpected and one of the wrong shape."""
    state = buildTinySam(seed=1).state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["adapter.scale"] = torch.ones(4)
    state["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 16)
    torch.save(state, str(path))
    return path


def test_message_names_the_tensors_that_do_not_fit(tmp_path):
    with pytest.raises(CheckpointError) as error:
        loadSamModel(editedCheckpoint(tmp_path / "edited.pth"))
    message = str(error.value)
    assert "edited.pth" in message
    assert "missing: mask_decoder.iou_token.weight" in message
    assert "unexpected: adapter.scale" in message
    assert "wrong shape: prompt_encoder.point_embeddings.0.weight is (1, 16) in the file, (1, 32) in the model" in message
    assert "Error(s) in loading state_dict" not in message


def test_many_missing_tensors_are_counted_not_listed(tmp_path):
    state = buildTinySam(seed=1).state_dict()
    dropped = [key for key in state if key.startswith("mask_decoder.output_hypernetworks_mlps.")]
    for key in dropped:
        del state[key]
    torch.save(state, str(tmp_path / "short.pth"))
    with pytest.raises(CheckpointError, match=rf"missing: {dropped[0]}, {dropped[1]}, {dropped[2]} \(and "
                                              rf"{len(dropped) - 3} more\)"):
        loadSamModel(tmp_path / "short.pth")


def test_command_line_shows_the_tensor(runCli, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 16, 16), np.float32)), str(tmp_path / "image.nrrd"))
    done = runCli("segment", tmp_path / "image.nrrd", "--out", tmp_path / "mask.nrrd", "--box", "2,2,1,12,12,1",
                  "--model", editedCheckpoint(tmp_path / "edited.pth"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "missing: mask_decoder.iou_token.weight" in lines[0], done.stderr
