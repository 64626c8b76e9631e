"""The one debug knob family, read in one place: CNNCC_DUMP=passes,kernels,llvm,cuda,...

    CNNCC_DUMP=passes          print the graph after every pass
    CNNCC_DUMP=fold_batch_norm print the graph after that pass only (any pass name works)
    CNNCC_DUMP=kernels,llvm    loop nests / LLVM IR of the backends (read by them through here)
    CNNCC_DUMP=cuda            CUDA C of the cuda targets
    CNNCC_DUMP=memory          the arena plan of every lowered program: each buffer's kernel
                               lifetime, bytes and offset; peak vs no-reuse bytes
    CNNCC_DUMP=all             everything
"""
from __future__ import annotations

import os
import sys

DUMP: frozenset[str] = frozenset(
    part.strip() for part in os.environ.get("CNNCC_DUMP", "").split(",") if part.strip())


def dump_enabled(kind: str) -> bool:
    return kind in DUMP or "all" in DUMP


def dump(kind: str, title: str, text: str) -> None:
    """Print ``text`` to stderr under a header when ``kind`` is enabled."""
    if dump_enabled(kind):
        print(f"=== {title} ===\n{text}", file=sys.stderr)
