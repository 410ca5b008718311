"""The interaction controller beyond the slice views: segments, Apply/Undo, the Segment Editor's node, jobs
and the GIL, scene close, cleanup, Reload, installing packages. Real MRML (slicer-core), real threads, a
main loop that idles holding the GIL as Slicer's does (realviews.SlicerLikeMainLoop).

What happens in the views (placing, dragging, place mode) is in test_realviews.py.
"""

import http.server
import importlib.util
import shutil
import subprocess
import sys
import threading
import time
import unittest

import numpy as np
import pytest

from MedSAMSlicerLib.core.backgroundjob import BackgroundJob
from MedSAMSlicerLib.core.errors import CancelledError, InputError
from MedSAMSlicerLib.interaction.controller import BUTTON_ACTIONS, InteractionController
from MedSAMSlicerLib.interaction.jobrunner import JobRunner, Task
from MedSAMSlicerLib.interaction.parameters import ApplyMode, ModuleParameters
from MedSAMSlicerLib.interaction.scheduler import ManualScheduler
from MedSAMSlicerLib.imaging.phantoms import ellipsoidPhantom
from MedSAMSlicerLib.models import download
from MedSAMSlicerLib.models.modelmanager import modelReadiness
from MedSAMSlicerLib.models.registry import ModelSpec
from MedSAMSlicerLib.mrml.segmenteditornode import userSegmentEditorNode
from MedSAMSlicerLib.mrml.segmentwriter import PREVIEW_NODE_NAME, segmentMaskKji
from MedSAMSlicerLib.mrml.volumegeometry import ijkToRas
from MedSAMSlicerLib.workflow.logic import MedSAMLogic

from conftest import REPO
from realviews import SlicerLikeMainLoop
from test_undo_and_editor_settings import paintElsewhere

SHAPE_KJI = (14, 36, 40)


class Session:
    """A phantom volume, a box drawn on slice K (made in code: the views are test_realviews.py's), the controller."""

    def __init__(self, scene):
        import slicer

        voxels, self.truth, spacing = ellipsoidPhantom(shapeKji=SHAPE_KJI, spacingIjk=(0.9, 0.8, 1.6), seed=3)
        self.scene = scene
        self.volume = slicer.util.addVolumeFromArray(voxels, name="phantom")
        self.volume.SetSpacing(*spacing)
        self.volume.SetOrigin(12.0, -30.0, 7.5)
        self.scheduler = ManualScheduler()
        self.mainLoop = SlicerLikeMainLoop(self.scheduler)
        self.parameters = ModuleParameters(inputVolume=self.volume, model="growcut")
        self.logic = MedSAMLogic(scene)
        self.controller = InteractionController(self.logic, self.parameters, self.scheduler)
        self.statuses, self.errors = [], []
        self.controller.status.connect(self.statuses.append)
        self.controller.error.connect(self.errors.append)
        self.k = SHAPE_KJI[0] // 2

    def drawBox(self):
        rows, cols = np.nonzero(self.truth[self.k])
        cornersRas = ijkToRas(self.volume, np.array([[cols.min() - 2, rows.min() - 2, self.k],
                                                     [cols.max() + 2, rows.max() + 2, self.k]], float))
        roi = self.controller.promptNode("box")
        roi.SetCenter(*cornersRas.mean(axis=0))
        roi.SetSize(*np.abs(cornersRas[1] - cornersRas[0]))
        return roi

    def settle(self, timeoutS=60.0):
        assert self.mainLoop.run(timeoutS * 1000.0, until=lambda: self.controller.idle and not self.scheduler.pending), \
            f"not settled: {self.statuses[-1:]}"

    def press(self, buttonName):
        BUTTON_ACTIONS[buttonName](self.controller)


@pytest.fixture
def session(scene):
    current = Session(scene)
    yield current
    current.controller.cleanup()


def test_segment_selection_pairs_segmentation_and_segment_and_clears_a_stale_id(session, scene):
    a = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "A")
    b = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "B")
    a1 = a.GetSegmentation().AddEmptySegment("", "a1")
    b1 = b.GetSegmentation().AddEmptySegment("", "b1")
    controller, parameters = session.controller, session.parameters
    controller.setSegmentSelection(a, a1)
    assert (parameters.segmentation, parameters.segmentId) == (a, a1)
    # qMRMLSegmentSelectorWidget announces B's segment before B itself; the widget reads both from the
    # selector at each signal, so the pair stays consistent and nothing bounces back to A.
    controller.setSegmentSelection(b, b1)
    assert (parameters.segmentation, parameters.segmentId) == (b, b1)
    controller.setSegmentSelection(a, b1)  # a segment of another segmentation is no segment of this one
    assert (parameters.segmentation, parameters.segmentId) == (a, "")
    controller.setSegmentSelection(None, a1)
    assert (parameters.segmentation, parameters.segmentId) == (None, "")


