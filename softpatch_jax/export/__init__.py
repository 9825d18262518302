"""Deployment: a fitted category as a jax.export scorer (exporter.py) and its standalone loader (loader.py)."""
