"""Every write is verified before it is reported, and nothing is left behind when it fails or is stopped.

Run as a user runs the tool: `medsam-slicer segment` as a real subprocess, its output on a real disk that is
full (a small tmpfs, when this machine lets the tests mount one), under a file size limit (RLIMIT_FSIZE: the
same short writes, on any POSIX machine), or stopped by SIGINT / SIGTERM while its output is half-way. The
output paths are checked before any work. The Python API's writers are checked on real MRML nodes.
"""

import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk

from test_cli import boxText, cliCommand, runCli, writeEllipsoid  # noqa: F401 (runCli is a fixture)

OUTPUTS = ["mask.nii.gz", "mask.nii", "mask.nrrd", "result.seg.nrrd"]
HOLD_ENV = "MEDSAM_SLICER_TEST_HOLD_WRITE_S"


def cliEnvironment(tmp_path, **extra):
    from test_cli import REPO

    environment = dict(os.environ, MEDSAM_SLICER_CACHE=str(tmp_path / "cache"), **extra)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO / "MedSAMSlicer"), environment.get("PYTHONPATH", "")])
    return environment


@pytest.fixture
def fullDisk(tmp_path):
    """A folder on a 1 MiB tmpfs filled up to its last page (4 KiB free: a write starts, then fails half-way);
    skips where mounting is not allowed."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE test covers the same short writes")
    try:
        with open(folder / "filler", "wb", buffering=0) as stream:
            try:
                while True:
                    stream.write(b"\0" * 4096)
            except OSError:  # ENOSPC: the disk is full
                pass
        os.truncate(folder / "filler", os.path.getsize(folder / "filler") - 4096)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def segmentArguments(tmp_path, out, shapeKji=(18, 40, 56)):
    _, truth = writeEllipsoid(tmp_path / "volume.nrrd", shapeKji=shapeKji)
    return ["segment", tmp_path / "volume.nrrd", "--out", out, "--box", boxText(truth), "--propagate", "--model", "growcut"]


@pytest.mark.parametrize("outputName", OUTPUTS)
def test_full_disk_is_an_error_and_leaves_nothing(runCli, tmp_path, fullDisk, outputName):
    before = sorted(os.listdir(fullDisk))
    # Every output of this volume is over 4 KiB (the smallest, .nii.gz, about 4.8 KiB): it cannot fit.
    done = runCli(*segmentArguments(tmp_path, fullDisk / outputName, shapeKji=(40, 96, 128)))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "wrote" not in done.stdout
    assert "full" in lines[-1] and "nothing was written" in lines[-1] and outputName in lines[-1], lines
    assert sorted(os.listdir(fullDisk)) == before  # no output, no temporary file, no writer scratch folder


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX file size limits")
@pytest.mark.parametrize("outputName", OUTPUTS)
def test_short_write_is_an_error_and_leaves_nothing(tmp_path, outputName):
    """A write cut short by the file size limit (EFBIG, as on a full disk) is found by reading the file back."""
    arguments = [str(a) for a in segmentArguments(tmp_path, tmp_path / "out" / outputName)]
    (tmp_path / "out").mkdir()

    def limitFileSize():  # in the child only: files stop growing at 128 bytes, the write gets EFBIG, not a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (128, 128))

    done = subprocess.run(cliCommand() + arguments, capture_output=True, text=True, env=cliEnvironment(tmp_path),
                          preexec_fn=limitFileSize, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "nothing was written" in lines[-1] and outputName in lines[-1], lines
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("outputName", ["mask.nii.gz", "result.seg.nrrd"])
def test_stop_signal_mid_write_leaves_nothing(tmp_path, signum, outputName):
    out = tmp_path / "out"
    out.mkdir()
    arguments = [str(a) for a in segmentArguments(tmp_path, out / outputName)]
    # The test hook holds the finished temporary file for 60 s before it is verified and renamed.
    process = subprocess.Popen(cliCommand() + arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cliEnvironment(tmp_path, **{HOLD_ENV: "60"}))
    def temporaryFiles():  # the output written and held (not the hidden probe of the early writability check)
        return [name for name in os.listdir(out) if name.startswith("medsam-partial-")]

    try:
        deadline = time.monotonic() + 240
        while not temporaryFiles() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()
        assert temporaryFiles(), "the output was never started"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 128 + signum, stderr
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0] and "Traceback" not in stderr, stderr
    assert os.listdir(out) == []


def test_a_write_killed_outright_is_cleaned_up_by_the_next_write_into_the_folder(tmp_path):
    """SIGKILL cannot be caught: the held temporary file stays, until the next write removes it (this host, process gone)."""
    from MedSAMSlicerLib.core.atomicfiles import hostTag

    out = tmp_path / "out"
    out.mkdir()
    arguments = [str(a) for a in segmentArguments(tmp_path, out / "mask.nii.gz")]
    process = subprocess.Popen(cliCommand() + arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cliEnvironment(tmp_path, **{HOLD_ENV: "60"}))
    try:
        deadline = time.monotonic() + 240
        while not any(name.startswith("medsam-partial-") for name in os.listdir(out)) and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    leftovers = os.listdir(out)
    assert leftovers and all(name.startswith(f"medsam-partial-{hostTag()}-{process.pid}-") for name in leftovers)
    # Not to be touched: a live writer's file (this test's own process) and one written from another host.
    alive = f"medsam-partial-{hostTag()}-{os.getpid()}-{'a' * 12}.nii.gz"
    otherHost = f"medsam-partial-otherhost{hostTag()}-{process.pid}-{'b' * 12}.nii.gz"
    for name in (alive, otherHost):
        (out / name).write_bytes(b"half")
    done = subprocess.run(cliCommand() + arguments, capture_output=True, text=True, env=cliEnvironment(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == sorted(["mask.nii.gz", alive, otherHost])


def test_output_paths_are_checked_before_any_work(runCli, tmp_path):
    """A folder, a name too long for the disk, a pipe: refused even before the (missing) image is read."""
    missing = tmp_path / "not-read-yet.nii.gz"
    (tmp_path / "results").mkdir()
    os.mkfifo(tmp_path / "pipe.nii.gz")
    cases = [
        (tmp_path / "results", "is a folder"),
        (tmp_path / "results" / ("x" * 300 + ".nii.gz"), "bytes long"),
        (tmp_path / "pipe.nii.gz", "not a regular file"),
        (tmp_path / "results" / "mask.png", "unsupported output type"),
    ]
    for out, words in cases:
        done = runCli("segment", missing, "--out", out, "--box", "1,1,1,5,5,1")
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], (out, done.stderr)
    assert sorted(os.listdir(tmp_path / "results")) == []


def test_demo_out_that_is_a_file_is_refused(runCli, tmp_path):
    (tmp_path / "out").write_text("a file where the demo's folder should be")
    done = runCli("demo", "--out", tmp_path / "out")
    assert done.returncode == 2 and "is a file" in done.stderr and "give a folder" in done.stderr, done.stderr


def skewedVolume(scene):
    """A scalar volume whose i and j axes are 20 degrees from perpendicular (a sheared grid NIfTI cannot hold)."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "skewed")
    matrix = np.eye(4)
    shear = np.radians(20.0)
    matrix[:3, 1] = [np.sin(shear) * 0.8, np.cos(shear) * 0.8, 0.0]
    matrix[:3, 0] = [0.8, 0.0, 0.0]
    matrix[:3, 2] = [0.0, 0.0, 2.0]
    matrix[:3, 3] = [10.0, -5.0, 3.0]
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, np.arange(6 * 30 * 40, dtype=np.int16).reshape(6, 30, 40))
    return node, matrix


