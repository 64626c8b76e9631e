"""The roofline (cnncc/roofline.py, cnncc/roofline_plot.py): FLOP and byte counts against
hand-computed values, the bench columns recomputed from the JSON, the plot of every zoo net.

Timings are not asserted (other processes share the machine). The zoo plots use the programs
lowered at opt 0 and 3 with made-up kernel times and roofs (no benchmark: the big nets would
take minutes); one test runs `cnncc bench --roofline` end to end on a small net.
"""
from __future__ import annotations

import json
import re
import sys

import pytest

from cnncc import dsl
from cnncc.backends.llvm import jit
from cnncc.bandwidth import Bandwidth, StreamRates
from cnncc.bench import benchmark, format_report
from cnncc.cli import main
from cnncc.dsl.zoo import ZOO
from cnncc.dsl.zoo_blocks import BLOCK_NETS
from cnncc.ir import Graph
from cnncc.lower.program import lower_graph
from cnncc.passes import PassContext, run_pipeline
from cnncc.roofline import layer_rows, roof_for
from cnncc.roofline_plot import plot_roofline

F = 4           # bytes per float32
FAKE_BANDWIDTH = Bandwidth(threads=1, lanes=16, l2_bytes=1 << 20, llc_bytes=32 << 20,
                           l2=StreamRates("L2", 4 << 20, 200.0, 180.0),
                           llc=StreamRates("LLC", 16 << 20, 90.0, 100.0),
                           dram=StreamRates("DRAM", 128 << 20, 40.0, 30.0))


def rows_of(net: dsl.Net | Graph, opt_level: int, seconds: float = 1e-3) -> list[dict]:
    """layer_rows of ``net`` lowered at ``opt_level``, every kernel taking ``seconds``."""
    graph = net if isinstance(net, Graph) else net.to_graph()
    machine = jit.host_target(1)
    graph = run_pipeline(graph, PassContext(opt_level=opt_level, machine=machine))
    program = lower_graph(graph, machine, fuse=opt_level > 0)
    timings = [(k.name, seconds) for k, _ in program.ctx.kernels]
    return layer_rows(program, timings, 100.0, FAKE_BANDWIDTH)


def only_row(rows: list[dict], op: str) -> dict:
    found = [r for r in rows if r["op"] == op]
    assert len(found) == 1, [(r["node"], r["op"]) for r in rows]
    return found[0]


def test_conv_flops_and_bytes():
    @dsl.net(input_shape=(1, 8, 16, 16), name="one_conv")
    def one_conv(x):
        return dsl.conv2d(x, 16, 3, padding=1, name="c")
    row = only_row(rows_of(one_conv(), 0), "Conv")
    assert row["flops"] == 2 * (16 * 16 * 16) * (8 * 3 * 3)          # 2 x outputs x taps
    # input 8x16x16, weight 16x8x3x3, bias 16, output 16x16x16: each once
    assert row["bytes"] == F * (8 * 256 + 16 * 8 * 9 + 16 + 16 * 256)
    assert row["intensity"] == pytest.approx(589824 / 29248)
    assert row["covers"] == ["c"]


def test_depthwise_conv_flops_and_bytes():
    @dsl.net(input_shape=(1, 8, 16, 16), name="one_dw")
    def one_dw(x):
        return dsl.depthwise_conv2d(x, 3, padding=1, bias=False, name="dw")
    row = only_row(rows_of(one_dw(), 0), "Conv")
    assert row["flops"] == 2 * (8 * 16 * 16) * 9
    assert row["bytes"] == F * (8 * 256 + 8 * 9 + 8 * 256)


def test_elementwise_flops_and_bytes():
    @dsl.net(input_shape=(1, 8, 16, 16), name="one_add")
    def one_add(x):
        return dsl.relu(x) + x
    rows = rows_of(one_add(), 0)
    add, relu = only_row(rows, "Add"), only_row(rows, "Relu")
    assert (add["flops"], add["bytes"]) == (2048, F * 3 * 2048)      # two reads, one write
    assert (relu["flops"], relu["bytes"]) == (2048, F * 2 * 2048)


