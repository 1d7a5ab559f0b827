"""``persistent_jit``: ``jax.jit`` whose compiled programs outlive the process.

A new process would otherwise trace each jitted function in Python, lower it
to StableHLO and look the code up in JAX's persistent compilation cache
(:func:`psfax.device.enable_compilation_cache`) before its first call: about
2.5 s for the stars pipeline, half of it lowering.  ``persistent_jit`` keeps
the compiled executable itself on disk under ``cache_dir()/programs``, keyed by

* the function (module and name) and the repr of its static arguments,
* the tree structure, shapes and dtypes (weak types included) of the other arguments,
* the jax version, a digest of psfax's own source files (any edit to psfax
  starts a fresh set of programs), JAX's 64-bit mode and the machine
  (:func:`machine`: the CPU's model and instruction-set flags, ``XLA_FLAGS``),

so a new process loads the executable and calls it, with no tracing, lowering or
cache look-up (loading is then most of the cost: about 1.1 s for the ~50 programs
of the stars pipeline on 2 cores).

The store trusts nothing it reads.  An entry is ``MAGIC``, the format
version, the SHA-256 of the rest, and the rest: a JSON header (the entry's
full key and the output structure) and the executable as JAX serializes it
(a pickle).  The digest and the key catch a corrupted, truncated or foreign
entry (one written by another psfax, or copied under another name); such an
entry is ignored, compiled afresh and rewritten, with a
:class:`ProgramStoreWarning`.  The pickle is read by an unpickler that builds
only the JAX classes of :data:`EXECUTABLE_CLASSES`, and output structures are
rebuilt from tuples, lists, dicts and the NamedTuple classes psfax's own
(already imported) modules define or :func:`register_output_type` adds:
nothing else a file names is imported or called.  A digest is no signature,
and an executable is machine code: whoever can write the cache folder can hand
psfax a program that does anything (as with JAX's own compilation cache), so
keep the cache private (``PSFAX_CACHE_DIR``).  It is on when the compilation
cache is on (``PSFAX_NO_COMPILATION_CACHE`` turns both off) and the arguments
live on the CPU; otherwise (and inside another trace, which inlines the
function) it is plain ``jax.jit``.  GPUs are left out for now: storing their
executables has not been tested on one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import jax
import numpy as np

from psfax import device

MAGIC = b"PSFAXPRG"
FORMAT_VERSION = 3
_DIGEST_SIZE = 32
_OUTPUT_TYPES: dict[str, type] = {}


class ProgramStoreWarning(UserWarning):
    """A program-store entry was unusable (corrupted, foreign, or naming an unknown type) and is rebuilt."""


class BadEntry(Exception):
    """Why a program-store entry cannot be used (turned into a :class:`ProgramStoreWarning`)."""


def register_output_type(cls: type) -> type:
    """Allow the NamedTuple ``cls`` (defined outside psfax) in the outputs of a persistent_jit function."""
    _OUTPUT_TYPES[_type_name(cls)] = cls
    return cls


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
    """Decorator: like ``jax.jit(fun, static_argnames=...)``, with the compiled program kept on disk.

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
            programs[key] = _load_or_compile(fun, static, names, tree, leaves, folder)
        run, structure = programs[key]
        return rebuild(structure, iter(run(*leaves)))

    return call


def _load_or_compile(fun, static, names, tree, leaves, folder: Path):
    """(compiled call, its output structure) from ``folder``, compiling and storing it on a miss or when the
    stored entry is unusable (the module docstring)."""
    name = f"{fun.__module__}.{fun.__qualname__}"
    key = (tuple((k, _static_key(v)) for k, v in static.items()), str(tree),
           tuple(str(jax.typeof(x)) for x in leaves), "cpu")
    text = repr((name, key, jax.__version__, source_digest(), machine(), f"x64={jax.config.jax_enable_x64}"))
    path = folder / f"{fun.__qualname__}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.bin"
    if path.exists():
        try:
            return read_entry(path.read_bytes(), text)
        except BadEntry as exc:
            warnings.warn(f"program store: ignoring {path} ({exc}); compiling it again",
                          ProgramStoreWarning, stacklevel=4)
    holder = {}

    def flat(*flat_args):
        out = fun(**dict(zip(names, jax.tree.unflatten(tree, flat_args))), **static)
        holder["structure"] = describe(out)
        return list(jax.tree.leaves(out))

    flat.__name__ = flat.__qualname__ = path.stem.replace("-", "_")  # a module name no other program has
    with _compilation_cache_off():
        compiled = jax.jit(flat).lower(
            *(jax.ShapeDtypeStruct(np.shape(x), jax.typeof(x).dtype, weak_type=jax.typeof(x).weak_type)
              for x in leaves)).compile()
    try:
        payload = executable_bytes(compiled)
    except (ValueError, NotImplementedError) as exc:  # JAX's words for "cannot serialize this one"
        warnings.warn(f"program store: {name} is not stored ({exc}); each process compiles it",
                      ProgramStoreWarning, stacklevel=4)
        return compiled, holder["structure"]
    blob = entry_bytes(text, holder["structure"], len(leaves), payload)
    tmp = path.with_suffix(f".tmp{np.random.default_rng().integers(1 << 30)}")
    tmp.write_bytes(blob)
    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return compiled, holder["structure"]


