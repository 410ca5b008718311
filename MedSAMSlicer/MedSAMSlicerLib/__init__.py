"""MedSAMSlicer's Qt-free library: engines, embedding cache, imaging, MRML bridge, logic, CLI.

Importing this package is cheap: torch and segment_anything are imported by
the engine modules at first use, and `slicer` only by the MRML-facing modules.
"""

__version__ = "0.1.0"
