"""`cnncc bench --suite` (cnncc/suite.py): every suite model against onnxruntime, one table."""
from __future__ import annotations

import json
import math

import pytest

from cnncc import CompileError
from cnncc.cli import main
from cnncc.dsl.zoo import ZOO
from cnncc.suite import SuiteReport, SuiteRow, format_markdown, format_suite, run_suite, \
    suite_models


def test_the_suite_has_every_zoo_net_and_the_light_cnns(tmp_path):
    models = suite_models()
    names = [m[0] for m in models]
    assert set(ZOO) <= set(names) and len(names) == len(set(names))
    assert sum(1 for m in models if m[1] == "onnx light") == 9
    (tmp_path / "a.onnx").write_bytes(b"")
    (tmp_path / "b.skel.onnx").write_bytes(b"")
    extra = suite_models([str(tmp_path)])
    assert [m[0] for m in extra[len(models):]] == ["a"]
    with pytest.raises(CompileError, match="not a folder"):
        suite_models([str(tmp_path / "nope")])


def test_geomean_and_tables():
    rows = [SuiteRow("a", "zoo", 1.0, 2.0, 1.0), SuiteRow("b", "zoo", 3.0, 1.5, 1.0),
            SuiteRow("c", "x", None, None, None, "op Foo not supported")]
    r = SuiteReport("CPU", "avx2 ...", 2, 5, 100.0, rows)
    assert math.isclose(r.geomean, math.sqrt(0.5 * 2.0))
    text = format_suite(r)
    assert "geo-mean cnncc/onnxruntime over 2 models: 1.000" in text and "op Foo" in text
    md = format_markdown(r)
    assert md.count("\n| ") == 4 and "| a | zoo | 1.000 | 2.000 | 0.500 |" in md
    data = json.loads(r.to_json())
    assert data["geomean"] == pytest.approx(1.0) and data["rows"][0]["ratio"] == 0.5


def test_run_suite_measures_both_engines():
    r = run_suite(threads=1, rounds=2, names=["tiny_cnn", "light_squeezenet"], progress=False)
    assert [x.model for x in r.rows] == ["tiny_cnn", "light_squeezenet"]
    for row in r.rows:
        assert not row.error and row.cnncc_ms > 0 and row.ort_ms > 0 and row.ratio > 0
    assert r.peak_gflops > 0 and r.geomean > 0 and "lanes" in r.machine
    with pytest.raises(CompileError, match="unknown suite model"):
        run_suite(names=["nope"], progress=False)


def test_suite_cli_writes_json_and_markdown(tmp_path, capsys):
    js, md = tmp_path / "s.json", tmp_path / "s.md"
    assert main(["bench", "--suite", "--only", "lenet5", "--rounds", "2", "--json", str(js),
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "geo-mean" in out
    assert json.loads(js.read_text())["rows"][0]["model"] == "lenet5"
    assert "| lenet5 | zoo |" in md.read_text()
    assert main(["bench", "zoo:resnet18", "--suite"]) == 1     # the suite picks its models
