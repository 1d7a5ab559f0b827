"""``psfax.timing.compile_watch``: JAX's compilation seconds told apart from computing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from psfax.timing import compile_watch


def test_compile_watch_sees_a_compilation_once():
    @jax.jit
    def poly(x):  # a function of its own: nothing else in the process has compiled it
        return jnp.sum(x ** 3 - 2.0 * x) + 0.125

    heard = []
    with compile_watch(lambda: heard.append("compiling"), lambda: heard.append("compiled")) as first:
        poly(np.arange(7.0)).block_until_ready()
    assert first.compilations == 1 and first.seconds > 0
    assert heard == ["compiling", "compiled"]  # a progress display hears both, in order
    with compile_watch() as second:
        poly(np.arange(7.0) + 1).block_until_ready()  # same shapes: the compiled program is reused
    assert second.compilations == 0 and second.seconds == 0
