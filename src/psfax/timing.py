"""Stage timing that tells JAX's compilation apart from computing.

:func:`compile_watch` listens to JAX's monitoring events while a block runs and
adds up the seconds spent lowering programs to MLIR and compiling them with
XLA (``/jax/core/compile/jaxpr_to_mlir_module_duration`` and
``/jax/core/compile/backend_compile_duration``; the latter includes a load
from the persistent compilation cache, which takes milliseconds).  Tracing
(Python) is not counted: its events nest.  ``on_compile`` is called when a
lowering has finished and an XLA compilation starts, ``on_compiled`` when it
has finished, so a progress display can say "compiling" while it happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_watchers: list[CompileWatch] = []
_listening = False


@dataclasses.dataclass
class CompileWatch:
    """Seconds of lowering + compilation seen so far, and the callbacks of the block."""

    seconds: float = 0.0
    compilations: int = 0
    on_compile: Callable[[], None] | None = None
    on_compiled: Callable[[], None] | None = None


def _listener(event: str, duration: float, **_) -> None:
    if event not in (LOWERING_EVENT, COMPILE_EVENT):
        return
    for watch in _watchers:
        watch.seconds += duration
        callback = watch.on_compile if event == LOWERING_EVENT else watch.on_compiled
        watch.compilations += event == COMPILE_EVENT
        if callback is not None:
            callback()


@contextlib.contextmanager
def compile_watch(on_compile: Callable[[], None] | None = None, on_compiled: Callable[[], None] | None = None):
    """``with compile_watch() as w:`` -- ``w.seconds`` is the block's compile time [s] afterwards."""
    global _listening
    if not _listening:
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(_listener)
        _listening = True
    watch = CompileWatch(on_compile=on_compile, on_compiled=on_compiled)
    _watchers.append(watch)
    try:
        yield watch
    finally:
        _watchers.remove(watch)
