"""AsyncLLMEngine on its own (no HTTP): streams, cancellation, capacity, shutdown that drains or aborts."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from floorline.engine.async_engine import AsyncLLMEngine, EngineDeadError, QueueFullError
from floorline.engine.engine import EngineArgs, LLMEngine
from floorline.sampling_params import SamplingParams

PROMPT = [1, 9690, 198, 2683, 359, 253]  # token ids: no tokenizer work needed


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def held(engine) -> tuple[int, int, int]:
    kv = engine.scheduler.kv
    return len(engine.requests), len(engine.scheduler.requests), kv.num_usable_blocks - kv.num_free_blocks


@pytest.fixture(scope="module")
def llm_engine():
    """One engine for the module, built off the main thread (as `from_engine_args` does; see its note)."""
    args = EngineArgs(device="cpu", max_model_len=256, num_kv_blocks=64, max_num_seqs=4)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(LLMEngine, args).result()


def test_stream_cancel_capacity_and_draining_shutdown(llm_engine):
    front = AsyncLLMEngine(llm_engine, max_queued_requests=1)

    async def main() -> None:
        front.start()
        # A full stream: one output per token, the last one finished.
        outs = [o async for o in front.generate("a", PROMPT, greedy(3))]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 3
        # Cancelling the consumer task aborts the request.
        async def consume() -> None:
            async for _ in front.generate("b", PROMPT, greedy(200)):
                pass
        task = asyncio.create_task(consume())
        while front.stats.num_running == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert front.num_unfinished == 0
        assert await front.call(held) == (0, 0, 0)
        # Capacity: max_num_seqs (4) + 1 queued sequences; n counts each.
        hogs = [await front.add_request(f"c{i}", PROMPT, greedy(200)) for i in range(2)]
        hogs.append(await front.add_request("c2", PROMPT, SamplingParams(n=3, max_tokens=200)))
        with pytest.raises(QueueFullError):
            await front.add_request("c3", PROMPT, greedy(2))
        for s in hogs:
            front.abort(s.request_id)
        # Shutdown lets the admitted requests finish, then stops the thread.
        streams = [await front.add_request(f"d{i}", PROMPT, greedy(3)) for i in range(2)]
        await front.shutdown(drain_timeout_s=120)
        for s in streams:
            last = [o async for o in s][-1]
            assert last.finished and last.outputs[0].finish_reason == "length"
        with pytest.raises(EngineDeadError):
            await front.add_request("e", PROMPT, greedy(2))

    asyncio.run(main())
    assert not front.is_alive
    assert held(front.engine) == (0, 0, 0)


def test_shutdown_past_its_timeout_aborts_and_frees(llm_engine):
    front = AsyncLLMEngine(llm_engine)  # a new front (and thread) over the same engine

    async def main() -> None:
        front.start()
        stream = await front.add_request("long", PROMPT, greedy(100))
        await front.shutdown(drain_timeout_s=0.0)
        with pytest.raises(EngineDeadError, match="shutting down"):
            async for _ in stream:
                pass

    asyncio.run(main())
    assert held(front.engine) == (0, 0, 0)
    front.engine.scheduler.kv.check_invariants()
