"""The paged KV block pool: reference counts, per-request block lists, prefix caching (no torch).

Block 0 is reserved as the null block: it is never handed out, and the runner pads block tables
with it. A request's KV lives in `request.block_ids` (token i sits in block_ids[i // block_size]).

Prefix caching: once a block's tokens are all computed, the block is registered under a key that
chains its parent's key with its own tokens (sha256, so two different prefixes never share a
key). A later request whose prompt starts with the same full blocks reuses them. A block whose
reference count drops to zero stays cached, on the free queue, until a fresh block is needed;
the free queue hands out the least recently freed block first (LRU eviction).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from floorline.engine.request import Request

NULL_BLOCK_ID = 0
_ROOT_KEY = b"floorline-prefix-root"


def hash_block(parent_key: bytes, token_ids: Sequence[int]) -> bytes:
    """The prefix-cache key of a full block: covers every token from position 0 to its end."""
    return hashlib.sha256(parent_key + array("q", token_ids).tobytes()).digest()


@dataclass
class PrefixCacheStats:
    """Prefix-cache lookups counted in tokens, once per admission of a request."""

    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVCacheManager:
    """Hands out KV blocks to requests and reuses cached prefixes."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (block 0 is reserved), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching

        self._ref_cnt = [0] * num_blocks
        self._block_key: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}  # key -> block id
        # Blocks with no reference, oldest first; cached ones are evicted from the front.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self._req_blocks: dict[str, list[int]] = {}  # request id -> request.block_ids
        self._req_keys: dict[str, list[bytes]] = {}  # request id -> keys of its full blocks
        self._req_num_cached: dict[str, int] = {}  # request id -> leading blocks registered
        self.stats = PrefixCacheStats()

    # ---- capacity ---------------------------------------------------------------------------

    @property
    def num_usable_blocks(self) -> int:
        """Blocks a request can get (all but the null block)."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached-but-evictable ones included."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix lookup ----------------------------------------------------------------------

    def _keys(self, request: Request, num_full_blocks: int) -> list[bytes]:
        """The chained keys of the request's first `num_full_blocks` blocks (memoized)."""
        keys = self._req_keys.setdefault(request.request_id, [])
        tokens, bs = request.all_token_ids, self.block_size
        while len(keys) < num_full_blocks:
            i = len(keys)
            parent = keys[-1] if keys else _ROOT_KEY
            keys.append(hash_block(parent, tokens[i * bs : (i + 1) * bs]))
        return keys

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """The longest run of cached full blocks that starts the request, and its token count.

        Never covers the whole sequence: the last token must be computed so it has logits.
        Call it for a request that holds no blocks, right before `allocate_slots`.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        block_ids: list[int] = []
        for key in self._keys(request, max_blocks)[:max_blocks]:
            block_id = self._cached.get(key)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids, len(block_ids) * self.block_size

    # ---- allocation -------------------------------------------------------------------------

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        computed_blocks: list[int] | None = None,
    ) -> list[int] | None:
        """Gives the request room for `num_new_tokens` more tokens; returns the new block ids.

        `computed_blocks` (from `get_computed_blocks`) marks the request's admission: they are
        taken as its first blocks. Returns None, changing nothing, when the pool is short.
        """
        computed = computed_blocks or []
        if computed and request.block_ids:
            raise ValueError(f"{request.request_id}: computed blocks given but blocks held")
        num_computed = request.num_computed_tokens + request.num_inflight_tokens + len(computed) * self.block_size
        num_held = len(request.block_ids) + len(computed)
        num_new_blocks = max(0, self.blocks_needed(num_computed + num_new_tokens) - num_held)
        # A cached hit on the free queue stops being free once this request takes it.
        num_hits_on_free = sum(1 for b in computed if self._ref_cnt[b] == 0)
        if num_new_blocks > self.num_free_blocks - num_hits_on_free:
            return None

        rid = request.request_id
        if computed_blocks is not None:
            self._req_blocks[rid] = request.block_ids
            if self.enable_prefix_caching:
                self.stats.queries += request.num_tokens
                self.stats.hits += len(computed) * self.block_size
            self._req_num_cached[rid] = len(computed)
        for block_id in computed:
            if self._ref_cnt[block_id] == 0:
                del self._free[block_id]
            self._ref_cnt[block_id] += 1
        request.block_ids.extend(computed)

        new_blocks = [self._pop_free_block() for _ in range(num_new_blocks)]
        request.block_ids.extend(new_blocks)
        self._req_blocks[rid] = request.block_ids
        return new_blocks

    def _pop_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        key = self._block_key[block_id]
        if key is not None:  # evict: the cached prefix it held is gone
            if self._cached.get(key) == block_id:
                del self._cached[key]
            self._block_key[block_id] = None
        self._ref_cnt[block_id] = 1
        return block_id

    def cache_full_blocks(self, request: Request) -> None:
        """Registers the request's full, computed blocks so later requests can reuse them.

        Called after each step, once `num_computed_tokens` has advanced (the KV is written).
        """
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        num_full = min(request.num_computed_tokens // self.block_size, len(request.block_ids))
        start = self._req_num_cached.get(rid, 0)
        if num_full <= start:
            return
        keys = self._keys(request, num_full)
        for i in range(start, num_full):
            block_id = request.block_ids[i]
            if self._block_key[block_id] is None and keys[i] not in self._cached:
                self._block_key[block_id] = keys[i]
                self._cached[keys[i]] = block_id
            # else: already registered (a hit), or a twin computed concurrently; keep one copy
        self._req_num_cached[rid] = num_full

    def free(self, request: Request) -> None:
        """Returns the request's blocks; cached ones stay reusable until evicted."""
        rid = request.request_id
        # Free the tail first: with LRU eviction the end of a sequence, the part least likely
        # to be shared, goes before the prefix that other requests may hit.
        for block_id in reversed(request.block_ids):
            self._ref_cnt[block_id] -= 1
            if self._ref_cnt[block_id] == 0:
                self._free[block_id] = None
                if self._block_key[block_id] is None:
                    # Nothing worth keeping in it: hand it out before any cached block.
                    self._free.move_to_end(block_id, last=False)
        request.block_ids = []
        self._req_blocks.pop(rid, None)
        self._req_keys.pop(rid, None)
        self._req_num_cached.pop(rid, None)

    def reset_prefix_cache(self) -> None:
        """Forgets every cached prefix that no request holds (e.g. between benchmark runs)."""
        for block_id in self._free:
            key = self._block_key[block_id]
            if key is not None:
                if self._cached.get(key) == block_id:
                    del self._cached[key]
                self._block_key[block_id] = None

    # ---- debugging --------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raises AssertionError when the block accounting is inconsistent (tests use it)."""
        counts = [0] * self.num_blocks
        for blocks in self._req_blocks.values():
            for block_id in blocks:
                assert block_id != NULL_BLOCK_ID, "null block handed out"
                counts[block_id] += 1
        assert counts == self._ref_cnt, "reference counts differ from the block lists"
        free = {b for b in range(1, self.num_blocks) if counts[b] == 0}
        assert free == set(self._free), "free queue differs from the unreferenced blocks"
        for key, block_id in self._cached.items():
            assert self._block_key[block_id] == key, "cache map and block keys disagree"
        assert sum(k is not None for k in self._block_key) == len(self._cached)
