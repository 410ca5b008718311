"""The interaction scenarios in real Slicer slice views (slicer-core), driven by synthetic mouse and key events.

The scenarios (MedSAMSlicer/Testing/Python/InteractionScenarios.py) are the
ones the self-test runs inside Slicer; here the views are built from
slicer-core (mrml/headlessviews.py) and the main loop idles holding the GIL,
as Slicer's does.
"""

import unittest

import pytest

from realviews import HeadlessEnvironment
from InteractionScenarios import InteractionScenarios


@pytest.fixture
def sliceViews(scene):
    """Red (axial), Yellow (sagittal) and Green (coronal) views of the test scene, rendered offscreen."""
    from MedSAMSlicerLib.mrml.headlessviews import createHeadlessSliceViews

    views = createHeadlessSliceViews(scene)
    yield views
    for view in views.values():
        view.close()


@pytest.fixture
def realViewEnvironment(request, scene, sliceViews):
    environment = HeadlessEnvironment(scene, sliceViews)
    request.instance.env = environment
    yield environment
    environment.close()


@pytest.mark.usefixtures("realViewEnvironment")
class TestInteractionInRealViews(InteractionScenarios, unittest.TestCase):
    """Each InteractionScenarios test, headless."""
