"""The weight broadcast channel: trainer rank 0 pushes full actor weights to every
generator over a torch.distributed group of its own (gloo on CPUs, NCCL on GPUs).

- `layout`: per-dtype buckets planned from names, dtypes and shapes; packing and unpacking.
- `group`: the broadcast group (TCP store rendezvous, timeouts on every operation).
- `publisher`: the trainer side (`WeightPublisher`, `PublishesWeights`): publications and joins.
- `phases`: announce -> ready -> transfer -> commit of one version, run by trainer rank 0.
- `packing`: gathering the model's tensors, packing buckets, the buffers kept for catch-ups.
- `receiver`: the generator side (`WeightReceiver`, `ReceivesWeights`).
- `config`: `WeightChannelConfig`, the knobs shared by both sides.
"""
