"""fastdecoder: the exact fast path of SAM's prompt encoder + mask decoder against segment-anything's own modules.

Tolerance (as in test_samengine.py): low-resolution logits within 1e-4 of the
unmodified decoder's (absolute; relative 1e-5 on larger values), predicted IoU
within 1e-5, masks equal except where the reference logit is within 1e-3 of 0.
"""

import copy
import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling.common import LayerNorm2d

from MedSAMSlicerLib.engines import fastdecoder, fastlayers
from MedSAMSlicerLib.engines.checkpoints import ArchitectureInfo, buildSamModel
from MedSAMSlicerLib.engines.base import Prompts, SliceEmbedding
from MedSAMSlicerLib.engines.samengine import SamEngine
from MedSAMSlicerLib.engines.tinymodel import buildTinySam

REPO = Path(__file__).resolve().parents[1]
LOGIT_ATOL, LOGIT_RTOL, BORDERLINE_LOGIT = 1e-4, 1e-5, 1e-3


pytestmark = pytest.mark.usefixtures("oneTorchThread")


def _vitBDecoderModel(seed=0):
    """ViT-B's prompt encoder and mask decoder (transformer_dim 256, 8 heads, MLP 2048) behind a tiny encoder,
    weights made larger than their initialisation so logits span several units."""
    torch.manual_seed(seed)
    model = buildSamModel(ArchitectureInfo(
        name="custom", embedDim=32, depth=1, numHeads=2, patchSize=16, imgSize=1024, windowSize=14,
        globalAttnIndexes=(), useRelPos=False, mlpRatio=2.0, promptEmbedDim=256, maskInChans=16, decoderDepth=2,
        decoderMlpDim=2048, numMultimaskOutputs=3, iouHeadDepth=3, iouHeadHiddenDim=256))
    with torch.no_grad():
        for parameter in model.mask_decoder.output_hypernetworks_mlps.parameters():
            parameter.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module", params=["tiny", "vit_b_decoder"])
def models(request):
    """(untouched stock model, copy with the fast layers swapped in)."""
    stock = buildTinySam(seed=3) if request.param == "tiny" else _vitBDecoderModel()
    fast = copy.deepcopy(stock)
    assert fastlayers.swapFastLayers(fast) == 5
    return stock, fast


