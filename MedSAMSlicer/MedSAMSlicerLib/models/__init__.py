"""Model layer: the registry (Resources/Models.json), checksummed downloads, Python dependencies, model readiness, and the engine factory that turns a model name or file into an engine."""
