"""Dataset readers by name (a registry: `register(Reader(...))` adds one), and category
selection (`one`, `a,b`, or `all`).

data.name: mvtec | visa (raw or prepared layout, detected) | btad | elpv | folder (own images).
data.source: folder (read files) | tfds (read the tensorflow-datasets builders; mvtec/visa/btad).
"""
import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Dict, List, Tuple

from tqdm.auto import tqdm

from softpatch_jax.data import elpv, mvtec, preprocess
from softpatch_jax.data.samples import Category, Sample
from softpatch_jax.settings import comma_list

@dataclasses.dataclass(frozen=True)
class Reader:
    """How one dataset (`data.name`) is read: the only place that knows its layout."""
    name: str
    categories: Callable[[str], List[str]]       # data.root -> the category names found there
    load: Callable[[Any, str, int], Category]    # (data config, category, seed) -> its samples
    tfds: bool = False                           # also served by a TFDS builder (data.source)


_READERS: Dict[str, Reader] = {}


def register(reader: Reader) -> Reader:
    """Adds a dataset reader; `data.name=<reader.name>` then selects it everywhere."""
    _READERS[reader.name] = reader
    return reader


def names() -> Tuple[str, ...]:
    return tuple(_READERS)


def get(name: str) -> Reader:
    if name not in _READERS:
        raise ValueError(f"unknown dataset data.name={name!r}; choose one of {', '.join(_READERS)}")
    return _READERS[name]


def _visa_is_raw(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "split_csv"))


register(Reader("elpv", elpv.list_categories,
                lambda d, c, seed: elpv.load_category(d.root, c, seed, d.train_fraction)))
register(Reader("mvtec", lambda root: mvtec.list_categories(root, "mvtec"),
                lambda d, c, seed: mvtec.load_category(d.root, c), tfds=True))
register(Reader("visa",
                lambda root: mvtec.list_categories(root, "visa_raw" if _visa_is_raw(root)
                                                   else "mvtec"),
                lambda d, c, seed: (mvtec.load_visa_raw(d.root, c) if _visa_is_raw(d.root)
                                    else mvtec.load_category(d.root, c)), tfds=True))
register(Reader("btad", lambda root: mvtec.list_categories(root, "mvtec"),
                lambda d, c, seed: mvtec.load_category(d.root, c, good="ok"), tfds=True))
register(Reader("folder", lambda root: mvtec.list_categories(root, "folder"),
                lambda d, c, seed: mvtec.load_own_folder(d.root, c, seed, d.train_fraction)))


def _check_source(source: str) -> None:
    if source not in ("folder", "tfds"):
        raise ValueError(f"data.source={source!r} is unknown; choose folder or tfds")


def category_names(name: str, root: str, spec: str, source: str = "folder") -> List[str]:
    """Resolves data.category into a list of category names, checking each exists."""
    _check_source(source)
    reader = get(name)
    if source == "tfds":
        if not reader.tfds:
            served = ", ".join(n for n in names() if get(n).tfds)
            raise ValueError(f"data.source=tfds serves {served}, not data.name={name!r}; use "
                             "data.source=folder")
        from softpatch_jax.data import tfds_builders  # imports TensorFlow: only on demand

        known = list(tfds_builders.CATEGORIES.get(name, ()))
    else:
        known = reader.categories(root)
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
    reader = get(data_config.name)
    if data_config.get("source", "folder") == "tfds":
        from softpatch_jax.data import tfds_builders

        return tfds_builders.load_category(reader.name, category, data_config.get("tfds_dir", ""))
    return reader.load(data_config, category, seed)


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


__all__ = ["Category", "Reader", "Sample", "category_names", "get", "leave_out_unreadable",
           "load_category", "names", "register"]