@contextlib.contextmanager
def _compilation_cache_off():
    """JAX's persistent compilation cache off for the block.  An executable that JAX loaded from that cache
    (or compiled again in a process that had loaded the same module from it) serializes without its code in
    JAX 0.10: a later process that runs it fails with "Function ... not found".  So a stored program is
    compiled afresh, under a module name of its own.  One such block at a time (the setting is the process's)."""
    from jax.experimental.compilation_cache import compilation_cache

    with _CACHE_OFF_LOCK:
        before = jax.config.jax_enable_compilation_cache
        compilation_cache.reset_cache()
        jax.config.update("jax_enable_compilation_cache", False)
        try:
            yield
        finally:
            jax.config.update("jax_enable_compilation_cache", before)
            compilation_cache.reset_cache()


_CACHE_OFF_LOCK = threading.Lock()


@functools.cache
def machine() -> str:
    """What an executable is built for beside its arguments and JAX's 64-bit mode (keyed apart): the CPU
    (model name and instruction-set flags, from ``/proc/cpuinfo`` where there is one) and ``XLA_FLAGS``."""
    cpu = platform.machine() + " " + platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu += " ".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        pass
    text = f"{cpu}|{os.environ.get('XLA_FLAGS', '')}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


EXECUTABLE_CLASSES = frozenset({
    ("jax", "P"), ("jax._src.core", "ManualAxisType"), ("jax._src.core", "MemorySpace"),
    ("jax._src.core", "ShapedArray"), ("jax._src.interpreters.pxla", "AllArgsInfo"),
    ("jax._src.interpreters.pxla", "UnloadedMeshExecutable"), ("jax._src.layout", "Layout"),
    ("jax._src.linear_util", "DebugInfo"), ("jax._src.mesh", "AbstractMesh"),
    ("jax._src.named_sharding", "_unpickle_named_sharding"),
    ("jax._src.sharding_impls", "_unpickle_single_device_sharding"), ("jax._src.stages", "ArgInfo"),
    ("jaxlib._jax", "DeviceList"), ("numpy", "dtype"),
})
"""The (module, name) pairs a stored executable's pickle may name (those JAX 0.10 writes for a CPU program);
any other makes the entry unusable."""


def executable_bytes(compiled) -> bytes:
    """The pickle of a ``jax.stages.Compiled`` of flat arguments and a flat list of outputs, as
    ``jax.experimental.serialize_executable`` writes it (the pytrees are rebuilt from the counts on loading)."""
    from jax.experimental.serialize_executable import serialize

    return serialize(compiled)[0]


def _initialize_lapack() -> None:
    """Bind the LAPACK routines behind JAX's CPU linear algebra, as JAX does when it first lowers such an
    operation: a loaded executable that calls one before that would jump to nothing (a crash)."""
    from jax._src.lib import lapack

    lapack._lapack.initialize()


def load_executable(payload: bytes, n_in: int, n_out: int):
    """The ``jax.stages.Compiled`` of :func:`executable_bytes`, for ``n_in`` flat arguments and ``n_out``
    outputs, read by an unpickler limited to :data:`EXECUTABLE_CLASSES`; BadEntry on anything else."""
    from jax.experimental.serialize_executable import _JaxPjrtUnpickler

    class Unpickler(_JaxPjrtUnpickler):
        def find_class(self, module, name):
            if (module, name) not in EXECUTABLE_CLASSES:
                raise BadEntry(f"its executable names {module}.{name}")
            return super().find_class(module, name)

    backend = jax.devices("cpu")[0].client
    try:
        _initialize_lapack()
        unloaded, args_info, no_kwargs = Unpickler(io.BytesIO(payload), backend).load()
        in_tree = jax.tree.structure(((0,) * n_in, {}))
        out_tree = jax.tree.structure([0] * n_out)
        if len(args_info) != n_in:
            raise BadEntry(f"its executable takes {len(args_info)} arguments, the key {n_in}")
        return jax.stages.Compiled(unloaded.load(), [], in_tree.unflatten(args_info), out_tree,
                                   no_kwargs=no_kwargs)
    except BadEntry:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling and loading raise many kinds on bad bytes
        raise BadEntry(f"unreadable executable ({type(exc).__name__})") from None


