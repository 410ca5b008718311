"""SamEngine against independent reference computations on a tiny SAM saved as a real checkpoint.

MedSAM path: MedSAM's inference formulas written out here. SAM path:
segment_anything's own SamPredictor on the same weights. Features are stored in
half precision by the engine, so the references decode from the same rounded
embedding; everything else is computed independently, with segment-anything's
unmodified modules (the engine decodes through fastdecoder, the same maths in
another order).

Tolerance, documented once: the engine's low-resolution logits equal the
reference's within 1e-4 (absolute), and its masks equal the reference's at
every pixel except where the reference logit is within 1e-3 of the threshold
(there float rounding of a re-ordered sum may flip a pixel).
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from MedSAMSlicerLib.engines.base import Prompts, SliceEmbedding
from MedSAMSlicerLib.models.enginefactory import createEngine, defaultModelName
from MedSAMSlicerLib.core.errors import CheckpointError, DownloadError, InputError, PromptError
from MedSAMSlicerLib.engines.samengine import SamEngine
from MedSAMSlicerLib.engines.tinymodel import buildTinySam, writeTinyCheckpoint

HEIGHT, WIDTH = 300, 500
LOGIT_ATOL = 1e-4
BORDERLINE_LOGIT = 1e-3


def assertMaskMatches(mask, referenceLogits, threshold=0.0):
    """mask equals referenceLogits > threshold except where |logit - threshold| < BORDERLINE_LOGIT."""
    referenceLogits = np.asarray(referenceLogits, np.float64)
    differs = mask != (referenceLogits > threshold)
    assert not (differs & (np.abs(referenceLogits - threshold) >= BORDERLINE_LOGIT)).any(), \
        f"{int(differs.sum())} pixels differ from the reference, some away from the threshold"



pytestmark = pytest.mark.usefixtures("oneTorchThread")


@pytest.fixture(scope="module")
def tinyCheckpoint(tmp_path_factory):
    return writeTinyCheckpoint(tmp_path_factory.mktemp("engine") / "tiny.pth", form="wrapped", seed=0)


@pytest.fixture(scope="module")
def medsam(tinyCheckpoint):
    return SamEngine(tinyCheckpoint, recipe="medsam", device="cpu")


@pytest.fixture(scope="module")
def sam(tinyCheckpoint):
    return SamEngine(tinyCheckpoint, recipe="sam", device="cpu")


def _slice(seed=0, colour=False):
    """A smooth non-square test slice in [0, 1] with a bright blob, (300, 500) or (300, 500, 3)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = 0.2 + 0.6 * np.exp(-(((rows - 120) / 50.0) ** 2 + ((cols - 310) / 80.0) ** 2))
    image = np.clip(image + 0.05 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)
    if colour:
        image = np.stack([image, image[::-1], 1 - image], axis=2).copy()
    return image


@pytest.fixture(scope="module")
def medsamEmbedding(medsam):
    return medsam.encode([_slice()])[0]


@pytest.fixture(scope="module")
def samEmbedding(sam):
    return sam.encode([_slice()])[0]


