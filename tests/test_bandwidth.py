"""The streaming kernels of cnncc/bandwidth.py against numpy, the cache sizes it reads from
sysfs (and its fallback), and `cnncc bench --peak` printing both roofs.

Rates are not asserted beyond being measured (other processes share the machine)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cnncc.bench
from cnncc.backends.llvm import jit
from cnncc.bandwidth import (CHAINS, FALLBACK_L2, FALLBACK_LLC, Bandwidth, cache_sizes,
                             compiled_stream_kernel, parse_size, stream_arrays, working_sets)
from cnncc.cli import main


@pytest.mark.parametrize("threads,blocks", [(1, 1), (2, 8)])
def test_read_kernel_sums_every_element(threads, blocks):
    lanes, chunks, sweeps = jit.vector_lanes(), 5, 3
    arrays = stream_arrays("read", blocks, chunks, lanes)
    rng = np.random.default_rng(blocks)
    # small integers: float32 sums are exact, so any skipped or repeated element shows
    arrays["x"][...] = rng.integers(-8, 9, arrays["x"].shape)
    arrays["sums"][...] = rng.integers(-8, 9, arrays["sums"].shape)
    expect = arrays["sums"] + sweeps * arrays["x"].sum(axis=1)
    compiled_stream_kernel("read", blocks, chunks, lanes, sweeps, threads)(arrays)
    np.testing.assert_array_equal(arrays["sums"], expect)


def test_scale_kernel_writes_every_element():
    lanes, blocks, chunks = jit.vector_lanes(), 4, 3
    arrays = stream_arrays("scale", blocks, chunks, lanes)
    arrays["x"][...] = np.random.default_rng(0).standard_normal(arrays["x"].shape)
    assert arrays["x"].shape == (blocks, chunks, CHAINS * lanes)
    compiled_stream_kernel("scale", blocks, chunks, lanes, 2, 2)(arrays)
    np.testing.assert_array_equal(arrays["y"], arrays["x"] * np.float32(0.5))


def _cache_entry(root, name, level, kind, size):
    d = root / name
    d.mkdir()
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_cache_sizes_from_sysfs_and_fallback(tmp_path):
    assert (parse_size("48K"), parse_size("32M"), parse_size("512")) == (49152, 32 << 20, 512)
    _cache_entry(tmp_path, "index0", 1, "Data", "48K")
    _cache_entry(tmp_path, "index1", 1, "Instruction", "32K")
    _cache_entry(tmp_path, "index2", 2, "Unified", "1024K")
    _cache_entry(tmp_path, "index3", 3, "Unified", "32768K")
    assert cache_sizes(str(tmp_path)) == (1 << 20, 32 << 20)
    assert cache_sizes(str(tmp_path / "missing")) == (FALLBACK_L2, FALLBACK_LLC)
    (tmp_path / "index3" / "size").write_text("garbage\n")
    assert cache_sizes(str(tmp_path)) == (FALLBACK_L2, FALLBACK_LLC)


def test_working_sets_fit_l2_and_exceed_the_llc():
    in_l2, in_llc, dram = working_sets(2, 1 << 20, 32 << 20)
    assert in_l2 // (4 * 2) == (1 << 20) // 2          # a block's slice: half an L2
    assert in_llc == 16 << 20 and dram == 128 << 20
    assert working_sets(1, 1 << 20, 1 << 30)[2] == 1 << 30       # capped
    assert working_sets(4, 1 << 20, 4 << 20)[1] == 8 << 20       # out of the 4 L2s at least


def test_cli_bench_peak_prints_both_roofs(capsys):
    assert main(["bench", "--peak", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    bandwidth = Bandwidth.from_dict(data["bandwidth"])
    assert bandwidth.threads == 1 and bandwidth.dram.bytes > bandwidth.llc_bytes
    assert [r.level for r in bandwidth.levels] == ["L2", "LLC", "DRAM"]
    for rates in bandwidth.levels:
        assert rates.read_gbs > 0 and rates.read_write_gbs > 0
    assert main(["bench", "--peak"]) == 0
    out = capsys.readouterr().out
    assert "FMA peak: " in out and "L2 bandwidth: " in out and "DRAM bandwidth: " in out
    assert "LLC bandwidth: " in out
    measured = cnncc.bench.bandwidth(1)
    assert isinstance(measured, Bandwidth) and measured.l2.level == "L2"
