"""Block pool: ref counts, chained prefix hashes, LRU eviction of cached blocks."""

from __future__ import annotations

from octavo.runtime.kv_cache import KVCacheManager, hash_block
from octavo.runtime.request import Request
from octavo.runtime.sampling_params import SamplingParams


def request(tokens, rid="r"):
    return Request(rid, tokens, SamplingParams())


def compute_all(kv, req):
    assert kv.allocate(req, req.num_tokens)
    req.num_computed_tokens = req.num_tokens
    kv.cache_computed_blocks(req)


def test_chained_hash_depends_on_the_whole_prefix():
    a = hash_block(None, [1, 2, 3, 4])
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(hash_block(None, [9, 2, 3, 4]), [5, 6, 7, 8])
    assert hash_block(a, [5, 6, 7, 8]) == hash_block(hash_block(None, [1, 2, 3, 4]), [5, 6, 7, 8])


def test_shared_prefix_blocks_are_reused_read_only_and_ref_counted():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = request(list(range(10)), "a")
    compute_all(kv, first)
    second = request(list(range(8)) + [99, 98, 97], "b")
    cached = kv.lookup_prefix(second)
    assert cached == 8 and second.block_ids == first.block_ids[:2]
    assert all(kv.ref_counts[b] == 2 for b in second.block_ids)
    kv.free(first)
    assert all(kv.ref_counts[b] == 1 for b in second.block_ids)
    kv.free(second)
    kv.check_no_leaks()


def test_never_reuses_the_last_prompt_token():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = request(list(range(8)), "a")
    compute_all(kv, first)
    same = request(list(range(8)), "b")
    assert kv.lookup_prefix(same) == 4  # the second block holds the last token: recomputed
    kv.free(first)
    kv.free(same)


def test_cached_blocks_are_evicted_lru_only_when_nothing_else_is_free():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    old = request([1, 2, 3, 4], "old")
    compute_all(kv, old)
    kv.free(old)  # two cached blocks, free
    fresh = request([7, 8], "fresh")
    assert kv.allocate(fresh, 2)  # takes an uncached block first
    assert len(kv.cached_blocks) == 2
    big = request([9] * 6, "big")
    assert kv.allocate(big, 6)  # now it must evict both cached blocks
    assert len(kv.cached_blocks) == 0
    assert not kv.allocate(request([0] * 2, "none"), 2)
    kv.free(fresh)
    kv.free(big)
    kv.check_no_leaks()


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    req = request([1] * 12)
    assert not kv.allocate(req, 12)
    assert req.block_ids == [] and kv.num_free_blocks == 2
