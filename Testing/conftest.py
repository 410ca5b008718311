"""Shared pytest fixtures: a real MRML scene (slicer-core), paths to ../shared/data."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))

SHARED_DATA = Path(os.environ.get("MEDSAM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def headlessScene():
    """One real vtkMRMLScene with Slicer's module logics, shared by the session."""
    from MedSAMSlicerLib.mrml.headlessscene import createHeadlessScene

    return createHeadlessScene()


@pytest.fixture
def scene(headlessScene):
    """The shared real scene, emptied after each test."""
    yield headlessScene
    headlessScene.Clear(False)


@pytest.fixture
def sharedData():
    """Path to ../shared/data; skips the test, saying why, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real labelled data not found at {SHARED_DATA} (only present on the project's machines)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def oneTorchThread():
    """One torch intra-op thread for a test module: on a shared 2-core machine two threads spin
    against other processes and run 5-10x slower (docs/benchmarks.md)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
