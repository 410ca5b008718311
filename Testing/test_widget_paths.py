"""The paths the Slicer widget takes through the library, run here against a real MRML scene.

The widget itself needs Qt; what it does with the Logic does not: prepare a job
on the main thread, run it in a BackgroundJob thread, show the result, apply,
undo; place prompts in a Red, Yellow or Green view; decide what a model needs
before it runs (modelReadiness). Also the self-test scenarios that Slicer runs
("Reload and Test", CTest), run here with the weight-free engine.
"""

import importlib.util
import threading
import unittest

import numpy as np
import pytest
import vtk

from MedSAMSlicerLib.models import download
from MedSAMSlicerLib.core.backgroundjob import BackgroundJob
from MedSAMSlicerLib.core.errors import CancelledError, InputError
from MedSAMSlicerLib.workflow.logic import MedSAMLogic
from MedSAMSlicerLib.models.modelmanager import modelReadiness
from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom
from MedSAMSlicerLib.workflow.propagation import PropagationSettings
from MedSAMSlicerLib.mrml.segmentwriter import segmentMaskKji
from MedSAMSlicerLib.mrml.volumegeometry import ijkToRas

from conftest import REPO

SHAPE_KJI = (14, 36, 40)


def _runInWorker(work):
    """What the widget does: run ``work(progress, cancel)`` in a BackgroundJob and take its result."""
    job = BackgroundJob(work).start()
    assert job.wait(timeout=60), "the worker did not finish"
    return job.result()


@pytest.fixture
def session(scene):
    """A phantom volume (origin and spacing not trivial), the Logic as the widget sets it up, and the truth."""
    import slicer

    voxels, truth, spacing = ellipsoidPhantom(shapeKji=SHAPE_KJI, spacingIjk=(0.9, 0.8, 1.6), seed=3)
    volume = slicer.util.addVolumeFromArray(voxels, name="phantom")
    volume.SetSpacing(*spacing)
    volume.SetOrigin(12.0, -30.0, 7.5)
    logic = MedSAMLogic(scene)
    logic.autoUpdate = False  # the widget refreshes the preview itself, in its worker
    logic.setVolume(volume)
    segmentation, segmentId = logic.setSegmentation()
    yield logic, volume, truth, segmentation, segmentId
    logic.cleanup()


def _roi(scene, volume, cornersIjk):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    cornersRas = ijkToRas(volume, np.asarray(cornersIjk, float))
    roi.SetCenter(*cornersRas.mean(axis=0))
    roi.SetSize(*np.abs(cornersRas[1] - cornersRas[0]))
    return roi


def _sliceNode(scene, volume, normalAxis, indexIjk):
    """A slice view whose plane cuts IJK axis ``normalAxis`` (2: Red/axial, 0: Yellow/sagittal here) through a voxel."""
    sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    matrix = vtk.vtkMatrix4x4()
    columns = {2: ((1, 0, 0), (0, 1, 0), (0, 0, 1)), 0: ((0, 1, 0), (0, 0, 1), (1, 0, 0))}[normalAxis]
    centreRas = ijkToRas(volume, np.asarray([indexIjk], float))[0]
    for c, column in enumerate(columns):
        for r in range(3):
            matrix.SetElement(r, c, column[r])
    for r in range(3):
        matrix.SetElement(r, 3, centreRas[r])
    sliceNode.GetSliceToRAS().DeepCopy(matrix)
    return sliceNode


def _truthBoxIjk(truth, k):
    rows, cols = np.nonzero(truth[k])
    return [[cols.min() - 2, rows.min() - 2, k], [cols.max() + 2, rows.max() + 2, k]]


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_background_job_returns_result_reports_progress_and_reraises():
    seen = threading.Event()

    def work(progress, cancel):
        progress(0.5, "half")
        seen.wait(5)
        return 42

    job = BackgroundJob(work).start()
    with pytest.raises(RuntimeError, match="still running"):
        job.result()
    seen.set()
    assert job.wait(5) and job.done and job.result() == 42
    assert job.progress == (0.5, "half")

    def broken(progress, cancel):
        raise InputError("box off the image")

    with pytest.raises(InputError, match="box off the image"):
        _runInWorker(broken)


def test_background_job_cancel_reaches_the_work():
    started = threading.Event()

    def work(progress, cancel):
        started.set()
        while True:
            cancel.raiseIfCancelled()

    job = BackgroundJob(work).start()
    started.wait(5)
    job.cancel()
    assert job.wait(5)
    with pytest.raises(CancelledError):
        job.result()


def test_slice_preview_in_worker_then_apply_and_undo(session, scene):
    logic, volume, truth, segmentation, segmentId = session
    k = SHAPE_KJI[0] // 2
    logic.setPromptNodes(roiNode=_roi(scene, volume, _truthBoxIjk(truth, k)))
    logic.setSliceNode(_sliceNode(scene, volume, 2, (20, 18, k)))
    result = _runInWorker(logic.prepareSegmentSlice().run)  # MRML untouched in the worker
    assert logic.previewMaskKji is None
    logic.showResult(result)
    preview = logic.previewMaskKji
    assert sorted(set(np.nonzero(preview)[0])) == [k]
    assert _dice(preview[k], truth[k]) > 0.85
    logic.apply("replaceSlices")
    assert np.array_equal(segmentMaskKji(segmentation, segmentId, volume).astype(bool), preview)
    assert logic.undo()
    assert not segmentMaskKji(segmentation, segmentId, volume).any()


