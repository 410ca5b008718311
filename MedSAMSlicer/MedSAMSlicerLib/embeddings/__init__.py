"""Embedding layer: the bounded slice-embedding cache and the encode/prefetch service on top of it."""
