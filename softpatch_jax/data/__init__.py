"""Dataset readers by name, and category selection (`one`, `a,b`, or `all`).

data.name: mvtec | visa (raw or prepared layout, detected) | btad | elpv | folder (own images).
data.source: folder (read files) | tfds (read the tensorflow-datasets builders; mvtec/visa/btad).
"""
import concurrent.futures
import os
from typing import List, Tuple

from tqdm.auto import tqdm

from softpatch_jax.data import elpv, mvtec, preprocess
from softpatch_jax.data.samples import Category, Sample
from softpatch_jax.settings import comma_list

DATASETS = ("mvtec", "visa", "btad", "elpv", "folder")


def _visa_is_raw(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "split_csv"))


def _known(name: str, root: str) -> List[str]:
    if name == "elpv":
        return elpv.list_categories(root)
    if name in ("mvtec", "btad"):
        return mvtec.list_categories(root, "mvtec")
    if name == "visa":
        return mvtec.list_categories(root, "visa_raw" if _visa_is_raw(root) else "mvtec")
    if name == "folder":
        return mvtec.list_categories(root, "folder")
    raise ValueError(f"unknown dataset data.name={name!r}; choose one of {', '.join(DATASETS)}")


def _tfds_known(name: str) -> List[str]:
    from softpatch_jax.data import tfds_builders  # imports TensorFlow: only on demand

    return list({"mvtec": tfds_builders.MVTEC_CATEGORIES, "visa": tfds_builders.VISA_CATEGORIES,
                 "btad": tfds_builders.BTAD_CATEGORIES}.get(name, ()))


def category_names(name: str, root: str, spec: str, source: str = "folder") -> List[str]:
    """Resolves data.category into a list of category names, checking each exists."""
    if source not in ("folder", "tfds"):
        raise ValueError(f"data.source={source!r} is unknown; choose folder or tfds")
    known = _tfds_known(name) if source == "tfds" else _known(name, root)
    if spec == "all":
        if not known:
            raise ValueError(f"no categories of dataset {name} found under data.root={root!r}")
        return known
    wanted = comma_list(spec)
    unknown = [c for c in wanted if c not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown category {', '.join(unknown) or repr(spec)} for dataset "
                         f"{name}; available: {', '.join(known) or 'none'} (or 'all')")
    return wanted


def load_category(data_config, category: str, seed: int) -> Category:
    name, root = data_config.name, data_config.root
    if data_config.get("source", "folder") == "tfds":
        from softpatch_jax.data import tfds_builders

        return tfds_builders.load_category(name, category, data_config.get("tfds_dir", ""))
    if name == "elpv":
        return elpv.load_category(root, category, seed, data_config.train_fraction)
    if name == "btad":
        return mvtec.load_category(root, category, good="ok")
    if name == "visa" and _visa_is_raw(root):
        return mvtec.load_visa_raw(root, category)
    if name == "folder":
        return mvtec.load_own_folder(root, category, seed, data_config.train_fraction)
    if name in ("mvtec", "visa"):
        return mvtec.load_category(root, category)
    raise ValueError(f"unknown dataset data.name={name!r}; choose one of {', '.join(DATASETS)}")


def leave_out_unreadable(category: Category, workers: int = 4
                         ) -> Tuple[Category, List[Tuple[str, str]]]:
    """The category without the samples whose image or mask cannot be used (damaged, empty, not
    an image, a mask of another size: `preprocess.sample_problem`), and [(sample name, why)] of
    those left out, in name order. One policy for fit and predict: a file that exists but cannot
    be read is left out and listed; one that does not exist still raises (a wrong path)."""
    samples = list({s.name: s for s in category.train + category.test}.values())
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # decoders release the GIL
        problems = list(tqdm(pool.map(preprocess.sample_problem, samples), total=len(samples),
                             desc=f"{category.name}: checking images", leave=False,
                             disable=len(samples) < 200))
    bad = {s.name: why for s, why in zip(samples, problems) if why}
    if not bad:
        return category, []
    kept = Category(category.name, [s for s in category.train if s.name not in bad],
                    [s for s in category.test if s.name not in bad])
    return kept, sorted(bad.items())


__all__ = ["Category", "Sample", "category_names", "load_category", "leave_out_unreadable",
           "DATASETS"]
