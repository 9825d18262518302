"""Files that are complete or absent: atomic writes, and the fingerprint of what a file depends on."""
import contextlib
import hashlib
import json
import os


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path` (same extension, so that writers that append one,
    like np.save, keep it); moves it onto `path` when the block succeeds, removes it otherwise.
    A reader never sees a half-written file and a killed writer leaves the old one."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON with sorted keys, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def fingerprint(fields: dict, length: int = 20) -> str:
    """Hex digest of JSON-serialisable `fields` (key order does not matter)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:length]
