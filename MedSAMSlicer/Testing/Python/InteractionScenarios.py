"""What a user does in the Red, Yellow and Green views, replayed with synthetic mouse and key events.

The same scenarios run headless in pytest (Testing/test_realviews.py, real
slice views from slicer-core) and inside Slicer (MedSAMSlicerTest.py, the
application's own views and the module's panel). A subclass of
unittest.TestCase mixes InteractionScenarios in and sets ``self.env``, an
environment with:

- scene, controller (InteractionController), parameters, views ({"Red": SliceViewDriver, ...});
- setParameters(**values): change the module's settings as its panel does;
- press(buttonName): click a button of the panel; pressEscape(): the module's Esc shortcut;
- pump(ms): let the application idle for ``ms`` milliseconds (the main thread keeps the GIL while idle, as in
  Slicer); settle(): idle until no job runs and no preview update waits;
- jobsStarted: how many background jobs on the scene's nodes started (loading the model is not one); errors: texts shown as error dialogs;
- addVolume(voxelsKji, spacingIjk, name): a volume node shown in every view.

Everything goes through the views' interactors: a box is click, move, click;
points are clicks; a drag is press, moves, release.
"""

import numpy as np

from MedSAMSlicerLib.imaging.phantoms import driftingTubePhantom
from MedSAMSlicerLib.mrml.markupprompts import isBoxComplete
from MedSAMSlicerLib.mrml.volumegeometry import ijkToRas

#: A tube over 40 slices (k = 4..43) of a 48-slice volume with 2 mm slices: the issue's "done when".
TUBE_SHAPE_KJI = (48, 64, 64)
TUBE_SPACING_IJK = (1.0, 1.0, 2.0)
TUBE_RADIUS_MM = 6.0
TUBE_SLICES = (4, 43)
BOX_MARGIN_MM = 4.0
VIEW_AXES = {"Red": 2, "Yellow": 0, "Green": 1}  # IJK axis each view cuts across (identity directions)