def entry_bytes(key_text: str, structure, inputs: int, program: bytes) -> bytes:
    """One store entry: ``MAGIC``, version (2 bytes), SHA-256 of the body, body = header length (8 bytes),
    JSON header ``{"key", "structure", "inputs"}`` (``inputs``: the number of flat arguments), executable."""
    header = json.dumps({"key": key_text, "structure": structure, "inputs": inputs}).encode()
    body = len(header).to_bytes(8, "little") + header + program
    return MAGIC + FORMAT_VERSION.to_bytes(2, "little") + hashlib.sha256(body).digest() + body


def read_entry(blob: bytes, key_text: str):
    """(compiled call, output structure) of an entry written by :func:`entry_bytes` for ``key_text``;
    raises :class:`BadEntry` when it is not one (wrong magic or version, digest, key, structure, executable)."""
    start = len(MAGIC) + 2 + _DIGEST_SIZE
    version = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 2], "little")
    if blob[:len(MAGIC)] != MAGIC or version != FORMAT_VERSION:
        raise BadEntry(f"not a psfax program entry of format version {FORMAT_VERSION}")
    body = blob[start:]
    if hashlib.sha256(body).digest() != blob[start - _DIGEST_SIZE:start]:
        raise BadEntry("its SHA-256 does not match its content (corrupted or truncated)")
    size = int.from_bytes(body[:8], "little")
    try:
        header = json.loads(body[8:8 + size])
        stored_key, structure, n_in = header["key"], header["structure"], int(header["inputs"])
    except (ValueError, TypeError, KeyError) as exc:
        raise BadEntry(f"unreadable header ({exc})") from None
    if stored_key != key_text:
        raise BadEntry("it was written for another function or argument signature")
    return load_executable(bytes(body[8 + size:]), n_in, count_leaves(structure)), structure


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def output_type(name) -> type:
    """The NamedTuple class named ``"module:qualname"``, if it is one psfax allows; else BadEntry.

    Allowed: :func:`register_output_type`'s classes, and NamedTuples defined in a psfax module that is
    already imported (looked up in ``sys.modules``: nothing is imported, nothing but the class is touched).
    """
    if name in _OUTPUT_TYPES:
        return _OUTPUT_TYPES[name]
    module, _, qualname = str(name).partition(":")
    if module == "psfax" or module.startswith("psfax."):
        cls = sys.modules[module].__dict__.get(qualname) if module in sys.modules else None
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields") \
                and _type_name(cls) == name:
            return cls
    raise BadEntry(f"its output type {name!r} is not one psfax defines")


def describe(tree):
    """JSON-able structure of an output pytree: arrays become ``"leaf"``; tuples, lists, dicts (sorted
    keys, as JAX flattens them), None and NamedTuples (by module and name) are kept."""
    if tree is None:
        return None
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        name = _type_name(type(tree))
        output_type(name)  # fails here, at export, for a type a later process could not rebuild
        return {"namedtuple": name, "items": [describe(x) for x in tree]}
    if isinstance(tree, (tuple, list)):
        return {type(tree).__name__: [describe(x) for x in tree]}
    if isinstance(tree, dict):
        return {"dict": [[k, describe(tree[k])] for k in sorted(tree)]}
    if isinstance(tree, (jax.Array, np.ndarray)) or np.isscalar(tree):
        return "leaf"
    raise TypeError(f"persistent_jit: cannot describe an output of type {type(tree).__name__}")


def count_leaves(structure) -> int:
    """Number of leaves of a :func:`describe` structure; BadEntry when it is not one."""
    if structure is None:
        return 0
    if structure == "leaf":
        return 1
    if isinstance(structure, dict) and set(structure) == {"namedtuple", "items"}:
        cls = output_type(structure["namedtuple"])
        if not isinstance(structure["items"], list) or len(structure["items"]) != len(cls._fields):
            raise BadEntry(f"{structure['namedtuple']} with the wrong number of fields")
        return sum(count_leaves(x) for x in structure["items"])
    if isinstance(structure, dict) and len(structure) == 1:
        (kind, items), = structure.items()
        if kind in ("tuple", "list") and isinstance(items, list):
            return sum(count_leaves(x) for x in items)
        if kind == "dict" and isinstance(items, list) and all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], str) for i in items):
            return sum(count_leaves(x) for _, x in items)
    raise BadEntry("its output structure is not one psfax writes")


def rebuild(structure, leaves):
    """The pytree of :func:`describe`'s ``structure`` (checked by :func:`count_leaves`) filled from the
    iterator ``leaves`` (flatten order)."""
    if structure is None:
        return None
    if structure == "leaf":
        return next(leaves)
    if "namedtuple" in structure:
        return output_type(structure["namedtuple"])(*(rebuild(x, leaves) for x in structure["items"]))
    (kind, items), = structure.items()
    if kind == "dict":
        return {k: rebuild(x, leaves) for k, x in items}
    return {"tuple": tuple, "list": list}[kind](rebuild(x, leaves) for x in items)
