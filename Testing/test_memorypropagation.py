"""Memory propagation (SAM 2.1 / MedSAM2) through a volume: the same masks as sam2's own video predictor,
order and encoder counts (each slice once, none past a stop), 3D boxes, corrections, cancel, a bounded bank,
and the Logic and the command line choosing this path for SAM 2-family models.

Tiny SAM 2.1 models from sam2's classes, saved as the published files are and loaded by the same code."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from MedSAMSlicerLib.core.errors import CancelledError, InputError  # noqa: E402
from MedSAMSlicerLib.core.progress import CancelToken  # noqa: E402
from MedSAMSlicerLib.embeddings.service import EmbeddingService  # noqa: E402
from MedSAMSlicerLib.engines.base import Prompts  # noqa: E402
from MedSAMSlicerLib.engines.sam2engine import Sam2Engine  # noqa: E402
from MedSAMSlicerLib.engines.tinysam2 import writeTinySam2Checkpoint  # noqa: E402
from MedSAMSlicerLib.imaging.intensity import IntensityPolicy  # noqa: E402
from MedSAMSlicerLib.imaging.slicesource import SliceSource  # noqa: E402
from MedSAMSlicerLib.workflow.memorypropagation import (MemoryPropagationResult, correctWithMemory,  # noqa: E402
                                                        propagateWithMemory)
from MedSAMSlicerLib.workflow.propagation import PropagationSettings  # noqa: E402

SLICES, HEIGHT, WIDTH = 12, 40, 56
BOX = (14.0, 8.0, 40.0, 30.0)
#: No stop rule fires: every slice up to the range end is tracked.
PERMISSIVE = PropagationSettings(minAreaPixels=0, maxAreaRatio=1e9, minScore=0.0, minIouWithPrevious=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2files")
    return {"tiny": writeTinySam2Checkpoint(folder / "tiny.pt", seed=1),
            "cover": writeTinySam2Checkpoint(folder / "cover.pt", seed=1, coverImage=True)}


@pytest.fixture(scope="module")
def coverEngine(files, oneTorchThread):
    """A tiny MedSAM2-recipe engine whose masks cover the whole slice: propagation goes on until told to stop."""
    return Sam2Engine(files["cover"], recipe="medsam2", device="cpu")


def _source(seed=0):
    rng = np.random.default_rng(seed)
    kk, jj, ii = np.mgrid[:SLICES, :HEIGHT, :WIDTH]
    blob = ((ii - 27) ** 2 / 120 + (jj - 19) ** 2 / 60 + (kk - 6) ** 2 / 20) < 1
    voxels = 200.0 * blob + rng.normal(0, 25, blob.shape)
    return SliceSource(voxels.astype(np.float32), spacingIjk=(0.8, 0.8, 2.0), policy=IntensityPolicy.window(-50, 250))


class _Order:
    """A progress callback that records the slices propagation visits, in order."""

    def __init__(self, cancelAfter=None, cancel=None):
        self.slices, self.cancelAfter, self.cancel = [], cancelAfter, cancel

    def __call__(self, fraction, text):
        if "slice" in text and text.split()[-1].isdigit():
            self.slices.append(int(text.split()[-1]))
            if self.cancelAfter is not None and len(self.slices) >= self.cancelAfter:
                self.cancel.cancel()


def _encodedSlices(service):
    return sorted(key.sliceIndex for key in service.cache._entries)  # noqa: SLF001 - the cache's own keys


# ------------------------------------------------------------------ fidelity


def videoPredictor(checkpoint, engine, source, folder):
    """(predictor, inference state): upstream SAM2VideoPredictor with the checkpoint's weights over the slices
    of ``source`` along K, fed the way MedSAM2's fork feeds it (a preprocessed tensor instead of JPEG frames)."""
    from PIL import Image
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    predictor = Sam2Engine(checkpoint, recipe="medsam2", device="cpu").model
    predictor.__class__ = SAM2VideoPredictor  # what build_sam2_video_predictor builds: SAM2Base + these switches
    predictor.fill_hole_area, predictor.non_overlap_masks = 8, False
    predictor.clear_non_cond_mem_around_input = predictor.add_all_frames_to_correct_as_cond = False
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0.jpg")
    state = predictor.init_state(str(folder))
    images = torch.stack([engine.modelInput(source.sliceImage(2, k)) for k in range(SLICES)])
    state.update(images=images, num_frames=SLICES, video_height=HEIGHT, video_width=WIDTH, cached_features={})
    return predictor, state


