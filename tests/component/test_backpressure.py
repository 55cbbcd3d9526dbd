"""Credit-based flow control: a slow consumer slows its producer, memory stays bounded."""

from __future__ import annotations

import time

import psutil
import pytest
import torch

from runtime.client import Client
from runtime.errors import DeadlineExceeded
from runtime.settings import RuntimeSettings
from tests.component.actors import GetStats, Work

MB = 1 << 20


async def test_a_slow_consumer_bounds_what_a_fast_producer_has_in_flight(spawn):
    window = 4
    settings = RuntimeSettings(window_messages=window, window_bytes=64 * MB)
    consumer = await spawn(
        "tests.component.actors:SlowConsumer", "consumer-0", options={"delay_s": 0.05}, settings=settings
    )
    items = 40
    payload = torch.ones(2 * MB, dtype=torch.uint8)  # 80 MB in all, 8 MB allowed in flight
    async with Client("producer", settings=settings) as client:
        baseline_rss = psutil.Process(consumer.pid).memory_info().rss
        max_in_flight = 0
        started = time.monotonic()
        for index in range(items):
            await client.tell(consumer.endpoint, Work(index, payload))
            link = client._outbox.links[consumer.endpoint]
            max_in_flight = max(max_in_flight, link.window.messages)
        send_s = time.monotonic() - started
        peak_consumer_rss = psutil.Process(consumer.pid).memory_info().rss
        stats = await client.ask(consumer.endpoint, GetStats(), timeout=30)
    assert stats.handled == list(range(items)), "every item is handled once, in order"
    assert max_in_flight <= window
    assert stats.max_queued <= window, f"the consumer held {stats.max_queued} items at once"
    # The producer was held back: it could not send faster than the consumer handled.
    assert send_s >= (items - window) * 0.05 * 0.8
    # The consumer never held more than the window's worth of payloads (plus slack).
    assert peak_consumer_rss - baseline_rss < 3 * window * 2 * MB + 16 * MB


async def test_a_message_larger_than_the_byte_window_still_goes_when_nothing_else_is_in_flight(spawn):
    settings = RuntimeSettings(window_messages=8, window_bytes=1 * MB)
    consumer = await spawn(
        "tests.component.actors:SlowConsumer", "consumer-0", options={"delay_s": 0.0}, settings=settings
    )
    async with Client("producer", settings=settings) as client:
        for index in range(3):
            await client.tell(consumer.endpoint, Work(index, torch.zeros(4 * MB, dtype=torch.uint8)), timeout=10)
        stats = await client.ask(consumer.endpoint, GetStats(), timeout=10)
    assert stats.handled == [0, 1, 2]


async def test_a_producer_without_credit_fails_at_its_send_deadline(spawn):
    settings = RuntimeSettings(window_messages=2)
    consumer = await spawn(
        "tests.component.actors:SlowConsumer", "consumer-0", options={"delay_s": 5.0}, settings=settings
    )
    async with Client("producer", settings=settings) as client:
        await client.tell(consumer.endpoint, Work(0, torch.zeros(1)))
        await client.tell(consumer.endpoint, Work(1, torch.zeros(1)))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no flow-control credit"):
            await client.tell(consumer.endpoint, Work(2, torch.zeros(1)), timeout=0.5)
        assert time.monotonic() - started < 2.0
    consumer.kill()  # it would take 10 s to finish the two slow items
