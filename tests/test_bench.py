"""`cnncc bench`: the report's structure on a tiny net (timings themselves are not asserted)."""
from __future__ import annotations

import json

from cnncc.bench import benchmark, format_report, time_interleaved
from cnncc.cli import main
from cnncc.dsl import zoo
from cnncc.passes import PASS_NAMES


def test_time_interleaved_alternates_variants():
    order = []
    samples = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                               rounds=4, warmup=1)
    # warm-up round, then per round each variant: an untimed call, the timed call
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 4
    assert all(len(v) == 4 and min(v) >= 0 for v in samples.values())


def test_runners_wait_until_the_process_is_idle():
    """Another engine's threads still busy after its call (a spinning pool) are waited out
    before the next runner's turn; an idle process does not wait."""
    import threading
    import time

    from cnncc.bench import QUIET_MAX_S, wait_until_idle

    assert wait_until_idle() < QUIET_MAX_S
    stop = time.perf_counter() + 0.2

    def spin():
        while time.perf_counter() < stop:
            pass

    t = threading.Thread(target=spin)
    t.start()
    waited = wait_until_idle()
    t.join()
    assert waited >= 0.05


def test_benchmark_report_has_every_part():
    net = zoo.tiny_cnn()
    report = benchmark(net.to_graph(), net.to_onnx(), rounds=3, ablate=True, per_layer=True,
                       progress=False)
    names = [v.name for v in report.variants]
    assert names[:2] == ["unfused", "fused"] and names[-1] == "onnxruntime"
    assert [a["pass"] for a in report.ablation] == PASS_NAMES
    assert set(report.speedups) == {"fused vs unfused", "fused vs onnxruntime",
                                    "unfused vs onnxruntime"}
    # At opt 3 the convs carry their activations (fuse_epilogue) in the blocked layout.
    assert {row["op"] for row in report.layers} >= {"ConvNCHWc", "Gemm"}
    conv = next(row for row in report.layers if row["op"] == "ConvNCHWc")
    assert conv["ms"] > 0 and conv["gflops"] > 0
    text = format_report(report)
    assert "speedup fused vs unfused" in text and "without fold_batch_norm" in text
    assert json.loads(report.to_json())["model"] == "tiny_cnn"


def test_cli_bench_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "bench.png"
    assert main(["bench", "zoo:tiny_cnn", "--rounds", "3", "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["threads"] == 1 and len(data["variants"]) == 3
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_scaling_times_each_thread_count(capsys):
    """`--scaling 1,2`: one row per thread count, cnncc and onnxruntime interleaved; scaling is
    the first count's median over this count's (as printed, the JSON's numbers agree)."""
    import pytest

    from cnncc.ir import InputError
    from cnncc.scaling import parse_counts

    assert main(["bench", "zoo:tiny_cnn", "--scaling", "1,2", "--rounds", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["counts"]
    assert [r["threads"] for r in rows] == [1, 2] and data["wait_policy"]
    for r in rows:
        assert r["cnncc_ms"] > 0 and r["ort_ms"] > 0
        assert abs(r["cnncc_scaling"] - rows[0]["cnncc_ms"] / r["cnncc_ms"]) < 1e-9
        assert abs(r["ort_scaling"] - rows[0]["ort_ms"] / r["ort_ms"]) < 1e-9
        assert abs(r["ratio"] - r["cnncc_ms"] / r["ort_ms"]) < 1e-9
    assert main(["bench", "zoo:tiny_cnn", "--scaling", "1,2", "--rounds", "2", "--no-ort"]) == 0
    text = capsys.readouterr().out
    assert "scaling" in text and text.splitlines()[-1].split()[0] == "2"
    for bad in ("1", "0,2", "a,b", "2,2", "1,-2"):
        with pytest.raises(InputError, match="--scaling"):
            parse_counts(bad)
    assert main(["bench", "zoo:tiny_cnn", "--scaling", "--per-layer"]) == 1
    err = capsys.readouterr().err
    assert "CompileError" in err and "--scaling" in err and "--per-layer" in err
