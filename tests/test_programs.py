"""``persistent_jit``: programs compiled once, loaded (not re-traced) by a later process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psfax import device
from psfax.programs import ProgramStoreWarning, entry_bytes, persistent_jit, register_output_type

TRACES = []


@register_output_type  # a NamedTuple outside psfax: the store rebuilds only types it is told of
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
    before = _entries(cache_on, scaled_sum)
    first = persistent_jit(scaled_sum, static_argnames=("scale",))
    TRACES.clear()
    out = first(pair, 2.0, scale=3.0)
    assert TRACES == [3.0]  # traced once, to export
    assert len(_entries(cache_on, scaled_sum) - before) == 1  # one program written
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


def test_outputs_typed_as_jit_types_them_when_compiled_and_when_loaded(cache_on):
    """The process that compiles a program and a later one that loads it must see the same output types
    (weak types included), or programs fed with them are keyed (and compiled) once more in the later one."""
    x = jnp.ones(3)
    compiled = persistent_jit(count_from_zero)(x)
    loaded = persistent_jit(count_from_zero)(x)  # a fresh wrapper loads from the file
    expected = [jax.typeof(a) for a in jax.jit(count_from_zero)(x)]
    assert [jax.typeof(a) for a in compiled] == expected == [jax.typeof(a) for a in loaded]
    assert jax.typeof(loaded[1]).weak_type


def _entries(folder, fun):
    """The stored programs of ``fun`` (other processes of the test run write theirs beside them)."""
    return set(folder.glob(f"{fun.__qualname__}-*.bin"))


def _only_entry(folder, before, fun):
    (path,) = _entries(folder, fun) - before
    return path


def test_corrupted_entry_is_ignored_and_recompiled_with_a_warning(cache_on):
    before = _entries(cache_on, count_from_zero)
    x = jnp.arange(5.0)  # a shape no other test uses: a fresh entry
    persistent_jit(count_from_zero)(x)
    path = _only_entry(cache_on, before, count_from_zero)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF  # one flipped byte in the serialized program
    path.write_bytes(bytes(blob))
    with pytest.warns(ProgramStoreWarning, match="SHA-256 does not match"):
        out = persistent_jit(count_from_zero)(x)
    np.testing.assert_array_equal(out[0], x + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProgramStoreWarning)  # the rewritten entry is whole again
        persistent_jit(count_from_zero)(x)


def test_tampered_entry_naming_subprocess_popen_never_executes_anything(cache_on, monkeypatch):
    """An entry edited to name ``subprocess:Popen`` as an output type, with a digest recomputed so that the
    integrity check passes (as an attacker would): the type is refused, nothing is imported or called."""
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a))
    before = _entries(cache_on, scaled_sum)
    pair = Pair(jnp.ones((2, 5)), jnp.ones(2))
    persistent_jit(scaled_sum, static_argnames=("scale",))(pair, 1.0, scale=2.0)
    path = _only_entry(cache_on, before, scaled_sum)
    blob = path.read_bytes()
    body = blob[len(b"PSFAXPRG") + 2 + 32:]
    size = int.from_bytes(body[:8], "little")
    header = json.loads(body[8:8 + size])
    header["structure"]["dict"][0][1]["namedtuple"] = "subprocess:Popen"
    path.write_bytes(entry_bytes(header["key"], header["structure"], header["inputs"], body[8 + size:]))
    with pytest.warns(ProgramStoreWarning, match="'subprocess:Popen' is not one psfax defines"):
        out = persistent_jit(scaled_sum, static_argnames=("scale",))(pair, 1.0, scale=2.0)
    assert calls == []
    assert isinstance(out["pair"], Pair)


def test_foreign_entry_under_another_name_is_refused(cache_on):
    """An entry copied over another function's file (same layout, valid digest) is not used for it."""
    before = _entries(cache_on, count_from_zero)
    x = jnp.arange(7.0)
    persistent_jit(count_from_zero)(x)
    mine = _only_entry(cache_on, before, count_from_zero)
    pair = Pair(jnp.ones((2, 7)), jnp.ones(2))
    before = _entries(cache_on, scaled_sum)
    persistent_jit(scaled_sum, static_argnames=("scale",))(pair, 1.0, scale=4.0)
    other = _only_entry(cache_on, before, scaled_sum)
    mine.write_bytes(other.read_bytes())
    with pytest.warns(ProgramStoreWarning, match="another function"):
        out = persistent_jit(count_from_zero)(x)
    np.testing.assert_array_equal(out[0], x + 1.0)


SOLVER = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from psfax import device
from psfax.programs import persistent_jit

def solve_spd(a, b):
    return jnp.linalg.solve(a, b[..., None])[..., 0]

device.enable_compilation_cache()
with jax.enable_x64(True):
    a = np.eye(3)[None].repeat(2, 0) * np.array([2.0, 4.0])[:, None, None]
    x = persistent_jit(solve_spd)(a, np.ones((2, 3)))
print(json.dumps(np.asarray(x).tolist()))
"""


def test_a_stored_linear_algebra_program_runs_in_a_new_process(tmp_path):
    """LAPACK behind jnp.linalg is bound when JAX first lowers such an operation; a process that only loads
    the executable must bind it too (without, the call crashes).  The second process loads, the first
    compiled: both solve ``2 x = 1``, ``4 x = 1``."""
    for _ in range(2):
        np.testing.assert_allclose(_run_script(SOLVER, tmp_path), [[0.5] * 3, [0.25] * 3], rtol=1e-15)
    assert len(list((tmp_path / "programs").glob("solve_spd-*.bin"))) == 1


def test_an_executable_naming_a_class_outside_the_list_is_refused(cache_on, monkeypatch):
    """The stored pickle may build only :data:`EXECUTABLE_CLASSES`: with the list emptied, a whole entry
    (right digest and key) is refused and compiled again, with a warning, and nothing it names is built."""
    from psfax import programs

    x = jnp.arange(11.0)
    persistent_jit(count_from_zero)(x)
    monkeypatch.setattr(programs, "EXECUTABLE_CLASSES", frozenset())
    with pytest.warns(ProgramStoreWarning, match="its executable names"):
        out = persistent_jit(count_from_zero)(x)
    np.testing.assert_array_equal(out[0], x + 1.0)


ADDER = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from psfax import device
from psfax.programs import persistent_jit

def add_three(x):
    return x + 3.0

device.enable_compilation_cache()
x = np.arange(4.0, dtype=np.float32)
if sys.argv[1] == "jit":
    jax.jit(add_three)(x)  # into (or, the second time, out of) JAX's own compilation cache
y = persistent_jit(add_three)(x)
print(json.dumps(np.asarray(y).tolist()))
"""


def test_a_program_also_in_jaxs_cache_is_stored_whole(tmp_path):
    """An executable JAX loaded from its own cache serializes without its code (JAX 0.10); the store
    compiles its programs afresh, so a process that loads one can run it.  Process 1 puts ``add_three``
    in JAX's cache; process 2 loads it from there and then stores it; process 3 runs the stored one."""
    _run_script(ADDER, tmp_path, "jit")
    for entry in (tmp_path / "programs").glob("add_three-*.bin"):
        entry.unlink()  # the next process finds the program in JAX's cache only
    assert _run_script(ADDER, tmp_path, "jit") == [3.0, 4.0, 5.0, 6.0]
    assert _run_script(ADDER, tmp_path, "load") == [3.0, 4.0, 5.0, 6.0]


def _run_script(script: str, cache, *args):
    """The JSON that ``script`` prints, run in a new interpreter with ``cache`` as psfax's cache folder."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PSFAX_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)
