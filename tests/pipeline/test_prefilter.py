"""Image-level denoising (`model.prefilter`, issue 29): a first method's left-out scores rank the
training images, the most suspicious share is dropped, the configured method is fitted on the
rest; against a NumPy leave-own-image-out reference, against the same fit on the kept images
alone, through sweep entries (`padim+patchcore`) and with one-line refusals."""
import csv
import os

import jax
import numpy as np
import pytest

from softpatch_jax import methods
from softpatch_jax.pipeline import evaluate, prefilter, sweep, validation

from conftest import load_config, tiny_sweep_config


def _config(root, cache_dir, fields=None):
    c = tiny_sweep_config(root, cache_dir)
    c.noise.ratio, c.noise.mode = 0.25, "overlap"
    c.update_from_flattened_dict({"model.method": "patchcore", "model.prefilter": "patchcore",
                                  "model.prefilter_share": 0.25, "bank.coreset_ratio": 1.0,
                                  **(fields or {})})
    with c.unlocked():
        del c["sweep"]
    return c


def _left_out_numpy(x):
    """(B, P, D) -> (B,): each image's maximum over its patches of the squared distance to the
    nearest patch of another image (PatchCore's left-out score with every patch in the bank)."""
    b, p, d = x.shape
    flat = x.reshape(-1, d).astype(np.float64)
    owner = np.repeat(np.arange(b), p)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    d2[owner[:, None] == owner[None]] = np.inf
    return d2.min(1).reshape(b, p).max(1)


def test_the_ranking_matches_numpy_and_the_fit_is_the_fit_on_the_kept_images(
        mvtec_root, tmp_path, cache_dir):
    c = _config(mvtec_root, cache_dir)
    split = evaluate.prepare_split(c, "widget")
    first, dropped = prefilter.drop_suspicious(c, split, jax.random.PRNGKey(0), str(tmp_path),
                                               "widget", evaluate.extractor_for)
    fc = prefilter.first_config(c)
    feats = evaluate.extractor_for(fc, methods.from_config(fc)).extract(
        split.train, 32, 32, 8, "")
    ref = _left_out_numpy(feats.patches)
    np.testing.assert_allclose(dropped.scores, ref, rtol=1e-4)
    b = len(split.train)
    n = int(round(0.25 * b))
    assert dropped.dropped.sum() == n and set(np.argsort(-ref)[:n]) == set(
        np.flatnonzero(dropped.dropped))
    # The kept split: the injected images that stay are still last.
    kept = dropped.split
    assert len(kept.train) == b - n
    inj = [s.name for s in split.injected]
    assert [s.name for s in kept.train[len(kept.train) - len(kept.injected):]] == [
        s.name for s in kept.injected] and all(s.name in inj for s in kept.injected)
    # The run: its scores are those of the same method fitted on the kept images alone.
    result = evaluate.train_and_evaluate(c, str(tmp_path / "run"))["widget"]
    assert result["prefilter"] == "patchcore" and result["prefilter_dropped"] == n
    assert result["n_noise"] == len(split.injected)  # the protocol's noise, not what stayed
    assert "prefilter" in result["stage_seconds"]
    plain = c.copy_and_resolve_references()
    with plain.unlocked():
        plain.model.prefilter = ""
    os.makedirs(tmp_path / "alone")
    alone = evaluate.evaluate_category(plain, "widget", evaluate.extractor_for(
        plain, methods.from_config(plain)), str(tmp_path / "alone"), str(tmp_path / "t"),
        save_checkpoint=False, split=kept)
    assert result["image_auroc"] == alone["image_auroc"]
    assert result["pixel_auroc"] == alone["pixel_auroc"]
    with open(tmp_path / "run" / "categories" / "widget" / "prefilter_widget.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, b + 1))
    assert sum(int(r["dropped"]) for r in rows) == n
    assert sum(int(r["injected"]) for r in rows) == len(split.injected)


def test_sweep_entries_name_the_first_method(mvtec_root, tmp_path, cache_dir):
    c = _config(mvtec_root, cache_dir, {"model.prefilter": "", "bank.coreset_ratio": 0.1})
    s = load_config("sweeps/noise.py")
    with c.unlocked():
        c.sweep = s.sweep
    c.sweep.ratios, c.sweep.modes, c.sweep.overlays = "0.25", "overlap", False
    c.sweep.discriminators = "patchcore,padim+patchcore,padim+lof@prefilter_share=auto"
    rows = {r["method"]: r for r in sweep.run_sweep(c, str(tmp_path / "sweep"))}
    assert set(rows) == {"patchcore", "padim+patchcore", "padim+lof@prefilter_share=auto"}
    assert rows["padim+patchcore"]["prefilter"] == "padim"
    assert rows["padim+patchcore"]["prefilter_dropped"] == round(0.25 * 15)
    assert rows["padim+patchcore"]["prefilter_source"] == "kfold"  # PaDiM: refits on folds
    assert "prefilter" not in rows["patchcore"]
    assert 0.0 <= rows["padim+lof@prefilter_share=auto"]["prefilter_audit_auroc"] <= 1.0


@pytest.mark.parametrize("fields,message", [
    ({"model.prefilter": "knn"}, "model.prefilter='knn' is not a method"),
    ({"model.prefilter_share": 1.5}, "model.prefilter_share=1.5 must be 'auto' or a share"),
    ({"model.prefilter": "padim", "padim.dim": -1}, "padim.dim=-1 must be >= 0")])
def test_bad_prefilter_fields_are_refused_before_any_compute(fields, message, mvtec_root,
                                                             cache_dir):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validation.check_config(_config(mvtec_root, cache_dir, fields))