def test_fused_dw_pw_block_flops_bytes_and_what_it_covers():
    # 16 channels: a whole block at any vector width, so the blocked layout pads nothing.
    @dsl.net(input_shape=(1, 16, 8, 8), name="dwpw")
    def dwpw(x):
        y = dsl.relu6(dsl.batch_norm(dsl.depthwise_conv2d(x, 3, padding=1, bias=False,
                                                           name="dw"), name="dw_bn"))
        return dsl.batch_norm(dsl.conv2d(y, 32, 1, bias=False, name="pw"), name="pw_bn")
    fused = rows_of(dwpw(), 3)
    row = only_row(fused, "DwPwConvNCHWc")
    pixels = 8 * 8
    assert row["flops"] == 2 * pixels * (16 * 9 + 32 * 16)
    # blocked input 16x8x8, dw weight 16x1x3x3 + folded bias 16, pw weight 32x16x1x1 + folded
    # bias 32, blocked output 32x8x8; the depthwise result never leaves the kernel.
    assert row["bytes"] == F * (16 * pixels + 16 * 9 + 16 + 32 * 16 + 32 + 32 * pixels)
    assert set(row["covers"]) == {"dw", "dw_bn", "pw", "pw_bn"} | {
        r["node"] for r in rows_of(dwpw(), 0) if r["op"] == "Clip"}
    unfused_bytes = sum(r["bytes"] for r in rows_of(dwpw(), 0))
    assert row["bytes"] < unfused_bytes / 3          # why fusion wins: far fewer bytes


def test_epilogue_activation_joins_its_gemm():
    @dsl.net(input_shape=(1, 64), name="gemm_sigmoid")
    def gemm_sigmoid(x):
        return dsl.sigmoid(dsl.dense(x, 10, name="fc"))
    rows = rows_of(gemm_sigmoid(), 3)
    row = only_row(rows, "FusedGemm")
    assert len(rows) == 1 and len(row["covers"]) == 2      # the sigmoid runs in its epilogue
    assert row["flops"] == 2 * 10 * 64 + 10
    assert row["bytes"] == F * (64 + 10 * 64 + 10 + 10)    # no intermediate: x, w, b, y


def test_roof_choice_and_columns():
    assert roof_for(FAKE_BANDWIDTH, 1 << 20).level == "L2"
    assert roof_for(FAKE_BANDWIDTH, (1 << 20) + 1).level == "LLC"
    assert roof_for(FAKE_BANDWIDTH, 32 << 20).level == "LLC"
    assert roof_for(FAKE_BANDWIDTH, (32 << 20) + 1).level == "DRAM"
    assert FAKE_BANDWIDTH.llc.roof_gbs == 100.0
    @dsl.net(input_shape=(1, 8, 16, 16), name="one_conv")
    def one_conv(x):
        return dsl.conv2d(x, 16, 3, padding=1)
    row = rows_of(one_conv(), 0, seconds=1e-4)[0]
    assert row["gflops"] == pytest.approx(589824 / (row["kernels"] * 1e-4) / 1e9)
    assert row["attainable_gflops"] == pytest.approx(min(100.0, 200.0 * row["intensity"]))


def check_columns(rows: list[dict], peak: float, bandwidth: dict) -> None:
    """Every derived column of a bench row, recomputed from the row's raw counts."""
    assert rows
    for row in rows:
        s = row["ms"] * 1e-3
        assert row["intensity"] == pytest.approx(row["flops"] / row["bytes"])
        assert row["gflops"] == pytest.approx(row["flops"] / s / 1e9)
        assert row["gbs"] == pytest.approx(row["bytes"] / s / 1e9)
        if row["bytes"] <= bandwidth["threads"] * bandwidth["l2_bytes"]:
            level = bandwidth["l2"]
        elif row["bytes"] <= bandwidth["llc_bytes"]:
            level = bandwidth["llc"]
        else:
            level = bandwidth["dram"]
        assert row["roof"] == level["level"]
        assert row["roof_gbs"] == max(level["read_gbs"], level["read_write_gbs"])
        attain = min(peak, row["roof_gbs"] * row["intensity"])
        assert row["attainable_gflops"] == pytest.approx(attain)
        pct = (100 * row["gflops"] / attain if row["flops"]
               else 100 * row["gbs"] / row["roof_gbs"])
        assert row["roof_pct"] == pytest.approx(pct)


