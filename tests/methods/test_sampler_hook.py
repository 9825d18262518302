"""The documented hook through which a sampler is swapped (issue 25): `Method.with_sampler`
wraps a memory-bank method's sampler in a copy and leaves the original alone; methods without a
sampler return themselves. The sweep batches coresets through it (tests/pipeline/test_sweep.py)."""
import dataclasses

import pytest

from softpatch_jax import methods
from softpatch_jax.ops.coreset import GreedyCoreset

from conftest import load_config


@dataclasses.dataclass(frozen=True)
class Tagged:
    inner: GreedyCoreset
    progress: bool = False


@pytest.mark.parametrize("name", methods.names())
def test_with_sampler_wraps_a_copy_or_returns_the_method(name):
    c = load_config("default.py")
    c.model.method = name
    method = methods.from_config(c)
    wrapped = method.with_sampler(Tagged)
    if isinstance(getattr(method, "sampler", None), GreedyCoreset):
        assert wrapped is not method and type(wrapped) is type(method)
        assert wrapped.sampler == Tagged(method.sampler)
        assert isinstance(method.sampler, GreedyCoreset)  # the original is untouched
    else:
        assert wrapped is method
