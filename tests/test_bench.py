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
