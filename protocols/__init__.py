"""Wire formats and message types.

This package knows nothing of processes, sockets or event loops: it turns Python
values (scalars, strings, nested containers, torch tensors, numpy arrays) into
ZeroMQ-ready frames and back, and defines the typed messages that roles exchange.
It imports neither zmq nor asyncio.
"""
