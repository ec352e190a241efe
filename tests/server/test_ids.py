"""Random ids: the right form, unique, and a forked child does not repeat its parent's sequence."""

from __future__ import annotations

import os
import re

from octavo.runtime.server.ids import random_hex


def test_ids_are_lowercase_hex_of_the_asked_length_and_unique():
    ids = [random_hex() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{16}", random_hex(16))


def test_a_forked_child_draws_other_ids_than_its_parent():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next id, leave at once
        os.write(write, random_hex().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child != random_hex()
