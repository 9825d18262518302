"""The Python API in one script: fit on images in memory, look at the training set's audit,
score new images, save, load and export, without a workdir.

    python examples/api.py [FOLDER]

FOLDER holds train/ (unlabeled training images) and test/ images; without it a small generated
category is written to a temporary folder first. tests/test_api.py runs this script.
"""
import glob
import os
import sys
import tempfile

import numpy as np
from PIL import Image

import softpatch_jax
from softpatch_jax.data import synthetic
from softpatch_jax.export import loader


def images_in(folder: str):
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))
    return paths, np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def main(folder: str, out: str, size: int = 64) -> None:
    train_paths, train = images_in(os.path.join(folder, "train"))
    test_paths, _ = images_in(os.path.join(folder, "test"))

    # SoftPatch-LOF on EfficientNet-Lite0; any config field by its name (softpatch_jax/defaults.py).
    model = softpatch_jax.SoftPatch(discriminator="lof", lof_k=3, image_size=size, resize=size)
    fitted = model.fit(train, names=[os.path.relpath(p, folder) for p in train_paths])
    print("most suspicious training images:", fitted.audit.ranking[:3])

    result = model.predict(fitted, test_paths)  # paths or arrays alike
    for name, score, verdict in zip(result.names, result.scores, result.verdicts):
        print(f"{os.path.relpath(name, folder)}: {score:.4f} "
              f"{'anomalous' if verdict else 'normal'}")
    print("maps:", result.maps.shape, "masks:", result.masks.shape)

    fitted.save(os.path.join(out, "model"))
    again = softpatch_jax.load(os.path.join(out, "model")).predict(test_paths)
    assert np.array_equal(again.scores, result.scores)

    scorer = loader.Scorer(fitted.export(os.path.join(out, "export")))
    exported = scorer.score_files(test_paths)
    print("exported scorer, largest difference:",
          float(np.abs(exported["scores"] - result.scores).max()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            main(sys.argv[1], tmp)
        else:
            data = synthetic.make_mvtec_category(tmp, "widget", n_train=10, n_good=3,
                                                 n_defect=3, size=64)
            main(data, tmp)
