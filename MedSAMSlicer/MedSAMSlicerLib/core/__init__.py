"""Bottom layer: the error family, progress signals and cancel tokens, background jobs. Imports nothing of ours."""
