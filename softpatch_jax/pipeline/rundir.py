"""A fit run's workdir, where nothing is half-written and nothing is stale.

    DIR/categories/<category>/  result.json (metrics + provenance), scores.csv, noise.txt,
                                noise.json, checkpoint/ (the fitted model)
    DIR/metrics.json, DIR/results.md   rebuilt from every categories/*/result.json
    DIR/<method>/<category>/    resumable training state of methods that train (FYD)

A category is computed in a staging folder (DIR/.staging-<pid>/) and moved into place whole when
it succeeds; a run that fails leaves the workdir as it was (and removes it if the run made it),
and a run that is killed leaves only its staging folder, which the next run removes. A fit holds
DIR/.lock (io/lock.py) for its whole run: a second fit on the same DIR refuses with one line.
Every category on disk comes from one config: a run whose config differs from the results already
in DIR refuses to start, or with `overwrite` replaces them.
"""
import contextlib
import json
import logging
import os
import shutil
from typing import Dict, List

from softpatch_jax.files import remove_path, staged_dir
from softpatch_jax.io.lock import workdir_lock
from softpatch_jax.pipeline import provenance

CATEGORIES = "categories"
# Files of the layout before categories/ (one set per category at the top of DIR).
LEGACY = ("checkpoints", "metrics.json", "results.md")
LEGACY_PREFIXES = ("noise_", "scores_", "overlay_")


class RunDir:
    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.root = os.path.join(self.workdir, CATEGORIES)
        self._staging = ""

    def category_dir(self, category: str) -> str:
        return os.path.join(self.root, category)

    def categories(self) -> List[str]:
        """Categories with a complete result (stray files and folders are ignored)."""
        if not os.path.isdir(self.root):
            return []
        return sorted(c for c in os.listdir(self.root) if not c.startswith(".")
                      and os.path.isfile(os.path.join(self.root, c, "result.json")))

    def records(self) -> Dict[str, dict]:
        out = {}
        for c in self.categories():
            with open(os.path.join(self.root, c, "result.json")) as f:
                out[c] = json.load(f)
        return out

    def results(self) -> Dict[str, dict]:
        """{category: metrics} of every category on disk (provenance left out)."""
        keep = lambda k: k not in ("config", "config_fingerprint", "data_fingerprint", "version")
        return {c: {k: v for k, v in r.items() if keep(k)} for c, r in self.records().items()}

    def legacy(self) -> List[str]:
        """Top-level files of the layout before categories/, when there is no categories/."""
        if os.path.isdir(self.root) or not os.path.isdir(self.workdir):
            return []
        names = os.listdir(self.workdir)
        if "checkpoints" not in names:
            return []
        return sorted(n for n in names if n in LEGACY or n.startswith(LEGACY_PREFIXES))

    def conflicts(self, record: dict, categories: List[str], overwrite: bool) -> List[str]:
        """Checks that DIR holds only results of the config in `record` (a `provenance.record`)
        besides those of `categories` (this run's, replaced as they finish) -> the paths that
        `overwrite` will remove. Raises ValueError without `overwrite`."""
        stale, why = [], []
        for c, stored in self.records().items():
            diff = provenance.differences(stored, {k: v for k, v in record.items()
                                                   if k != "data_fingerprint"})
            if diff:
                why = why or diff
                if c not in categories:
                    stale.append(self.category_dir(c))
        legacy = self.legacy()
        if legacy:
            stale += [os.path.join(self.workdir, n) for n in legacy]
            why = why or ["results written by an earlier version (checkpoints/ layout)"]
        if why and not overwrite:
            raise ValueError(f"{self.workdir!r} holds results of another run ({'; '.join(why)}); "
                             "choose another --workdir, or pass --overwrite to replace them")
        return stale

    @contextlib.contextmanager
    def transaction(self):
        """Takes the workdir's lock (one fit at a time: a second refuses with one line) and
        creates the staging folder; removes both at the end, and on failure also the workdir
        if this run made it and nothing else is in it."""
        made = not os.path.exists(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        ok = False
        try:
            with workdir_lock(self.workdir, "fit"):
                remove_dead_staging(self.workdir)
                self._staging = os.path.join(self.workdir, f".staging-{os.getpid()}")
                os.makedirs(self._staging, exist_ok=True)
                try:
                    yield self
                    ok = True
                finally:
                    shutil.rmtree(self._staging, ignore_errors=True)
                    self._staging = ""
        finally:
            if not ok and made:
                _remove_empty_tree(self.workdir)

    def stage(self, category: str):
        """A staging folder that becomes categories/<category>/ when the block succeeds."""
        return staged_dir(self.category_dir(category), self._staging)

    def remove(self, paths: List[str]) -> None:
        for p in paths:
            logging.warning("removing %s (results of another run; --overwrite)", p)
            remove_path(p)


def remove_dead_staging(workdir: str) -> None:
    """Cleans up after runs that were killed (named by the pid of a process that is no longer
    running): removes their staging folders, and puts back a category folder caught between
    the two renames of `files.replace_dir` (`categories/.old-<category>-<pid>`) when no new one
    took its place, so a kill loses no finished category."""
    for name in os.listdir(workdir):
        pid = name[len(".staging-"):]
        if name.startswith(".staging-") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    root = os.path.join(workdir, CATEGORIES)
    for name in os.listdir(root) if os.path.isdir(root) else []:
        category, _, pid = name[len(".old-"):].rpartition("-")
        if not (name.startswith(".old-") and category and pid.isdigit()) or _alive(int(pid)):
            continue
        if os.path.lexists(os.path.join(root, category)):
            remove_path(os.path.join(root, name))
        else:
            logging.warning("restoring %s, left half-replaced by a killed run", category)
            os.rename(os.path.join(root, name), os.path.join(root, category))


def _remove_empty_tree(path: str) -> None:
    """Removes `path` if it holds only empty folders."""
    for root, dirs, files in os.walk(path, topdown=False):
        if files:
            return
        for d in dirs:
            if os.listdir(os.path.join(root, d)):
                return
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