def test_a_deleted_segment_never_blocks_preview_or_propagation_and_apply_adds_a_new_segment(session, scene):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(session.volume)
    kept = segmentation.GetSegmentation().AddEmptySegment("", "kept")
    deleted = segmentation.GetSegmentation().AddEmptySegment("", "deleted")
    session.controller.setSegmentSelection(segmentation, deleted)
    segmentation.GetSegmentation().RemoveSegment(deleted)  # while the module was hidden
    session.drawBox()
    session.settle()  # the live preview
    assert session.logic.previewMaskKji is not None, session.statuses
    session.press("propagateButton")
    session.settle()
    assert len(session.logic.lastResult.sliceIndices) > 1, session.statuses
    assert session.controller.apply()
    parameters = session.parameters
    assert parameters.segmentation is segmentation and parameters.segmentId not in (kept, deleted, "")
    written = segmentMaskKji(segmentation, parameters.segmentId, session.volume)
    assert written.any() and not segmentMaskKji(segmentation, kept, session.volume).any()
    assert session.errors == []


def test_apply_takes_masking_from_slicers_segment_editor_node_and_saves_its_undo_state(session, scene):
    import slicer

    session.drawBox()
    session.settle()
    preview = session.logic.previewMaskKji.copy()
    # Another segment editor node first in the scene (the module's own, another extension's) allows everything.
    scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "not the user's")
    user = userSegmentEditorNode(scene)
    user.SetSourceVolumeIntensityMask(True)
    user.SetSourceVolumeIntensityMaskRange(-10.0, 0.45)  # the phantom's object is brighter: only its dark rim
    saved = []
    session.controller.setExternalUndoSaver(saved.append)
    session.parameters.applyMode = ApplyMode.ADD
    assert session.controller.apply()
    written = segmentMaskKji(session.parameters.segmentation, session.parameters.segmentId, session.volume).astype(bool)
    voxels = slicer.util.arrayFromVolume(session.volume)
    assert written.sum() < preview.sum() and not (written & (voxels > 0.45)).any()
    assert saved == [session.parameters.segmentation]


def test_undo_after_a_later_edit_is_refused_and_says_so(session):
    session.drawBox()
    session.settle()
    assert session.controller.apply()
    segmentation, segmentId = session.parameters.segmentation, session.parameters.segmentId
    applied = segmentMaskKji(segmentation, segmentId, session.volume).astype(bool)
    painted = np.zeros(applied.shape, bool)
    painted[1, 1:4, 1:4] = True
    paintElsewhere(segmentation, segmentId, session.volume, painted)  # the Segment Editor, after the Apply
    assert not session.controller.undo()
    assert session.errors and "edited after" in session.errors[-1]
    np.testing.assert_array_equal(segmentMaskKji(segmentation, segmentId, session.volume).astype(bool), applied | painted)


