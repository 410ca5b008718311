"""Fill between key slices (keyslicefill.fillKeySlices): through SAM 2's memory for SAM 2-family engines (the
same masks as sam2's own video predictor given masks on both key slices, each slice encoded once), slice by slice
for the others. The Logic's fill on real MRML nodes is in test_logic_fill.py.

Tiny SAM 2.1 models from sam2's classes, saved as the published files are and loaded by the same code."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from MedSAMSlicerLib.core.errors import InputError  # noqa: E402
from MedSAMSlicerLib.embeddings.service import EmbeddingService  # noqa: E402
from MedSAMSlicerLib.engines.base import Prompts  # noqa: E402
from MedSAMSlicerLib.engines.growcutengine import GrowCutEngine  # noqa: E402
from MedSAMSlicerLib.engines.sam2engine import Sam2Engine  # noqa: E402
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402
from MedSAMSlicerLib.workflow.keyslicefill import fillKeySlices  # noqa: E402
from MedSAMSlicerLib.workflow.memorypropagation import MemoryPropagationResult, correctWithMemory  # noqa: E402
from MedSAMSlicerLib.workflow.propagation import PropagationResult, PropagationSettings  # noqa: E402

from test_memorypropagation import (HEIGHT, PERMISSIVE, SLICES, WIDTH, _encodedSlices, files,  # noqa: E402,F401
                                    videoPredictor)


def _blob():
    kk, jj, ii = np.mgrid[:SLICES, :HEIGHT, :WIDTH]
    return ((ii - 27) ** 2 / 120 + (jj - 19) ** 2 / 60 + (kk - 6) ** 2 / 30) < 1


def _source(seed=0):
    rng = np.random.default_rng(seed)
    voxels = 200.0 * _blob() + rng.normal(0, 25, (SLICES, HEIGHT, WIDTH))
    return SliceSource(voxels.astype(np.float32), spacingIjk=(0.8, 0.8, 2.0), policy=IntensityPolicy.window(-50, 250))


def _videoPredictorFill(checkpoint, engine, source, keys, folder, last=None):
    """{slice: (mask at slice resolution, low-res logits)} from upstream SAM2VideoPredictor with the same weights
    (test_memorypropagation.videoPredictor): add_new_mask on every key, then propagate_in_video forwards from
    the first key to the last (or to ``last``)."""
    predictor, state = videoPredictor(checkpoint, engine, source, folder)
    first, last = min(keys), max(keys) if last is None else last
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fill_hole_area needs sam2's optional CUDA extension: skipped, as here
        for k, mask in keys.items():
            predictor.add_new_mask(state, frame_idx=k, obj_id=1, mask=mask)
        for k, _, logits in predictor.propagate_in_video(state, start_frame_idx=first,
                                                         max_frame_num_to_track=last - first):
            outputs = state["output_dict_per_obj"][0]
            stored = outputs["cond_frame_outputs"].get(k) or outputs["non_cond_frame_outputs"][k]
            out[k] = ((logits[0, 0] > 0).numpy(), stored["pred_masks"][0, 0].float().clamp(-32, 32).numpy())
    return out


@pytest.mark.parametrize("keySlices", [(2, 9), (1, 5, 10)], ids=["two keys", "three keys"])
def test_memory_fill_equals_sam2s_video_predictor_with_masks_on_the_keys(files, tmp_path, oneTorchThread, keySlices):
    """SAM2VideoPredictor given masks on the key frames (add_new_mask) and propagated forwards from the first key
    to the last, so every key is a conditioning frame in memory throughout: our fill gives the same masks and
    logits between the keys, keeps the key masks as given, and encodes each slice of the range exactly once."""
    engine = Sam2Engine(files["tiny"], recipe="medsam2", device="cpu")
    service, source, blob = EmbeddingService(engine), _source(1), _blob()
    a, b = keySlices[0], keySlices[-1]
    keys = {k: blob[k] for k in keySlices}
    ours = fillKeySlices(service, source, 2, keys, PERMISSIVE)
    assert isinstance(ours, MemoryPropagationResult) and set(ours.conditioning) == set(keySlices)
    assert sorted(ours.masks) == list(range(a, b + 1))
    for k in keySlices:
        np.testing.assert_array_equal(ours.masks[k], blob[k])
    assert service.stats()["encoded"] == b - a + 1 and _encodedSlices(service) == list(range(a, b + 1))

    theirs = _videoPredictorFill(files["tiny"], engine, source, keys, tmp_path)
    assert sorted(theirs) == list(range(a, b + 1))
    between = [k for k in range(a, b + 1) if k not in keys]
    # our slice features are kept in fp16 (the embedding cache's precision): logits differ by ~2e-4 (measured),
    # a few mask pixels may flip
    logitErrors = [float(np.abs(ours.logits[k].astype(np.float32) - theirs[k][1]).max()) for k in between]
    assert max(logitErrors) < 1e-3, logitErrors
    assert max(float(np.mean(ours.masks[k] != theirs[k][0])) for k in between) < 0.01
    assert sum(theirs[k][0].sum() for k in between) > 0
    for k in keySlices:  # the predictor hands back a key's mask resized to its input and back
        assert np.mean(theirs[k][0] != keys[k]) < 0.02
    # The upper keys matter: with the lower key alone the predictor's logits move by more than that tolerance.
    alone = _videoPredictorFill(files["tiny"], engine, source, {a: blob[a]}, tmp_path, last=b)
    moved = [float(np.abs(alone[k][1] - theirs[k][1]).max()) for k in between]
    assert sum(error > 1e-3 for error in moved) >= len(moved) // 2, moved


def test_every_key_stays_in_memory_across_several_gaps(files, oneTorchThread):
    """Three keys: one forward pass through both gaps (the middle key is skipped, never tracked), each slice
    encoded once; the key slices are the memory's conditioning slices throughout."""
    engine = Sam2Engine(files["cover"], recipe="medsam2", device="cpu")
    service, source, blob = EmbeddingService(engine), _source(2), _blob()
    keys = {1: blob[1], 5: blob[5], 10: blob[10]}
    result = fillKeySlices(service, source, 2, keys, PERMISSIVE)
    assert sorted(result.masks) == list(range(1, 11))
    assert result.session.memorySlices[:3] == [1, 5, 10]
    assert result.session.steps == 3 + 7  # three conditioning steps, one tracking step per slice between keys
    assert service.stats()["encoded"] == 10 and result.stopReasons == {"up": "rangeEnd", "down": "notRun"}
    with pytest.raises(InputError, match="at least two"):
        fillKeySlices(service, source, 2, {4: blob[4]})
    with pytest.raises(InputError, match="empty"):
        fillKeySlices(service, source, 2, {4: blob[4], 8: np.zeros_like(blob[8])})


