"""Runs: `evaluate` (fit and score every category of a config), `predict` (score new images with
fitted models), `sweep` (a grid of runs sharing extracted features), `cli` (the error boundary)."""
