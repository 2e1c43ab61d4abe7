"""Scheduler: budgets, chunked prefill, preemption, admission, prefix caching, stops, aborts.

A fake runner mirrors the runner's side from the scheduler's messages only. It "writes" KV as a
fingerprint of the whole prefix at each slot and checks every slot it reads, so a block shared,
evicted or reused wrongly shows up as a wrong fingerprint. Its sampled token depends only on the
request id and the tokens so far, so every schedule must produce the same outputs.
"""

from __future__ import annotations

import random
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from floorline.config import SchedulerConfig
from floorline.engine.outputs import Logprob, RunnerOutput, SchedulerOutput
from floorline.engine.request import Request, RequestStatus, RequestUpdate
from floorline.engine.scheduler import Scheduler
from floorline.errors import FloorlineError, InvalidRequestError
from floorline.sampling_params import SamplingParams

BS = 4
EOS = 2


def default_token(rid: str, tokens: list[int]) -> int:
    """A token that depends only on the request and its tokens; never EOS."""
    return 10 + zlib.crc32(f"{rid}:{len(tokens)}:{tokens[-1]}".encode()) % 1000


@dataclass
class _RunnerState:
    token_ids: list[int]
    num_computed: int
    block_ids: list[int]
    prints: list[int] = field(default_factory=list)  # prefix fingerprint per position


