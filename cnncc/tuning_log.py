"""The tuning log: measured winners of `cnncc tune`, one JSON file per CPU model and ISA.

It lives in the cache folder (``$CNNCC_CACHE_DIR/tuning/<cpu model>-<isa>.json``). Its keys are
workload keys (kind/isa/lanes/threads/shapes/window: conv_nchwc_tiles.dense_workload,
conv_dwpw.dwpw_workload, tile_schedules.depthwise_workload / pool_workload / gemm_workload /
reduction_workload / gemm_rt_workload),
never model names, so what one model's tuning found serves every model with the
same workload. `cnncc.compile` reads it for the llvm target; a kernel whose workload is there
gets the logged schedule, any other the cost model's choice. The log can only change speed:
every schedule it can name computes the same result, an entry that does not fit its kernel is
ignored, and a file that cannot be read or parsed is ignored with a warning. Writes are atomic
(a temporary file renamed over the old one).
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from typing import Any

from .cache import cache_root
from .ir.target import Target
from .lower.conv_dwpw import DwpwSchedule
from .lower.conv_nchwc_tiles import DenseSchedule
from .lower.tile_schedules import (DW_KIND, GEMM_KIND, GEMM_RT_KIND, GPOOL_KIND, GROUPED_KIND,
                                   GPOOL_NCHWC_KIND, POOL_KIND, POOL_NCHW_KIND, ChainSchedule,
                                   GemmSchedule, PixelSchedule)

FORMAT = "cnncc-tuning-1"
# The schedule class of each kind of tunable kernel, by the first part of its workload key.
SCHEDULE_KINDS = {"conv_nchwc": DenseSchedule, "conv_dwpw": DwpwSchedule,
                  DW_KIND: PixelSchedule, POOL_KIND: PixelSchedule, GEMM_KIND: GemmSchedule,
                  GPOOL_NCHWC_KIND: ChainSchedule, GPOOL_KIND: ChainSchedule,
                  POOL_NCHW_KIND: ChainSchedule, GEMM_RT_KIND: GemmSchedule,
                  GROUPED_KIND: PixelSchedule}


def kind_of(key: str) -> str:
    """The kind of tunable kernel a workload key names (its first part)."""
    return key.split("/", 1)[0]


def parse(key: str, schedule: Any) -> Any:
    """The schedule object of ``key``'s kind from its dict; ValueError when it is not one."""
    kind = SCHEDULE_KINDS.get(kind_of(key))
    if kind is None:
        raise ValueError(f"no tunable kernel kind {kind_of(key)!r}")
    try:
        return kind.from_dict(schedule)
    except (TypeError, AttributeError, KeyError) as e:
        raise ValueError(f"not a {kind_of(key)} schedule: {schedule!r}") from e


def log_path(machine: Target) -> str | None:
    """Where the log of ``machine``'s CPU model and ISA lives (None: caching is off)."""
    root = cache_root()
    if root is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9]+", "-", machine.model_name or machine.cpu).strip("-").lower()
    return os.path.join(root, "tuning", f"{slug or 'cpu'}-{machine.isa}.json")


def read_entries(path: str | None) -> dict[str, dict]:
    """{workload key: entry} of the log at ``path``; {} when there is none, and with a
    warning when it is damaged."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != FORMAT \
                or not isinstance(data.get("entries"), dict):
            raise ValueError("not a cnncc tuning log")
        return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring the tuning log {path}: {e}", RuntimeWarning, stacklevel=2)
        return {}


def schedules(machine: Target) -> dict[str, Any]:
    """{workload key: schedule} of the log of ``machine`` (entries that do not parse are left
    out: the cost model decides for them)."""
    out: dict[str, Any] = {}
    for key, entry in read_entries(log_path(machine)).items():
        try:
            out[key] = parse(key, entry.get("schedule", {}))
        except ValueError:
            continue
    return out


def record(machine: Target, results: dict[str, dict]) -> str:
    """Merge ``results`` ({key: {"schedule": {...}, "ms": ..., "default_ms": ...}}) into the
    log of ``machine`` (atomically); returns its path."""
    path = log_path(machine)
    if path is None:
        raise OSError("the tuning log lives in the cnncc cache folder, which CNNCC_CACHE=0 "
                      "turns off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = read_entries(path)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for key, res in results.items():
        entries[key] = dict(res, tuned_at=now)
    data = {"format": FORMAT, "cpu": machine.model_name, "isa": machine.isa,
            "features": machine.features, "entries": dict(sorted(entries.items()))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return path
