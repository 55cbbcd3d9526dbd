"""The batcher with a real backend (the tiny Qwen2 of test_generation) on a real worker
thread, without HTTP: batches, a bounded queue, a failing batch, clients that leave."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from launch.serving.batcher import Batcher, Completion, GenerationFailed, QueueFullError, TextDelta
from launch.serving.metrics import ServingMetrics
from launch.serving.service import ServeConfig
from roles.generation import HFBackend, SamplingParams, load_causal_lm
from tests.unit.test_generation import one_thread, tiny_model, tiny_tokenizer  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return load_causal_lm(path)


@pytest.fixture
async def batcher(loaded) -> AsyncIterator[Batcher]:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    running = Batcher(HFBackend(model, tokenizer), tokenizer, ServingMetrics(), max_batch=4, max_wait_s=0.05,
                      max_queue=3)
    yield running
    running.close()


@contextlib.asynccontextmanager
async def running(batcher: Batcher) -> AsyncIterator[None]:
    """The batcher's task for the duration of the block, cancelled and awaited after it."""
    task = asyncio.create_task(batcher.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def batches_of_3_or_4(batcher: Batcher) -> float:
    """Batches counted in the (2, 4] bucket of ``troupe_batch_size``."""
    return (batcher.metrics.value("troupe_batch_size_bucket", le="4.0")
            - batcher.metrics.value("troupe_batch_size_bucket", le="2.0"))


def submit(batcher: Batcher, prompt_ids: list[int], stream: bool = False, **params: object):  # type: ignore[no-untyped-def]
    return batcher.submit(prompt_ids, SamplingParams(**{"max_new_tokens": 6, "top_k": 1, **params}), stream=stream,
                          endpoint="/generate", received_at=time.monotonic())


async def test_waiting_requests_run_as_one_batch_and_each_gets_its_own_answer(batcher: Batcher) -> None:
    tickets = [submit(batcher, [5, 6, 7], max_new_tokens=length) for length in (2, 4, 6)]
    async with running(batcher):
        answers = [await ticket.completions(30) for ticket in tickets]
    assert [answer[0].completion_tokens for answer in answers] == [2, 4, 6]
    assert answers[2][0].text.startswith(answers[1][0].text)  # greedy: the shorter ones are prefixes
    assert batches_of_3_or_4(batcher) == 1  # one batch, in the (2, 4] bucket


async def test_a_stream_gets_deltas_that_add_up_to_its_completion(batcher: Batcher) -> None:
    ticket = submit(batcher, [5, 6, 7], stream=True, max_new_tokens=8)
    async with running(batcher):
        events = [event async for event in ticket.stream_events(30)]
    deltas = [event.text for event in events if isinstance(event, TextDelta)]
    [done] = [event for event in events if isinstance(event, Completion)]
    assert events[-1] == done and "".join(deltas) == done.text and len(deltas) > 1


async def test_a_full_queue_refuses_with_a_retry_time_and_takes_requests_again_once_it_drains(batcher: Batcher) -> None:
    tickets = [submit(batcher, [5, 6]) for _ in range(3)]
    with pytest.raises(QueueFullError, match="3 requests already waiting") as refused:
        submit(batcher, [5, 6])
    assert refused.value.retry_after_s >= 1 and batcher.metrics.value("troupe_requests_rejected_total") == 1
    async with running(batcher):
        for ticket in tickets:
            await ticket.completions(30)
        later = submit(batcher, [5, 6])
        assert len(await later.completions(30)) == 1


async def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs(batcher: Batcher) -> None:
    broken = submit(batcher, [10**6])  # no such token: the embedding lookup raises on the worker thread
    async with running(batcher):
        with pytest.raises(GenerationFailed, match="generation failed: IndexError"):
            await broken.completions(30)
        fine = submit(batcher, [5, 6])
        assert len(await fine.completions(30)) == 1


async def test_a_waiting_request_whose_client_left_gives_back_its_queue_slot(batcher: Batcher) -> None:
    tickets = [submit(batcher, [5, 6]) for _ in range(3)]
    tickets[1].abandon()
    assert batcher.metrics.value("troupe_queue_depth") == 2
    later = submit(batcher, [5, 6])  # the queue holds 3: the slot is free again
    async with running(batcher):
        for ticket in (tickets[0], tickets[2], later):
            assert len(await ticket.completions(30)) == 1
    assert batcher.metrics.value("troupe_queue_depth") == 0 and batches_of_3_or_4(batcher) == 1
    assert tickets[1].events.empty()


async def test_a_waiting_request_whose_client_left_is_not_counted_once_the_batcher_idles(batcher: Batcher) -> None:
    gone = submit(batcher, [5, 6])
    gone.abandon()
    async with running(batcher):
        await asyncio.sleep(0.2)  # several max_wait_s: the batcher has looked at the queue and now idles
        assert batcher.metrics.value("troupe_queue_depth") == 0
        assert batcher.metrics.value("troupe_requests_running") == 0
    assert batcher.metrics.value("troupe_batch_size_count") == 0  # nothing ran


async def test_a_batch_whose_clients_all_left_stops_at_its_next_step(batcher: Batcher) -> None:
    ticket = submit(batcher, [5, 6, 7], stream=True, max_new_tokens=2000, ignore_eos=True)
    async with running(batcher):
        events = ticket.stream_events(30)
        assert isinstance(await anext(events), TextDelta)
        await events.aclose()
        ticket.abandon()
        deadline = time.monotonic() + 30
        while batcher.metrics.value("troupe_requests_running") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert batcher.metrics.value("troupe_requests_running") == 0
        later = submit(batcher, [5, 6], max_new_tokens=3)
        assert (await later.completions(30))[0].completion_tokens == 3
    assert batcher.metrics.value("troupe_generated_tokens_total") < 2000 / 2


async def test_by_default_a_lone_request_starts_at_once_and_those_queued_meanwhile_go_together(loaded) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded
    default_wait_s = ServeConfig(model=Path("unused")).max_wait_ms / 1000
    assert default_wait_s == 0.0  # a lone request does not wait for company that may never come
    eager = Batcher(HFBackend(model, tokenizer), tokenizer, ServingMetrics(), max_batch=4, max_wait_s=default_wait_s,
                    max_queue=8)
    try:
        async with running(eager):
            lone = submit(eager, [5, 6, 7], max_new_tokens=400, ignore_eos=True)
            deadline = time.monotonic() + 30
            while not eager.metrics.value("troupe_requests_running") and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            assert eager.metrics.value("troupe_requests_running") == 1  # it runs alone: nothing waited for company
            queued = [submit(eager, [5, 6]) for _ in range(3)]  # they arrive while the lone batch runs
            assert eager.metrics.value("troupe_queue_depth") == 3
            for ticket in (lone, *queued):
                assert len(await ticket.completions(60)) == 1
    finally:
        eager.close()
    assert eager.metrics.value("troupe_batch_size_count") == 2  # the lone request's batch, then the three together
    assert batches_of_3_or_4(eager) == 1
