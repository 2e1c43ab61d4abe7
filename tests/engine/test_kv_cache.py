"""KVCacheManager: block accounting, prefix-cache hits and misses, LRU eviction (pure Python)."""

from __future__ import annotations

import pytest

from floorline.engine.kv_cache import NULL_BLOCK_ID, KVCacheManager
from floorline.engine.request import Request
from floorline.sampling_params import SamplingParams

BS = 4


def make_request(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams())


def admit(kv: KVCacheManager, req: Request, num_new: int | None = None) -> list[int] | None:
    """Admits like the scheduler does, then marks the scheduled tokens computed."""
    blocks, num_cached = kv.get_computed_blocks(req)
    num_new = req.num_tokens - num_cached if num_new is None else num_new
    new = kv.allocate_slots(req, num_new, blocks)
    if new is not None:
        req.num_computed_tokens = num_cached + num_new
        kv.cache_full_blocks(req)
    return new


def test_allocate_and_free_return_every_block():
    kv = KVCacheManager(num_blocks=9, block_size=BS, enable_prefix_caching=False)
    assert kv.num_free_blocks == kv.num_usable_blocks == 8
    req = make_request("a", list(range(10)))
    new = admit(kv, req)
    assert new == req.block_ids and len(new) == 3
    assert NULL_BLOCK_ID not in new
    assert kv.num_free_blocks == 5
    assert kv.usage == pytest.approx(3 / 8)
    # Decode: token 10 fits in block 3 (slots 8..11), token 12 needs a fourth block.
    req.append_output_token(100)
    assert kv.allocate_slots(req, 1) == []
    req.num_computed_tokens += 1
    req.append_output_token(101)
    req.num_computed_tokens += 1
    req.append_output_token(102)
    assert len(kv.allocate_slots(req, 1)) == 1
    kv.check_invariants()
    kv.free(req)
    assert kv.num_free_blocks == 8 and req.block_ids == []
    kv.check_invariants()


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=5, block_size=BS, enable_prefix_caching=True)
    a = make_request("a", list(range(8)))
    admit(kv, a)
    b = make_request("b", list(range(100, 113)))  # needs 4 blocks, 2 free
    assert admit(kv, b) is None
    assert b.block_ids == [] and kv.num_free_blocks == 2
    assert kv.stats.queries == 8  # the failed admission counts nothing
    kv.check_invariants()


def test_prefix_hit_shares_blocks_and_counts_tokens():
    kv = KVCacheManager(num_blocks=17, block_size=BS, enable_prefix_caching=True)
    prefix = list(range(1, 9))  # two full blocks
    a = make_request("a", prefix + [50, 51, 52])
    admit(kv, a)
    b = make_request("b", prefix + [60, 61])
    blocks, num_cached = kv.get_computed_blocks(b)
    assert blocks == a.block_ids[:2] and num_cached == 8
    admit(kv, b)
    assert b.block_ids[:2] == a.block_ids[:2] and b.block_ids[2] != a.block_ids[2]
    assert kv.stats.hits == 8 and kv.stats.queries == 11 + 10
    assert kv.stats.hit_rate == pytest.approx(8 / 21)
    kv.check_invariants()
    # Shared blocks survive one owner leaving.
    kv.free(a)
    kv.check_invariants()
    kv.free(b)
    assert kv.num_free_blocks == 16
    kv.check_invariants()


def test_divergent_prefix_misses_even_with_equal_later_blocks():
    kv = KVCacheManager(num_blocks=17, block_size=BS, enable_prefix_caching=True)
    a = make_request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    admit(kv, a)
    # Same second block, different first: the chained key must not match.
    b = make_request("b", [0, 2, 3, 4, 5, 6, 7, 8, 9])
    assert kv.get_computed_blocks(b) == ([], 0)


def test_never_hits_the_whole_prompt():
    kv = KVCacheManager(num_blocks=17, block_size=BS, enable_prefix_caching=True)
    tokens = list(range(12))  # exactly three blocks
    a = make_request("a", tokens)
    admit(kv, a)
    b = make_request("b", tokens)
    blocks, num_cached = kv.get_computed_blocks(b)
    assert num_cached == 8 and len(blocks) == 2  # the last token is recomputed for its logits


def test_blocks_with_generated_tokens_are_cached():
    kv = KVCacheManager(num_blocks=17, block_size=BS, enable_prefix_caching=True)
    a = make_request("a", [1, 2, 3])
    admit(kv, a)
    for tok in (10, 11, 12, 13, 14):  # decode: each token is computed in the next step
        a.append_output_token(tok)
        assert kv.allocate_slots(a, 1) is not None
        a.num_computed_tokens += 1
        kv.cache_full_blocks(a)
    assert a.num_computed_tokens == 8
    b = make_request("b", [1, 2, 3, 10, 11, 12, 13, 14, 99])
    assert kv.get_computed_blocks(b) == (a.block_ids[:2], 8)


