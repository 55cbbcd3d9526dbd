"""asyncio features of Python 3.11 that troupe uses, on Python 3.10 too."""

import sys

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # the `taskgroup` package backports asyncio.timeout to 3.10
    from taskgroup import timeout

__all__ = ["timeout"]