def test_bench_json_columns_recompute():
    net = ZOO["tiny_cnn"]()
    report = benchmark(net.to_graph(), None, rounds=2, per_layer=True, with_ort=False,
                       progress=False)
    data = json.loads(report.to_json())
    bandwidth = data["bandwidth"]
    assert all(bandwidth[k]["read_gbs"] > 0 for k in ("l2", "llc", "dram"))
    check_columns(data["layers"], data["peak_gflops"], bandwidth)
    check_columns(data["unfused_layers"], data["peak_gflops"], bandwidth)
    fused_nodes = {c for row in data["layers"] for c in row["covers"]}
    # every imported node that does arithmetic is covered by a fused kernel
    assert {r["node"] for r in data["unfused_layers"] if r["flops"]} <= fused_nodes
    text = format_report(report)
    assert "L2 bandwidth:" in text and "DRAM bandwidth:" in text
    assert "per layer (unfused model):" in text and "% roof" in text


def svg_markers(svg: str, gid: str) -> int:
    """Markers drawn in the SVG group ``gid`` (matplotlib draws markers of different sizes as
    one <path> each)."""
    start = svg.index(f'<g id="{gid}"')
    end = svg.index("</g>", start)
    return len(re.findall(r"<path ", svg[start:end]))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_roofline_plot_of_every_zoo_net(name, tmp_path):
    graph = ZOO[name](**({"input_size": 32} if name in BLOCK_NETS else {})).to_graph()
    programs = {"unfused": rows_of(graph, 0, 1e-4), "fused": rows_of(graph, 3, 1e-4)}
    path = tmp_path / f"{name}.svg"
    drawn = plot_roofline(str(path), programs, 100.0, FAKE_BANDWIDTH, name)
    svg = path.read_text()
    for roof in ("roof-compute", "roof-L2", "roof-LLC", "roof-DRAM"):
        assert f'id="{roof}"' in svg
    for variant, rows in programs.items():
        shown = [r for r in rows if r["flops"] > 0]
        assert drawn["markers"][variant] == len(shown) > 0
        assert svg_markers(svg, f"kernels-{variant}") == len(shown)
    assert drawn["joins"] >= drawn["markers"]["fused"] - drawn["left_out"]["fused"] > 0
    # every unfused kernel that computes is joined to the fused kernel doing its work now
    covered = {c for r in programs["fused"] for c in r["covers"]}
    assert {r["node"] for r in programs["unfused"] if r["flops"]} <= covered
    assert len(drawn["labelled"]) == min(10, sum(drawn["markers"].values()))


def test_cli_bench_roofline_end_to_end(tmp_path, capsys):
    path = tmp_path / "roofline.svg"
    assert main(["bench", "zoo:tiny_cnn", "--rounds", "2", "--no-ort", "--roofline",
                 str(path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {path}" in out and "per layer (unfused model):" in out
    svg = path.read_text()
    assert svg_markers(svg, "kernels-fused") > 0 and svg_markers(svg, "kernels-unfused") > 0
    assert 'id="roof-DRAM"' in svg and "GB/s" in svg


def test_cli_roofline_bad_requests(capsys):
    assert main(["bench", "zoo:tiny_cnn", "--roofline", "plot.txt"]) == 1
    assert "--roofline writes .png, .svg, .pdf files" in capsys.readouterr().err
    assert main(["bench", "zoo:tiny_cnn", "--target", "reference", "--roofline", "x.png"]) == 1
    assert "target llvm" in capsys.readouterr().err


def test_cli_roofline_without_matplotlib(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib fails
    assert main(["bench", "zoo:tiny_cnn", "--roofline", "roofline.png"]) == 1
    assert "--roofline needs matplotlib: pip install 'cnncc[plot]'" in capsys.readouterr().err