def test_masks_equal_sam2s_video_predictor_run_as_medsam2_does(files, tmp_path, oneTorchThread):
    """MedSAM2's 3D inference: the preprocessed volume as the video, a box on the key slice, propagate forwards,
    reset, the box again, propagate in reverse. Upstream SAM2VideoPredictor with the same weights, fed the
    way MedSAM2's fork feeds it (a tensor instead of JPEG frames), gives the masks our memory path gives."""
    engine = Sam2Engine(files["tiny"], recipe="medsam2", device="cpu")
    source, seed = _source(1), 6
    ours = propagateWithMemory(EmbeddingService(engine), source, 2, seed, Prompts(boxXyxy=BOX), PERMISSIVE)
    assert sorted(ours.masks) == list(range(SLICES))

    predictor, state = videoPredictor(files["tiny"], engine, source, tmp_path)
    theirs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fill_hole_area needs sam2's optional CUDA extension: skipped, as here
        for reverse in (False, True):
            predictor.reset_state(state)
            predictor.add_new_points_or_box(state, frame_idx=seed, obj_id=1, box=np.array(BOX))
            for k, _, logits in predictor.propagate_in_video(state, start_frame_idx=seed, reverse=reverse):
                theirs[k] = (logits[0, 0] > 0).numpy()
    for k in range(SLICES):
        # our slice features are kept in fp16 (the embedding cache's precision): a few pixels may flip
        assert np.mean(ours.masks[k] != theirs[k]) < 0.01, k
    assert sum(m.sum() for m in theirs.values()) > 0


# ------------------------------------------------------------------ order, cache, stops


def test_order_is_up_then_down_and_each_slice_is_encoded_once(coverEngine):
    service, source, order = EmbeddingService(coverEngine), _source(), _Order()
    result = propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX), PERMISSIVE, progress=order)
    assert isinstance(result, MemoryPropagationResult)
    assert order.slices == [6, 7, 8, 9, 10, 11, 4, 3, 2, 1, 0]
    assert result.stopReasons == {"up": "rangeEnd", "down": "rangeEnd"}
    assert service.stats()["encoded"] == SLICES and _encodedSlices(service) == list(range(SLICES))
    assert set(result.conditioning) == {5} and all(mask.all() for mask in result.masks.values())
    again = propagateWithMemory(service, source, 2, 3, Prompts(boxXyxy=BOX), PERMISSIVE)
    assert len(again.masks) == SLICES and service.stats()["encoded"] == SLICES  # a second pass encodes nothing


def test_nothing_is_encoded_past_a_stop(coverEngine):
    service, source = EmbeddingService(coverEngine), _source()
    limited = PropagationSettings(minAreaPixels=0, maxAreaRatio=1e9, minScore=0.0, minIouWithPrevious=0.0,
                                  maxSlices=2)
    result = propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX), limited)
    assert sorted(result.masks) == [3, 4, 5, 6, 7] and result.stopReasons == {"up": "maxSlices", "down": "maxSlices"}
    assert _encodedSlices(service) == [3, 4, 5, 6, 7]

    service = EmbeddingService(coverEngine)
    strict = PropagationSettings(minScore=0.99)  # a random model's predicted IoU stays far below
    result = propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX), strict)
    assert sorted(result.masks) == [5] and result.stopReasons == {"up": "lowScore", "down": "lowScore"}
    assert _encodedSlices(service) == [4, 5, 6]  # the slice that breaks a rule is encoded, none beyond it
    assert result.session.memorySlices == [5]  # and it leaves nothing in the memory


