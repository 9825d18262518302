"""The TFDS builders give arrays identical to the folder readers (needs tensorflow-datasets)."""
import numpy as np
import pytest
from ml_collections import ConfigDict

from softpatch_jax import data
from softpatch_jax.data import preprocess, synthetic

tfds = pytest.importorskip("tensorflow_datasets",
                           reason="tensorflow-datasets not installed (the optional tfds extra)")


@pytest.mark.parametrize("dataset,layout,category", [("mvtec", "mvtec", "transistor"),
                                                     ("btad", "btad", "02"),
                                                     ("visa", "visa_raw", "candle")])
def test_tfds_reads_identical_arrays(tmp_path, dataset, layout, category):
    from softpatch_jax.data import tfds_builders

    manual = tmp_path / "manual"
    synthetic.make_category(str(manual), layout, category, n_train=4, n_good=2, n_defect=3,
                            size=40, seed=2)
    builder = tfds.builder(f"{tfds_builders.BUILDERS[dataset]}/{category}",
                           data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    folder = data.load_category(ConfigDict({"name": dataset, "root": str(manual),
                                            "source": "folder"}), category, 0)
    stored = data.load_category(ConfigDict({"name": dataset, "root": "", "source": "tfds",
                                            "tfds_dir": str(tmp_path / "tfds")}), category, 0)
    for a_split, b_split in ((folder.train, stored.train), (folder.test, stored.test)):
        assert [s.name for s in a_split] == [s.name for s in b_split]
        assert [(s.label, s.defect) for s in a_split] == [(s.label, s.defect) for s in b_split]
        a = np.stack([x for _, x in preprocess.batches(a_split, 64, 32, 32)][0])
        b = np.stack([x for _, x in preprocess.batches(b_split, 64, 32, 32)][0])
        np.testing.assert_array_equal(a, b)
        for sa, sb in zip(a_split, b_split):
            assert sa.has_mask == sb.has_mask
            np.testing.assert_array_equal(preprocess.load_sample_mask(sa, 32, 32),
                                          preprocess.load_sample_mask(sb, 32, 32))
    assert any(s.has_mask for s in stored.test)


def test_unbuilt_dataset_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build mvtec_ad --imports"):
        data.load_category(ConfigDict({"name": "mvtec", "root": "", "source": "tfds",
                                       "tfds_dir": str(tmp_path)}), "bottle", 0)
