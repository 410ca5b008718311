"""Headless stand-ins for the Slicer application around the interaction controller: real slice views from
slicer-core, the controller with an injected scheduler, and a main loop that idles as Slicer's does.

Slicer's main thread holds the GIL while it waits in the Qt event loop (PythonQt
runs without thread support), so a worker thread gets the GIL only when the
main thread releases it. SlicerLikeMainLoop reproduces that: between ticks it
sleeps with the GIL held (IdleMainThread.idleHoldingGil; time.sleep would
release it), then runs the scheduler's due calls, like QTimers firing.
"""

import sys
import time

from conftest import REPO

sys.path.insert(0, str(REPO / "MedSAMSlicer" / "Testing" / "Python"))

from IdleMainThread import idleHoldingGil  # noqa: E402
from SliceViewDriver import SliceViewDriver  # noqa: E402

from MedSAMSlicerLib.interaction.controller import BUTTON_ACTIONS, InteractionController  # noqa: E402
from MedSAMSlicerLib.interaction.parameters import ModuleParameters  # noqa: E402
from MedSAMSlicerLib.interaction.scheduler import ManualScheduler  # noqa: E402
from MedSAMSlicerLib.workflow.logic import MedSAMLogic  # noqa: E402

class SlicerLikeMainLoop:
    """Drive a ManualScheduler in real time from a main thread that holds the GIL while idle.

    tickMs: how long the loop idles between looks at the timers (Qt wakes up
    when a timer is due; a short tick gives the same timing).
    """

    def __init__(self, scheduler: ManualScheduler, tickMs: float = 2.0):
        self.scheduler = scheduler
        self.tickMs = tickMs
        self._last = time.perf_counter()

    def run(self, ms: float, until=None) -> bool:
        """Idle and fire due calls for ``ms`` milliseconds, or until ``until()`` is true; returns until()'s last value."""
        self._last = time.perf_counter()
        deadline = self._last + ms / 1000.0
        while True:
            now = time.perf_counter()
            self.scheduler.advance((now - self._last) * 1000.0)
            self._last = now
            if until is not None and until():
                return True
            if now >= deadline:
                return False
            idleHoldingGil(min(self.tickMs, (deadline - now) * 1000.0))


class HeadlessEnvironment:
    """What InteractionScenarios needs (see its docstring), on a headless scene with real slice views."""

    def __init__(self, scene, views):
        self.scene = scene
        self.scheduler = ManualScheduler()
        self.mainLoop = SlicerLikeMainLoop(self.scheduler)
        self.parameters = ModuleParameters()
        self.logic = MedSAMLogic(scene)
        self.controller = InteractionController(self.logic, self.parameters, self.scheduler)
        self.headlessViews = views
        self.views = {name: SliceViewDriver(name, view.interactor, view.sliceNode, view.render)
                      for name, view in views.items()}
        self.jobsStarted = 0
        self.errors = []
        self.statuses = []
        self.controller.status.connect(self.statuses.append)
        self.controller.error.connect(self.errors.append)
        self.controller.runner.busyChanged.connect(self._countJob)

    @property
    def lastStatus(self) -> str:
        return self.statuses[-1] if self.statuses else ""

    def setParameters(self, **values):
        """Change settings as the panel does (the module's parameter node tells the controller)."""
        for name, value in values.items():
            setattr(self.parameters, name, value)
        self.controller.parametersChanged()

    def press(self, buttonName):
        """Click one of the panel's buttons: the action the module connects to it (a disabled button does nothing)."""
        state = self.controller.buttonStates().get(buttonName)
        if state is None or state.enabled:
            BUTTON_ACTIONS[buttonName](self.controller)
        self.pump(0)

    def pressEscape(self):
        """The module's Esc shortcut."""
        self.controller.leavePlaceMode()

    def pump(self, ms):
        """Let the main loop idle (holding the GIL) for ``ms`` milliseconds, firing due timers."""
        self.mainLoop.run(ms)

    def settle(self, timeoutS=120.0):
        """Idle until no job runs and no preview update waits; fails after ``timeoutS``."""
        self.pump(0)
        if not self.mainLoop.run(timeoutS * 1000.0, until=lambda: self.controller.idle and self.scheduler.pending == 0):
            raise AssertionError(f"the controller did not settle in {timeoutS} s; status: {self.lastStatus}")

    def addVolume(self, voxelsKji, spacingIjk, name):
        """A volume node from a KJI array, shown in every view."""
        import slicer

        volume = slicer.util.addVolumeFromArray(voxelsKji, name=name)
        volume.SetSpacing(*spacingIjk)
        volume.CreateDefaultDisplayNodes()
        for view in self.headlessViews.values():
            view.showVolume(volume)
        return volume

    def close(self):
        self.controller.cleanup()

    def _countJob(self):
        task = self.controller.runner.task
        if task is not None and task.sceneBound:  # a job on the prompts; loading the engine is not counted
            self.jobsStarted += 1
