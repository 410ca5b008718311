"""Interaction layer: the Qt-free controller a front end (the Slicer widget, a test driving real slice views) drives."""
