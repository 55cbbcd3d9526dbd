"""The weight broadcast channel: trainer rank 0 pushes full actor weights to every
generator over a torch.distributed group of its own (gloo on CPUs, NCCL on GPUs).

- `layout`: per-dtype buckets planned from names, dtypes and shapes; packing and unpacking.
- `group`: the broadcast group (TCP store rendezvous, timeouts on every operation).
- `publisher`: the trainer side (`WeightPublisher`, `PublishesWeights`).
- `receiver`: the generator side (`WeightReceiver`, `ReceivesWeights`).
- `config`: `WeightChannelConfig`, the knobs shared by both sides.
"""