class FakeRunner:
    def __init__(self, block_size: int = BS, token_fn: Callable = default_token) -> None:
        self.block_size = block_size
        self.token_fn = token_fn
        self.reqs: dict[str, _RunnerState] = {}
        self.slots: dict[tuple[int, int], int] = {}  # (block, offset) -> fingerprint

    def _print(self, st: _RunnerState, pos: int) -> int:
        while len(st.prints) <= pos:
            prev = st.prints[-1] if st.prints else 0
            st.prints.append(hash((prev, st.token_ids[len(st.prints)])))
        return st.prints[pos]

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        for rid in out.finished_request_ids | out.preempted_request_ids:
            self.reqs.pop(rid, None)
        for new in out.new_requests:
            assert new.request_id not in self.reqs, "sent in full twice"
            self.reqs[new.request_id] = _RunnerState(
                list(new.token_ids), new.num_computed_tokens, list(new.block_ids)
            )
        for cached in out.cached_requests:
            st = self.reqs[cached.request_id]
            assert st.num_computed == cached.num_computed_tokens
            st.block_ids += cached.new_block_ids
        ids = {r.request_id for r in out.new_requests} | {r.request_id for r in out.cached_requests}
        assert ids == set(out.num_scheduled_tokens)

        bs, result = self.block_size, RunnerOutput()
        for rid, n in out.num_scheduled_tokens.items():
            st = self.reqs[rid]
            end = st.num_computed + n
            assert n > 0 and end <= len(st.token_ids)
            assert len(st.block_ids) * bs >= end and 0 not in st.block_ids
            for pos in range(st.num_computed, end):  # write this step's KV
                self.slots[(st.block_ids[pos // bs], pos % bs)] = self._print(st, pos)
            for pos in range(end):  # attention reads every earlier slot
                assert self.slots[(st.block_ids[pos // bs], pos % bs)] == self._print(st, pos), (
                    f"{rid}: wrong KV at position {pos}"
                )
            st.num_computed = end
            if end == len(st.token_ids):
                token = self.token_fn(rid, st.token_ids)
                result.sampled_token_ids[rid] = token
                st.token_ids.append(token)
        return result


def make_scheduler(
    num_blocks: int = 64,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 32,
    max_model_len: int = 128,
    chunked: bool = True,
    prefix: bool = True,
) -> Scheduler:
    cfg = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=chunked,
    )
    return Scheduler(cfg, num_blocks=num_blocks, block_size=BS, enable_prefix_caching=prefix)


def req(rid: str, prompt: list[int] | int, **params) -> Request:
    tokens = list(range(100, 100 + prompt)) if isinstance(prompt, int) else prompt
    params.setdefault("max_tokens", 8)
    return Request(rid, tokens, SamplingParams(**params), eos_token_ids=frozenset({EOS}))


def step(sched: Scheduler, runner: FakeRunner) -> tuple[SchedulerOutput, list[RequestUpdate]]:
    out = sched.schedule()
    cfg = sched.config
    assert out.total_num_scheduled_tokens <= cfg.max_num_batched_tokens
    assert len(out.num_scheduled_tokens) <= cfg.max_num_seqs
    assert sched.num_running <= cfg.max_num_seqs
    updates = sched.update(out, runner.execute(out))
    sched.kv.check_invariants()
    return out, updates


def run_all(sched: Scheduler, runner: FakeRunner, max_steps: int = 5000) -> dict[str, Request]:
    """Steps until done; returns the finished requests by id."""
    live = dict(sched.requests)
    for _ in range(max_steps):
        if not sched.has_unfinished_requests():
            break
        live.update(sched.requests)
        step(sched, runner)
    assert not sched.has_unfinished_requests(), "no progress"
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks
    return live


def expected_output(r: Request) -> list[int]:
    tokens = list(r.prompt_token_ids)
    for _ in range(r.num_output_tokens):
        tokens.append(default_token(r.request_id, tokens))
    return tokens[r.num_prompt_tokens :]


# ---- budgets and batching ----------------------------------------------------------------------


def test_budget_and_seat_cap_hold_and_everyone_finishes():
    sched = make_scheduler(max_num_seqs=3, max_num_batched_tokens=10)
    for i in range(7):
        sched.add_request(req(f"r{i}", 5 + 3 * i, max_tokens=6))
    done = run_all(sched, FakeRunner())
    for r in done.values():
        assert r.finish_reason == "length" and r.num_output_tokens == 6
        assert r.output_token_ids == expected_output(r)


def test_chunked_prefill_splits_a_long_prompt_and_mixes_with_decodes():
    sched, runner = make_scheduler(max_num_batched_tokens=16), FakeRunner()
    sched.add_request(req("short", 3, max_tokens=20))
    step(sched, runner)  # short's prefill
    sched.add_request(req("long", 40))
    chunks = []
    for _ in range(4):
        out, updates = step(sched, runner)
        assert out.num_scheduled_tokens["short"] == 1  # the decode goes first
        chunks.append(out.num_scheduled_tokens["long"])
        got_token = any(u.request_id == "long" for u in updates)
        assert got_token == (sum(chunks) >= 40)  # a token only once the prompt is done
    assert chunks == [15, 15, 10, 1]


def test_without_chunking_a_prompt_runs_whole():
    sched = make_scheduler(max_num_batched_tokens=64, max_model_len=64, chunked=False, prefix=False)
    runner = FakeRunner()
    sched.add_request(req("a", 40))
    sched.add_request(req("b", 30))
    out, _ = step(sched, runner)
    assert out.num_scheduled_tokens == {"a": 40}  # b does not fit beside it, nor in part
    out, _ = step(sched, runner)
    assert out.num_scheduled_tokens == {"a": 1, "b": 30}
    run_all(sched, runner)


def test_chunking_off_needs_a_budget_for_a_whole_context():
    with pytest.raises(FloorlineError, match="max_num_batched_tokens"):
        make_scheduler(max_num_batched_tokens=32, max_model_len=128, chunked=False)


def test_new_request_is_sent_in_full_once():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(req("a", 6, max_tokens=3))
    out, _ = step(sched, runner)
    assert [n.request_id for n in out.new_requests] == ["a"] and not out.cached_requests
    out, _ = step(sched, runner)
    assert not out.new_requests and [c.request_id for c in out.cached_requests] == ["a"]
    step(sched, runner)
    out = sched.schedule()
    assert out.finished_request_ids == {"a"} and out.is_empty


# ---- preemption --------------------------------------------------------------------------------


def test_preemption_takes_the_newest_and_resumes_in_arrival_order():
    # 9 usable blocks of 4: three requests of 8 + 12 tokens need 5 blocks each.
    sched, runner = make_scheduler(num_blocks=10), FakeRunner()
    for rid in ("a", "b", "c"):
        sched.add_request(req(rid, 8, max_tokens=12))
    preempted = []
    for _ in range(200):
        if not sched.has_unfinished_requests():
            break
        out, _ = step(sched, runner)
        if out.preempted_request_ids:
            assert not out.new_requests  # no admission in a step that preempted
            running = [r.request_id for r in sched.running]
            assert all(p > r for p in out.preempted_request_ids for r in running)
            preempted += sorted(out.preempted_request_ids, reverse=True)
        for new in out.new_requests:
            r = sched.get_request(new.request_id)
            if r.num_preemptions:  # resumed: carries what it generated before
                assert len(new.token_ids) > 8
                assert new.token_ids == r.all_token_ids[: len(new.token_ids)]
    assert preempted and preempted[0] == "c"
    assert sched.num_preemptions == len(preempted)
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks


def test_preempted_requests_resume_fairly_and_finish_like_an_unpreempted_run():
    def run(num_blocks: int) -> tuple[dict[str, list[int]], int]:
        sched, runner = make_scheduler(num_blocks=num_blocks, prefix=False), FakeRunner()
        for i in range(6):
            sched.add_request(req(f"r{i}", 6 + i, max_tokens=14))
        outputs: dict[str, list[int]] = {}
        for _ in range(1000):
            if not sched.has_unfinished_requests():
                break
            waiting_before = [r.request_id for r in sched.waiting]
            out, updates = step(sched, runner)
            admitted = [n.request_id for n in out.new_requests]
            assert admitted == waiting_before[: len(admitted)]  # FCFS by arrival
            for u in updates:
                outputs.setdefault(u.request_id, []).extend(u.new_token_ids)
                if u.finish_reason:
                    assert u.finish_reason == "length"
        return outputs, sched.num_preemptions

    roomy, n_roomy = run(num_blocks=64)
    tight, n_tight = run(num_blocks=12)
    assert n_roomy == 0 and n_tight > 0
    assert tight == roomy and all(len(v) == 14 for v in tight.values())


def test_lone_request_stops_at_the_pool_limit():
    # 4 usable blocks = 16 tokens: a lone request may reach 17 tokens (the last needs no KV).
    sched, runner = make_scheduler(num_blocks=5), FakeRunner()
    sched.add_request(req("a", 10, max_tokens=50))
    done = run_all(sched, runner)
    assert done["a"].finish_reason == "length" and done["a"].num_tokens == 17
    assert sched.num_preemptions == 0


# ---- admission ---------------------------------------------------------------------------------


def test_admission_errors_add_nothing():
    sched = make_scheduler(num_blocks=5, max_model_len=64)  # 4 usable blocks: 16 tokens
    with pytest.raises(InvalidRequestError, match="empty"):
        sched.add_request(req("empty", []))
    with pytest.raises(InvalidRequestError, match=r"64 tokens.*at most 63"):
        sched.add_request(req("long", 64))
    with pytest.raises(InvalidRequestError, match=r"17 tokens and needs 5 KV blocks.*only 4"):
        sched.add_request(req("big", 17))
    assert not sched.has_unfinished_requests() and sched.num_waiting == 0
    sched.add_request(req("ok", 16, max_tokens=1))
    with pytest.raises(InvalidRequestError, match="already in use"):
        sched.add_request(req("ok", 3))


def test_a_request_too_big_for_the_pool_is_refused_while_others_run():
    sched, runner = make_scheduler(num_blocks=9), FakeRunner()  # 8 usable blocks
    sched.add_request(req("a", 10, max_tokens=10))
    step(sched, runner)
    with pytest.raises(InvalidRequestError, match="KV blocks"):
        sched.add_request(req("huge", 40))
    sched.add_request(req("b", 5, max_tokens=4))
    done = run_all(sched, runner)
    assert set(done) == {"a", "b"}
    assert done["a"].num_output_tokens == 10 and done["b"].num_output_tokens == 4


# ---- prefix caching ----------------------------------------------------------------------------


def test_shared_prefix_hits_and_divergent_prefix_misses():
    sched, runner = make_scheduler(), FakeRunner()
    shared = list(range(200, 212))  # three full blocks
    sched.add_request(req("a", shared + [1, 3], max_tokens=2))
    run_all(sched, runner)
    sched.add_request(req("b", shared + [5, 6, 7]))
    out, _ = step(sched, runner)
    assert out.new_requests[0].num_computed_tokens == 12
    assert out.num_scheduled_tokens == {"b": 3}
    stats = sched.get_stats()
    assert stats.prefix_cache_hits == 12 and stats.prefix_cache_queries == 14 + 15
    sched.add_request(req("c", [999] + shared[1:] + [5, 6, 7]))  # differs in the first token
    out, _ = step(sched, runner)
    assert out.new_requests[0].num_computed_tokens == 0
    assert sched.get_stats().prefix_cache_hits == 12
    run_all(sched, runner)


def test_generated_tokens_are_cached_for_later_requests():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(req("a", 5, max_tokens=10))
    done = run_all(sched, runner)
    conversation = done["a"].all_token_ids + [7, 7]  # a follow-up turn: 17 tokens
    sched.add_request(req("a2", conversation))
    out, _ = step(sched, runner)
    assert out.new_requests[0].num_computed_tokens == 12  # blocks holding computed output too


def test_prefix_caching_off_never_hits():
    sched, runner = make_scheduler(prefix=False), FakeRunner()
    sched.add_request(req("a", 12, max_tokens=1))
    run_all(sched, runner)
    sched.add_request(req("b", 13))
    out, _ = step(sched, runner)
    assert out.new_requests[0].num_computed_tokens == 0
    assert sched.get_stats().prefix_cache_hit_rate == 0.0


# ---- stops -------------------------------------------------------------------------------------


def scripted(tokens: dict[str, list[int]]) -> Callable:
    def token_fn(rid: str, seq: list[int]) -> int:
        script = tokens[rid]
        return script.pop(0) if script else 50

    return token_fn


def test_stop_conditions():
    sched = make_scheduler(max_model_len=12)
    runner = FakeRunner(token_fn=scripted({
        "eos": [5, EOS, 6],
        "ignore": [EOS, EOS, 7],
        "min": [EOS, EOS, 8],
        "stop_id": [5, 33, 6],
        "ctx": [],
    }))
    sched.add_request(req("eos", 3))
    sched.add_request(req("ignore", 3, ignore_eos=True, max_tokens=3))
    sched.add_request(req("min", 3, min_tokens=2))
    sched.add_request(req("stop_id", 3, stop_token_ids=[33]))
    sched.add_request(req("ctx", 9, max_tokens=None))
    done = run_all(sched, runner)
    got = {rid: (r.output_token_ids, r.finish_reason, r.stop_reason) for rid, r in done.items()}
    assert got["eos"] == ([5, EOS], "stop", None)
    assert got["ignore"] == ([EOS, EOS, 7], "length", None)
    assert got["min"] == ([EOS, EOS], "stop", None)
    assert got["stop_id"] == ([5, 33], "stop", 33)
    assert got["ctx"] == ([50, 50, 50], "length", None)  # 9 + 3 = max_model_len


def test_updates_report_tokens_logprobs_and_finish():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(req("a", 4, max_tokens=2))
    out = sched.schedule()
    res = runner.execute(out)
    res.logprobs["a"] = Logprob(-0.5, {1: -0.5})
    (u,) = sched.update(out, res)
    assert u.request_id == "a" and u.new_logprobs == [Logprob(-0.5, {1: -0.5})] and not u.finished
    _, (u,) = step(sched, runner)
    assert u.finish_reason == "length" and u.new_logprobs == []


def test_finish_requests_for_a_stop_string():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(req("a", 6, max_tokens=50))
    step(sched, runner)
    step(sched, runner)
    r = sched.get_request("a")
    sched.finish_requests(["a"], "stop", stop_reason="\n\n")
    assert r.status is RequestStatus.FINISHED and r.stop_reason == "\n\n"
    assert sched.get_request("a") is None
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks
    assert sched.schedule().finished_request_ids == {"a"}


# ---- aborts ------------------------------------------------------------------------------------


def test_abort_frees_everything():
    sched, runner = make_scheduler(num_blocks=12, max_num_seqs=2), FakeRunner()
    for i in range(4):
        sched.add_request(req(f"r{i}", 10, max_tokens=30))
    for _ in range(3):
        step(sched, runner)
    assert sched.num_running == 2 and sched.num_waiting == 2
    sched.abort_requests(["r0", "r3", "unknown"])
    assert sched.num_running == 1 and sched.num_waiting == 1
    out, _ = step(sched, runner)
    assert out.finished_request_ids == {"r0"}  # r3 never reached the runner
    sched.abort_requests("r1")  # one id as a plain string
    sched.abort_requests(["r2"])
    assert not sched.has_unfinished_requests()
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks
    assert sched.get_stats().kv_cache_usage == 0.0
    assert sched.stats()["num_running"] == 0 and sched.stats()["num_preemptions"] == 0
    sched.kv.check_invariants()


def test_abort_between_schedule_and_update_is_ignored():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(req("a", 5))
    out = sched.schedule()
    res = runner.execute(out)
    sched.abort_requests(["a"])
    assert sched.update(out, res) == []
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks


# ---- randomized workload -----------------------------------------------------------------------


@pytest.mark.parametrize("chunked,prefix", [(True, True), (True, False), (False, True)])
def test_random_workload_keeps_block_accounting(chunked: bool, prefix: bool):
    rng = random.Random(1234)
    sched = make_scheduler(
        num_blocks=25, max_num_seqs=6, max_num_batched_tokens=64 if not chunked else 24,
        max_model_len=64, chunked=chunked, prefix=prefix,
    )
    runner = FakeRunner()
    prefixes = [[rng.randrange(10, 900) for _ in range(rng.randrange(4, 20))] for _ in range(3)]
    aborted, finished, next_id = set(), {}, 0
    for _ in range(3000):
        if next_id < 120 and rng.random() < 0.5:
            base = rng.choice(prefixes) if rng.random() < 0.5 else []
            prompt = base + [rng.randrange(10, 900) for _ in range(rng.randrange(1, 30))]
            prompt = prompt[: rng.randrange(1, 60)]
            sched.add_request(req(f"q{next_id:03d}", prompt, max_tokens=rng.randrange(1, 25)))
            next_id += 1
        live = dict(sched.requests)
        if live and rng.random() < 0.05:
            victim = rng.choice(sorted(live))
            sched.abort_requests([victim])
            aborted.add(victim)
        _, updates = step(sched, runner)
        for u in updates:
            if u.finished:
                finished[u.request_id] = live[u.request_id]
        if next_id >= 120 and not sched.has_unfinished_requests():
            break
    assert next_id == 120 and not sched.has_unfinished_requests()
    assert set(finished) | aborted == {f"q{i:03d}" for i in range(120)}
    assert sched.kv.num_free_blocks == sched.kv.num_usable_blocks
    sched.kv.check_invariants()
    for r in finished.values():
        assert r.output_token_ids == expected_output(r)
        limit = min(r.sampling_params.max_tokens, sched.max_seq_len - r.num_prompt_tokens)
        assert r.num_output_tokens == limit
    assert sched.num_preemptions > 0
    if prefix:
        assert sched.get_stats().prefix_cache_hits > 0


def test_scheduler_and_kv_cache_do_not_import_torch():
    code = (
        "import sys, floorline.engine.scheduler, floorline.engine.kv_cache; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
