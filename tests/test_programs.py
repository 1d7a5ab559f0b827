"""``persistent_jit``: programs exported once, loaded (not re-traced) by a later process."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psfax import device
from psfax.programs import persistent_jit

TRACES = []


class Pair(NamedTuple):
    a: jnp.ndarray
    b: jnp.ndarray


def scaled_sum(pair, power, *, scale):
    """A pytree in, a pytree out, one static argument; records each time Python traces it."""
    TRACES.append(scale)
    return {"sum": scale * (pair.a ** power).sum(axis=-1), "pair": Pair(pair.b, pair.a)}


@pytest.fixture
def cache_on():
    device.enable_compilation_cache()
    folder = device.program_cache_dir()
    assert folder is not None
    return folder


def test_same_result_as_jit_and_loaded_without_tracing(cache_on):
    pair = Pair(jnp.arange(6.0).reshape(2, 3), jnp.ones(2))
    expected = jax.jit(scaled_sum, static_argnames=("scale",))(pair, 2.0, scale=3.0)
    before = set(cache_on.iterdir())
    first = persistent_jit(scaled_sum, static_argnames=("scale",))
    TRACES.clear()
    out = first(pair, 2.0, scale=3.0)
    assert TRACES == [3.0]  # traced once, to export
    assert len(set(cache_on.iterdir()) - before) == 1  # one program written
    # a fresh wrapper has an empty memory, as a new process would: it must load, not trace
    second = persistent_jit(scaled_sum, static_argnames=("scale",))
    again = second(pair, 2.0, scale=3.0)
    assert TRACES == [3.0]
    for result in (out, again):
        np.testing.assert_array_equal(result["sum"], expected["sum"])  # same program: bit for bit
        assert isinstance(result["pair"], Pair)
        np.testing.assert_array_equal(result["pair"].a, pair.b)


def test_static_values_and_shapes_get_their_own_programs(cache_on):
    fn = persistent_jit(scaled_sum, static_argnames=("scale",))
    pair = Pair(jnp.ones((2, 3)), jnp.ones(2))
    TRACES.clear()
    assert float(fn(pair, 1.0, scale=5.0)["sum"][0]) == 15.0
    assert float(fn(pair, 1.0, scale=7.0)["sum"][0]) == 21.0
    assert fn(Pair(jnp.ones((4, 3)), jnp.ones(4)), 1.0, scale=5.0)["sum"].shape == (4,)
    assert TRACES == [5.0, 7.0, 5.0]


def test_inside_another_trace_it_is_plain_jit(cache_on):
    fn = persistent_jit(scaled_sum, static_argnames=("scale",))
    grad = jax.grad(lambda a: fn(Pair(a, a), 2.0, scale=1.0)["sum"].sum())(jnp.arange(3.0))
    np.testing.assert_allclose(grad, 2 * np.arange(3.0))


def apply(x, f):
    return f(x)


def test_lambdas_are_refused(cache_on):
    with pytest.raises(TypeError, match="lambda"):
        persistent_jit(lambda x: x)
    fn = persistent_jit(apply, static_argnames=("f",))
    with pytest.raises(TypeError, match="lambda"):
        fn(jnp.ones(2), f=lambda x: x)
    np.testing.assert_array_equal(fn(jnp.ones(2), f=jnp.negative), -np.ones(2))


def count_from_zero(x):
    """Returns a weakly typed integer (``jnp.asarray(0)``) beside an array."""
    return x + 1.0, jnp.asarray(0)


def test_outputs_typed_alike_when_exported_and_when_loaded(cache_on):
    """Serialization drops weak types; the exporting process must see the outputs a later process will
    load, or programs fed with them are keyed (and exported, compiled) once more in that later process."""
    x = jnp.ones(3)
    exported = persistent_jit(count_from_zero)(x)
    loaded = persistent_jit(count_from_zero)(x)  # a fresh wrapper loads from the file
    assert [jax.typeof(a) for a in exported] == [jax.typeof(a) for a in loaded]
    assert not jax.typeof(loaded[1]).weak_type
