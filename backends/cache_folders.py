"""Where cnncc keeps compiled code on disk, and how a folder of it stays under its size cap.

    $CNNCC_CACHE_DIR, else $XDG_CACHE_HOME/cnncc, else ~/.cache/cnncc   (CNNCC_CACHE=0: off)

The model cache (cnncc/cache.py), the JIT's object cache (llvm/jit.py), the kernel cache
(llvm/objects.py) and the tuning log (cnncc/tuning_log.py) live in subfolders; each caps its
own folders with ``evict``. Entries are written to temporary names and renamed into place, so
temporaries older than an hour are leftovers of interrupted writes.
"""
from __future__ import annotations

import os
import shutil
import time

_STALE_TMP_SECONDS = 3600


def cache_root() -> str | None:
    """The cache folder, or None when CNNCC_CACHE=0."""
    if os.environ.get("CNNCC_CACHE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if os.environ.get("CNNCC_CACHE_DIR"):
        return os.path.abspath(os.environ["CNNCC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cnncc")


def evict(root: str, limit: int, keep: str | None = None,
          folders: tuple[str, ...] = ("lib", "obj")) -> list[str]:
    """Remove the least recently used entries of ``folders`` until they hold under ``limit``
    bytes, and temporary files of interrupted stores; returns what was removed."""
    now = time.time()
    items = []
    removed = []
    for sub in folders:
        folder = os.path.join(root, sub)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if name.startswith(".tmp-") or name.endswith(".tmp"):
                if now - mtime > _STALE_TMP_SECONDS:
                    _remove(path)
                    removed.append(path)
                continue
            items.append((mtime, path, _size(path)))
    total = sum(s for _, _, s in items)
    for _, path, size in sorted(items):
        if total <= limit:
            break
        if path == keep:
            continue
        _remove(path)
        removed.append(path)
        total -= size
    return removed


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
