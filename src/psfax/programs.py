"""``persistent_jit``: ``jax.jit`` whose traced and lowered programs outlive the process.

JAX's persistent compilation cache (:func:`psfax.device.enable_compilation_cache`)
keeps XLA's compiled code, but a new process must still trace each jitted
function in Python and lower it to StableHLO before it can even look the code
up: about 3 s for the stars pipeline.  ``persistent_jit`` also keeps the
lowered program on disk (``jax.export``, serialized StableHLO) under
``cache_dir()/programs``, keyed by

* the function (module and name) and the repr of its static arguments,
* the tree structure, shapes and dtypes of the other arguments,
* the platform, the jax version, and a digest of psfax's own source files
  (any edit to psfax starts a fresh set of programs),

so a new process deserializes the program and goes straight to the
compilation cache.  It is on when the compilation cache is on
(``PSFAX_NO_COMPILATION_CACHE`` turns both off) and the arguments live on the
CPU; otherwise (and inside another trace, which inlines the function) it is
plain ``jax.jit``.  GPUs are left out for now: exporting for them has not been
tested on one.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import importlib
import json
from pathlib import Path

import jax
import numpy as np

from psfax import device


@functools.cache
def source_digest() -> str:
    """SHA-256 (first 16 hex digits) of every ``.py`` file of psfax, in path order."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _static_key(value) -> str:
    """Stable text for a static argument: functions by module and qualified name, others by repr."""
    if inspect.isfunction(value):
        if value.__name__ == "<lambda>":
            raise TypeError("persistent_jit: a lambda has no stable name; pass a named function")
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _platform(leaves) -> str:
    """Platform of the first JAX array among ``leaves``, else of the default device."""
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            return next(iter(leaf.devices())).platform
    default = jax.config.jax_default_device
    return default.platform if default is not None else jax.default_backend()


def persistent_jit(fun=None, *, static_argnames: tuple[str, ...] = ()):
    """Decorator: like ``jax.jit(fun, static_argnames=...)``, with the lowered program kept on disk.

    Arguments may be given by position or name; outputs may be any pytree of arrays.
    """
    if fun is None:
        return functools.partial(persistent_jit, static_argnames=static_argnames)
    if fun.__name__ == "<lambda>":
        raise TypeError("persistent_jit: a lambda has no stable name; decorate a named function")
    jitted = jax.jit(fun, static_argnames=static_argnames)
    signature = inspect.signature(fun)
    programs: dict[tuple, tuple] = {}

    @functools.wraps(fun)
    def call(*args, **kwargs):
        folder = device.program_cache_dir()
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        static = {k: v for k, v in bound.arguments.items() if k in static_argnames}
        names = [k for k in bound.arguments if k not in static_argnames]
        leaves, tree = jax.tree.flatten([bound.arguments[k] for k in names])
        if folder is None or any(isinstance(x, jax.core.Tracer) for x in leaves) or _platform(leaves) != "cpu":
            return jitted(*args, **kwargs)
        key = (tuple(static.items()), tree, tuple(jax.typeof(x) for x in leaves))  # hashable, cheap to compare
        if key not in programs:
            programs[key] = _load_or_export(fun, static, names, tree, leaves, folder)
        run, structure = programs[key]
        return rebuild(structure, iter(run(*leaves)))

    return call


def _load_or_export(fun, static, names, tree, leaves, folder: Path):
    """(jitted call of the exported program, its output structure) from ``folder``, exporting it on a
    miss.  File: 8-byte length, the output structure as JSON, the serialized ``jax.export`` program."""
    name = f"{fun.__module__}.{fun.__qualname__}"
    key = (tuple((k, _static_key(v)) for k, v in static.items()), str(tree),
           tuple(str(jax.typeof(x)) for x in leaves), "cpu")
    text = repr((name, key, jax.__version__, source_digest()))
    path = folder / f"{fun.__qualname__}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.bin"
    if path.exists():
        blob = path.read_bytes()
    else:
        holder = {}

        def flat(*flat_args):
            out = fun(**dict(zip(names, jax.tree.unflatten(tree, flat_args))), **static)
            holder["structure"] = describe(out)
            return jax.tree.leaves(out)

        exported = jax.export.export(jax.jit(flat), platforms=[key[-1]])(
            *(jax.ShapeDtypeStruct(np.shape(x), jax.typeof(x).dtype, weak_type=jax.typeof(x).weak_type)
              for x in leaves))
        header = json.dumps(holder["structure"]).encode()
        blob = len(header).to_bytes(8, "little") + header + bytes(exported.serialize())
        tmp = path.with_suffix(f".tmp{np.random.default_rng().integers(1 << 30)}")
        tmp.write_bytes(blob)
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    # a fresh export also runs from its serialized form, as every later process will: serializing drops the
    # outputs' weak types, and outputs typed differently in the first process would key different programs
    # downstream (seen: the second ZTF run exported and compiled four more)
    size = int.from_bytes(blob[:8], "little")
    structure = json.loads(blob[8:8 + size])
    exported = jax.export.deserialize(bytearray(blob[8 + size:]))
    return jax.jit(exported.call), structure


def describe(tree):
    """JSON-able structure of an output pytree: arrays become ``"leaf"``; tuples, lists, dicts (sorted
    keys, as JAX flattens them), None and NamedTuples (by module and name) are kept."""
    if tree is None:
        return None
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {"namedtuple": f"{type(tree).__module__}:{type(tree).__qualname__}",
                "items": [describe(x) for x in tree]}
    if isinstance(tree, (tuple, list)):
        return {type(tree).__name__: [describe(x) for x in tree]}
    if isinstance(tree, dict):
        return {"dict": [[k, describe(tree[k])] for k in sorted(tree)]}
    if isinstance(tree, (jax.Array, np.ndarray)) or np.isscalar(tree):
        return "leaf"
    raise TypeError(f"persistent_jit: cannot describe an output of type {type(tree).__name__}")


def rebuild(structure, leaves):
    """The pytree of :func:`describe`'s ``structure`` filled from the iterator ``leaves`` (flatten order)."""
    if structure is None:
        return None
    if structure == "leaf":
        return next(leaves)
    if "namedtuple" in structure:
        module, qualname = structure["namedtuple"].split(":")
        cls = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
        return cls(*(rebuild(x, leaves) for x in structure["items"]))
    (kind, items), = structure.items()
    if kind == "dict":
        return {k: rebuild(x, leaves) for k, x in items}
    return {"tuple": tuple, "list": list}[kind](rebuild(x, leaves) for x in items)