def test_geometry_nifti_cannot_hold_is_refused_and_nrrd_keeps_it(scene, tmp_path):
    from MedSAMSlicerLib.core.errors import InputError
    from MedSAMSlicerLib.mrml import imageio

    node, matrix = skewedVolume(scene)
    mask = np.zeros((6, 30, 40), bool)
    mask[2:4, 10:20, 10:30] = True
    for name in ("mask.nii.gz", "mask.nii"):
        with pytest.raises(InputError, match=r"NIfTI cannot store.*\.nrrd.*\.seg\.nrrd"):
            imageio.writeLabelmap(mask, node, str(tmp_path / name))
    with pytest.raises(InputError, match="NIfTI cannot store"):
        imageio.writeVolume(node, str(tmp_path / "volume.nii.gz"))
    assert os.listdir(tmp_path) == []
    imageio.writeLabelmap(mask, node, str(tmp_path / "mask.nrrd"))
    written = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
    from MedSAMSlicerLib.imaging.fileintegrity import sitkIjkToRas

    np.testing.assert_allclose(sitkIjkToRas(written), matrix, atol=1e-6)


def test_skewed_input_with_nifti_output_is_refused_before_segmenting(runCli, tmp_path):
    image, truth = writeEllipsoid(tmp_path / "clean.nrrd")
    skewed = sitk.Image(image)
    shear = np.radians(20.0)  # the j axis leans 20 degrees towards i: unit columns, not perpendicular
    skewed.SetDirection((1.0, np.sin(shear), 0.0, 0.0, np.cos(shear), 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(skewed, str(tmp_path / "skewed.nrrd"))
    (tmp_path / "out").mkdir()
    done = runCli("segment", tmp_path / "skewed.nrrd", "--out", tmp_path / "out" / "mask.nii.gz", "--box", boxText(truth))
    assert done.returncode == 2 and "NIfTI cannot store" in done.stderr and ".seg.nrrd" in done.stderr, done.stderr
    assert os.listdir(tmp_path / "out") == []
    done = runCli("segment", tmp_path / "skewed.nrrd", "--out", tmp_path / "out" / "mask.nrrd", "--box", boxText(truth))
    assert done.returncode == 0, done.stderr
    written = sitk.ReadImage(str(tmp_path / "out" / "mask.nrrd"))
    np.testing.assert_allclose(written.GetDirection(), skewed.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("name", ["volume.nii.gz", "volume.nrrd", "volume.mha"])
def test_float_volume_with_nan_and_inf_round_trips(scene, tmp_path, name):
    """The read-back check compares NaN with NaN: a volume with non-finite voxels writes and reads back whole."""
    import slicer

    from MedSAMSlicerLib.mrml import imageio

    voxels = np.random.default_rng(1).normal(0, 1, (4, 6, 7)).astype(np.float32)
    voxels[1, 2, 3], voxels[2, 3, 4], voxels[3, 0, 0] = np.nan, np.inf, -np.inf
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(node, voxels)
    imageio.writeVolume(node, str(tmp_path / name))
    warnings = []
    again = imageio.readImage(str(tmp_path / name), scene, warn=warnings.append)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(again), voxels)
    assert "1 NaN voxels and 2 infinite voxels" in warnings[0]


def test_api_write_to_full_disk_raises_and_leaves_nothing(scene, fullDisk):
    import slicer

    from MedSAMSlicerLib.core.errors import InputError
    from MedSAMSlicerLib.mrml import imageio

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(node, np.random.default_rng(0).integers(0, 999, (8, 40, 50)).astype(np.int16))
    before = sorted(os.listdir(fullDisk))
    for name in ("volume.nii", "volume.nii.gz", "volume.nrrd", "volume.mha"):
        with pytest.raises(InputError, match=f"writing {name} failed.*full.*nothing was written"):
            imageio.writeVolume(node, str(fullDisk / name))
        assert sorted(os.listdir(fullDisk)) == before, name


def test_atomic_output_replaces_only_after_verification(tmp_path):
    """A verifier that rejects the file keeps the old output; leftovers named after the temporary file go too."""
    from MedSAMSlicerLib.core.atomicfiles import atomicOutput
    from MedSAMSlicerLib.core.errors import InputError

    target = tmp_path / "keep.nrrd"
    target.write_bytes(b"old")

    def reject(temporaryPath):
        raise InputError("read back wrong")

    with pytest.raises(InputError, match="read back wrong"):
        with atomicOutput(str(target), verify=reject) as temporaryPath:
            with open(temporaryPath, "wb") as stream:
                stream.write(b"new")
            stem = os.path.basename(temporaryPath).split(".")[0]
            os.mkdir(tmp_path / ("TempWrite" + stem))  # a writer's scratch folder
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["keep.nrrd"]
    with atomicOutput(str(target)) as temporaryPath:
        with open(temporaryPath, "wb") as stream:
            stream.write(b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["keep.nrrd"]
    with pytest.raises(InputError, match="empty"):
        with atomicOutput(str(target)) as temporaryPath:
            open(temporaryPath, "wb").close()
    assert target.read_bytes() == b"new"

