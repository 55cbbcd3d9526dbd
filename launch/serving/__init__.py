"""The inference service behind `troupe serve`: FastAPI routes (app), dynamic batching
(batcher), the model and its limits (service), request schemas, Prometheus metrics.
See docs/serving.md."""
