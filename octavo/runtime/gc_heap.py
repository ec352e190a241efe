"""A long-lived server freezes the heap it built at start-up, so that the collector stops walking it.

A collection of the oldest generation visits every tracked object. After the model, tokenizer and
app are loaded that is a large heap that never dies, and the collection holds the GIL throughout:
the event loop and the engine thread stop with it, and every stream in flight gets a gap. `gc.freeze`
moves the objects alive now to a permanent generation that collections skip (vLLM freezes its
start-up heap the same way). Only for processes that serve until they exit: garbage frozen with the
heap is never collected, so the LLM class and tests, which build and drop engines, do not call it.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze the rest; returns the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
