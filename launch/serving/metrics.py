"""The service's Prometheus metrics (``GET /metrics``), kept by ``prometheus_client``.

Each app has a registry of its own (`ServingMetrics.registry`), so two apps in one
process (tests) never share a count. Updates happen on the event loop's thread (the
batcher's worker thread hands its numbers over with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKENS_PER_SECOND_BUCKETS = (10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of `ServingMetrics.render`'s text (Prometheus's text exposition format)."""

# Without this every counter and histogram also shows a ``<name>_created`` gauge (its
# creation time): names docs/serving.md does not list and dashboards do not use. The
# switch is process-wide; nothing else in troupe exports Prometheus metrics.
prometheus_client.disable_created_metrics()


class ServingMetrics:
    """What ``GET /metrics`` shows (docs/serving.md lists them). Names carry their unit,
    Prometheus-style; labelled metrics are updated through ``.labels(...)``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.request_latency = Histogram(
            "troupe_request_latency_seconds", "Time from receiving a generation request to its last byte.",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.time_to_first_token = Histogram(
            "troupe_time_to_first_token_seconds", "Time from receiving a generation request to its first token.",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_tokens_per_second = Histogram(
            "troupe_batch_tokens_per_second", "Tokens a batch generated per second of its generation.",
            buckets=TOKENS_PER_SECOND_BUCKETS, registry=registry)
        self.batch_size = Histogram(
            "troupe_batch_size", "Requests per generation batch.", buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.queue_depth = Gauge("troupe_queue_depth", "Requests waiting for a batch.", registry=registry)
        self.running = Gauge("troupe_requests_running", "Requests in the batch being generated.", registry=registry)
        self.generated_tokens = Counter("troupe_generated_tokens_total", "Tokens generated.", registry=registry)
        self.prompt_tokens = Counter(
            "troupe_prompt_tokens_total", "Prompt tokens of admitted requests.", registry=registry)
        self.requests = Counter(
            "troupe_requests_total", "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"], registry=registry)
        self.errors = Counter(
            "troupe_request_errors_total", "HTTP requests answered with a 4xx or 5xx status.",
            ["endpoint", "status"], registry=registry)
        self.rejected = Counter(
            "troupe_requests_rejected_total", "Requests turned away because the queue was full.", registry=registry)

    def render(self) -> bytes:
        """Every metric in the text exposition format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def value(self, sample: str, **labels: str) -> float:
        """One sample's current value (``troupe_batch_size_bucket``, ``le="4.0"``); 0 when
        it has none yet (a label combination never seen)."""
        return self.registry.get_sample_value(sample, labels) or 0.0
