"""Pausing Python's cyclic garbage collector while a burst of long-lived objects is made.

Submitting 100,000 tasks makes a few hundred thousand objects that all live on. Each
allocation burst triggers young collections, and the growing heap triggers full ones that
walk every tracked object in the process: about a third of the cost of a large submission,
spent proving that nothing new is garbage. Pausing the collector for the burst defers
that work to one ordinary collection afterwards; reference counting still frees
everything acyclic at once.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
#: pauses open now, in any thread (a client and an in-process scheduler may overlap)
_depth = 0
#: whether the first of them found the collector enabled (and so re-enables it)
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block.

    Pauses may nest and overlap across threads: the collector comes back when the last
    one ends, and only if it was enabled when the first one began.
    """
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


#: young-generation threshold for scheduler and worker processes (CPython's default: 700)
SERVER_GC_YOUNG = 10_000


def tune_server_gc(young: int = SERVER_GC_YOUNG) -> None:
    """Collect the young generation less often, in a process that is a server.

    A scheduler or worker holds hundreds of thousands of long-lived records and churns
    through short-lived messages. At 700 allocations, young collections keep catching
    messages still in flight and promoting them; at 10,000 most are freed by reference
    counting first. A 300,000-task map: 64 -> 55 us per task. Only for processes that
    conveyor itself starts (the CLI); a client's process keeps its own settings.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
