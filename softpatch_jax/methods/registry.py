"""Methods by name: `register(cls)` under `cls.name`; `get(name)` lists the choices when unknown."""
from typing import Dict, Tuple, Type

_METHODS: Dict[str, Type] = {}


def register(cls):
    """Registers a Method class under its `name` (replacing one of that name); -> cls."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name to register under")
    _METHODS[cls.name] = cls
    return cls


def names() -> Tuple[str, ...]:
    return tuple(_METHODS)


def get(name: str):
    if name not in _METHODS:
        raise ValueError(f"model.method={name!r} is unknown; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]
