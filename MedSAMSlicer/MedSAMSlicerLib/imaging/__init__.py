"""Imaging layer (numpy, no `slicer`): slice sources, intensity policies, post-processing, phantoms with known truth."""
