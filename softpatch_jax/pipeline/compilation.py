"""One compile per program: JAX's persistent compilation cache, and a count of the compiles.

`enable_persistent_cache(config.runtime)` keeps every compiled XLA program on disk under
`<runtime.cache_dir or ~/.cache/softpatch_jax>/xla`, so a second run (or a second process of a
sweep) loads its programs instead of compiling them; `runtime.compilation_cache=False` leaves it
off. `CompileCounter` counts, while it is active, the XLA backend compilations that ran the
compiler, the programs loaded from the persistent cache instead, and their seconds.

JAX opens its cache directory once, at the first compile after it is set; a call with another
directory resets it (`jax.experimental.compilation_cache.compilation_cache.reset_cache`), so the
next compile opens the new one. A directory set outside this module (`JAX_COMPILATION_CACHE_DIR`)
is left as it is.
"""
import logging
import os
import threading
from typing import List, Optional

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from softpatch_jax.features.backbones import default_cache_dir

# JAX's monitoring events (jax/_src/dispatch.py, jax/_src/compiler.py): the duration event wraps
# every backend compile, a persistent-cache hit included, and a hit records its event first, in
# the same thread.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_lock = threading.Lock()
_cache_dir: Optional[str] = None  # the directory this module gave JAX (None: none given)


def cache_dir(runtime) -> str:
    """Where `runtime`'s compiled programs are kept: <runtime.cache_dir or the default>/xla."""
    return os.path.join(runtime.get("cache_dir", "") or default_cache_dir(), "xla")


def enable_persistent_cache(runtime) -> Optional[str]:
    """Turns JAX's persistent compilation cache on at `cache_dir(runtime)` for every program,
    however small or quick to compile (off when `runtime.compilation_cache` is False; configs
    stored before the field existed count as True). Idempotent; a call with another directory
    (or False) switches (or turns off) the cache that an earlier call turned on. -> the cache's
    directory, or None when off."""
    global _cache_dir
    want = cache_dir(runtime) if runtime.compilation_cache else None
    with _lock:
        current = jax.config.jax_compilation_cache_dir
        if current and current != _cache_dir:  # the user's own (JAX_COMPILATION_CACHE_DIR)
            logging.info("persistent compilation cache: %s (set outside softpatch_jax; "
                         "runtime.compilation_cache and runtime.cache_dir not applied)", current)
            return current
        if want == _cache_dir:
            return want
        if _cache_dir is not None:  # JAX opened the old directory: the next compile reopens
            jax_cache.reset_cache()
        if want is not None:
            os.makedirs(want, exist_ok=True)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor
        jax.config.update("jax_compilation_cache_dir", want)
        _cache_dir = want
        logging.info("persistent compilation cache: %s", want or "off")
        return want


class CompileCounter:
    """Counts, while active (`with CompileCounter() as c:`), the XLA backend compilations of this
    process in every thread: `compiles` (the compiler ran), `cache_hits` (the program was loaded
    from the persistent cache), `seconds` (the compiler's seconds) and `seconds_cache_load`.
    Tracing and lowering to MLIR are not included. Counters may nest and overlap."""

    def __init__(self):
        self.compiles = 0
        self.cache_hits = 0
        self.seconds = 0.0
        self.seconds_cache_load = 0.0
        self.names: List[str] = []  # the compiled programs, e.g. 'jit(_knn)'

    def __enter__(self) -> "CompileCounter":
        _dispatcher.subscribe(self)
        return self

    def __exit__(self, *exc) -> None:
        _dispatcher.unsubscribe(self)

    def _record(self, hit: bool, seconds: float, name: str) -> None:  # dispatcher's lock held
        if hit:
            self.cache_hits += 1
            self.seconds_cache_load += seconds
        else:
            self.compiles += 1
            self.seconds += seconds
            self.names.append(name)

    def __repr__(self) -> str:
        return (f"CompileCounter(compiles={self.compiles}, cache_hits={self.cache_hits}, "
                f"seconds={self.seconds:.2f})")


class _Dispatcher:
    """JAX's monitoring listeners are process-global: one pair, registered on first use and
    kept, forwards each backend compile to the active counters, a hit told from a compile by the
    hit event that precedes it in the same thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: List[CompileCounter] = []
        self._registered = False
        self._pending_hit = threading.local()  # a cache hit seen, its compile event not yet

    def subscribe(self, counter: CompileCounter) -> None:
        with self._lock:
            if not self._registered:
                monitoring.register_event_listener(self._on_event)
                monitoring.register_event_duration_secs_listener(self._on_duration)
                self._registered = True
            self._counters.append(counter)

    def unsubscribe(self, counter: CompileCounter) -> None:
        with self._lock:
            self._counters = [c for c in self._counters if c is not counter]

    def _on_event(self, event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            self._pending_hit.value = True

    def _on_duration(self, event: str, duration_secs: float, **kwargs) -> None:
        if event != BACKEND_COMPILE_EVENT:
            return
        hit = getattr(self._pending_hit, "value", False)
        self._pending_hit.value = False
        with self._lock:
            for c in self._counters:
                c._record(hit, duration_secs, str(kwargs.get("fun_name", "")))


_dispatcher = _Dispatcher()
