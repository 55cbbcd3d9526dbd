"""Files that are either wholly old or wholly new, never half written.

A crash (SIGKILL, power loss) in the middle of ``path.write_text`` leaves an empty or
truncated file under the final name, and a reader cannot tell it from a whole one.
Here the new content goes to a temporary file in the same folder, is flushed to disk,
and is renamed over the old name; a rename within one file system is atomic, so a
reader sees the old file or the new one. The folder is synced too, so the rename
itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing_atomically(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path`; write the new content there. When the
    block ends normally the temporary file replaces `path`; when it raises, the
    temporary file is removed and `path` keeps its old content.

    For writers that want a file name (``torch.save``, ``save_pretrained`` of one file).
    """
    path = Path(path)
    # the name is unique per writer (two processes may replace the same file) and hidden
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        yield partial
        with open(partial, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_atomically(path: Path | str, data: bytes | str) -> None:
    """Replace the file at `path` with `data` (str is written as UTF-8), atomically."""
    if not isinstance(data, (bytes, str)):
        raise TypeError(f"write_atomically writes bytes or str, not {type(data).__name__}")
    with replacing_atomically(path) as partial:
        partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
