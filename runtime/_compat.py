"""asyncio features of Python 3.11 that troupe uses, on Python 3.10 too."""

import sys

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout
else:  # the `taskgroup` package backports both to 3.10
    from taskgroup import TaskGroup, timeout

__all__ = ["TaskGroup", "timeout"]