def test_uncomputed_blocks_are_not_cached():
    kv = KVCacheManager(num_blocks=17, block_size=BS, enable_prefix_caching=True)
    a = make_request("a", list(range(12)))
    admit(kv, a, num_new=5)  # a chunk: only block 0 is full and computed
    b = make_request("b", list(range(12)) + [7])
    assert kv.get_computed_blocks(b)[1] == 4


def test_lru_eviction_of_freed_cached_blocks():
    kv = KVCacheManager(num_blocks=7, block_size=BS, enable_prefix_caching=True)  # 6 usable
    a = make_request("a", [1] * 8 + [2])
    b = make_request("b", [3] * 8 + [4])
    for req in (a, b):
        admit(kv, req)
        kv.free(req)
    kv.check_invariants()
    assert kv.num_free_blocks == 6  # cached blocks count as free
    # Three fresh blocks: the two uncached tail blocks go first, then the least recently freed
    # cached one. Each request freed its tail first, so that is a's second block.
    c = make_request("c", [5] * 12)
    admit(kv, c, num_new=11)
    a2 = make_request("a2", [1] * 8 + [2])
    b2 = make_request("b2", [3] * 8 + [4])
    assert kv.get_computed_blocks(a2)[1] == 4
    assert kv.get_computed_blocks(b2)[1] == 8
    kv.free(c)
    # c's blocks are now the most recently freed: two more fresh blocks take c's uncached
    # tail block and then a's first block, the oldest cached one; b keeps its prefix.
    d = make_request("d", [6] * 8)
    admit(kv, d, num_new=7)
    kv.check_invariants()
    assert kv.get_computed_blocks(a2)[1] == 0
    assert kv.get_computed_blocks(b2)[1] == 8


def test_hit_refreshes_lru_position():
    kv = KVCacheManager(num_blocks=5, block_size=BS, enable_prefix_caching=True)  # 4 usable
    a = make_request("a", [1] * 4 + [2])
    b = make_request("b", [3] * 4 + [4])
    for req in (a, b):
        admit(kv, req)
        kv.free(req)
    # Re-use a's prefix: its block becomes the most recently freed.
    a_again = make_request("a_again", [1] * 4 + [9])
    assert admit(kv, a_again) is not None
    assert kv.stats.hits == 4
    kv.free(a_again)
    # Three fresh blocks: two uncached ones first, then the LRU cached one, which is b's now.
    c = make_request("c", [7] * 12)
    admit(kv, c, num_new=11)
    assert kv.get_computed_blocks(make_request("x", [1] * 4 + [0]))[1] == 4
    assert kv.get_computed_blocks(make_request("y", [3] * 4 + [0]))[1] == 0


def test_hit_on_free_cached_block_is_not_counted_twice():
    kv = KVCacheManager(num_blocks=4, block_size=BS, enable_prefix_caching=True)  # 3 usable
    a = make_request("a", [1] * 4 + [2])
    admit(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 3
    # Hits a's first block (free, cached), needs 3 more: only 2 others are free.
    b = make_request("b", [1] * 4 + [5] * 9)
    assert admit(kv, b) is None
    kv.check_invariants()
    c = make_request("c", [1] * 4 + [5] * 8)  # hit + 2 new blocks: fits exactly
    assert admit(kv, c) is not None
    assert kv.num_free_blocks == 0
    kv.free(c)
    assert kv.num_free_blocks == 3
    kv.check_invariants()


def test_prefix_caching_off_never_hits():
    kv = KVCacheManager(num_blocks=9, block_size=BS, enable_prefix_caching=False)
    a = make_request("a", list(range(9)))
    admit(kv, a)
    assert kv.get_computed_blocks(make_request("b", list(range(9)))) == ([], 0)
    assert kv.stats.queries == 0 and kv.stats.hit_rate == 0.0


def test_reset_prefix_cache_forgets_free_blocks_only():
    kv = KVCacheManager(num_blocks=9, block_size=BS, enable_prefix_caching=True)
    a = make_request("a", [1] * 4 + [2])
    b = make_request("b", [3] * 4 + [4])
    admit(kv, a)
    admit(kv, b)
    kv.free(a)
    kv.reset_prefix_cache()
    kv.check_invariants()
    assert kv.get_computed_blocks(make_request("x", [1] * 4 + [0]))[1] == 0
    assert kv.get_computed_blocks(make_request("y", [3] * 4 + [0]))[1] == 4
