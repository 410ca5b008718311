"""A real MRML scene without the Slicer application (PyPI slicer-core), for the CLI and tests.

Inside the Slicer application use slicer.mrmlScene instead: never install
slicer-core there (Slicer has its own `slicer`).
"""

import os
import tempfile


def createHeadlessScene():
    """Create a vtkMRMLScene with Slicer's application logic and module logics registered.

    Registers the Colors, Volumes, Segmentations, Markups, SubjectHierarchy and
    Transforms logics the way the Slicer application does, and makes the scene
    slicer.mrmlScene so slicer.util works on it. Returns the scene.
    Raises ImportError when slicer-core is not installed.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    # The colour logic looks for its files under a home directory; a temporary
    # folder keeps it quiet and changes nothing on the user's disk.
    homeDirectory = os.path.join(tempfile.gettempdir(), "MedSAMSlicerHeadless")
    os.makedirs(os.path.join(homeDirectory, "share", "ColorFiles"), exist_ok=True)
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetHomeDirectory(homeDirectory)
    appLogic.SetTemporaryPath(homeDirectory)
    appLogic.SetShareDirectory("share")
    appLogic.SetMRMLScene(scene)
    logics = {
        "Colors": slicer.vtkSlicerColorLogic(),
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "Markups": slicer.vtkSlicerMarkupsLogic(),
        "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
        "Transforms": slicer.vtkSlicerTransformLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        appLogic.SetModuleLogic(name, logic)
    # Keep Python references alive as long as the scene is used.
    scene._medsamLogics = (appLogic, logics)
    slicer.mrmlScene = scene
    return scene


def moduleLogic(scene, name):
    """The module logic registered under ``name`` by createHeadlessScene (e.g. "Volumes")."""
    return scene._medsamLogics[1][name]


def silenceNativeMessages() -> None:
    """Keep VTK's and ITK's own warning windows off stderr (the CLI reports errors itself).

    Called by the commands once they need VTK (imported lazily, so that --help
    and argument errors stay instant).
    """
    import SimpleITK
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    SimpleITK.ProcessObject.GlobalWarningDisplayOff()