def test_a_stopped_forward_pass_is_finished_from_the_upper_key(files, oneTorchThread):
    """maxSlices 2: the forward pass fills two slices above the lower key, the rest of the gap is tracked down
    from the upper key; nothing is encoded twice."""
    engine = Sam2Engine(files["cover"], recipe="medsam2", device="cpu")
    service, source, blob = EmbeddingService(engine), _source(3), _blob()
    limited = PropagationSettings(minAreaPixels=0, maxAreaRatio=1e9, minScore=0.0, minIouWithPrevious=0.0,
                                  maxSlices=2)
    order = []
    result = fillKeySlices(service, source, 2, {2: blob[2], 9: blob[9]}, limited,
                           progress=lambda f, text: order.append(int(text.split()[-1]))
                           if text.split()[-1].isdigit() else None)
    assert order == [3, 4, 8, 7]
    assert sorted(result.masks) == [2, 3, 4, 7, 8, 9]  # two each way: slices 5 and 6 stay unfilled
    assert result.stopReasons == {"up": "maxSlices", "down": "maxSlices"}
    assert service.stats()["encoded"] == 6


def test_a_correction_after_a_fill_keeps_the_keys_in_memory(files, oneTorchThread):
    engine = Sam2Engine(files["cover"], recipe="medsam2", device="cpu")
    service, source, blob = EmbeddingService(engine), _source(), _blob()
    filled = fillKeySlices(service, source, 2, {2: blob[2], 9: blob[9]}, PERMISSIVE)
    encoded = service.stats()["encoded"]
    corrected = correctWithMemory(service, source, 2, filled, 5, Prompts(pointsXy=[[20, 12]], pointLabels=[0]),
                                  PERMISSIVE)
    assert set(corrected.conditioning) == {2, 5, 9} and service.stats()["encoded"] == encoded
    # on another engine's session the key slices are conditioned again from their masks
    other = Sam2Engine(files["cover"], recipe="medsam2", device="cpu")
    again = correctWithMemory(EmbeddingService(other), source, 2, filled, 5,
                              Prompts(pointsXy=[[20, 12]], pointLabels=[0]), PERMISSIVE)
    assert set(again.conditioning) == {2, 5, 9}
    np.testing.assert_array_equal(again.masks[2], blob[2])


def test_engines_without_memory_fill_slice_by_slice(oneTorchThread):
    source, blob = _source(), _blob()
    service = EmbeddingService(GrowCutEngine())
    result = fillKeySlices(service, source, 2, {3: blob[3], 9: blob[9]})
    assert type(result) is PropagationResult and sorted(result.masks) == list(range(3, 10))
