"""Checksummed object files on disk: the model's entry objects (jit.py) and the kernel cache
(objects.py) store code the same way.

A cached object file is the sha256 of the object code followed by the code: a truncated or
altered file is detected, removed and compiled again, never handed to the JIT or the linker.
Writes go to a temporary file renamed over the target, so concurrent processes never see half
a file; a read-only or full cache only costs compile time.
"""
from __future__ import annotations

import hashlib
import os
import threading

DIGEST_BYTES = 32


def read_object(path: str | None) -> bytes | None:
    """The object code cached at ``path`` if intact (its time touched: the caches evict the
    least recently used first); a damaged file is removed."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    body = data[DIGEST_BYTES:]
    if len(data) > DIGEST_BYTES and hashlib.sha256(body).digest() == data[:DIGEST_BYTES]:
        try:
            os.utime(path)
        except OSError:
            pass
        return body
    try:
        os.unlink(path)
    except OSError:
        pass
    return None


def write_object(path: str | None, code: bytes) -> None:
    """Store ``code`` at ``path`` with its checksum, atomically (nothing when ``path`` is None)."""
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(hashlib.sha256(code).digest() + code)
        os.replace(tmp, path)
    except OSError:
        pass