def _embedding(channels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(channels, 64, 64, generator=generator).half()
    return SliceEmbedding(features=features, imageSize=(512, 512), nbytes=features.numel() * 2)


def _stockDecode(model, embedding, points, boxes, masks, multimask):
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        lowRes, iou = model.mask_decoder(
            image_embeddings=embedding.features.float()[None], image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
    if multimask:
        rows, best = torch.arange(len(iou)), iou.argmax(dim=1)
        lowRes, iou = lowRes[rows, best][:, None], iou[rows, best][:, None]
    return lowRes, iou


def _promptCases(batch=1):
    generator = torch.Generator().manual_seed(7)
    coords = torch.rand(batch, 3, 2, generator=generator) * 1024
    labels = torch.tensor([[1, 0, 1]] * batch, dtype=torch.int)
    boxes = torch.tensor([[300.0, 250.0, 700.0, 600.0]] * batch)
    masks = torch.randn(batch, 1, 256, 256, generator=generator) * 4
    return {"box": (None, boxes, None, False), "points": ((coords, labels), None, None, False),
            "box + points": ((coords[:, :2], labels[:, :2]), boxes, None, False),
            "box + mask": (None, boxes, masks, False), "points + mask": ((coords, labels), None, masks, False),
            "box + points + mask": ((coords[:, :2], labels[:, :2]), boxes, masks, False),
            "one point, multimask": ((coords[:, :1], labels[:, :1]), None, None, True)}


def assertSameDecoding(got, want):
    (lowRes, iou), (wantLowRes, wantIou) = got, want
    assert lowRes.shape == wantLowRes.shape and iou.shape == wantIou.shape
    torch.testing.assert_close(lowRes, wantLowRes, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    torch.testing.assert_close(iou, wantIou, atol=1e-5, rtol=1e-5)
    differs = (lowRes > 0) != (wantLowRes > 0)
    assert not (differs & (wantLowRes.abs() >= BORDERLINE_LOGIT)).any()


def test_transposed_convolution_as_matmul_equals_conv_transpose_2d():
    torch.manual_seed(0)
    for inChannels, outChannels, bias in [(256, 64, True), (64, 32, True), (5, 3, False)]:
        conv = torch.nn.ConvTranspose2d(inChannels, outChannels, kernel_size=2, stride=2, bias=bias)
        with torch.no_grad():
            conv.weight.normal_(0.0, inChannels ** -0.5)  # outputs of order 1, like the model's
            if bias:
                conv.bias.normal_()
        fast = fastlayers.ConvTranspose2x2(conv)
        assert fast.weight is conv.weight and fast.bias is conv.bias
        x = torch.randn(2, inChannels, 7, 11)
        with torch.no_grad():
            want = conv(x)
            torch.testing.assert_close(fast(x), want, atol=1e-5, rtol=1e-5)
            channelsLast = fast.channelsLast(x.permute(0, 2, 3, 1))  # (B, H, W, 4, Cout), sub-pixel a * 2 + b
            rebuilt = channelsLast.unflatten(3, (2, 2)).permute(0, 5, 1, 3, 2, 4).reshape(want.shape)
            torch.testing.assert_close(rebuilt, want, atol=1e-5, rtol=1e-5)


def test_channels_last_layer_norm_equals_layer_norm_2d():
    torch.manual_seed(1)
    norm = LayerNorm2d(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    fast = fastlayers.ChannelsLastLayerNorm2d(norm)
    x = torch.randn(3, 16, 9, 5) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), norm(x), atol=1e-5, rtol=1e-5)


def test_swapping_keeps_weights_names_and_results(models):
    stock, fast = models
    assert list(stock.state_dict()) == list(fast.state_dict())
    for key, value in stock.state_dict().items():
        assert torch.equal(value, fast.state_dict()[key])
    assert fastlayers.swapFastLayers(fast) == 0  # idempotent
    embedding = _embedding(stock.prompt_encoder.embed_dim)
    case = _promptCases()["box + points + mask"]
    assertSameDecoding(_stockDecode(fast, embedding, *case), _stockDecode(stock, embedding, *case))


@pytest.mark.parametrize("fold", ["auto", True, False])
def test_fast_decoder_equals_the_stock_decoder(models, fold):
    stock, fast = models
    assert fastdecoder.supportsFastDecoding(stock) and fastdecoder.supportsFastDecoding(fast)
    decoder = fastdecoder.FastMaskDecoder(fast, fold=fold, chunk=1000)  # a chunk that does not divide 4096
    embedding = _embedding(stock.prompt_encoder.embed_dim)
    for name, case in _promptCases().items():
        assertSameDecoding(decoder.predict(embedding, *case), _stockDecode(stock, embedding, *case))
    assert decoder.cachedSlices == 1


def test_several_objects_in_one_call_equal_the_stock_decoder(models):
    stock, fast = models
    decoder = fastdecoder.FastMaskDecoder(fast)
    embedding = _embedding(stock.prompt_encoder.embed_dim, seed=4)
    for case in _promptCases(batch=3).values():
        assertSameDecoding(decoder.predict(embedding, *case), _stockDecode(stock, embedding, *case))


def test_slice_state_is_kept_per_embedding_object_in_a_small_lru(models):
    stock, fast = models
    decoder = fastdecoder.FastMaskDecoder(fast, cacheSize=2)
    embeddings = [_embedding(stock.prompt_encoder.embed_dim, seed=seed) for seed in range(3)]
    case = _promptCases()["box"]
    for embedding in embeddings:
        assertSameDecoding(decoder.predict(embedding, *case), _stockDecode(stock, embedding, *case))
    assert decoder.cachedSlices == 2
    state = decoder.sliceState(embeddings[2])
    assert decoder.sliceState(embeddings[2]) is state
    # An equal-looking but different embedding object is a different slice: never served a stale state.
    other = _embedding(stock.prompt_encoder.embed_dim, seed=9)
    assertSameDecoding(decoder.predict(other, *case), _stockDecode(stock, other, *case))
    assert decoder.sliceState(other) is not state
    # A collected embedding's id may be reused; its weak reference is dead, so it never matches.
    del embeddings, other
    gc.collect()
    for seed in range(10, 14):
        fresh = _embedding(stock.prompt_encoder.embed_dim, seed=seed)
        assertSameDecoding(decoder.predict(fresh, *case), _stockDecode(stock, fresh, *case))
    decoder.reset()
    assert decoder.cachedSlices == 0


def test_models_the_fast_path_does_not_know_use_the_stock_decoder():
    from segment_anything.modeling import MaskDecoder

    class OtherDecoder(MaskDecoder):
        pass

    model = buildTinySam(seed=1)
    assert fastdecoder.supportsFastDecoding(model)
    decoder = model.mask_decoder
    model.mask_decoder = OtherDecoder(transformer_dim=decoder.transformer_dim, transformer=decoder.transformer)
    assert not fastdecoder.supportsFastDecoding(model)
    engine = SamEngine(model=model, recipe="medsam", device="cpu", modelId="tiny:other")
    assert engine._fastDecoder is None
    embedding = engine.encode([np.random.default_rng(0).random((100, 120), dtype=np.float32)])[0]
    assert engine.decode(embedding, Prompts(boxXyxy=(20, 20, 80, 70))).mask.shape == (100, 120)


@pytest.mark.parametrize("recipe", ["medsam", "sam"])
def test_engine_fast_and_stock_paths_give_the_same_results(recipe):
    stockEngine = SamEngine(model=buildTinySam(seed=2), recipe=recipe, device="cpu", modelId="t", fastDecoding=False)
    fastEngine = SamEngine(model=buildTinySam(seed=2), recipe=recipe, device="cpu", modelId="t")
    assert fastEngine._fastDecoder is not None and stockEngine._fastDecoder is None
    assert not any(isinstance(m, fastlayers.ConvTranspose2x2) for m in stockEngine.model.modules())
    image = np.random.default_rng(1).random((300, 500), dtype=np.float32)
    embedding = fastEngine.encode([image])[0]
    box, points = (260.0, 70.0, 380.0, 180.0), np.array([[300.0, 120.0], [200.0, 250.0]])
    first = stockEngine.decode(embedding, Prompts(boxXyxy=box))
    promptsList = [Prompts(boxXyxy=box), Prompts(pointsXy=points, pointLabels=[1, 0]),
                   Prompts(boxXyxy=box, pointsXy=points, pointLabels=[1, 0], previousLowResLogits=first.lowResLogits),
                   Prompts(pointsXy=points[:1], pointLabels=[1]), Prompts(boxXyxy=(20, 20, 120, 150))]
    for fast, stock in zip(fastEngine.decodeMany(embedding, promptsList), stockEngine.decodeMany(embedding, promptsList)):
        np.testing.assert_allclose(fast.lowResLogits, stock.lowResLogits, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
        assert fast.score == pytest.approx(stock.score, abs=1e-5)
        assert fast.mask.shape == (300, 500) and (fast.mask != stock.mask).mean() < 1e-3


def test_importing_fastdecoder_does_not_import_torch():
    code = ("import sys; import MedSAMSlicerLib.engines.fastdecoder, MedSAMSlicerLib.engines.fastlayers as f; "
            "assert 'torch' not in sys.modules and 'segment_anything' not in sys.modules; "
            "f.ConvTranspose2x2; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO / "MedSAMSlicer", check=True)