def test_a_3d_box_confines_slices_and_masks(coverEngine):
    service, source = EmbeddingService(coverEngine), _source()
    result = propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX), PERMISSIVE, sliceRange=(3, 8),
                                 clipXyxy=BOX)
    assert sorted(result.masks) == list(range(3, 9)) and _encodedSlices(service) == list(range(3, 9))
    inBox = np.zeros((HEIGHT, WIDTH), bool)
    inBox[8:31, 14:41] = True  # pixel centres from the box's first to its last row and column
    for mask in result.masks.values():
        np.testing.assert_array_equal(mask, inBox)
    with pytest.raises(InputError, match="outside the slice range"):
        propagateWithMemory(service, source, 2, 1, Prompts(boxXyxy=BOX), PERMISSIVE, sliceRange=(3, 8))


def test_cancel_stops_between_slices(coverEngine):
    service, token = EmbeddingService(coverEngine), CancelToken()
    with pytest.raises(CancelledError):
        propagateWithMemory(service, _source(), 2, 5, Prompts(boxXyxy=BOX), PERMISSIVE,
                            progress=_Order(cancelAfter=2, cancel=token), cancel=token)
    assert service.stats()["encoded"] <= 3


def test_the_memory_bank_is_bounded(coverEngine):
    service, source = EmbeddingService(coverEngine), _source()
    session = coverEngine.startMemorySession(SLICES, maxMemoryFrames=4)
    session.condition(0, service.embedding(source, 2, 0), Prompts(boxXyxy=BOX))
    sizes = []
    for k in range(1, SLICES):
        session.track(k, service.embedding(source, 2, k), reverse=False)
        assert len(session.outputs["non_cond_frame_outputs"]) <= 4
        sizes.append(session.nbytes - sum(t.numel() * t.element_size() for t in session.lowResLogits.values()))
    assert session.memorySlices == [0, 8, 9, 10, 11]
    assert sizes[-1] == sizes[4]  # the bank stops growing once full
    assert coverEngine.startMemorySession(SLICES).maxMemoryFrames == 15  # SAM 2's longest look-back


# ------------------------------------------------------------------ corrections


def test_a_correction_becomes_a_conditioning_slice_and_re_propagates_from_it(coverEngine):
    service, source = EmbeddingService(coverEngine), _source()
    limited = PropagationSettings(minAreaPixels=0, maxAreaRatio=1e9, minScore=0.0, minIouWithPrevious=0.0,
                                  maxSlices=2)
    first = propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX), limited)
    assert sorted(first.masks) == [3, 4, 5, 6, 7]
    clicks = Prompts(pointsXy=[[20, 12]], pointLabels=[1])
    # A click beyond the old end: slice 9 is conditioned, the walk goes on up from it and back down to where the
    # old masks are met again (unchanged there); the slices in between are encoded only now, once.
    corrected = correctWithMemory(service, source, 2, first, 9, clicks, PERMISSIVE)
    assert set(corrected.conditioning) == {5, 9} and set(first.conditioning) == {5}
    assert sorted(corrected.masks) == list(range(3, 12))
    assert corrected.stopReasons == {"up": "rangeEnd", "down": "unchanged"}
    assert _encodedSlices(service) == list(range(3, 12))
    assert set(first.session.conditioning) == {5}  # the old result and its memory are untouched
    encoded = service.stats()["encoded"]
    again = correctWithMemory(service, source, 2, corrected, 6, clicks, PERMISSIVE)
    assert set(again.conditioning) == {5, 6, 9}
    assert again.stopReasons == {"up": "unchanged", "down": "conditioningSlice"}  # slice 5 keeps its own mask
    assert service.stats()["encoded"] == encoded  # corrections inside the result encode nothing
    with pytest.raises(InputError, match="outside the result's slice range"):
        correctWithMemory(service, source, 2, propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX),
                                                                  PERMISSIVE, sliceRange=(3, 8)), 10, clicks)


def test_the_seed_slices_box_stays_when_it_is_corrected_with_clicks(coverEngine):
    service, source = EmbeddingService(coverEngine), _source()
    first = propagateWithMemory(service, source, 2, 5, Prompts(boxXyxy=BOX), PERMISSIVE)
    corrected = correctWithMemory(service, source, 2, first, 5, Prompts(pointsXy=[[20, 12]], pointLabels=[0]))
    assert corrected.conditioning[5].boxXyxy == BOX and len(corrected.conditioning[5].pointsXy) == 1


