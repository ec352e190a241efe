"""The served processes freeze their start-up heap (gc_heap.py): garbage left by start-up is
collected first, never frozen, and what is alive is frozen. In a subprocess: a frozen heap stays
frozen for the life of the process."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc, weakref
gc.disable()  # nothing but freeze_startup_heap may collect
from octavo.runtime.gc_heap import freeze_startup_heap

class Node:
    pass

garbage = Node(); garbage.itself = garbage  # a cycle: only the collector frees it
dead = weakref.ref(garbage)
del garbage
live = [Node() for _ in range(1000)]
frozen = freeze_startup_heap()
assert dead() is None, "start-up garbage was frozen instead of collected"
assert frozen == gc.get_freeze_count() >= 1000, (frozen, gc.get_freeze_count())
print("ok")
"""


def test_start_up_garbage_is_collected_and_the_live_heap_frozen():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
