"""Shared memory between actors on one host: large tensors travel as places in segments
under /dev/shm instead of socket frames (one copy by the sender, none by the receiver).

- `runtime.shm.exchange` — `SharedMemory`: when it is used, and an actor's two halves;
- `runtime.shm.lender` — `Lender`: pooled segments this process owns and lends;
- `runtime.shm.borrower` — `Borrower`: views on segments peers lent, released when freed;
- `runtime.shm.segments` — files under /dev/shm: create, map, remove a dead owner's.

The wire form of a place and of a release is `protocols.shared_memory`.
"""
