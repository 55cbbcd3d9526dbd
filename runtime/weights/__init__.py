"""The weight broadcast channel: trainer rank 0 pushes actor weights to every generator
over a torch.distributed group of its own (gloo on CPUs, NCCL on GPUs).

- `layout`: per-dtype buckets and the pieces they travel in, planned from names, dtypes and shapes.
- `group`: the broadcast group (TCP store rendezvous, timeouts on every operation).
- `publisher`: the trainer side (`WeightPublisher`, `PublishesWeights`): publications and joins.
- `phases`: announce -> ready -> transfer -> commit of one version, run by trainer rank 0.
- `packing`: gathering the model's tensors, packing pieces, moving a full replica into its buckets.
- `retention`: what trainer rank 0 keeps between publications (for catch-ups, retries and deltas).
- `transfer`: the pieces on the wire, full or as deltas, on both sides.
- `delta`: a piece as what changed since the previous version (indices or a bitmap, and values).
- `receiver`: the generator side (`WeightReceiver`, `ReceivesWeights`); `staging`: its buffers.
- `loader`: `ModelLoader`, received tensors into a torch model.
- `config`: `WeightChannelConfig`, the knobs shared by both sides.
"""
