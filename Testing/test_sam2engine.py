"""Sam2Engine (SAM 2.1 / MedSAM2): checkpoint recognition, both recipes against independent computations,
prompt frames on non-square slices, the model built as sam2's own builder builds it, devices.

Tiny SAM 2.1 models from sam2's own classes are saved as {"model": state_dict}, like the published files,
and loaded through the same path (createEngine -> Sam2Engine -> loadSam2Model)."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from MedSAMSlicerLib.core.errors import CheckpointError, InputError, PromptError  # noqa: E402
from MedSAMSlicerLib.engines.base import Prompts  # noqa: E402
from MedSAMSlicerLib.engines.sam2checkpoints import (OFFICIAL_SIZES, detectSam2Architecture,  # noqa: E402
                                                     isSam2Checkpoint, loadSam2Model, officialArchitecture)
from MedSAMSlicerLib.engines.sam2engine import IMAGENET_MEAN, IMAGENET_STD, Sam2Engine  # noqa: E402
from MedSAMSlicerLib.engines.tinysam2 import buildTinySam2, writeTinySam2Checkpoint  # noqa: E402
from MedSAMSlicerLib.engines.tinymodel import writeTinyCheckpoint  # noqa: E402
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402
from MedSAMSlicerLib.models.enginefactory import createEngine  # noqa: E402

HEIGHT, WIDTH = 96, 160  # non-square slices: prompt frames must scale x and y differently
CONFIGS = Path(__import__("sam2").__file__).parent / "configs" / "sam2.1"


@pytest.fixture(scope="module")
def tinyFile(tmp_path_factory):
    return writeTinySam2Checkpoint(tmp_path_factory.mktemp("sam2") / "tiny_sam2.1.pt", seed=1)


@pytest.fixture(scope="module")
def medsam2(tinyFile, oneTorchThread):
    return createEngine(str(tinyFile), device="cpu", recipe="medsam2")


@pytest.fixture(scope="module")
def sam2(tinyFile, oneTorchThread):
    return createEngine(str(tinyFile), device="cpu", recipe="sam2")


def _slice(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    disc = ((xx - 100) ** 2 + (yy - 40) ** 2 < 18 ** 2).astype(np.float32)
    return np.clip(0.3 + 0.5 * disc + 0.05 * rng.standard_normal((HEIGHT, WIDTH)), 0, 1).astype(np.float32)


# ------------------------------------------------------------------ recognition


@pytest.mark.parametrize("config", ["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"])
def test_official_size_table_matches_sam2s_own_configs(config):
    from omegaconf import OmegaConf

    from sam2.modeling.backbones.hieradet import Hiera
    import inspect

    trunk = OmegaConf.load(CONFIGS / f"{config}.yaml").model.image_encoder.trunk
    defaults = {name: p.default for name, p in inspect.signature(Hiera.__init__).parameters.items()}
    value = lambda name: tuple(trunk[name]) if name in trunk and not isinstance(trunk[name], int) else (  # noqa: E731
        trunk[name] if name in trunk else defaults[name])
    name, size = OFFICIAL_SIZES[(value("embed_dim"), tuple(value("stages")))]
    assert name == "hiera_" + config.split("_")[-1]
    assert size.numHeads == value("num_heads")
    assert size.globalAttBlocks == tuple(value("global_att_blocks"))
    assert size.windowSpec == tuple(value("window_spec"))
    assert (size.windowPosEmbedBkg,) * 2 == tuple(value("window_pos_embed_bkg_spatial_size"))
    assert officialArchitecture(name).embedDim == value("embed_dim")


def test_builder_equals_sam2s_hydra_build_of_medsam2s_config(tmp_path, oneTorchThread):
    """MedSAM2's sam2.1_hiera_t512 = sam2.1_hiera_t at image size 512; built by sam2's own builder, saved as
    a published file would be, loaded by us: same parameters, same features, same tracked masks."""
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(3)
    reference = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu", hydra_overrides_extra=[
            "++model.image_size=512", "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
            "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]"])
    path = tmp_path / "MedSAM2_like.pt"
    torch.save({"model": reference.state_dict()}, path)
    assert isSam2Checkpoint(path)
    model, info = loadSam2Model(path, imageSize=512)
    assert info.name == "hiera_t" and (info.dModel, info.memDim, info.numMaskmem) == (256, 64, 7)
    for name in ("binarize_mask_from_pts_for_mem_enc", "use_mask_input_as_output_without_sam", "num_maskmem",
                 "max_obj_ptrs_in_encoder", "image_size", "multimask_output_for_tracking", "directly_add_no_mem_embed"):
        assert getattr(model, name) == getattr(reference, name), name
    assert model.sam_mask_decoder.dynamic_multimask_via_stability
    image = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ours, theirs = model.forward_image(image), reference.forward_image(image)
        for a, b in zip(ours["backbone_fpn"], theirs["backbone_fpn"]):
            assert torch.equal(a, b)
        outputs = []
        for net, backbone in ((model, ours), (reference, theirs)):
            _, feats, pos, sizes = net._prepare_backbone_features(backbone)
            box = {"point_coords": torch.tensor([[[100.0, 120.0], [300.0, 330.0]]]),
                   "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
            memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
            memory["cond_frame_outputs"][0] = net.track_step(0, True, feats, pos, sizes, box, None, memory, 3)
            outputs.append(net.track_step(1, False, feats, pos, sizes, None, None, memory, 3))
    assert torch.equal(outputs[0]["pred_masks"], outputs[1]["pred_masks"])


def test_tiny_checkpoint_is_recognised_from_keys_and_shapes(tinyFile, tmp_path):
    assert isSam2Checkpoint(tinyFile)
    assert not isSam2Checkpoint(writeTinyCheckpoint(tmp_path / "sam_vit.pth"))
    info = detectSam2Architecture(torch.load(tinyFile, weights_only=True)["model"])
    assert info.name == "custom" and info.stages == (1, 1, 2, 1) and info.embedDim == 8
    assert (info.dModel, info.memDim, info.memoryAttentionLayers) == (32, 16, 2)
    with pytest.raises(CheckpointError, match="does not fit the hiera_t architecture"):
        loadSam2Model(tinyFile, 512, architecture="hiera_t")
    old = {k: v for k, v in torch.load(tinyFile, weights_only=True)["model"].items() if k != "no_obj_embed_spatial"}
    torch.save({"model": old}, tmp_path / "sam2.0.pt")
    with pytest.raises(CheckpointError, match="SAM 2.0 checkpoint"):
        loadSam2Model(tmp_path / "sam2.0.pt", 512)


def test_recipe_follows_the_file_and_the_override(tinyFile, tmp_path):
    named = tmp_path / "MedSAM2_finetune.pt"
    named.write_bytes(Path(tinyFile).read_bytes())
    assert createEngine(str(named), device="cpu").recipe == "medsam2"
    assert createEngine(str(tinyFile), device="cpu").recipe == "sam2"
    with pytest.raises(InputError, match="SAM 2.1 / MedSAM2 .* not 'medsam'"):
        createEngine(str(tinyFile), device="cpu", recipe="medsam")
    with pytest.raises(InputError, match="SAM / MedSAM .* not 'sam2'"):
        createEngine(str(writeTinyCheckpoint(tmp_path / "vit.pth")), device="cpu", recipe="sam2")


# ------------------------------------------------------------------ recipes


def test_medsam2_recipe_is_medsam2s_published_3d_preprocessing(medsam2):
    """medsam2_infer_3D_CT.py: clip to the window, min-max over the volume to 0-255, np.uint8, PIL RGB resize to
    512 (its default filter), /255, ImageNet mean/std -- against our window policy + slice source + engine."""
    from PIL import Image

    rng = np.random.default_rng(4)
    volumeHu = rng.normal(40, 300, size=(3, HEIGHT, WIDTH)).astype(np.float32)
    volumeHu[1, 10:50, 20:90] = 900.0
    low, high = -160.0, 240.0
    clipped = np.clip(volumeHu.astype(np.float64), low, high)
    published = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)
    resized = np.array(Image.fromarray(published[1]).convert("RGB").resize((512, 512))).transpose(2, 0, 1) / 255.0
    expected = (resized - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]

    source = SliceSource(volumeHu, spacingIjk=(0.7, 0.7, 2.0), policy=IntensityPolicy.window(low, high))
    got = medsam2.modelInput(source.sliceImage(2, 1)).numpy()
    assert got.shape == (3, 512, 512)
    stepsOff = np.abs(got - expected) * np.array(IMAGENET_STD)[:, None, None] * 255.0  # in 0-255 grey levels
    assert stepsOff.max() < 1.01 and np.mean(stepsOff > 0.01) < 1e-3  # float32 policy vs float64: rare 1-level ties


def test_sam2_recipe_is_the_image_predictors_transform(sam2):
    """SAM2ImagePredictor: 0-255 RGB, square resize to 1024 (bilinear, antialiased), /255, mean/std."""
    import torch.nn.functional as F

    image = _slice(1)
    image8 = torch.from_numpy(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)).float() / 255.0
    resized = F.interpolate(image8[None, None].expand(1, 3, HEIGHT, WIDTH), size=(1024, 1024), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    expected = (resized - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(sam2.modelInput(image), expected, atol=1e-5)


def test_decode_equals_sam2s_image_predictor_on_a_non_square_slice(sam2):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = _slice(2)
    predictor = SAM2ImagePredictor(sam2.model)
    predictor.set_image(np.repeat(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    embedding = sam2.encode([image])[0]
    for prompts in (Prompts(boxXyxy=(70, 15, 135, 70)),
                    Prompts(boxXyxy=(70, 15, 135, 70), pointsXy=[[100, 40], [80, 80]], pointLabels=[1, 0]),
                    Prompts(pointsXy=[[100, 40]], pointLabels=[1])):
        masks, ious, lowRes = predictor.predict(
            point_coords=prompts.pointsXy if len(prompts.pointsXy) else None,
            point_labels=prompts.pointLabels if len(prompts.pointLabels) else None,
            box=None if prompts.boxXyxy is None else np.array(prompts.boxXyxy), multimask_output=prompts.isAmbiguous)
        best = int(np.argmax(ious))
        ours = sam2.decode(embedding, prompts)
        assert ours.mask.shape == (HEIGHT, WIDTH)
        # our features are kept in fp16 (the cache's precision): logits agree to rounding, masks almost everywhere
        assert np.abs(ours.lowResLogits - lowRes[best]).max() < 0.05
        assert np.mean(ours.mask != masks[best]) < 0.002
        assert ours.score == pytest.approx(float(np.clip(ious[best], 0, 1)), abs=0.01)


def test_prompts_scale_x_and_y_separately_and_errors_are_clear(medsam2):
    embedding = medsam2.encode([_slice(3)])[0]
    points, _ = medsam2.promptTensors(embedding, Prompts(boxXyxy=(10, 20, 150, 90), pointsXy=[[80, 48]],
                                                         pointLabels=[0]))
    coords = points[0][0].numpy()
    assert np.allclose(coords, [[10 * 512 / WIDTH, 20 * 512 / HEIGHT], [150 * 512 / WIDTH, 90 * 512 / HEIGHT],
                                [80 * 512 / WIDTH, 48 * 512 / HEIGHT]])
    assert points[1][0].tolist() == [2, 3, 0]
    with pytest.raises(PromptError, match="No prompt"):
        medsam2.decode(embedding, Prompts())
    with pytest.raises(PromptError, match="off the 160x96 slice"):
        medsam2.decode(embedding, Prompts(boxXyxy=(200, 10, 260, 50)))
    with pytest.raises(PromptError, match="needs \\(128, 128\\)"):
        medsam2.decode(embedding, Prompts(boxXyxy=(10, 10, 50, 50), previousLowResLogits=np.zeros((256, 256))))
    refined = medsam2.decode(embedding, Prompts(pointsXy=[[100, 40]], pointLabels=[1],
                                                previousLowResLogits=medsam2.decode(
                                                    embedding, Prompts(boxXyxy=(70, 15, 135, 70))).lowResLogits))
    assert refined.mask.shape == (HEIGHT, WIDTH) and refined.lowResLogits.shape == (128, 128)


def test_embeddings_hold_three_fp16_levels_and_refuse_other_models(medsam2, sam2):
    embedding = medsam2.encode([_slice(4)])[0]
    shapes = {name: tuple(t.shape) for name, t in embedding.features.items()}
    assert shapes == {"highRes0": (4, 128, 128), "highRes1": (8, 64, 64), "lowRes": (32, 32, 32)}
    assert all(t.dtype == torch.float16 for t in embedding.features.values())
    with pytest.raises(InputError, match="encoded by another model"):
        sam2.decode(embedding, Prompts(boxXyxy=(70, 15, 135, 70)))
    with pytest.raises(InputError, match="built for 512 px"):
        Sam2Engine(model=buildTinySam2(0, imageSize=512), recipe="sam2", device="cpu")


# ------------------------------------------------------------------ devices


class _PretendGpuEngine(Sam2Engine):
    """A Sam2Engine that believes it is on a GPU until it falls back (CPU-only test machines)."""

    def _accelerated(self):
        return self.fallbackMessage is None


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu(tinyFile, medsam2):
    images = [_slice(seed) for seed in range(3)]
    expected = medsam2.encode(images)
    engine = _PretendGpuEngine(tinyFile, recipe="medsam2", device="cpu", batchSize=2)
    batches, original = [], engine.model.image_encoder.forward

    def encoder(x):
        batches.append(x.shape[0])
        if engine.fallbackMessage is None:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(x)

    engine.model.image_encoder.forward = encoder
    with pytest.warns(RuntimeWarning, match="continues on the CPU"):
        result = engine.encode(images)
    assert batches == [2, 1, 1, 1, 1] and engine.device == "cpu"
    for got, want in zip(result, expected):
        assert torch.allclose(got.features["lowRes"].float(), want.features["lowRes"].float(), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the project's GPU machine)")
def test_cuda_bf16_path_matches_the_cpu(tinyFile, medsam2):
    gpu = Sam2Engine(tinyFile, recipe="medsam2", device="cuda")
    image = _slice(5)
    onGpu, onCpu = gpu.encode([image])[0], medsam2.encode([image])[0]
    assert onGpu.features["lowRes"].device.type == "cuda"
    prompts = Prompts(boxXyxy=(70, 15, 135, 70))
    a, b = gpu.decode(onGpu, prompts), medsam2.decode(onCpu, prompts)
    assert np.mean(a.mask != b.mask) < 0.05  # bf16 autocast on the GPU vs fp32 on the CPU
    session = gpu.startMemorySession(4)
    session.condition(1, onGpu, prompts)
    assert session.track(2, gpu.encode([_slice(6)])[0], reverse=False).mask.shape == (HEIGHT, WIDTH)


def test_registry_models_load_from_the_model_cache_with_their_recipe(tinyFile, tmp_path, oneTorchThread):
    import shutil
    import subprocess
    import sys

    from MedSAMSlicerLib.core.errors import DownloadError
    from MedSAMSlicerLib.engines.sam2checkpoints import buildSam2Model
    from MedSAMSlicerLib.models import download

    download.setModelCacheFolder(tmp_path)
    try:
        with pytest.raises(DownloadError, match="MedSAM2_latest.pt"):
            createEngine("medsam2", device="cpu")
        shutil.copy(tinyFile, tmp_path / "MedSAM2_latest.pt")
        with pytest.raises(CheckpointError, match="does not fit the hiera_t architecture"):
            createEngine("medsam2", device="cpu")  # the registry insists on MedSAM2's size
        torch.manual_seed(0)
        torch.save({"model": buildSam2Model(officialArchitecture("hiera_t"), 1024).state_dict()},
                   tmp_path / "MedSAM2_latest.pt")
        engine = createEngine("medsam2", device="cpu")
        assert (engine.recipe, engine.imgSize, engine.architecture) == ("medsam2", 512, "hiera_t")
        assert engine.modelId.startswith("medsam2:") and engine.displayName.startswith("MedSAM2")
        shutil.copy(tmp_path / "MedSAM2_latest.pt", tmp_path / "sam2.1_hiera_tiny.pt")
        sam21 = createEngine("sam2_tiny", device="cpu")
        assert (sam21.recipe, sam21.imgSize) == ("sam2", 1024) and sam21.modelId != engine.modelId
    finally:
        download.setModelCacheFolder(None)
    listed = subprocess.run([str(Path(sys.executable).with_name("medsam-slicer")), "models", "--json"],
                            capture_output=True, text=True, env={"MEDSAM_SLICER_CACHE": str(tmp_path / "empty"),
                                                                 "PATH": "/usr/bin:/bin"}, timeout=120)
    models = {row["id"]: row for row in json.loads(listed.stdout)}
    for modelId in ("medsam2", "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"):
        assert models[modelId]["kind"] == "download" and models[modelId]["cached"] is False
