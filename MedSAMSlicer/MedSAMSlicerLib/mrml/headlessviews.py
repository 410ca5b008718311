"""Real Slicer slice views without the Slicer application (PyPI slicer-core), for tests and screenshots.

Each view is assembled from the parts qMRMLSliceWidget uses (Slicer 5.10,
Libs/MRML/Widgets/qMRMLSliceView.cxx, qMRMLSliceWidget.cxx): a vtkMRMLSliceLogic
with its slice node, a displayable-manager group from
vtkMRMLSliceViewDisplayableManagerFactory with the markups and segmentations
managers, a vtkMRMLSliceViewInteractorStyle observing the view's interactor,
and a render window, here offscreen. Mouse and key events sent to the
interactor reach Slicer's own markups widgets, so an ROI or a point is placed
and dragged exactly as a user does it. KitwareMedical/trame-slicer builds its
web views from the same parts.

Rendering needs OpenGL: VTK's wheels render offscreen through EGL (Mesa's
libEGL) when no X display is set. Inside the Slicer application use its own
views (slicer.app.layoutManager()).
"""

import importlib.util
import os
import sys

#: The Red, Yellow and Green views of Slicer's conventional layout.
VIEW_ORIENTATIONS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
#: Displayable managers the views need: markups (prompts) and segmentations (the preview).
DISPLAYABLE_MANAGERS = ("vtkMRMLMarkupsDisplayableManager", "vtkMRMLSegmentationsDisplayableManager2D")


def _prepareOffscreenRendering() -> None:
    # Without an X display VTK first tries X (and warns) before EGL; ask for EGL directly.
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    # Mesa's software OpenGL loads its libLLVM; loading triton's libtriton after it crashes the process
    # (Mesa 22.3, triton 3.8; torchvision.ops imports triton through torch._dynamo), loading it before is fine.
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


class HeadlessSliceView:
    """One slice view (e.g. "Red", axial) of ``scene``, rendered offscreen at ``size`` pixels.

    Attributes: sliceLogic, sliceNode, renderWindow, interactor, displayableManagerGroup.
    """

    def __init__(self, scene, appLogic, name: str, orientation: str, size=(400, 400)):
        import slicer
        import vtk

        self.name = name
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetSize(*size)
        self.renderWindow.AddRenderer(self.renderer)
        # A generic interactor: no windowing system needed. Slicer's views give it vtkInteractorStyleUser and let
        # vtkMRMLSliceViewInteractorStyle observe it (qMRMLSliceViewPrivate::init).
        self.interactor = vtk.vtkGenericRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.renderWindow)
        self.interactor.SetInteractorStyle(vtk.vtkInteractorStyleUser())
        self.sliceLogic = slicer.vtkMRMLSliceLogic()
        self.sliceLogic.SetMRMLApplicationLogic(appLogic)
        self.sliceLogic.SetMRMLScene(scene)
        appLogic.GetSliceLogics().AddItem(self.sliceLogic)
        # Slice nodes are singletons (tag: the layout name) that outlive a scene clear: reuse the scene's, as
        # Slicer's layout logic does; AddSliceNode would return a new node the scene did not take.
        existing = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if existing is not None:
            self.sliceLogic.SetSliceNode(existing)
            self.sliceNode = existing
        else:
            self.sliceNode = self.sliceLogic.AddSliceNode(name)
        self.sliceNode.SetOrientation(orientation)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        self.displayableManagerGroup = factory.InstantiateDisplayableManagers(self.renderer)
        self.displayableManagerGroup.SetMRMLDisplayableNode(self.sliceNode)
        self.interactorStyle = slicer.vtkMRMLSliceViewInteractorStyle()
        self.interactorStyle.SetDisplayableManagers(self.displayableManagerGroup)
        self.interactorStyle.SetSliceLogic(self.sliceLogic)
        self.interactorStyle.SetInteractor(self.interactor)
        self.interactor.Initialize()
        # The slice image itself: in Slicer CTK's vtkLightBoxRendererManager draws the slice logic's RGBA output
        # (not wrapped in slicer-core); here a 2D image actor behind everything draws it, as trame-slicer does.
        self.imageMapper = vtk.vtkImageMapper()
        self.imageMapper.SetColorWindow(255)
        self.imageMapper.SetColorLevel(127.5)
        self.imageActor = vtk.vtkActor2D()
        self.imageActor.SetMapper(self.imageMapper)
        self.imageActor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.imageActor)
        self._imageConnection = None
        self.sliceLogic.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onSliceLogicModified)
        self.sliceLogic.ResizeSliceNode(*size)
        self.renderWindow.Render()  # an OpenGL context before any picking (as qMRMLSliceView does)
        self._appLogic = appLogic

    def showVolume(self, volumeNode) -> None:
        """Show ``volumeNode`` as the background, fitted to the view, on a voxel plane."""
        self.sliceLogic.GetSliceCompositeNode().SetBackgroundVolumeID(volumeNode.GetID() if volumeNode else None)
        self.sliceLogic.FitSliceToAll()
        self.sliceLogic.SnapSliceOffsetToIJK()
        self.render()

    def render(self) -> None:
        """Render the view (display managers update their actors)."""
        self.renderWindow.Render()

    def _onSliceLogicModified(self, caller, event) -> None:
        connection = self.sliceLogic.GetImageDataConnection()
        if connection is not self._imageConnection:
            self._imageConnection = connection
            self.imageMapper.SetInputConnection(connection)
            self.imageActor.SetVisibility(connection is not None)

    def close(self) -> None:
        """Detach the view from the scene and release its OpenGL context; the mouse leaves it."""
        crosshair = self.sliceLogic.GetMRMLScene().GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.SetCursorPositionInvalid()  # what a LeaveEvent does (vtkMRMLSliceViewInteractorStyle)
        self.interactorStyle.SetInteractor(None)
        self.displayableManagerGroup.SetMRMLDisplayableNode(None)
        self._appLogic.GetSliceLogics().RemoveItem(self.sliceLogic)
        self.sliceLogic.SetMRMLScene(None)
        self.renderWindow.Finalize()


def createHeadlessSliceViews(scene, names=("Red", "Yellow", "Green"), size=(400, 400)) -> dict:
    """{name: HeadlessSliceView} for a scene from headlessscene.createHeadlessScene: Red axial, Yellow sagittal,
    Green coronal. Adds Slicer's default crosshair node (the views set the cursor position on it, as in Slicer)."""
    import slicer
    import vtk

    from .headlessscene import moduleLogic

    _prepareOffscreenRendering()
    appLogic = moduleLogic(scene, "Markups").GetMRMLApplicationLogic()
    if appLogic.GetSliceLogics() is None:
        appLogic.SetSliceLogics(vtk.vtkCollection())
    if scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is None:  # as qSlicerCoreApplication::setMRMLScene adds it
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        scene.AddNode(crosshair)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(appLogic)
    for manager in DISPLAYABLE_MANAGERS:
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    return {name: HeadlessSliceView(scene, appLogic, name, VIEW_ORIENTATIONS[name], size) for name in names}