# ------------------------------------------------------------------ the Logic and the command line


def test_the_logic_propagates_and_corrects_with_memory_for_sam2_models(scene, files):
    from test_logic import addRoi, ballsPhantom
    from test_segmentwriter import makeVolume

    from MedSAMSlicerLib.mrml.volumegeometry import ijkToWorld
    from MedSAMSlicerLib.workflow.logic import MedSAMLogic

    voxels, obj, decoy, centre = ballsPhantom(2)
    volume = makeVolume(scene, voxels, "RAS")
    roi = addRoi(scene, volume, centre, 2, thickness=3.0)  # a 3D box over 7 slices
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    logic = MedSAMLogic(scene)
    try:
        logic.setVolume(volume)
        logic.setAxis(2)
        logic.setPromptNodes(roi, None, negative)
        logic.setModel(str(files["cover"]), device="cpu", recipe="medsam2")
        logic.propagationSettings = PERMISSIVE
        result = logic.propagate()
        assert isinstance(result, MemoryPropagationResult)
        assert logic.cacheStats()["encoded"] == len(result.masks) == 7
        k = int(centre[2]) + 2
        negative.AddControlPoint(*(ijkToWorld(volume) @ np.r_[centre[0], centre[1], k, 1.0])[:3])
        corrected = logic.lastResult.propagation
        assert isinstance(corrected, MemoryPropagationResult) and k in corrected.conditioning
        assert logic.cacheStats()["encoded"] == 7 and logic.lastError is None
    finally:
        logic.cleanup()


def _run(*args):
    command = [str(Path(sys.executable).with_name("medsam-slicer")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_cli_propagates_a_sam21_checkpoint_with_memory(files, tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(2)
    image = sitk.GetImageFromArray(rng.normal(0, 50, (SLICES, HEIGHT, WIDTH)).astype(np.float32))
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(tmp_path / "volume.nii.gz"))
    out = tmp_path / "mask.nii.gz"
    done = _run("segment", str(tmp_path / "volume.nii.gz"), "--model", str(files["cover"]), "--box", "10,5,3,30,25,9",
                "--propagate", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["slices"] == 7 and summary["cache"]["encoded"] == 7  # one encoder pass per slice visited
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    expected = np.zeros_like(labels)
    expected[3:10, 5:26, 10:31] = 1
    np.testing.assert_array_equal(labels > 0, expected > 0)
    wrong = _run("segment", str(tmp_path / "volume.nii.gz"), "--model", str(files["cover"]), "--recipe", "medsam",
                 "--box", "10,5,3,30,25,9", "--out", str(tmp_path / "x.nii.gz"))
    assert wrong.returncode == 2 and "SAM 2.1 / MedSAM2" in wrong.stderr and not (tmp_path / "x.nii.gz").exists()


def test_the_simulated_user_boxes_propagates_and_clicks_with_memory(coverEngine):
    """evaluate's 3D protocol (BoxRefinement): the box propagated with memory, then each click corrects its
    slice as a conditioning slice of the memory; nothing beyond the box's slices is encoded."""
    from MedSAMSlicerLib.workflow.simulateduser import simulate3d

    source = _source()
    kk, jj, ii = np.mgrid[:SLICES, :HEIGHT, :WIDTH]
    truth = ((ii - 25) ** 2 / 100 + (jj - 17) ** 2 / 49 + (kk - 6) ** 2 / 4) < 1  # an ellipsoid: a box is not it
    service = EmbeddingService(coverEngine)
    simulation = simulate3d(service, source, truth, axis=2, clickBudget=2, settings=PERMISSIVE)
    propagation = simulation.result.propagation
    assert isinstance(propagation, MemoryPropagationResult)
    first, last = simulation.sliceRange
    assert sorted(propagation.masks) == list(range(first, last + 1))
    assert len(simulation.clicks) >= 1
    clicked = {click[2] for click in simulation.clicks}  # (i, j, k, label): axis 2 slices are k
    assert clicked <= set(propagation.conditioning)  # every clicked slice joined the memory
    assert _encodedSlices(service) == list(range(first, last + 1))
