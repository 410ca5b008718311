"""Box decodes replayed from a captured CUDA graph equal the stock decoder's (GPU only; CI has none)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (runs on the project's GPU machine, never in CI)")

from MedSAMSlicerLib.engines.base import Prompts  # noqa: E402
from MedSAMSlicerLib.engines.samengine import SamEngine  # noqa: E402
from MedSAMSlicerLib.engines.tinymodel import buildTinySam  # noqa: E402


def _engines(recipe):
    model = buildTinySam(seed=3)
    graphs = SamEngine(model=model, recipe=recipe, device="cuda", modelId="tiny")
    stock = SamEngine(model=copy.deepcopy(model), recipe=recipe, device="cuda", modelId="tiny", cudaGraphs=False)
    return graphs, stock


def _images():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:300, 0:500]
    first = ((rows - 140) ** 2 / 60 ** 2 + (cols - 220) ** 2 / 90 ** 2 < 1).astype(np.float32)
    second = ((rows - 170) ** 2 / 40 ** 2 + (cols - 300) ** 2 / 70 ** 2 < 1).astype(np.float32)
    return [np.clip(image * 0.7 + rng.normal(0.2, 0.05, image.shape), 0, 1).astype(np.float32)
            for image in (first, second)]


@pytest.mark.parametrize("recipe", ["medsam", "sam"])
def test_graph_replay_matches_the_stock_decoder_for_boxes_and_previous_masks(recipe):
    graphs, stock = _engines(recipe)
    for image, box in zip(_images(), [(120, 70, 330, 210), (220, 120, 380, 220)]):
        embedding = graphs.encode([image])[0]
        first = graphs.decode(embedding, Prompts(boxXyxy=box))
        reference = stock.decode(embedding, Prompts(boxXyxy=box))
        np.testing.assert_allclose(first.lowResLogits, reference.lowResLogits, atol=1e-5)
        assert np.array_equal(first.mask, reference.mask) and abs(first.score - reference.score) < 1e-5
        refined = graphs.decode(embedding, Prompts(boxXyxy=box, previousLowResLogits=first.lowResLogits))
        refinedReference = stock.decode(embedding, Prompts(boxXyxy=box, previousLowResLogits=first.lowResLogits))
        np.testing.assert_allclose(refined.lowResLogits, refinedReference.lowResLogits, atol=1e-5)
        several = graphs.decodeMany(embedding, [Prompts(boxXyxy=box), Prompts(boxXyxy=(10, 10, 90, 80))])
        severalReference = stock.decodeMany(embedding, [Prompts(boxXyxy=box), Prompts(boxXyxy=(10, 10, 90, 80))])
        for result, expected in zip(several, severalReference):
            np.testing.assert_allclose(result.lowResLogits, expected.lowResLogits, atol=1e-5)
    # one graph per (objects, previous mask or not), reused across slices
    assert sorted(graphs._graphDecoder._graphs) == [(1, False), (1, True), (2, False)]


def test_point_prompts_take_the_stock_path_and_still_match():
    graphs, stock = _engines("sam")
    embedding = graphs.encode([_images()[0]])[0]
    prompts = Prompts(boxXyxy=(120, 70, 330, 210), pointsXy=[[220, 140]], pointLabels=[1])
    result, reference = graphs.decode(embedding, prompts), stock.decode(embedding, prompts)
    np.testing.assert_allclose(result.lowResLogits, reference.lowResLogits, atol=1e-5)
    assert graphs._graphDecoder is None


def test_capturing_while_a_prefetch_worker_encodes_is_safe():
    from MedSAMSlicerLib.embeddings.service import EmbeddingService
    from MedSAMSlicerLib.imaging.intensity import IntensityPolicy
    from MedSAMSlicerLib.imaging.slicesource import SliceSource

    graphs, stock = _engines("medsam")
    volume = np.stack([_images()[k % 2] for k in range(24)])
    source = SliceSource(volume, (1.0, 1.0, 1.0), IntensityPolicy.window(0.0, 1.0))
    service = EmbeddingService(graphs)
    job = service.prefetch(source, 2, list(range(1, 24)))
    embedding = service.embedding(source, 2, 0)
    # the first box decodes capture their graphs while the worker is launching encoder batches
    results = [service.decode(embedding, Prompts(boxXyxy=(120, 70, 330, 210 + k))) for k in range(3)]
    job.wait(timeout=120)
    service.close(timeout=5.0)
    assert job.error is None
    for k, result in enumerate(results):
        reference = stock.decode(embedding, Prompts(boxXyxy=(120, 70, 330, 210 + k)))
        np.testing.assert_allclose(result.lowResLogits, reference.lowResLogits, atol=1e-5)