class _SlowServer:
    """Serves ``payload`` at /model.pth: half of it, then the rest once ``gate`` is set."""

    def __init__(self, payload):
        self.gate = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                server.gate.wait(30)
                self.wfile.write(payload[len(payload) // 2:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()
        self.httpd.shutdown()


def test_closing_the_scene_cancels_work_on_it_but_not_a_download(session, scene, tmp_path):
    import hashlib

    runner = session.controller.runner
    started, outcomes = threading.Event(), []

    def previewWork(progress, cancel):  # a job on the scene's nodes, still running when the scene closes
        started.set()
        while not cancel.cancelled:
            time.sleep(0.005)
        cancel.raiseIfCancelled()

    runner.start(Task("Propagating", previewWork, outcomes.append))
    session.mainLoop.run(5000, until=started.is_set)
    scene.Clear(0)
    session.settle()
    assert outcomes == [] and "nothing was written" in session.statuses[-1]

    payload = bytes(range(256)) * 8192
    server = _SlowServer(payload)
    download.setModelCacheFolder(tmp_path)
    try:
        spec = ModelSpec(modelId="slow", displayName="Slow model", kind="download", recipe="sam", architecture="vit_b",
                         fileName="slow.pth", sizeBytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                         urls=(server.url,))
        paths = []
        assert session.controller.engines.download(spec, then=paths.append)
        assert not runner.task.sceneBound
        scene.Clear(0)  # File > Close Scene during the download
        assert runner.busy
        server.gate.set()
        session.settle()
        assert paths and paths[0].read_bytes() == payload, session.statuses
    finally:
        server.close()
        download.setModelCacheFolder(None)


def test_cleanup_stops_timers_and_jobs_and_leaves_no_nodes(scene):
    session = Session(scene)
    roi = session.drawBox()
    session.settle()
    assert scene.GetFirstNodeByName(PREVIEW_NODE_NAME) is not None
    nodesBefore = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    gate = threading.Event()

    def work(progress, cancel):
        gate.wait(10)
        return session.logic.prepareSegmentSlice().run()

    session.controller.runner.start(Task("Propagating", work, session.logic.showResult))
    roi.SetSize(*(np.array(roi.GetSize()) * 0.9))  # a prompt change waits for the debounce
    assert session.scheduler.pending
    session.controller.cleanup()  # Reload, or the application closes
    assert not session.controller.runner.busy and not session.scheduler.pending
    gate.set()
    time.sleep(0.2)
    session.mainLoop.run(500)  # nothing of the old controller runs any more
    roi.SetSize(*(np.array(roi.GetSize()) * 1.1))
    session.mainLoop.run(300)
    assert not session.scheduler.pending
    nodesAfter = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    leftBehind = [scene.GetNodeByID(i).GetName() for i in nodesAfter - nodesBefore]
    assert leftBehind == []
    assert scene.GetFirstNodeByName(PREVIEW_NODE_NAME) is None
    editors = [scene.GetNthNodeByClass(i, "vtkMRMLSegmentEditorNode") for i in
               range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode"))]
    assert all(node.GetSingletonTag() == "SegmentEditor" for node in editors), [n.GetName() for n in editors]


def test_background_work_progresses_while_the_main_thread_idles_holding_the_gil():
    """Slicer's idle main thread keeps the GIL; a poll that never yields it lets a worker run one step per tick."""

    def work(progress, cancel):
        for step in range(150):
            time.sleep(0.0005)  # releases the GIL, as a torch operation does, and needs it back afterwards
            progress(step / 150.0, "")
        return "done"

    def ticksToFinish(yieldMs):
        scheduler = ManualScheduler()
        runner = JobRunner(scheduler, yieldMs=yieldMs)
        results = []
        runner.start(Task("Encoding", work, results.append))
        loop, ticks = SlicerLikeMainLoop(scheduler), 0
        while not results:
            loop.run(loop.tickMs)
            ticks += 1
            assert ticks < 20000
        return ticks

    yielding = ticksToFinish(yieldMs=40)  # the runner's default behaviour
    starving = ticksToFinish(yieldMs=0)  # a poll that only looks, like the old widget's
    assert yielding * 4 < starving, (yielding, starving)


def test_installing_packages_runs_in_a_worker_with_progress_and_its_button_disabled(session):
    installed, installerThreads, gate, asked, progressTexts = set(), [], threading.Event(), [], []
    loader = session.controller.engines

    def pipInstaller(specs):
        installerThreads.append(threading.current_thread())
        gate.wait(10)
        installed.update(specs)

    loader.dependencyOptions = dict(requirements=["fakepkg"], importable=lambda name: name in installed or name.startswith("torch"),
                                    pipInstaller=pipInstaller)
    loader.confirm = lambda text: asked.append(text) or True
    session.controller.progress.connect(lambda fraction, text: progressTexts.append(text))
    session.press("installDependenciesButton")
    assert len(asked) == 1 and "fakepkg" in asked[0]  # asked once, on the main thread, before anything runs
    session.mainLoop.run(5000, until=lambda: installerThreads and any("fakepkg" in t for t in progressTexts))
    assert installerThreads[0] is not threading.main_thread()
    assert not session.controller.buttonStates()["installDependenciesButton"].enabled
    assert any("Installing fakepkg with pip" in text for text in progressTexts)
    gate.set()
    session.settle()
    assert installed == {"fakepkg"} and session.controller.buttonStates()["installDependenciesButton"].enabled
    assert "installed" in session.statuses[-1]


def test_start_and_end_here_need_a_view_that_was_used_never_the_red_one(session):
    session.press("startHereButton")
    assert "Place a prompt in a slice view first" in session.statuses[-1]
    assert session.parameters.rangeStart == -1 and session.parameters.rangeFromBox


def test_fill_with_one_accepted_slice_or_a_key_without_a_mask_says_so_and_starts_no_job(session):
    controller, logic = session.controller, session.logic
    session.press("acceptSliceButton")  # no view used yet: nothing to take the slice from
    assert "Place a prompt in a slice view first: Accept slice" in session.statuses[-1]
    session.drawBox()
    session.settle()  # the live preview of slice k
    preview = logic.previewMaskKji.copy()
    logic.acceptSlices([session.k])
    assert not controller.buttonStates()["fillButton"].enabled, "Fill needs two accepted slices"
    started = []
    controller.runner.busyChanged.connect(lambda: started.append(controller.runner.task))
    session.press("fillButton")  # what the action does even if the button were on
    assert "Fill needs at least two accepted slices" in session.statuses[-1]
    logic.acceptSlices([session.k + 3])  # a second key that shows no mask
    assert controller.buttonStates()["fillButton"].enabled
    session.press("fillButton")
    session.settle()
    assert f"[{session.k + 3}] show no mask" in session.statuses[-1] and session.errors[-1] == session.statuses[-1]
    assert started == [] and controller.runner.task is None, "a refused fill started a job"
    np.testing.assert_array_equal(logic.previewMaskKji, preview)  # the preview stays as it was
    controller.clear()
    assert not controller.buttonStates()["fillButton"].enabled, "Clear forgets the accepted slices"


def test_reload_reimports_the_library_each_module_after_the_ones_it_imports(tmp_path):
    library = tmp_path / "MedSAMSlicerLib"
    shutil.copytree(REPO / "MedSAMSlicer" / "MedSAMSlicerLib", library, ignore=shutil.ignore_patterns("__pycache__"))
    code = f"""
import sys
sys.dont_write_bytecode = True
sys.path.insert(0, {str(tmp_path)!r})
from pathlib import Path
import MedSAMSlicerLib.interaction.controller
from MedSAMSlicerLib.core import errors
from MedSAMSlicerLib.workflow import logic
oldInputError = errors.InputError
errorsFile = Path({str(library / "core" / "errors.py")!r})
errorsFile.write_text(errorsFile.read_text() + "\\nEDITED = 'errors'\\n")
logicFile = Path({str(library / "workflow" / "logic.py")!r})
logicFile.write_text(logicFile.read_text() + "\\nEDITED = 'logic'\\n")
from MedSAMSlicerLib.interaction.reloading import reloadLibrary
order = reloadLibrary()
assert errors.EDITED == 'errors' and logic.EDITED == 'logic'
assert logic.InputError is errors.InputError and errors.InputError is not oldInputError
assert order.index('MedSAMSlicerLib.core.errors') < order.index('MedSAMSlicerLib.workflow.logic')
assert order.index('MedSAMSlicerLib.workflow.propagation') < order.index('MedSAMSlicerLib.interaction.controller')
print('reloaded', len(order))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reloaded" in result.stdout


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

    job = BackgroundJob(broken).start()
    job.wait(5)
    with pytest.raises(InputError, match="box off the image"):
        job.result()


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


def test_model_readiness_walks_packages_weights_file(tmp_path):
    download.setModelCacheFolder(tmp_path)
    try:
        growcut = modelReadiness("growcut", importable=lambda name: False)
        assert growcut.ready and "no download" in growcut.statusText
        medsam = modelReadiness("medsam", device="cpu")
        assert medsam.needsDownload and not medsam.ready
        assert "medsam_vit_b.pth" in medsam.statusText and str(tmp_path) in medsam.statusText
        assert medsam.engineKey == ("medsam_vit_b", "cpu", None, None)  # a recipe is a user's file's only
        noTorch = modelReadiness("sam_vit_b", importable=lambda name: name != "torch")
        assert noTorch.missingPackages == ("torch",) and "Install Python packages" in noTorch.statusText
        custom = modelReadiness("custom")
        assert custom.needsFile and not custom.ready
        chosen = modelReadiness("custom", checkpointPath=str(tmp_path / "mine.pth"))
        assert chosen.ready and chosen.engineKey == ("custom", "auto", str(tmp_path / "mine.pth"), "auto")
        assert modelReadiness("custom", checkpointPath=str(tmp_path / "mine.pth"), recipe="sam").engineKey[3] == "sam"
        assert modelReadiness("medsam", recipe="sam").engineKey[3] is None
        (tmp_path / "medsam_vit_b.pth").write_bytes(b"0")  # wrong size: not taken for the real file
        assert modelReadiness("medsam").needsDownload
    finally:
        download.setModelCacheFolder(None)


def test_self_test_logic_scenarios_pass_headless_and_release_their_logic(headlessScene):
    import gc

    path = REPO / "MedSAMSlicer" / "Testing" / "Python" / "MedSAMSlicerTest.py"
    spec = importlib.util.spec_from_file_location("MedSAMSlicerSelfTestScenarios", path)
    scenarios = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scenarios)
    def liveLogics():  # issubclass on types: isinstance would touch torch's deprecated lazy attributes
        return [o for o in gc.get_objects() if issubclass(type(o), MedSAMLogic)]

    gc.collect()
    before = {id(o) for o in liveLogics()}
    suite = unittest.TestSuite(scenarios.MedSAMSlicerSelfTest(name) for name in (
        "test_growcut_box_on_one_slice_apply_and_undo", "test_growcut_propagation_through_the_3d_box"))
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert result.wasSuccessful(), [str(e[1]) for e in result.failures + result.errors]
    del suite
    gc.collect()
    alive = [o for o in liveLogics() if id(o) not in before]
    assert alive == [], "a scenario's Logic is still observed by the scene (not cleaned up)"
