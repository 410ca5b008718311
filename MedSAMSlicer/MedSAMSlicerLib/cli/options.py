"""Names the command line accepts, shared by the parser (main.py) and the commands that read them."""

AXES = {"i": 0, "j": 1, "k": 2}
"""--axis: the IJK axis a slice is taken across (i = sagittal-like, j = coronal-like, k = axial-like)."""
