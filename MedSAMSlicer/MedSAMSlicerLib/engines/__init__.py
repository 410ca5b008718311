"""Engine layer (numpy, torch at first use): the Engine interface (base), SAM/MedSAM and the weight-free GrowCut engine, checkpoints, decoders, devices. Knows nothing of Slicer."""