def test_prompt_in_yellow_view_segments_a_sagittal_slice(session, scene):
    logic, volume, truth, segmentation, segmentId = session
    i = SHAPE_KJI[2] // 2
    ks, js = np.nonzero(truth[:, :, i])
    roi = _roi(scene, volume, [[i, js.min() - 2, ks.min() - 1], [i, js.max() + 2, ks.max() + 1]])
    logic.setPromptNodes(roiNode=roi)
    logic.setSliceNode(_sliceNode(scene, volume, 0, (i, 18, 7)))
    assert logic.axis == 0
    logic.showResult(_runInWorker(logic.prepareSegmentSlice().run))
    preview = logic.previewMaskKji
    assert sorted(set(np.nonzero(preview)[2])) == [i]
    assert _dice(preview[:, :, i], truth[:, :, i]) > 0.8


def test_propagation_in_worker_respects_start_and_end_here_range(session, scene):
    logic, volume, truth, segmentation, segmentId = session
    k = SHAPE_KJI[0] // 2
    logic.setPromptNodes(roiNode=_roi(scene, volume, _truthBoxIjk(truth, k)))
    logic.setAxis(2)
    job = logic.preparePropagation(PropagationSettings(), (k - 2, k + 3))
    logic.showResult(_runInWorker(job.run))
    slices = sorted(set(np.nonzero(logic.previewMaskKji)[0]))
    assert slices[0] >= k - 2 and slices[-1] <= k + 3 and len(slices) >= 4


def test_cancelled_propagation_leaves_preview_and_segment_alone(session, scene):
    logic, volume, truth, segmentation, segmentId = session
    k = SHAPE_KJI[0] // 2
    logic.setPromptNodes(roiNode=_roi(scene, volume, _truthBoxIjk(truth, k)))
    logic.setAxis(2)
    logic.showResult(_runInWorker(logic.prepareSegmentSlice().run))
    before = logic.previewMaskKji.copy()
    job = BackgroundJob(logic.preparePropagation().run)
    job.cancel()  # the user pressed Cancel before the worker got going
    job.start().wait(60)
    with pytest.raises(CancelledError):
        job.result()
    assert np.array_equal(logic.previewMaskKji, before)
    assert not segmentMaskKji(segmentation, segmentId, volume).any()


def test_model_readiness_walks_packages_weights_file(tmp_path):
    download.setModelCacheFolder(tmp_path)
    try:
        growcut = modelReadiness("growcut", importable=lambda name: False)
        assert growcut.ready and "no download" in growcut.statusText
        medsam = modelReadiness("medsam", device="cpu")
        assert medsam.needsDownload and not medsam.ready
        assert "medsam_vit_b.pth" in medsam.statusText and str(tmp_path) in medsam.statusText
        assert medsam.engineKey == ("medsam_vit_b", "cpu", None)
        noTorch = modelReadiness("sam_vit_b", importable=lambda name: name != "torch")
        assert noTorch.missingPackages == ("torch",) and "Install Python packages" in noTorch.statusText
        custom = modelReadiness("custom")
        assert custom.needsFile and not custom.ready
        chosen = modelReadiness("custom", checkpointPath=str(tmp_path / "mine.pth"))
        assert chosen.ready and chosen.engineKey[2] == str(tmp_path / "mine.pth")
        (tmp_path / "medsam_vit_b.pth").write_bytes(b"0")  # wrong size: not taken for the real file
        assert modelReadiness("medsam").needsDownload
    finally:
        download.setModelCacheFolder(None)


def test_self_test_scenarios_pass_headless_with_growcut(headlessScene):
    path = REPO / "MedSAMSlicer" / "Testing" / "Python" / "MedSAMSlicerTest.py"
    spec = importlib.util.spec_from_file_location("MedSAMSlicerSelfTestScenarios", path)
    scenarios = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scenarios)
    suite = unittest.TestSuite(scenarios.MedSAMSlicerSelfTest(name) for name in (
        "test_growcut_box_on_one_slice_apply_and_undo", "test_growcut_propagation_through_the_3d_box"))
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert result.wasSuccessful(), [str(e[1]) for e in result.failures + result.errors]


def test_live_refresh_after_propagation_corrects_in_worker_and_clear_drops_everything(session, scene):
    logic, volume, truth, segmentation, segmentId = session
    k = SHAPE_KJI[0] // 2
    roi = _roi(scene, volume, _truthBoxIjk(truth, k))
    negative = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "negative")
    logic.setPromptNodes(roiNode=roi, negativeNode=negative)
    logic.setAxis(2)
    logic.setSegmentEditorNode(None)
    logic.showResult(_runInWorker(logic.preparePropagation(PropagationSettings(), (k - 3, k + 3)).run))
    propagated = logic.previewMaskKji.copy()
    # A negative click inside the object on slice k + 1: the widget's live refresh (prepareUpdate) corrects.
    rows, cols = np.nonzero(propagated[k + 1])
    centreIjk = [cols.mean(), rows.mean(), k + 1]
    negative.AddControlPoint(*ijkToRas(volume, np.asarray([centreIjk]))[0])
    update = logic.prepareUpdate()
    logic.showResult(_runInWorker(update.run))
    corrected = logic.previewMaskKji
    assert corrected[k + 1].sum() < propagated[k + 1].sum(), "the negative click removed nothing"
    assert corrected[k + 1, int(round(rows.mean())), int(round(cols.mean()))] == 0
    logic.setCacheBudget(64 << 20)
    assert logic.cacheStats()["entries"] > 0
    logic.clearEmbeddings()
    assert logic.cacheStats()["entries"] == 0
    logic.clear()
    assert logic.previewMaskKji is None
    assert roi.GetNumberOfControlPoints() == 0 and negative.GetNumberOfControlPoints() == 0
    assert not segmentMaskKji(segmentation, segmentId, volume).any()
