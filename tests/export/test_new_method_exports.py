"""A newly registered method exports with no export code (issue 25): the toy method
(tests/toy_method.py), which writes only `traced_scorer` (no `score`), is scored in process by
that function, matches a NumPy reference, and its export (`--mode=export`'s exporter, the folder's own loader.py) gives the
same scores and maps."""
import importlib.util
import os

import numpy as np

from softpatch_jax.export import exporter
from softpatch_jax.methods import registry
from softpatch_jax.pipeline import evaluate

from test_export import BATCH, SIZE, _config, _fit, _images
from toy_method import DistanceToMean


def _loader(folder):
    spec = importlib.util.spec_from_file_location("toy_loader", os.path.join(folder, "loader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_method_with_only_a_traced_scorer_scores_and_exports(mvtec_root, cache_dir, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setitem(registry._METHODS, DistanceToMean.name, DistanceToMean)
    assert DistanceToMean.exportable() and DistanceToMean.name in exporter.exportable()
    c = _config(mvtec_root, cache_dir, DistanceToMean.name)
    workdir = str(tmp_path / "w")
    samples, ref = _fit(c, workdir, {})

    # In process: the base class ran the traced scorer; a NumPy reference agrees.
    method = DistanceToMean.from_config(c)
    extractor = evaluate.extractor_for(c, method)
    feats = extractor.extract(samples, SIZE, SIZE, 8).patches.astype(np.float64)
    split = evaluate.prepare_split(c, "widget")
    train = extractor.extract(split.train, SIZE, SIZE, 8).patches.astype(np.float64)
    patch = ((feats - train.mean(axis=0)) ** 2).sum(-1)
    np.testing.assert_allclose(ref.grids.reshape(len(samples), -1), patch, rtol=1e-4)
    np.testing.assert_allclose(ref.image, patch.max(axis=1), rtol=1e-4)

    # Exported with no export code of its own: the loader gives the in-process scores and maps.
    folder = exporter.export_workdir(workdir, batch=BATCH)["widget"]
    out = _loader(folder).Scorer(folder).score(_images(samples))
    np.testing.assert_allclose(out["scores"], ref.image, rtol=1e-5)
    maps = ref.maps()
    np.testing.assert_allclose(out["maps"], maps, rtol=1e-5, atol=1e-6 * np.abs(maps).max())
