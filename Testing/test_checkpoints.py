"""Checkpoint files as users have them: bare, wrapped, saved on a GPU, wrong architecture, broken."""

import argparse

import pytest
import torch

from MedSAMSlicerLib.engines.checkpoints import detectArchitecture, loadSamModel, readStateDict
from MedSAMSlicerLib.core.errors import CheckpointError
from MedSAMSlicerLib.engines.tinymodel import TINY_EMBED_DIM, buildTinySam, writeTinyCheckpoint



pytestmark = pytest.mark.usefixtures("oneTorchThread")


@pytest.fixture(scope="module")
def tinyFiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "bare": writeTinyCheckpoint(folder / "tiny_bare.pth", form="bare", seed=3),
        "wrapped": writeTinyCheckpoint(folder / "tiny_wrapped.pth", form="wrapped", seed=3),
    }


def _assertSameWeights(model, reference):
    expected = reference.state_dict()
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key].device.type == "cpu"
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("form", ["bare", "wrapped"])
def test_bare_and_wrapped_checkpoints_load_the_saved_weights(tinyFiles, form):
    model, architecture = loadSamModel(tinyFiles[form])
    assert architecture == "custom"
    _assertSameWeights(model, buildTinySam(seed=3))
    assert not model.training


def test_checkpoint_saved_from_gpu_tensors_loads_on_cpu(tmp_path):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = writeTinyCheckpoint(tmp_path / "saved_on_device.pth", form="wrapped", seed=1, device=device)
    model, _ = loadSamModel(path)
    _assertSameWeights(model, buildTinySam(seed=1))


def test_tiny_architecture_is_detected_with_its_dims(tinyFiles):
    info = detectArchitecture(readStateDict(tinyFiles["bare"]))
    assert info.name == "custom"
    assert (info.embedDim, info.depth, info.patchSize, info.imgSize) == (TINY_EMBED_DIM, 2, 16, 1024)
    assert info.windowSize == 14 and info.globalAttnIndexes == ()
    assert "embed dim 32" in info.describe()


@pytest.mark.parametrize("builderName, expected", [("build_sam_vit_b", ("vit_b", 768, 12, 12)),
                                                   ("build_sam_vit_l", ("vit_l", 1024, 24, 16)),
                                                   ("build_sam_vit_h", ("vit_h", 1280, 32, 16))])
def test_standard_architectures_are_recognised_from_shapes(builderName, expected):
    import segment_anything

    with torch.device("meta"):  # shapes only: no memory, no time
        stateDict = getattr(segment_anything, builderName)().state_dict()
    info = detectArchitecture(stateDict)
    assert (info.name, info.embedDim, info.depth, info.numHeads) == expected


def test_mismatched_architecture_names_the_one_the_file_looks_like(tinyFiles, tmp_path):
    with pytest.raises(CheckpointError, match=r"does not fit the vit_b architecture.*look like custom.*embed dim 32"):
        loadSamModel(tinyFiles["bare"], architecture="vit_b")
    # A ViT-L file chosen as ViT-B: the message names vit_l (shapes saved from the meta device, no data).
    import segment_anything

    with torch.device("meta"):
        stateDict = segment_anything.build_sam_vit_l().state_dict()
    path = tmp_path / "sam_vit_l_shapes.pth"
    torch.save(stateDict, path)
    with pytest.raises(CheckpointError, match=r"does not fit the vit_b architecture.*look like vit_l"):
        loadSamModel(path, architecture="vit_b")


def test_truncated_file_says_it_is_incomplete(tinyFiles, tmp_path):
    data = tinyFiles["bare"].read_bytes()
    truncated = tmp_path / "medsam_vit_b.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="incomplete or corrupt.*download the model again"):
        loadSamModel(truncated)


def test_non_checkpoint_files_are_refused_with_advice(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        loadSamModel(text)
    with pytest.raises(CheckpointError, match="not found"):
        loadSamModel(tmp_path / "missing.pth")
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not a Segment Anything"):
        loadSamModel(other)
    nothing = tmp_path / "numbers.pth"
    torch.save([1, 2, 3], nothing)
    with pytest.raises(CheckpointError, match="holds no model weights"):
        loadSamModel(nothing)


def test_checkpoint_with_python_objects_is_not_executed(tinyFiles, tmp_path):
    stateDict = readStateDict(tinyFiles["bare"])
    path = tmp_path / "with_args.pth"
    torch.save({"model": stateDict, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="Python objects besides weights"):
        loadSamModel(path)


def test_data_parallel_prefix_is_stripped(tinyFiles, tmp_path):
    stateDict = {f"module.{key}": value for key, value in readStateDict(tinyFiles["bare"]).items()}
    path = tmp_path / "parallel.pth"
    torch.save({"state_dict": stateDict}, path)
    model, _ = loadSamModel(path)
    _assertSameWeights(model, buildTinySam(seed=3))
