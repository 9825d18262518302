"""The ground floor of file handling, below every layer: files that are complete or absent
(atomic writes, folders replaced whole, valid JSON), the fingerprint and hash of what a result
depends on, folder walks that symbolic link loops cannot trap, and nested dicts from flat keys."""
import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import threading
from typing import Iterator, List, Tuple


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path` (same extension, so that writers that append one,
    like np.save, keep it); moves it onto `path` when the block succeeds, removes it otherwise.
    A reader never sees a half-written file and a killed writer leaves the old one."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}-{threading.get_ident()}{ext}"  # unique per writer
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB pieces (weights files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_safe(obj):
    """`obj` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalars
        return json_safe(obj.item())
    return obj


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON with sorted keys, atomically; NaN becomes null."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=True, allow_nan=False)


def fingerprint(fields: dict, length: int = 20) -> str:
    """Hex digest of JSON-serialisable `fields` (key order does not matter)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:length]


def replace_dir(src: str, dst: str) -> None:
    """Moves folder `src` onto `dst`, replacing what is there. Each step is a rename, so `dst` is
    at every moment either the old folder, absent, or the new one; never a mix of both."""
    if os.path.lexists(dst):
        old = os.path.join(os.path.dirname(dst), f".old-{os.path.basename(dst)}-{os.getpid()}")
        remove_path(old)
        os.rename(dst, old)
        os.rename(src, dst)
        remove_path(old)
    else:
        os.rename(src, dst)


def remove_path(path: str) -> None:
    """Removes a file, link or folder tree; nothing if absent."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def staged_dir(final: str, staging_root: str = ""):
    """Yields an empty folder (in `staging_root`, default beside `final`); when the block
    succeeds it replaces `final` whole, otherwise it is removed and `final` is untouched."""
    name = f".staging-{os.path.basename(final)}-{os.getpid()}"
    tmp = os.path.join(staging_root or os.path.dirname(final), name)
    remove_path(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
        os.makedirs(os.path.dirname(final), exist_ok=True)
        replace_dir(tmp, final)
    finally:
        remove_path(tmp)


def walk_once(base: str) -> Iterator[Tuple[str, List[str]]]:
    """(folder, sorted file names) for `base` and every folder under it, following symbolic
    links but entering each real folder once (by device and inode), so that a link to an
    ancestor (`up -> ..`) or to itself ends the walk instead of looping. Hidden folders are
    skipped, as glob's `**` skips them."""
    seen = set()
    for folder, dirs, names in os.walk(base, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield folder, sorted(names)


def glob_once(pattern: str) -> List[str]:
    """glob.glob(pattern, recursive=True), except that `**` walks with `walk_once`: Python's
    own `**` follows links into loops (two such links make it exponential)."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return sorted(glob.glob(pattern))
    i = parts.index("**")
    head, rest = os.sep.join(parts[:i]), os.sep.join(parts[i + 1:])
    here = not head and not pattern.startswith(os.sep)  # `**/x`: from the current folder
    if not head:
        head = os.curdir if here else os.sep
    found = []
    for base in (glob.glob(head) if glob.has_magic(head) else [head]):
        if not os.path.isdir(base):
            continue
        for folder, _ in walk_once(base):
            if rest:
                found += glob_once(os.path.join(glob.escape(folder), rest))
            else:
                found.append(folder)
    return sorted({os.path.normpath(p) if here else p for p in found})


def unflatten(flat: dict, sep: str) -> dict:
    """{'a<sep>b': 1} -> {'a': {'b': 1}}: the nested form of flat keys (a stored config's
    dotted fields, an export's '/'-joined input names; values untouched, traced arrays too)."""
    tree: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(sep)
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
