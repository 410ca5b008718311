"""Render the extension's screenshot (Resources/Screenshot01.png) from a real Slicer slice view.

A real CT (TotalSegmentator's example_ct_sm, from ../shared/data) is shown in
a Red view built from slicer-core (mrml/headlessviews.py); the box and a
positive point are placed with synthetic clicks, as a user places them, and
the module's controller computes the preview (GrowCut, no download). The view
is rendered offscreen and saved as PNG.

Usage: .venv/bin/python scripts/screenshot.py [Resources/Screenshot01.png] [--data ../shared/data]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedSAMSlicer"))
sys.path.insert(0, str(REPO / "MedSAMSlicer" / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "Testing"))

ORGAN = 1  # TotalSegmentator's label of the spleen (class_map_total_and_total_mr.json)


def main(argv=None):
    """Render the screenshot; returns its path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default=str(REPO / "Resources" / "Screenshot01.png"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--size", type=int, default=480, help="view width and height in pixels")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    import vtk

    from MedSAMSlicerLib.mrml.headlessscene import createHeadlessScene
    from MedSAMSlicerLib.mrml.headlessviews import createHeadlessSliceViews
    from MedSAMSlicerLib.mrml.imageio import readImage
    from MedSAMSlicerLib.mrml.volumegeometry import ijkToRas
    from realviews import HeadlessEnvironment

    data = Path(args.data) / "totalsegmentator"
    scene = createHeadlessScene()
    volume = readImage(str(data / "example_ct_sm.nii.gz"), scene)
    labelsKji = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "example_seg.nii.gz")))
    views = createHeadlessSliceViews(scene, names=("Red",), size=(args.size, args.size))
    environment = HeadlessEnvironment(scene, views)
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(400, 40)  # CT soft tissue, as a radiologist reads the abdomen
    views["Red"].showVolume(volume)
    environment.setParameters(inputVolume=volume, model="growcut")

    organ = labelsKji == ORGAN
    k = int(np.argmax(organ.sum(axis=(1, 2))))
    rows, cols = np.nonzero(organ[k])
    corners = ijkToRas(volume, np.array([[cols.min() - 2, rows.min() - 2, k], [cols.max() + 2, rows.max() + 2, k]], float))
    # A positive point inside the organ, off the box's centre handle so that both show.
    target = np.array([cols.min() + 0.3 * (cols.max() - cols.min()), np.median(rows)])
    nearest = int(np.argmin((cols - target[0]) ** 2 + (rows - target[1]) ** 2))
    inside = ijkToRas(volume, np.array([[cols[nearest], rows[nearest], k]], float))[0]
    red = environment.views["Red"]
    red.showSliceThrough(inside)
    environment.press("boxButton")
    red.click(corners[0])
    red.moveTo(corners[1])
    red.click(corners[1])
    environment.press("positiveButton")
    red.click(inside)
    red.rightClick(inside + (40.0, 0.0, 0.0))
    environment.settle()
    red.moveTo(corners[1] + (30.0, 30.0, 0.0))  # the mouse off the prompts: nothing highlighted
    views["Red"].render()

    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(views["Red"].renderWindow)
    capture.ReadFrontBufferOff()
    capture.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetFileName(args.output)
    writer.SetInputConnection(capture.GetOutputPort())
    writer.Write()
    environment.close()
    for view in views.values():
        view.close()
    print(f"{args.output}: slice {k}, status: {environment.lastStatus}")
    return Path(args.output)


if __name__ == "__main__":
    main()
