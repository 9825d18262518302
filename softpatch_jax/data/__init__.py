"""Dataset readers by name, and category selection (`one`, `a,b`, or `all`)."""
from typing import List

from softpatch_jax.data import elpv, mvtec
from softpatch_jax.data.samples import Category, Sample

DATASETS = ("elpv", "mvtec")


def category_names(name: str, root: str, spec: str) -> List[str]:
    """Resolves data.category into a list of category names, checking each exists."""
    if name == "elpv":
        known = elpv.list_categories(root)
    elif name == "mvtec":
        known = mvtec.list_categories(root)
    else:
        raise ValueError(f"unknown dataset data.name={name!r}; choose one of {', '.join(DATASETS)}")
    if spec == "all":
        if not known:
            raise ValueError(f"no categories found under data.root={root!r}")
        return known
    wanted = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown category {', '.join(unknown) or repr(spec)} for dataset "
                         f"{name}; available: {', '.join(known) or 'none'} (or 'all')")
    return wanted


def load_category(data_config, category: str, seed: int) -> Category:
    if data_config.name == "elpv":
        return elpv.load_category(data_config.root, category, seed, data_config.train_fraction)
    return mvtec.load_category(data_config.root, category)


__all__ = ["Category", "Sample", "category_names", "load_category", "DATASETS"]