def dice(a, b):
    """Dice coefficient of two boolean arrays (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def sliceOf(maskKji, axis, index):
    """The 2D slice ``index`` across IJK ``axis`` of a KJI array."""
    return np.take(maskKji, index, axis=2 - axis)


class InteractionScenarios:
    """Scenario tests; the TestCase subclass provides ``self.env``."""

    # ---- helpers ------------------------------------------------------------------

    def loadTube(self):
        """The tube phantom as a volume shown in every view; sets it as the module's input."""
        voxels, truth, spacing = driftingTubePhantom(shapeKji=TUBE_SHAPE_KJI, spacingIjk=TUBE_SPACING_IJK,
                                                     radiusMm=TUBE_RADIUS_MM, marginSlices=TUBE_SLICES[0], seed=5)
        self.volume = self.env.addVolume(voxels, spacing, "MedSAM tube")
        self.truthKji = truth
        self.env.setParameters(inputVolume=self.volume, model="growcut")
        return self.volume, truth

    def toRas(self, pointIjk):
        """World RAS of a continuous IJK point of the test volume."""
        return ijkToRas(self.volume, np.asarray([pointIjk], dtype=float))[0]

    def boxAroundTruth(self, axis, index, marginMm=BOX_MARGIN_MM):
        """RAS corners of a box around the truth on slice ``index`` across ``axis`` (``marginMm`` beyond it)."""
        section = sliceOf(self.truthKji, axis, index)
        rows, cols = np.nonzero(section)
        inPlane = [a for a in (0, 1, 2) if a != axis]  # IJK axes of the slice's columns and rows
        spacing = TUBE_SPACING_IJK
        low, high = [0.0] * 3, [0.0] * 3
        low[axis] = high[axis] = index
        for values, ijkAxis in ((cols, inPlane[0]), (rows, inPlane[1])):
            margin = marginMm / spacing[ijkAxis]
            low[ijkAxis], high[ijkAxis] = values.min() - margin, values.max() + margin
        return self.toRas(low), self.toRas(high)

    def centreOfTruth(self, axis, index):
        """RAS of the centre of the truth on slice ``index`` across ``axis``."""
        section = sliceOf(self.truthKji, axis, index)
        rows, cols = np.nonzero(section)
        point = [0.0] * 3
        inPlane = [a for a in (0, 1, 2) if a != axis]
        point[axis], point[inPlane[0]], point[inPlane[1]] = index, cols.mean(), rows.mean()
        return self.toRas(point)

    def drawBox(self, viewName, cornerA, cornerB, checks=None):
        """Box (1), then click, move, click in the view, as a user draws a box. ``checks()`` runs after the first
        click and the hover."""
        view = self.env.views[viewName]
        view.showSliceThrough(cornerA)
        self.env.press("boxButton")
        view.click(cornerA)
        view.moveTo((np.asarray(cornerA) + np.asarray(cornerB)) / 2.0)
        view.moveTo(cornerB)
        if checks is not None:
            checks()
        view.click(cornerB)

    def previewOnAxis(self, axis):
        """(indices of the slices across ``axis`` the preview touches, preview KJI mask)."""
        preview = self.env.controller.logic.previewMaskKji
        self.assertIsNotNone(preview, f"no preview; status: {self.env.lastStatus}")
        touched = np.flatnonzero(preview.any(axis=tuple(a for a in (0, 1, 2) if a != 2 - axis)))
        return touched.tolist(), preview

    def buttonChecked(self, name):
        return self.env.controller.buttonStates()[name].checked

    # ---- scenarios ----------------------------------------------------------------

    def test_box_is_complete_after_its_second_click_and_place_mode_ends(self):
        self.loadTube()
        k = 24
        cornerA, cornerB = self.boxAroundTruth(2, k)
        roiNodes = []

        def afterFirstClickAndHover():
            self.env.settle()
            roi = self.env.parameters.roiNode
            roiNodes.append(roi)
            self.assertFalse(isBoxComplete(roi), "one corner is not a box")
            self.assertEqual(self.env.jobsStarted, 0, "a half-drawn box or a hover started a job")
            self.assertEqual(self.env.errors, [])
            self.assertNotIn("thinner", self.env.lastStatus)
            self.assertIsNone(self.env.controller.logic.previewMaskKji)
            self.assertTrue(self.buttonChecked("boxButton"), "place mode ended after the first corner")

        self.drawBox("Red", cornerA, cornerB, checks=afterFirstClickAndHover)
        self.assertTrue(roiNodes, "the first-click checks did not run")
        self.assertTrue(isBoxComplete(self.env.parameters.roiNode))
        self.assertFalse(self.buttonChecked("boxButton"), "place mode did not end after the box")
        self.env.settle()
        self.assertEqual(self.env.jobsStarted, 1, "one box, one preview job")
        touched, preview = self.previewOnAxis(2)
        self.assertEqual(touched, [k], "a box drawn in the Red view previews its own slice")
        self.assertGreater(dice(preview[k], self.truthKji[k]), 0.85)
        self.assertEqual(self.env.errors, [])

    def test_drawn_box_is_2d_and_propagates_through_the_whole_tube(self):
        self.loadTube()
        k = 24
        self.drawBox("Red", *self.boxAroundTruth(2, k))
        self.env.settle()
        roi = self.env.parameters.roiNode
        self.assertAlmostEqual(roi.GetSize()[2], TUBE_SPACING_IJK[2], places=3,
                               msg="a box drawn in one view is one slice deep")
        self.env.press("propagateButton")
        self.env.settle()
        touched, preview = self.previewOnAxis(2)
        first, last = TUBE_SLICES
        self.assertLessEqual(touched[0], first + 1, f"propagation stopped early: slices {touched[0]}..{touched[-1]}")
        self.assertGreaterEqual(touched[-1], last - 1, f"propagation stopped early: slices {touched[0]}..{touched[-1]}")
        self.assertGreater(dice(preview, self.truthKji), 0.85)

    def test_box_made_3d_in_a_perpendicular_view_limits_propagation(self):
        self.loadTube()
        k = 24
        self.drawBox("Red", *self.boxAroundTruth(2, k))
        self.env.settle()
        roi = self.env.parameters.roiNode
        centre = np.array(roi.GetCenter())
        top = centre + (0.0, 0.0, roi.GetSize()[2] / 2.0)
        yellow = self.env.views["Yellow"]
        yellow.showSliceThrough(centre)
        # The face handle sits on the box's top edge; grab it a few pixels above, where the handle is nearer
        # than the edge, and drag it 5 slices up.
        yellow.drag(top, top + (0.0, 0.0, 5 * TUBE_SPACING_IJK[2]), offsetPx=(0, 3))
        self.env.settle()
        self.assertGreater(roi.GetSize()[2], 4 * TUBE_SPACING_IJK[2], "the handle drag did not resize the box")
        self.env.press("propagateButton")
        self.env.settle()
        touched, _ = self.previewOnAxis(2)
        self.assertGreaterEqual(touched[0], k - 1, f"propagated below the box: {touched}")
        self.assertLessEqual(touched[-1], k + 6, f"propagated above the box: {touched}")
        self.assertGreaterEqual(touched[-1], k + 4, f"propagation did not reach the box's top: {touched}")

    def test_points_stay_in_place_mode_for_several_clicks_until_right_click(self):
        self.loadTube()
        i = int(round(np.nonzero(self.truthKji[24])[1].mean()))
        yellow = self.env.views["Yellow"]
        centre = self.centreOfTruth(0, i)
        yellow.showSliceThrough(centre)
        self.env.press("positiveButton")
        for offsetMm in (-6.0, 0.0, 6.0):
            yellow.click(centre + (0.0, 0.0, offsetMm))
            self.assertTrue(self.buttonChecked("positiveButton"), "place mode ended after a point")
        self.assertEqual(self.env.parameters.positiveNode.GetNumberOfDefinedControlPoints(), 3)
        self.env.settle()
        touched, preview = self.previewOnAxis(0)
        self.assertEqual(touched, [i], "points placed in the Yellow view segment its sagittal slice")
        yellow.rightClick(centre + (0.0, 15.0, 0.0))
        self.assertFalse(self.buttonChecked("positiveButton"), "a right-click leaves place mode: the button follows")
        self.assertEqual(self.env.parameters.positiveNode.GetNumberOfDefinedControlPoints(), 3)

    def test_dragging_a_point_updates_the_preview_once_it_pauses(self):
        self.loadTube()
        k = 24
        red = self.env.views["Red"]
        self.drawBox("Red", *self.boxAroundTruth(2, k))
        self.env.settle()
        before = self.env.controller.logic.previewMaskKji[k].copy()
        centre = self.centreOfTruth(2, k)
        outside = centre + (TUBE_RADIUS_MM + 2.0, 0.0, 0.0)
        self.env.press("negativeButton")
        red.click(outside)
        red.rightClick(outside + (0.0, 20.0, 0.0))
        self.env.settle()
        jobs = self.env.jobsStarted
        debounce = self.env.controller.previewDebouncer.delayMs

        def midDrag(step):  # pauses shorter than the debounce start nothing
            self.env.pump(debounce / 3.0)
            self.assertEqual(self.env.jobsStarted, jobs, f"a job started mid-drag (step {step})")

        red.drag(outside, centre, steps=6, between=midDrag)
        self.env.settle()
        self.assertEqual(self.env.jobsStarted, jobs + 1, "one job once the drag paused")
        after = self.env.controller.logic.previewMaskKji[k]
        self.assertLess(after.sum(), before.sum(), "a negative point dragged into the object took nothing away")

    def test_dragging_a_box_handle_updates_the_preview(self):
        self.loadTube()
        k = 24
        cornerA, cornerB = self.boxAroundTruth(2, k)
        self.drawBox("Red", cornerA, cornerB)
        self.env.settle()
        before = self.env.controller.logic.previewMaskKji[k].copy()
        jobs = self.env.jobsStarted
        roi = self.env.parameters.roiNode
        centre, size = np.array(roi.GetCenter()), np.array(roi.GetSize())
        rightFace = centre + (size[0] / 2.0, 0.0, 0.0)
        red = self.env.views["Red"]
        # Pull the box's +R face in to the object's centre: half the object is left out of the box.
        outward = 1 if red.displayXy(rightFace + (1.0, 0.0, 0.0))[0] > red.displayXy(rightFace)[0] else -1
        red.drag(rightFace, rightFace - (size[0] / 2.0, 0.0, 0.0), offsetPx=(3 * outward, 0))
        self.env.settle()
        self.assertLess(roi.GetSize()[0], size[0] * 0.75, "the handle drag did not resize the box")
        self.assertEqual(self.env.jobsStarted, jobs + 1)
        after = self.env.controller.logic.previewMaskKji[k]
        self.assertLess(after.sum(), 0.75 * before.sum(), "the preview did not follow the smaller box")

    def test_buttons_follow_the_interaction_mode(self):
        self.loadTube()
        red = self.env.views["Red"]
        centre = self.centreOfTruth(2, 24)
        red.showSliceThrough(centre)
        interaction = self.env.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        self.env.press("boxButton")
        self.assertTrue(self.buttonChecked("boxButton"))
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # what the mouse-mode toolbar does
        self.assertFalse(self.buttonChecked("boxButton"), "the toolbar left place mode: the button follows")
        self.env.press("positiveButton")
        self.assertTrue(self.buttonChecked("positiveButton") and not self.buttonChecked("boxButton"))
        red.moveTo(centre)
        red.key("Escape", chr(27))  # Slicer's views ignore Esc in place mode (5.10): the module's shortcut handles it
        self.env.pressEscape()
        self.assertFalse(self.buttonChecked("positiveButton"), "Esc left place mode: the button follows")
        self.env.press("negativeButton")
        red.rightClick(centre)
        self.assertFalse(self.buttonChecked("negativeButton"), "a right-click left place mode: the button follows")
        self.env.press("negativeButton")
        self.env.press("negativeButton")  # pressing the checked button leaves place mode at once
        self.assertFalse(self.buttonChecked("negativeButton"))
        self.assertEqual(interaction.GetCurrentInteractionMode(), interaction.ViewTransform)

    def test_a_box_in_each_view_segments_that_views_plane(self):
        self.loadTube()
        for viewName, axis in VIEW_AXES.items():
            index = 24 if axis == 2 else self._planeThroughTube(axis)
            self.drawBox(viewName, *self.boxAroundTruth(axis, index))
            self.env.settle()
            touched, preview = self.previewOnAxis(axis)
            self.assertEqual(touched, [index], f"{viewName}: the preview is not on the drawn slice")
            section = dice(sliceOf(preview, axis, index), sliceOf(self.truthKji, axis, index))
            self.assertGreater(section, 0.7, f"{viewName}: Dice {section:.2f} on the drawn slice")

    def _planeThroughTube(self, axis):
        """The index across ``axis`` (I or J) of the plane through the tube's middle slice's centre."""
        rows, cols = np.nonzero(self.truthKji[24])
        return int(round(cols.mean() if axis == 0 else rows.mean()))

    def test_apply_writes_the_preview_into_a_new_segment_and_undo_takes_it_back(self):
        from MedSAMSlicerLib.mrml.segmentwriter import segmentMaskKji

        self.loadTube()
        k = 24
        self.assertFalse(self.env.controller.buttonStates()["applyButton"].enabled, "nothing to apply yet")
        self.drawBox("Red", *self.boxAroundTruth(2, k))
        self.env.settle()
        preview = self.env.controller.logic.previewMaskKji.copy()
        self.assertTrue(self.env.controller.buttonStates()["applyButton"].enabled)
        self.env.press("applyButton")  # no segmentation chosen: Apply creates one, and a segment
        parameters = self.env.parameters
        self.assertIsNotNone(parameters.segmentation, f"nothing applied; status: {self.env.lastStatus}")
        written = segmentMaskKji(parameters.segmentation, parameters.segmentId, self.volume).astype(bool)
        self.assertTrue(np.array_equal(written, preview), "the segment differs from the preview applied")
        self.env.press("undoButton")
        self.assertFalse(segmentMaskKji(parameters.segmentation, parameters.segmentId, self.volume).any())

    def test_start_here_and_end_here_take_the_slices_shown_in_the_view_used(self):
        self.loadTube()
        k = 24
        cornerA, cornerB = self.boxAroundTruth(2, k)
        self.drawBox("Red", cornerA, cornerB)
        self.env.settle()
        red = self.env.views["Red"]
        step = np.array((0.0, 0.0, TUBE_SPACING_IJK[2]))
        red.showSliceThrough(np.asarray(cornerA) - 3 * step)  # scroll the Red view 3 slices down
        self.env.press("startHereButton")
        red.showSliceThrough(np.asarray(cornerA) + 4 * step)
        self.env.press("endHereButton")
        parameters = self.env.parameters
        self.assertEqual((parameters.rangeStart, parameters.rangeEnd, parameters.rangeFromBox), (k - 3, k + 4, False))
        self.env.press("propagateButton")
        self.env.settle()
        touched, _ = self.previewOnAxis(2)
        self.assertEqual((touched[0], touched[-1]), (k - 3, k + 4), f"propagated outside Start/End: {touched}")

    def test_accept_two_slices_and_fill_between_them_then_apply_and_undo(self):
        from MedSAMSlicerLib.mrml.segmentwriter import segmentMaskKji

        self.loadTube()
        a, b = 16, 28
        controller = self.env.controller
        self.drawBox("Red", *self.boxAroundTruth(2, a))  # the Red view now shows slice a
        self.env.settle()
        keyA = controller.logic.previewMaskKji[a].copy()
        self.env.press("acceptSliceButton")
        self.assertIn(f"Slice {a} (K) accepted", self.env.lastStatus)
        self.assertFalse(controller.buttonStates()["fillButton"].enabled, "one accepted slice: nothing to fill")
        self.drawBox("Red", *self.boxAroundTruth(2, b))  # scrolls the Red view to slice b, a new box there
        self.env.settle()
        self.assertEqual(self.previewOnAxis(2)[0], [b], "the new box's preview replaced slice a's")
        self.env.press("acceptSliceButton")
        self.assertIn(f"accepted slices: {a}, {b}", self.env.lastStatus)
        self.assertTrue(controller.buttonStates()["fillButton"].enabled)
        jobs = self.env.jobsStarted
        self.env.press("fillButton")
        self.env.settle()
        self.assertEqual(self.env.errors, [])
        self.assertEqual(self.env.jobsStarted, jobs + 1, "Fill runs as one background job")
        touched, preview = self.previewOnAxis(2)
        self.assertEqual((touched[0], touched[-1]), (a, b), f"the fill covers other slices: {touched}")
        self.assertTrue(np.array_equal(preview[a], keyA), "slice a lost the mask it was accepted with")
        for k in range(a + 1, b):
            self.assertGreater(dice(preview[k], self.truthKji[k]), 0.85, f"slice {k}")
        self.assertIsNone(self.env.parameters.segmentation, "the fill wrote a segment before Apply")
        preview = preview.copy()
        self.env.press("applyButton")
        parameters = self.env.parameters
        written = segmentMaskKji(parameters.segmentation, parameters.segmentId, self.volume).astype(bool)
        self.assertTrue(np.array_equal(written, preview), "the segment differs from the filled preview")
        self.assertFalse(controller.buttonStates()["fillButton"].enabled, "Apply forgets the accepted slices")
        self.env.press("undoButton")
        self.assertFalse(segmentMaskKji(parameters.segmentation, parameters.segmentId, self.volume).any())
