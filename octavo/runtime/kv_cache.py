"""The KV block pool: allocation, reference counts, prefix-cache hashes and LRU eviction.

Blocks hold `block_size` tokens of K/V for every layer. A request owns a list of block ids (its
block table). With prefix caching, a block that is full of computed tokens gets a hash chained
from its parent's hash and its token ids; a later request with the same prefix reuses it
read-only (ref count + 1). A freed block keeps its hash and its contents and waits in the free
queue, least recently used first, so it is evicted only when nothing else is free.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from octavo.runtime.request import Request

_ROOT_HASH = b"octavo-root"


def hash_block(parent_hash: bytes | None, token_ids: list[int] | tuple[int, ...]) -> bytes:
    """Chained hash of a full block: equal hashes mean equal token prefixes (up to collisions of a
    128-bit digest)."""
    digest = hashlib.blake2b(parent_hash or _ROOT_HASH, digest_size=16)
    digest.update(b",".join(str(t).encode() for t in token_ids))
    return digest.digest()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least 1 block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached_blocks: dict[bytes, int] = {}
        # Free blocks in eviction order: the first is taken first. Uncached blocks go to the
        # front, cached ones to the back, so cached contents survive as long as possible.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.prefix_queries = 0
        self.prefix_hits = 0

    # ---- accounting -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, request: Request, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(request.block_ids))

    # ---- prefix cache -----------------------------------------------------------------------
    def _full_block_hashes(self, request: Request, upto_tokens: int) -> list[bytes]:
        """Hashes of the request's full blocks within its first `upto_tokens` tokens, computed
        once and kept on the request."""
        hashes = request.block_hashes
        num_full = upto_tokens // self.block_size
        parent = hashes[-1] if hashes else None
        for i in range(len(hashes), num_full):
            tokens = request.all_token_ids[i * self.block_size : (i + 1) * self.block_size]
            parent = hash_block(parent, tokens)
            hashes.append(parent)
        return hashes[:num_full]

    def lookup_prefix(self, request: Request) -> int:
        """Attach the longest run of cached full blocks that prefixes the request (never its last
        token: that one must be computed to produce logits). Returns the tokens covered."""
        assert not request.block_ids and request.num_computed_tokens == 0
        if not (self.enable_prefix_caching or request.shares_prefix):
            return 0
        if request.prompt_logprobs is not None:
            return 0  # prompt logprobs need every prompt position computed
        self.prefix_queries += request.num_tokens
        hits: list[int] = []
        for block_hash in self._full_block_hashes(request, request.num_tokens - 1):
            block_id = self.cached_blocks.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        for block_id in hits:
            self._take(block_id)
        request.block_ids.extend(hits)
        num_cached = len(hits) * self.block_size
        self.prefix_hits += num_cached
        return num_cached

    def cache_computed_blocks(self, request: Request) -> None:
        """Register the request's full, computed blocks under their hashes (first writer wins)."""
        if not (self.enable_prefix_caching or request.shares_prefix):
            return
        hashes = self._full_block_hashes(request, request.num_computed_tokens)
        for index in range(request.num_registered_blocks, len(hashes)):
            block_id, block_hash = request.block_ids[index], hashes[index]
            if self.block_hash[block_id] is None and block_hash not in self.cached_blocks:
                self.block_hash[block_id] = block_hash
                self.cached_blocks[block_hash] = block_id
        request.num_registered_blocks = len(hashes)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    # ---- allocation -------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            del self.free_queue[block_id]
        self.ref_counts[block_id] += 1

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hash[block_id]
        if block_hash is not None:
            if self.cached_blocks.get(block_hash) == block_id:
                del self.cached_blocks[block_hash]
            self.block_hash[block_id] = None

    def allocate(self, request: Request, num_tokens: int) -> bool:
        """Grow the request's block table to hold `num_tokens` tokens. False (and no change) when
        too few blocks are free."""
        needed = self.blocks_needed(request, num_tokens)
        if needed > len(self.free_queue):
            return False
        for _ in range(needed):
            block_id, _ = self.free_queue.popitem(last=False)
            self._evict(block_id)
            self.ref_counts[block_id] = 1
            request.block_ids.append(block_id)
        return True

    def free(self, request: Request) -> None:
        """Release the request's blocks; the tail of its chain becomes evictable first."""
        for block_id in reversed(request.block_ids):
            self.ref_counts[block_id] -= 1
            assert self.ref_counts[block_id] >= 0, f"block {block_id} freed twice"
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None
                if self.block_hash[block_id] is None:
                    self.free_queue.move_to_end(block_id, last=False)
        request.block_ids = []
        request.num_registered_blocks = 0

    def truncate(self, request: Request, num_tokens: int) -> None:
        """Drop blocks past the first `num_tokens` tokens (speculative tokens rejected)."""
        keep = -(-num_tokens // self.block_size)
        extra = request.block_ids[keep:]
        request.block_ids = request.block_ids[:keep]
        del request.block_hashes[keep:]
        request.num_registered_blocks = min(request.num_registered_blocks, len(request.block_hashes))
        for block_id in reversed(extra):
            self.ref_counts[block_id] -= 1
            if self.ref_counts[block_id] == 0:
                self.free_queue[block_id] = None
                if self.block_hash[block_id] is None:
                    self.free_queue.move_to_end(block_id, last=False)

    def check_no_leaks(self) -> None:
        """Every block free again: for tests and after the engine drains."""
        held = [i for i, rc in enumerate(self.ref_counts) if rc]
        if held or len(self.free_queue) != self.num_blocks:
            raise AssertionError(f"KV blocks still allocated: {held[:16]} (free {len(self.free_queue)}/{self.num_blocks})")
