"""Dynamic batching: requests queue on the event loop, one task groups them, one thread
generates.

A handler `submit`s a tokenized request and gets a `Ticket`; the ticket's events (text
deltas for streams, then one `Completion` per choice, or a `Failure`) arrive on a queue
the handler reads. `Batcher.run` takes the oldest waiting request, waits until the
batch holds ``max_batch`` requests or the oldest has waited ``max_wait_s``, and runs the
batch on the generation thread with `HFBackend.generate_requests` (each request keeps
its own sampling parameters and seed, so requests never wait for a compatible batch).
While a batch runs, new requests queue; the next batch takes them at once, since they
have already waited.

The thread reports every decoding step back with ``call_soon_threadsafe``: the tokens
(for time to first token and the token counter) and, for finished rows, the final text,
so a short response is answered as soon as its row ends, not when its batch does.
Decoding happens on the thread, with its own copy of the tokenizer, so the loop only
moves small tuples and never blocks.

The waiting queue is bounded: a full queue raises `QueueFullError`, which the service
answers with 503 and a Retry-After estimated from recent batch durations.

A client that goes away abandons its ticket (`Ticket.abandon`): a waiting ticket leaves
the queue at once (its slot and the queue-depth gauge with it), a running one gets no
more events, and a batch stops at its next step once every row still generating
belongs to an abandoned ticket. A row cannot be stopped alone (the backend decodes its
batch to the end), so a departed client sharing a batch with others still costs its
row until the batch ends.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from transformers import PreTrainedTokenizerBase

from launch.serving.metrics import ServingMetrics
from roles.generation import (
    DecodingStep, GenerationOutput, GenerationRequest, SamplingParams, StepCallback, cut_at_stop,
)

log = logging.getLogger("troupe.serve")

BATCH_SECONDS_SMOOTHING = 0.2
"""Weight of the newest batch in the running mean behind Retry-After."""


class RequestBackend(Protocol):
    """A generation backend that decodes requests with different parameters together."""

    def generate_requests(self, requests: Sequence[GenerationRequest],
                          on_step: StepCallback | None = None) -> list[GenerationOutput]: ...


class QueueFullError(Exception):
    """The waiting queue is at its bound: try again after ``retry_after_s`` seconds."""

    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"the server is at capacity ({max_queue} requests already waiting): retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class GenerationFailed(Exception):
    """The batch holding the request failed, or the server stopped before answering it."""


class EveryClientLeft(Exception):
    """Raised by the step callback, on the generation thread, to end a batch whose rows
    still generating all belong to abandoned tickets; `Batcher._generate` catches it."""


class TextDelta(NamedTuple):
    """More text of choice ``index`` (streamed requests only)."""

    index: int
    text: str


class Completion(NamedTuple):
    """Choice ``index`` is done."""

    index: int
    text: str
    completion_tokens: int
    finish_reason: str


class Failure(NamedTuple):
    message: str


Event = TextDelta | Completion | Failure


@dataclass(eq=False)
class Ticket:
    """One request on its way through the batcher; its handler reads `events`."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    endpoint: str
    """The route, for the metrics' labels."""
    received_at: float
    """``time.monotonic()`` when the request arrived."""
    leave_queue: Callable[[Ticket], None] = field(default=lambda ticket: None, repr=False)
    """Takes the ticket off its batcher's queue if it still waits (set by `Batcher.submit`)."""
    events: asyncio.Queue[Event] = field(init=False)
    first_token_at: float | None = None
    abandoned: bool = False
    """No one reads the events any more (set by `abandon`; the generation thread reads it)."""

    def __post_init__(self) -> None:
        # never full: at most one delta per token and one completion per choice, plus a failure
        self.events = asyncio.Queue(maxsize=self.params.n * (self.params.max_new_tokens + 1) + 1)

    def abandon(self) -> None:
        """The client went away, or its handler is done reading: leave the queue if still
        waiting, and let the batch stop if no one else waits for it. Idempotent; on the loop."""
        if not self.abandoned:
            self.abandoned = True
            self.leave_queue(self)

    async def stream_events(self, timeout_s: float | None) -> AsyncIterator[TextDelta | Completion]:
        """Events until every choice is done; each must come within ``timeout_s`` (None: no limit).

        Raises:
            GenerationFailed: the batch failed or the server is stopping.
            asyncio.TimeoutError: no event within ``timeout_s``.
        """
        done = 0
        while done < self.params.n:
            event = await asyncio.wait_for(self.events.get(), timeout_s)
            if isinstance(event, Failure):
                raise GenerationFailed(event.message)
            done += isinstance(event, Completion)
            yield event

    async def completions(self, timeout_s: float) -> list[Completion]:
        """Every choice, in index order, once all are done (within ``timeout_s`` in all)."""

        async def collect() -> list[Completion]:
            return [event async for event in self.stream_events(None) if isinstance(event, Completion)]

        return sorted(await asyncio.wait_for(collect(), timeout_s))