def _medsamReference(model, image, boxXyxy):
    """MedSAM_Inference.py's steps: cubic resize to 1024x1024, min-max, encoder, box/[W,H,W,H]*1024, sigmoid, bilinear."""
    height, width = image.shape[:2]
    rgb = torch.from_numpy(np.repeat(image[:, :, None], 3, axis=2)).permute(2, 0, 1)[None]
    resized = F.interpolate(rgb, size=(1024, 1024), mode="bicubic", align_corners=False)
    resized = (resized - resized.min()) / torch.clamp(resized.max() - resized.min(), min=1e-8)
    with torch.no_grad():
        embedding = model.image_encoder(resized)
        storedEmbedding = embedding.half().float()
        box1024 = torch.tensor(boxXyxy, dtype=torch.float32) / torch.tensor([width, height, width, height]) * 1024
        sparse, dense = model.prompt_encoder(points=None, boxes=box1024[None, None], masks=None)
        logits, _ = model.mask_decoder(image_embeddings=storedEmbedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        probability = F.interpolate(torch.sigmoid(logits), size=(height, width), mode="bilinear", align_corners=False)
    probability = probability[0, 0].double().clamp(1e-12, 1 - 1e-12)
    return embedding[0], torch.log(probability / (1 - probability)).numpy(), logits[0, 0].numpy()


def _predictor(sam, image):
    """SamPredictor on an unmodified copy of the engine's weights (buildTinySam(0) is what tinyCheckpoint holds),
    set on the 0-255 version of ``image``, features rounded like the cache."""
    predictor = SamPredictor(buildTinySam(seed=0))
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    predictor.set_image(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
    predictor.features = predictor.features.half().float()
    return predictor


def test_medsam_recipe_matches_medsam_formulas(medsam, medsamEmbedding):
    box = (260.0, 70.0, 380.0, 180.0)
    referenceEmbedding, referenceLogits, referenceLowRes = _medsamReference(buildTinySam(seed=0), _slice(), box)
    assert torch.allclose(medsamEmbedding.features.float(), referenceEmbedding, atol=2e-2)
    result = medsam.decode(medsamEmbedding, Prompts(boxXyxy=box))
    assert result.mask.shape == (HEIGHT, WIDTH) and result.mask.dtype == bool
    assert 0 < (referenceLogits > 0).sum() < referenceLogits.size
    assertMaskMatches(result.mask, referenceLogits)  # sigmoid(x) > 0.5 <=> x > 0
    assert result.lowResLogits.shape == (256, 256)
    np.testing.assert_allclose(result.lowResLogits, referenceLowRes, atol=LOGIT_ATOL, rtol=0)


def test_sam_recipe_matches_sam_predictor(sam, samEmbedding):
    predictor = _predictor(sam, _slice())
    assert torch.allclose(samEmbedding.features.float(), predictor.features[0], atol=1e-3)
    box = np.array([260.0, 70.0, 380.0, 180.0])
    points, labels = np.array([[300.0, 120.0], [200.0, 250.0]]), np.array([1, 0])
    cases = [dict(box=box), dict(point_coords=points, point_labels=labels),
             dict(box=box, point_coords=points[:1], point_labels=labels[:1])]
    for case in cases:
        logits, scores, lowRes = predictor.predict(multimask_output=False, return_logits=True, **case)
        prompts = Prompts(boxXyxy=case.get("box"), pointsXy=case.get("point_coords", np.zeros((0, 2))),
                          pointLabels=case.get("point_labels", np.zeros(0)))
        result = sam.decode(samEmbedding, prompts)
        assertMaskMatches(result.mask, logits[0])
        np.testing.assert_allclose(result.lowResLogits, lowRes[0], atol=LOGIT_ATOL, rtol=0)
        assert result.score == pytest.approx(float(np.clip(scores[0], 0, 1)), abs=1e-5)


def test_previous_low_res_logits_are_the_mask_input(sam, samEmbedding):
    predictor = _predictor(sam, _slice())
    first = sam.decode(samEmbedding, Prompts(boxXyxy=(260, 70, 380, 180)))
    refine = Prompts(boxXyxy=(260, 70, 380, 180), pointsXy=[[330, 160]], pointLabels=[0],
                     previousLowResLogits=first.lowResLogits)
    logits, _, lowRes = predictor.predict(box=np.array([260, 70, 380, 180]), point_coords=np.array([[330.0, 160.0]]),
                                          point_labels=np.array([0]), mask_input=first.lowResLogits[None],
                                          multimask_output=False, return_logits=True)
    result = sam.decode(samEmbedding, refine)
    assertMaskMatches(result.mask, logits[0])
    np.testing.assert_allclose(result.lowResLogits, lowRes[0], atol=LOGIT_ATOL, rtol=0)


def test_single_point_takes_the_candidate_with_the_highest_predicted_iou(sam, samEmbedding):
    predictor = _predictor(sam, _slice())
    chosenOtherThanFirst = False
    for x, y in [(310, 120), (60, 40), (450, 260), (250, 150), (100, 200), (400, 50)]:
        logits, scores, lowRes = predictor.predict(point_coords=np.array([[x, y]], float),
                                                   point_labels=np.array([1]), multimask_output=True,
                                                   return_logits=True)
        best = int(np.argmax(scores))
        chosenOtherThanFirst |= best != 0
        result = sam.decode(samEmbedding, Prompts(pointsXy=[[x, y]], pointLabels=[1]))
        assertMaskMatches(result.mask, logits[best])
        np.testing.assert_allclose(result.lowResLogits, lowRes[best], atol=LOGIT_ATOL, rtol=0)
        assert result.score == pytest.approx(float(np.clip(scores[best], 0, 1)), abs=1e-5)
    assert chosenOtherThanFirst, "no click chose a candidate other than the first: the test cannot tell"


def _capturePromptEncoder(engine, monkeypatch):
    seen = []
    original = engine.model.prompt_encoder.forward

    def recording(points, boxes, masks):
        seen.append({"points": None if points is None else points[0].clone(),
                     "boxes": None if boxes is None else boxes.clone()})
        return original(points, boxes, masks)

    monkeypatch.setattr(engine.model.prompt_encoder, "forward", recording)
    return seen


def test_prompts_reach_the_decoder_in_the_medsam_1024_frame(medsam, medsamEmbedding, monkeypatch):
    seen = _capturePromptEncoder(medsam, monkeypatch)
    medsam.decode(medsamEmbedding, Prompts(boxXyxy=(50, 30, 200, 120), pointsXy=[[100, 60]], pointLabels=[1]))
    # x scales by 1024/W = 2.048, y by 1024/H = 3.4133: a swap or a missing scale changes these numbers.
    np.testing.assert_allclose(seen[0]["boxes"].numpy().reshape(4), [102.4, 102.4, 409.6, 409.6], rtol=1e-5)
    np.testing.assert_allclose(seen[0]["points"].numpy().reshape(2), [204.8, 204.8], rtol=1e-5)


def test_prompts_reach_the_decoder_in_the_sam_longest_side_frame(sam, samEmbedding, monkeypatch):
    seen = _capturePromptEncoder(sam, monkeypatch)
    sam.decode(samEmbedding, Prompts(boxXyxy=(50, 30, 200, 120), pointsXy=[[100, 60]], pointLabels=[1]))
    scaleX, scaleY = 1024 / 500, 614 / 300  # longest side 500 -> 1024; 300 -> round(614.4) = 614
    np.testing.assert_allclose(seen[0]["boxes"].numpy().reshape(4),
                               [50 * scaleX, 30 * scaleY, 200 * scaleX, 120 * scaleY], rtol=1e-5)
    np.testing.assert_allclose(seen[0]["points"].numpy().reshape(2), [100 * scaleX, 60 * scaleY], rtol=1e-5)
    assert samEmbedding.extra["inputSize"] == (614, 1024)


def test_several_objects_decode_in_one_call_per_prompt_form(sam, samEmbedding, monkeypatch):
    promptsList = [Prompts(boxXyxy=(260, 70, 380, 180)), Prompts(pointsXy=[[80, 60]], pointLabels=[1]),
                   Prompts(boxXyxy=(20, 20, 120, 150)), Prompts(pointsXy=[[400, 250]], pointLabels=[1])]
    single = [sam.decode(samEmbedding, prompts) for prompts in promptsList]
    calls = []
    original = sam._decodeGroup
    monkeypatch.setattr(sam, "_decodeGroup", lambda embedding, group: calls.append(len(group)) or original(embedding,
                                                                                                           group))
    batched = sam.decodeMany(samEmbedding, promptsList)
    assert sorted(calls) == [2, 2]
    for one, many in zip(single, batched):
        assert (one.mask != many.mask).mean() < 1e-3  # batched matmuls may round the last bit differently
        assert one.score == pytest.approx(many.score, abs=1e-4)


def test_encoding_keeps_colour_replicates_gray_and_leaves_inputs_alone(medsam, monkeypatch):
    gray, colour = _slice(1), _slice(2, colour=True)
    grayCopy, colourCopy = gray.copy(), colour.copy()
    inputs = []
    original = medsam.model.image_encoder.forward
    monkeypatch.setattr(medsam.model.image_encoder, "forward", lambda x: inputs.append(x.clone()) or original(x))
    progress = []
    embeddings = medsam.encode([gray, colour], progress=lambda fraction, text: progress.append(fraction))
    assert progress == [0.5, 1.0]  # one slice per pass on the CPU
    np.testing.assert_array_equal(gray, grayCopy)
    np.testing.assert_array_equal(colour, colourCopy)
    batch = torch.cat(inputs)
    assert torch.equal(batch[0, 0], batch[0, 1]) and torch.equal(batch[0, 0], batch[0, 2])
    assert not torch.allclose(batch[1, 0], batch[1, 2])
    assert float(batch.amin()) == 0.0 and float(batch.amax()) == 1.0  # MedSAM: min-max, no mean/std
    for embedding in embeddings:
        assert isinstance(embedding, SliceEmbedding) and embedding.features.dtype == torch.float16
        assert embedding.nbytes == embedding.features.numel() * 2 and embedding.imageSize == (HEIGHT, WIDTH)


def test_bad_prompts_and_foreign_embeddings_raise_clear_errors(medsam, sam, medsamEmbedding):
    with pytest.raises(PromptError, match="No prompt"):
        medsam.decode(medsamEmbedding, Prompts())
    with pytest.raises(PromptError, match="entirely off"):
        medsam.decode(medsamEmbedding, Prompts(boxXyxy=(600, 10, 700, 50)))
    with pytest.raises(PromptError, match="off the"):
        medsam.decode(medsamEmbedding, Prompts(pointsXy=[[10, 400]], pointLabels=[1]))
    with pytest.raises(PromptError, match="previous mask"):
        medsam.decode(medsamEmbedding, Prompts(boxXyxy=(1, 1, 9, 9), previousLowResLogits=np.zeros((64, 64))))
    with pytest.raises(InputError, match="encoded by another model"):
        sam.decode(medsamEmbedding, Prompts(boxXyxy=(1, 1, 9, 9)))
    with pytest.raises(InputError, match="shape"):
        medsam.encode([np.zeros((4, 5, 6), np.float32)])


def test_model_ids_separate_checkpoints_and_recipes(tinyCheckpoint, medsam, sam, tmp_path):
    other = SamEngine(writeTinyCheckpoint(tmp_path / "other.pth", seed=5), recipe="medsam", device="cpu")
    again = SamEngine(tinyCheckpoint, recipe="medsam", device="cpu")
    assert again.modelId == medsam.modelId
    assert len({medsam.modelId, sam.modelId, other.modelId}) == 3


class _PretendGpuEngine(SamEngine):
    """A SamEngine that believes it is on a GPU until it falls back (CPU-only test machines)."""

    def _accelerated(self):
        return self.fallbackMessage is None


def _oomEncoder(engine, failWhen):
    batches = []
    original = engine.model.image_encoder.forward

    def encoder(x):
        batches.append(x.shape[0])
        if failWhen(x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(x)

    engine.model.image_encoder.forward = encoder
    return batches


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu(tinyCheckpoint, medsam):
    images = [_slice(seed) for seed in range(4)]
    expected = medsam.encode(images)

    halving = _PretendGpuEngine(tinyCheckpoint, recipe="medsam", device="cpu", batchSize=4)
    batches = _oomEncoder(halving, lambda x: x.shape[0] > 1)
    result = halving.encode(images)
    assert batches == [4, 2, 1, 1, 1, 1] and halving.fallbackMessage is None
    for got, want in zip(result, expected):
        assert torch.allclose(got.features.float(), want.features.float(), atol=1e-3)

    fallback = _PretendGpuEngine(tinyCheckpoint, recipe="medsam", device="cpu", batchSize=2)
    batches = _oomEncoder(fallback, lambda x: fallback.fallbackMessage is None)
    with pytest.warns(RuntimeWarning, match="continues on the CPU"):
        result = fallback.encode(images[:2])
    assert batches == [2, 1, 1, 1] and fallback.device == "cpu"
    for got, want in zip(result, expected):
        assert torch.allclose(got.features.float(), want.features.float(), atol=1e-3)


def test_out_of_memory_on_the_cpu_itself_is_a_clear_error(tinyCheckpoint):
    engine = SamEngine(tinyCheckpoint, recipe="sam", device="cpu", batchSize=1)
    _oomEncoder(engine, lambda x: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="Not enough memory"):
            engine.encode([_slice()])


def test_create_engine_from_files_and_names(tinyCheckpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAM_SLICER_CACHE", str(tmp_path / "cache"))
    fromFile = createEngine(str(tinyCheckpoint), device="cpu")
    assert isinstance(fromFile, SamEngine) and fromFile.recipe == "sam" and fromFile.architecture == "custom"
    medsamFile = tmp_path / "my_medsam_finetune.pth"
    medsamFile.write_bytes(tinyCheckpoint.read_bytes())
    assert createEngine("custom", device="cpu", checkpointPath=medsamFile).recipe == "medsam"
    assert createEngine(medsamFile, device="cpu", recipe="sam").recipe == "sam"
    with pytest.raises(CheckpointError, match="does not fit the vit_b"):
        createEngine("medsam", device="cpu", checkpointPath=tinyCheckpoint)
    with pytest.raises(DownloadError, match=r"medsam-slicer download medsam.*by hand"):
        createEngine("medsam", device="cpu")
    with pytest.raises(InputError, match="Unknown engine 'nnunet'.*growcut"):
        createEngine("nnunet")
    assert defaultModelName() == "growcut"
    assert type(createEngine("growcut")).__name__ == "GrowCutEngine"


def test_device_choice_precision_and_batch_size(monkeypatch):
    from MedSAMSlicerLib.engines import devices

    assert devices.chooseDevice("cpu") == "cpu"
    assert devices.chooseDevice("auto") in ("cuda", "mps", "cpu")
    with pytest.raises(InputError, match="Unknown device 'tpu'"):
        devices.chooseDevice("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available.*cpu"):
            devices.chooseDevice("cuda")
    assert devices.autocastDtype("cpu") is None
    with devices.autocastContext("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert devices.batchSizeForMemory("cpu", 1) == 1
    monkeypatch.setattr(devices, "freeMemoryBytes", lambda device: 10 * 2 ** 30)
    assert devices.batchSizeForMemory("cuda", 2 ** 30) == 7  # 10 GiB free, 25 % headroom, 1 GiB per slice
    assert devices.batchSizeForMemory("cuda", 2 ** 20, maxBatch=16) == 16
    assert devices.batchSizeForMemory("cuda", 20 * 2 ** 30) == 1
    assert devices.isOutOfMemory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert devices.isOutOfMemory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert not devices.isOutOfMemory(ValueError("out of memory"))
    assert not devices.isOutOfMemory(RuntimeError("shape mismatch"))


def test_model_too_big_for_the_gpu_runs_on_the_cpu(monkeypatch):
    from MedSAMSlicerLib.engines import samengine
    from MedSAMSlicerLib.engines.tinymodel import buildTinySam

    monkeypatch.setattr(samengine, "chooseDevice", lambda device: "cuda")
    model = buildTinySam(seed=2)
    moveToCpu = model.to

    def to(device, *args, **kwargs):
        if str(device).startswith("cuda"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.40 GiB")
        return moveToCpu(device, *args, **kwargs)

    monkeypatch.setattr(model, "to", to)
    with pytest.warns(RuntimeWarning, match="does not fit in the memory of the GPU"):
        engine = SamEngine(model=model, recipe="sam", device="cuda", modelId="tiny:test")
    assert engine.device == "cpu" and "smaller model" in engine.fallbackMessage
    embedding = engine.encode([_slice()])[0]
    assert engine.decode(embedding, Prompts(boxXyxy=(260, 70, 380, 180))).mask.shape == (HEIGHT, WIDTH)
