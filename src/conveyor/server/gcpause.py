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
