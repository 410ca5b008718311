"""The small shared pieces every layer relies on: prompts, progress, cancellation."""

import numpy as np
import pytest

from MedSAMSlicerLib.engines.base import Prompts
from MedSAMSlicerLib.core.errors import CancelledError, PromptError
from MedSAMSlicerLib.core.progress import CancelToken, Signal, reportProgress


def test_prompts_normalise_box_corners_and_point_arrays():
    prompts = Prompts(boxXyxy=(50, 40, 10, 5), pointsXy=[[1, 2]], pointLabels=[1])
    assert prompts.boxXyxy == (10.0, 5.0, 50.0, 40.0)
    assert prompts.pointsXy.shape == (1, 2) and prompts.pointsXy.dtype == np.float32
    assert not prompts.isEmpty and not prompts.isAmbiguous
    assert Prompts(pointsXy=[[3, 4]], pointLabels=[1]).isAmbiguous
    assert Prompts().isEmpty


def test_prompts_reject_points_without_labels():
    with pytest.raises(PromptError, match="one label per point"):
        Prompts(pointsXy=[[1, 2], [3, 4]], pointLabels=[1])


def test_signal_and_cancel_token():
    received = []
    signal = Signal()
    signal.connect(lambda *args: received.append(args))
    signal.emit(0.5, "half")
    reportProgress(lambda f, t: received.append((f, t)), 1.7, "done")
    assert received == [(0.5, "half"), (1.0, "done")]
    token = CancelToken()
    token.raiseIfCancelled()
    token.cancel()
    with pytest.raises(CancelledError):
        token.raiseIfCancelled()
