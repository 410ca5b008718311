"""Synthetic mouse and key events in a real Slicer slice view, as a user makes them.

Works on any slice view: inside Slicer (layoutManager().sliceWidget(name).sliceView().interactor())
and on the headless views of MedSAMSlicerLib.mrml.headlessviews. Events go
through the view's vtkRenderWindowInteractor (SetEventInformation +
InvokeEvent), so vtkMRMLSliceViewInteractorStyle hands them to Slicer's
markups widgets exactly as for a real mouse: a click places a point on button
release, a drag moves a point or a box handle.
"""

import vtk


class SliceViewDriver:
    """Move, click, drag and type in one slice view.

    interactor: the view's vtkRenderWindowInteractor; sliceNode: its
    vtkMRMLSliceNode; render: a callable rendering the view (display managers
    update what can be picked).
    """

    def __init__(self, name, interactor, sliceNode, render):
        self.name = name
        self.interactor = interactor
        self.sliceNode = sliceNode
        self.render = render

    def displayXy(self, pointRas):
        """Display pixel (x, y) of world point ``pointRas`` projected onto the view's plane (inverse XYToRAS)."""
        rasToXy = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.sliceNode.GetXYToRAS(), rasToXy)
        x, y, _, _ = rasToXy.MultiplyPoint((float(pointRas[0]), float(pointRas[1]), float(pointRas[2]), 1.0))
        return x, y

    def showSliceThrough(self, pointRas):
        """Move the view's plane to the slice containing ``pointRas`` (what the slice slider or arrow keys do)."""
        self.sliceNode.JumpSliceByOffsetting(*[float(v) for v in pointRas])
        self.render()

    def event(self, name, xy, keyCode="\0", keySym=None):
        """Send vtkCommand.<name>Event at display pixel ``xy``; renders afterwards, as a view does."""
        self.interactor.SetEventInformation(int(round(xy[0])), int(round(xy[1])), 0, 0, keyCode, 0, keySym)
        self.interactor.InvokeEvent(getattr(vtk.vtkCommand, name + "Event"))
        self.render()

    def moveTo(self, pointRas, offsetPx=(0, 0)):
        """Hover: move the mouse onto ``pointRas`` (shifted by ``offsetPx`` pixels)."""
        x, y = self.displayXy(pointRas)
        self.event("MouseMove", (x + offsetPx[0], y + offsetPx[1]))
        return x + offsetPx[0], y + offsetPx[1]

    def click(self, pointRas, offsetPx=(0, 0)):
        """Move onto ``pointRas``, press and release the left button there."""
        xy = self.moveTo(pointRas, offsetPx)
        self.event("LeftButtonPress", xy)
        self.event("LeftButtonRelease", xy)

    def rightClick(self, pointRas):
        """Move onto ``pointRas`` and click the right button (in place mode: leave it)."""
        xy = self.moveTo(pointRas)
        self.event("RightButtonPress", xy)
        self.event("RightButtonRelease", xy)

    def drag(self, fromRas, toRas, steps=8, offsetPx=(0, 0), between=None):
        """Press at ``fromRas`` (+ ``offsetPx``), move in ``steps`` steps to ``toRas``, release there.

        between(step): called after each intermediate move (a test checks what happens mid-drag).
        """
        x0, y0 = self.moveTo(fromRas, offsetPx)
        x1, y1 = self.displayXy(toRas)
        x1, y1 = x1 + offsetPx[0], y1 + offsetPx[1]
        self.event("LeftButtonPress", (x0, y0))
        for step in range(1, steps + 1):
            t = step / steps
            self.event("MouseMove", (x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
            if between is not None and step < steps:
                between(step)
        self.event("LeftButtonRelease", (x1, y1))

    def key(self, keySym, keyCode="\0"):
        """Press and release a key with the mouse over the view (e.g. "Escape" with keyCode chr(27))."""
        xy = self.interactor.GetEventPosition()
        self.event("KeyPress", xy, keyCode, keySym)
        self.event("KeyRelease", xy, keyCode, keySym)
