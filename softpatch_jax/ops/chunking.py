"""The one padded-chunk loop: a jitted function over the rows of large arrays, chunk by chunk.

Every chunk is padded to the same number of rows (repeating the last row), so the function
compiles once; the padded rows' outputs are dropped. A few chunks stay in flight (JAX dispatches
asynchronously) while earlier results are copied back, which bounds device memory.
"""
from typing import Callable, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

Array = Union[np.ndarray, jax.Array]


def pad_rows(x: Array, rows: int) -> Array:
    """(n, ...) -> (rows, ...) by repeating the last row (same array library as the input)."""
    n = x.shape[0]
    if n == rows:
        return x
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.concatenate([x, xp.repeat(x[-1:], rows - n, axis=0)])


def bucket_rows(n: int, step: int) -> int:
    """The chunk of a call with n rows that buckets: `step`, or for fewer rows the next power of
    two (at least 8): calls of other sizes reuse a few compiled programs."""
    return step if n >= step else min(step, max(8, 1 << max(0, int(n - 1).bit_length())))


def map_chunks(fn: Callable[..., Union[Array, Tuple[Array, ...]]], arrays: Sequence[Array],
               step: int, in_flight: int = 4, progress: bool = False,
               desc: str = "", bucket: bool = False) -> Tuple[np.ndarray, ...]:
    """Applies `fn(*chunks)` to consecutive `step`-row chunks of `arrays` (all (N, ...), sliced
    together along axis 0). `fn` returns one array or a tuple of arrays with leading size `step`.
    -> tuple of NumPy arrays with leading size N (rows in order). A call with fewer than `step`
    rows runs one chunk of exactly its rows (one compile per row count), or with `bucket` of
    `bucket_rows` rows: only for `fn` whose rows do not round by the chunk's row count."""
    n = arrays[0].shape[0]
    step = max(1, bucket_rows(n, step) if bucket else min(step, n))
    outputs = None
    pending = []

    def collect(item):
        nonlocal outputs
        rows, result = item
        parts = result if isinstance(result, tuple) else (result,)
        if outputs is None:
            outputs = [[] for _ in parts]
        for out, part in zip(outputs, parts):
            out.append(np.asarray(part)[:rows])

    with tqdm(total=n, desc=desc, disable=not progress, leave=False) as bar:
        for s in range(0, n, step):
            chunk = [pad_rows(a[s:s + step], step) for a in arrays]
            rows = min(step, n - s)
            pending.append((rows, fn(*chunk)))
            if len(pending) > in_flight:
                collect(pending.pop(0))
            bar.update(rows)
        for item in pending:
            collect(item)
    return tuple(np.concatenate(out) for out in outputs)


def chunk_size(bytes_per_item: int, budget_mb: float, minimum: int = 1) -> int:
    """How many items of `bytes_per_item` fit in a memory budget of `budget_mb` MiB."""
    return max(minimum, int(budget_mb * 2**20) // max(1, bytes_per_item))


def host_blas():
    """A context for NumPy's BLAS / LAPACK work between JAX computations: one thread. Right after
    XLA's CPU threads have run, a threaded BLAS competes with them and runs several times slower
    (a 1024 x 1024 eigh: 2.9 s against 0.2 s on one thread, measured on 2 cores)."""
    return threadpool_limits(limits=1, user_api="blas")