def streamable_text(text: str, stop: Sequence[str]) -> str:
    """The part of a response still being generated that can be sent now.

    Cut before a stop string, and short of a tail that might yet become one (a stop
    string is left out of the response, so its start must not be sent early), or of a
    replacement character (an incomplete multi-byte character that the next tokens
    complete).
    """
    text = cut_at_stop(text, stop).rstrip("\ufffd")
    held = max((length for string in stop for length in range(1, len(string))
                if text.endswith(string[:length])), default=0)
    return text[: len(text) - held]


class RowText:
    """One choice's tokens and the text sent of it so far (on the generation thread)."""

    def __init__(self, ticket: Ticket, index: int) -> None:
        self.ticket = ticket
        self.index = index
        self.tokens: list[int] = []
        self.sent = 0

    def delta(self, tokenizer: PreTrainedTokenizerBase) -> str:
        text = streamable_text(tokenizer.decode(self.tokens, skip_special_tokens=True), self.ticket.params.stop)
        delta = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return delta

    def final_text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        return cut_at_stop(tokenizer.decode(self.tokens, skip_special_tokens=True), self.ticket.params.stop)


class Batcher:
    """Groups queued requests into batches and generates them on one worker thread.

    Args:
        backend: generates on the worker thread.
        tokenizer: copied for the worker thread, which decodes responses; the caller
            keeps using the original on the loop.
        max_batch: most requests per batch (B).
        max_wait_s: longest a request arriving at an idle batcher waits for others to join
            its batch (W); 0 starts it at once. Requests that queue while a batch runs
            have waited already and go together into the next batch without it.
        max_queue: most requests waiting for a batch; one more is refused.
    """

    def __init__(self, backend: RequestBackend, tokenizer: PreTrainedTokenizerBase, metrics: ServingMetrics,
                 max_batch: int, max_wait_s: float, max_queue: int) -> None:
        self.backend = backend
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._decoder = copy.deepcopy(tokenizer)
        self._waiting: deque[Ticket] = deque()  # oldest first; an abandoned ticket leaves it at once
        self._arrived = asyncio.Event()  # set when a ticket joins `_waiting`, cleared before waiting on it
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._batch_seconds = 1.0
        self._closed = False

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, stream: bool, endpoint: str,
               received_at: float) -> Ticket:
        """Queues a request. Raises `QueueFullError` when ``max_queue`` already wait and
        `GenerationFailed` once the batcher is closed."""
        if self._closed:
            raise GenerationFailed("the server is shutting down")
        if len(self._waiting) >= self.max_queue:
            self.metrics.rejected.inc()
            raise QueueFullError(self.max_queue, self.retry_after_s())
        ticket = Ticket(prompt_ids, params, stream, endpoint, received_at, leave_queue=self._leave_queue)
        self._waiting.append(ticket)
        self._arrived.set()
        self._count_waiting()
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        return ticket

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained a batch's worth: the batches ahead
        of a new request times the recent mean batch duration, at least 1."""
        batches_ahead = len(self._waiting) / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    async def run(self) -> None:
        """Forms and runs batches until cancelled. A failed batch fails its requests only."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self.metrics.batch_size.observe(len(batch))
            self.metrics.running.set(len(batch))
            started = time.perf_counter()
            tokens = 0
            try:
                tokens = await loop.run_in_executor(self._worker, self._generate, batch, loop)
            except Exception as error:  # the requests in this batch get the error; the server goes on
                log.exception("a generation batch of %d requests failed", len(batch))
                for ticket in batch:
                    self._fail(ticket, f"generation failed: {type(error).__name__}: {error}")
            finally:
                self.metrics.running.set(0)
            seconds = time.perf_counter() - started
            self._batch_seconds += BATCH_SECONDS_SMOOTHING * (seconds - self._batch_seconds)
            if tokens:
                self.metrics.batch_tokens_per_second.observe(tokens / seconds)

    def close(self) -> None:
        """Fails every waiting request and lets the worker thread go (a running batch ends
        on its own: a thread cannot be interrupted)."""
        self._closed = True
        while self._waiting:
            self._fail(self._waiting.popleft(), "the server is shutting down")
        self._count_waiting()
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _leave_queue(self, ticket: Ticket) -> None:
        if ticket in self._waiting:  # else a batch has taken it already
            self._waiting.remove(ticket)
            self._count_waiting()

    def _count_waiting(self) -> None:
        self.metrics.queue_depth.set(len(self._waiting))

    async def _next_batch(self) -> list[Ticket]:
        """The oldest waiting tickets, up to ``max_batch``, once that many wait or the oldest
        has waited ``max_wait_s``; those abandoned meanwhile are left out."""
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()  # idle until a request comes; cancellation stops it
            batch = [self._waiting.popleft()]
            deadline = batch[0].received_at + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._waiting:
                    batch.append(self._waiting.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                    break
            self._count_waiting()
            batch = [ticket for ticket in batch if not ticket.abandoned]
            if batch:
                return batch

    def _generate(self, batch: list[Ticket], loop: asyncio.AbstractEventLoop) -> int:
        """Runs on the worker thread; returns the tokens generated."""
        rows = [RowText(ticket, index) for ticket in batch for index in range(ticket.params.n)]
        unfinished = set(range(len(rows)))
        generated = 0

        def on_step(step: DecodingStep) -> None:
            nonlocal generated
            token_tickets = []
            events: list[tuple[Ticket, Event]] = []
            for row, token in step.tokens.items():
                text = rows[row]
                text.tokens.append(token)
                token_tickets.append(text.ticket)
                if text.ticket.stream and row not in step.finished:
                    delta = text.delta(self._decoder)
                    if delta:
                        events.append((text.ticket, TextDelta(text.index, delta)))
            for row, reason in step.finished.items():
                text = rows[row]
                final = text.final_text(self._decoder)
                if text.ticket.stream and len(final) > text.sent:
                    events.append((text.ticket, TextDelta(text.index, final[text.sent:])))
                events.append((text.ticket, Completion(text.index, final, len(text.tokens), reason)))
            generated += len(step.tokens)
            loop.call_soon_threadsafe(self._deliver, token_tickets, events)
            unfinished.difference_update(step.finished)
            # `abandoned` is set on the loop's thread: read a step late, it costs one step
            if unfinished and all(rows[row].ticket.abandoned for row in unfinished):
                raise EveryClientLeft

        try:
            self.backend.generate_requests(
                [GenerationRequest([ticket.prompt_ids], ticket.params) for ticket in batch], on_step)
        except EveryClientLeft:  # raised by on_step above: the batch ends here, as no one waits for it
            log.debug("a batch of %d requests stopped after %d tokens: every client left", len(batch), generated)
        return generated

    def _deliver(self, token_tickets: list[Ticket], events: list[tuple[Ticket, Event]]) -> None:
        """On the loop: one decoding step's tokens and events."""
        now = time.monotonic()
        self.metrics.generated_tokens.inc(len(token_tickets))
        for ticket in token_tickets:
            if ticket.first_token_at is None:
                ticket.first_token_at = now
                self.metrics.time_to_first_token.labels(endpoint=ticket.endpoint).observe(now - ticket.received_at)
        for ticket, event in events:
            if not ticket.abandoned:
                ticket.events.put_nowait(event)

    def _fail(self, ticket: Ticket, message: str) -> None:
        if not ticket.abandoned:
            ticket.events.put_nowait(Failure(message))
