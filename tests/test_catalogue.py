"""The DSL's catalogue of conv, pooling and normalization layers (cnncc/dsl/layers_catalogue.py,
ir/ops/catalogue.py, cnncc/lower/catalogue.py, cnncc/onnx_functions.py).

Every layer is checked against a numpy implementation written here (direct loops over output
positions, not the op table's references) on every target, at max|y - ref| / max|ref| <= 1e-5;
the exported ONNX runs in onnxruntime with the same outputs; DSL -> ONNX -> cnncc gives the same
ops. One net holds every layer (several inputs, one output per layer): one compile per target.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cnncc
from cnncc import dsl
from cnncc.frontend.onnx import import_model
from cnncc.ir import CompileError
from cnncc.passes import PassContext, run_pipeline
from cnncc.testing import target_params

RTOL = 1e-5
SHAPES = {"a": (1, 3, 21), "b": (1, 6, 10, 9), "v": (1, 3, 6, 8, 7), "off": (1, 36, 10, 9),
          "mask": (1, 18, 10, 9), "row": (1, 4, 5, 40)}


def catalogue(a, b, v, off, mask, row):
    return {
        "conv1d": dsl.conv1d(a, 5, 3, stride=2, padding=1, dilation=2, name="c1"),
        "max_pool1d": dsl.max_pool1d(a, 3, 2, padding=1),
        "avg_pool1d": dsl.avg_pool1d(a, 4, 2, padding=1),
        "conv3d": dsl.conv3d(v, 4, 3, stride=(1, 2, 2), padding=1, name="c3"),
        "conv3d_dil": dsl.conv3d(v, 4, (2, 3, 3), dilation=(1, 2, 1), padding=(0, 2, 1),
                                 bias=False, name="c3d"),
        "max_pool3d": dsl.max_pool3d(v, 2),
        "avg_pool3d": dsl.avg_pool3d(v, (2, 3, 3), stride=2, padding=(0, 1, 1)),
        "lp_pool2d": dsl.lp_pool2d(b, 3, 2, padding=1, p=2),
        "deform": dsl.deform_conv2d(b, off, 4, 3, mask=mask, padding=1, offset_groups=2,
                                    name="dc"),
        "lc": dsl.locally_connected2d(b, 7, 3, stride=2, padding=1, name="lc"),
        "lc_dil": dsl.locally_connected2d(b, 5, 2, dilation=2, bias=False, name="lcd"),
        "tiled": dsl.tiled_conv2d(b, 6, 3, tiles=2, padding=1, name="tc"),
        "tiled_wide": dsl.tiled_conv2d(b, 20, (3, 2), tiles=(3, 2), stride=(2, 1), name="tw"),
        # 40 columns in 3 phases of 13 + 1: register tiles of several positions and tails.
        "tiled_row": dsl.tiled_conv2d(row, 64, 3, tiles=3, padding=1, name="tr"),
        "separable": dsl.separable_conv2d(b, 8, 3, padding=1, name="sep"),
        "maxout": dsl.maxout(b, 3),
        "maxout_many": dsl.maxout(off, 18),          # more than one pass of 16 pieces
        "layer_norm": dsl.layer_norm(b, name="ln"),
        "instance_norm": dsl.instance_norm(b, name="in"),
        "group_norm": dsl.group_norm(b, 3, name="gn"),
    }


# ---- independent numpy implementations ----------------------------------------------------------

def np_conv(x, w, b, stride, pads, dil, groups=1):
    """Direct N-d convolution: one tensordot per output position and group, float64."""
    nd = x.ndim - 2
    x, w = x.astype(np.float64), w.astype(np.float64)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)])
    k = w.shape[2:]
    out = [(xp.shape[2 + i] - dil[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    cg, mg = x.shape[1] // groups, w.shape[0] // groups
    y = np.zeros((x.shape[0], w.shape[0], *out))
    axes = [1] + list(range(2, 2 + nd))
    for o in np.ndindex(*out):
        sl = tuple(slice(o[i] * stride[i], o[i] * stride[i] + dil[i] * (k[i] - 1) + 1, dil[i])
                   for i in range(nd))
        patch = xp[(slice(None), slice(None)) + sl]
        for g in range(groups):
            y[(slice(None), slice(g * mg, (g + 1) * mg)) + o] = np.tensordot(
                patch[:, g * cg:(g + 1) * cg], w[g * mg:(g + 1) * mg], axes=(axes, axes))
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def np_pool(x, kind, k, stride, pads):
    """Max (pads never win), average (pads not counted) or L2 pooling, N-d."""
    nd = x.ndim - 2
    x = x.astype(np.float64)
    out = [(x.shape[2 + i] + pads[i] + pads[nd + i] - k[i]) // stride[i] + 1 for i in range(nd)]
    y = np.zeros(x.shape[:2] + tuple(out))
    for o in np.ndindex(*out):
        sl = tuple(slice(max(o[i] * stride[i] - pads[i], 0),
                         min(o[i] * stride[i] - pads[i] + k[i], x.shape[2 + i]))
                   for i in range(nd))
        win = x[(slice(None), slice(None)) + sl].reshape(x.shape[:2] + (-1,))
        y[(slice(None), slice(None)) + o] = {"max": win.max(-1), "avg": win.mean(-1),
                                             "l2": np.sqrt((win ** 2).sum(-1))}[kind]
    return y


def bilinear(img, yy, xx):
    """img (C, H, W) at (yy, xx), neighbours outside the image count as zero."""
    y0, x0 = int(np.floor(yy)), int(np.floor(xx))
    val = np.zeros(img.shape[0])
    for dy in (0, 1):
        for dx in (0, 1):
            r, c = y0 + dy, x0 + dx
            if 0 <= r < img.shape[1] and 0 <= c < img.shape[2]:
                val += img[:, r, c] * (1 - abs(yy - r)) * (1 - abs(xx - c))
    return val


def np_deform(x, w, b, off, mask, pad, og):
    n_img, c = x.shape[:2]
    m, _, kh, kw = w.shape
    oh, ow = off.shape[2:]
    cog = c // og
    y = np.zeros((n_img, m, oh, ow))
    for n in range(n_img):
        for i in range(oh):
            for j in range(ow):
                cols = np.zeros((c, kh, kw))
                for g in range(og):
                    for u in range(kh):
                        for v in range(kw):
                            k = u * kw + v
                            dy = off[n, g * 2 * kh * kw + 2 * k, i, j]
                            dx = off[n, g * 2 * kh * kw + 2 * k + 1, i, j]
                            s = bilinear(x[n, g * cog:(g + 1) * cog].astype(np.float64),
                                         i - pad + u + dy, j - pad + v + dx)
                            cols[g * cog:(g + 1) * cog, u, v] = s * mask[n, g * kh * kw + k,
                                                                          i, j]
                y[n, :, i, j] = np.tensordot(w.astype(np.float64), cols, axes=3) + b
    return y


def np_unshared(x, w, b, stride, pads, dil, tiled):
    """Locally connected (w [OH, OW, ...]) or tiled (w [TH, TW, ...], set (i % TH, j % TW))."""
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    kh, kw = w.shape[4:]
    oh = (xp.shape[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xp.shape[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((x.shape[0], w.shape[2], oh, ow))
    for i in range(oh):
        for j in range(ow):
            f = w[i % w.shape[0], j % w.shape[1]] if tiled else w[i, j]
            patch = xp[:, :, i * stride[0]:i * stride[0] + dil[0] * (kh - 1) + 1:dil[0],
                       j * stride[1]:j * stride[1] + dil[1] * (kw - 1) + 1:dil[1]]
            y[:, :, i, j] = np.tensordot(patch, f.astype(np.float64), axes=([1, 2, 3],
                                                                           [1, 2, 3]))
            if b is not None:
                y[:, :, i, j] += b if tiled else b[:, i, j]
    return y


def np_norm(x, axes, scale, bias, eps=1e-5):
    x = x.astype(np.float64)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def expected(p, a, b, v, off, mask, row):
    """Every output of ``catalogue`` by the numpy code above; ``p`` are the net's weights."""
    ch = lambda t: t.reshape(1, -1, 1, 1)       # noqa: E731 - per-channel broadcast
    gn = np_norm(b.reshape(1, 3, -1), (2,), 1.0, 0.0).reshape(b.shape)
    return {
        "conv1d": np_conv(a, p["c1.weight"], p["c1.bias"], [2], [1, 1], [2]),
        "max_pool1d": np_pool(a, "max", [3], [2], [1, 1]),
        "avg_pool1d": np_pool(a, "avg", [4], [2], [1, 1]),
        "conv3d": np_conv(v, p["c3.weight"], p["c3.bias"], [1, 2, 2], [1] * 6, [1, 1, 1]),
        "conv3d_dil": np_conv(v, p["c3d.weight"], None, [1, 1, 1], [0, 2, 1, 0, 2, 1],
                              [1, 2, 1]),
        "max_pool3d": np_pool(v, "max", [2] * 3, [2] * 3, [0] * 6),
        "avg_pool3d": np_pool(v, "avg", [2, 3, 3], [2] * 3, [0, 1, 1, 0, 1, 1]),
        "lp_pool2d": np_pool(b, "l2", [3, 3], [2, 2], [1] * 4),
        "deform": np_deform(b, p["dc.weight"], p["dc.bias"], off, mask, 1, 2),
        "lc": np_unshared(b, p["lc.weight"], p["lc.bias"], [2, 2], [1] * 4, [1, 1], False),
        "lc_dil": np_unshared(b, p["lcd.weight"], None, [1, 1], [0] * 4, [2, 2], False),
        "tiled": np_unshared(b, p["tc.weight"], p["tc.bias"], [1, 1], [1] * 4, [1, 1], True),
        "tiled_wide": np_unshared(b, p["tw.weight"], p["tw.bias"], [2, 1], [0] * 4, [1, 1],
                                  True),
        "tiled_row": np_unshared(row, p["tr.weight"], p["tr.bias"], [1, 1], [1] * 4, [1, 1],
                                 True),
        "separable": np_conv(np_conv(b, p["sep.depthwise.weight"], None, [1, 1], [1] * 4,
                                     [1, 1], groups=6),
                             p["sep.pointwise.weight"], p["sep.pointwise.bias"], [1, 1],
                             [0] * 4, [1, 1]),
        "maxout": np.stack([b[:, 3 * j:3 * j + 3].max(axis=1) for j in range(2)], axis=1),
        "maxout_many": np.stack([off[:, :18].max(axis=1), off[:, 18:].max(axis=1)], axis=1),
        "layer_norm": np_norm(b, (1, 2, 3), p["ln.scale"], p["ln.bias"]),
        "instance_norm": np_norm(b, (2, 3), ch(p["in.scale"]), ch(p["in.bias"])),
        "group_norm": gn * p["gn.scale"] + p["gn.bias"],
    }


@pytest.fixture(scope="module")
def case():
    net = dsl.build(catalogue, SHAPES, name="catalogue", seed=3)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()]
    xs[3] *= 2.0                         # offsets of a few pixels, some outside the input
    xs[4] = 1.0 / (1.0 + np.exp(-xs[4]))   # a modulation mask in (0, 1)
    want = expected(net.to_graph().params, *xs)
    return net, xs, want


def rel_err(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.fixture(scope="module", params=target_params())
def outputs(request, case):
    net, xs, _ = case
    model = cnncc.compile(net, target=request.param)
    return request.param, dict(zip(model.output_names, model(*xs))), model


LAYERS = dsl.build(catalogue, SHAPES, seed=3).output_names


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_matches_numpy(outputs, case, layer):
    target, got, _ = outputs
    want = case[2][layer]
    assert got[layer].shape == want.shape, (target, layer)
    assert np.abs(want).max() > 1e-2
    err = rel_err(got[layer], want)
    assert err <= RTOL, f"{layer} on {target}: relative error {err:.2e}"


def test_a_batch_gives_the_single_runs(outputs, case):
    """Two images at run time: every output equals the two single runs (bitwise)."""
    target, got, model = outputs
    rng = np.random.default_rng(5)
    other = [rng.standard_normal(x.shape).astype(np.float32) for x in case[1]]
    both = model(*[np.concatenate([x, y]) for x, y in zip(case[1], other)])
    for name, y2, y1, y_other in zip(model.output_names, both, got.values(), model(*other)):
        assert np.array_equal(y2, np.concatenate([y1, y_other])), (target, name)


def test_exported_onnx_runs_in_onnxruntime(case):
    net, xs, want = case
    model = net.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    ours = {f.name for f in model.functions}
    assert ours == {"LocallyConnected2d", "TiledConv2d", "Maxout"}
    for f in model.functions:          # bodies of standard ops only
        assert f.domain == "cnncc" and all(n.domain == "" for n in f.node)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(net.output_names, sess.run(None, dict(zip(net.input_names, xs)))))
    for layer, y in want.items():
        assert rel_err(got[layer], y) <= RTOL, layer


def test_onnx_round_trip_gives_the_same_ops(case, tmp_path):
    net = case[0]
    net.to_onnx(tmp_path / "cat.onnx")
    g, orig = import_model(str(tmp_path / "cat.onnx")), net.to_graph()
    assert [n.op for n in g.nodes] == [n.op for n in orig.nodes]
    assert set(g.params) == set(orig.params)       # the zero bias written for 'lcd' is dropped
    model = cnncc.compile(g, target="reference")
    for layer, y in zip(model.output_names, model(*case[1])):
        assert rel_err(y, case[2][layer]) <= RTOL, layer


def test_other_local_functions_are_inlined(case):
    """A model-local function of another domain next to cnncc's: inlined, ours kept native."""
    from onnx import helper
    model = case[0].to_onnx()
    opset = model.opset_import[0].version
    model.functions.append(helper.make_function("mine", "Twice", ["a"], ["b"], [
        helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", opset)]))
    model.opset_import.append(helper.make_opsetid("mine", 1))
    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "before_twice"
    model.graph.node.append(helper.make_node("Twice", ["before_twice"], [out], domain="mine"))
    g = import_model(model)
    ops = [n.op for n in g.nodes]
    assert ops.count("Add") == [n.op for n in case[0].to_graph().nodes].count("Add") + 1
    assert {"LocallyConnected2d", "TiledConv2d", "Maxout"} <= set(ops)
    y = cnncc.compile(g, target="reference")(*case[1])[0]
    assert rel_err(y, 2 * case[2]["conv1d"]) <= RTOL


def test_separable_conv_reaches_the_fused_dw_pw_kernel():
    net = dsl.build(lambda x: dsl.relu(dsl.separable_conv2d(x, 32, 3, padding=1)),
                    (1, 16, 12, 12))
    ops = [n.op for n in net.to_graph().nodes]
    assert ops == ["Conv", "Conv", "Relu"]
    after = run_pipeline(net.to_graph(), PassContext(machine=cnncc.host_target(1)))
    assert "DwPwConvNCHWc" in [n.op for n in after.nodes]


HERE = os.path.basename(__file__)


@pytest.mark.parametrize("build,message", [
    (lambda x: dsl.conv1d(x, 4, 3), "conv1d: expected a rank-3 tensor"),
    (lambda x: dsl.conv3d(x, 4, 3), "conv3d: expected a rank-5 tensor"),
    (lambda x: dsl.max_pool3d(x, 2), "max_pool3d: expected a rank-5"),
    (lambda x: dsl.maxout(x, 5), "pieces=5 must divide"),
    (lambda x: dsl.locally_connected2d(x, 4, 11), "larger than the padded input"),
    (lambda x: dsl.tiled_conv2d(x, 4, 3, tiles=0), "tiles must be >= 1"),
    (lambda x: dsl.group_norm(x, 4), "groups=4 must divide"),
    (lambda x: dsl.lp_pool2d(x, 2, p=0), "p must be a positive int"),
    (lambda x: dsl.layer_norm(x, axis=4), "axis 4 out of range"),
    (lambda x: dsl.deform_conv2d(x, dsl.conv2d(x, 8, 3), 4, 3), "offset has shape"),
    (lambda x: dsl.separable_conv2d(x, 4, 3, multiplier=0), "multiplier must be"),
    (lambda x: dsl.locally_connected2d(x, 4, 3, weight=np.zeros((6, 6, 4, 6, 3, 2))),
     r"weight: expected shape \(6, 6, 4, 6, 3, 3\)"),
    (lambda x: dsl.group_norm(x, 2, scale=np.ones(5)), r"scale: expected shape \(6,\)"),
])
def test_bad_layers_name_the_problem_and_the_users_line(build, message):
    with pytest.raises(CompileError, match=message) as info:
        dsl.build(build, (1, 6, 8, 8))
    assert HERE in str(info.value)


def test_avx2_code_gives_the_same_numbers(case):
    """The catalogue compiled for AVX2 + FMA (8 lanes, 16 registers) in a child process."""
    env = dict(os.environ, CNNCC_FEATURES="+avx2,+fma,+avx,+sse4.2,-avx512f", CNNCC_CACHE="0")
    env.pop("CNNCC_CPU", None)
    code = textwrap.dedent(f"""
        import json, numpy as np, cnncc, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_catalogue import SHAPES, catalogue
        from cnncc import dsl
        net = dsl.build(catalogue, SHAPES, name="catalogue", seed=3)
        rng = np.random.default_rng(4)
        xs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()]
        a = cnncc.compile(net, threads=2)(*xs)
        r = cnncc.compile(net, target="reference")(*xs)
        errs = [float(np.abs(p - q).max() / np.abs(q).max()) for p, q in zip(a, r)]
        print(json.dumps({{"isa": cnncc.host_target(1).isa, "err": max(errs)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["isa"] == "avx2" and res["err"] <= RTOL, res


def test_catalogue_kernels_compile_with_nvcc(case):
    """The CUDA program of every catalogue layer compiles with nvcc (warnings are errors), no
    register spills."""
    from cnncc.backends.cuda.build import find_nvcc, nvcc_check
    from cnncc.backends.cuda.model import generate
    from cnncc.driver import lower
    if find_nvcc() is None:
        pytest.skip("nvcc is not installed")
    graph = run_pipeline(case[0].to_graph(), PassContext(opt_level=3, target="cuda"))
    gen = generate(lower(graph, "cuda", 3))
    usage = nvcc_check(gen.module.source, ("sm_80", "sm_90"))
    launches = [launch.name for ck in gen.module.kernels for launch in ck.launches]
    for arch in ("sm_80", "sm_90"):
        for name in launches:
            use = usage[arch][name]
            assert use.spill_stores == 0 and use.spill_loads == 0, (arch, name, use)


def _cnncc_model(op: str, inputs: dict, attrs: dict):
    """A model calling cnncc-domain op ``op`` on graph input X and initializers ``inputs``."""
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["X", *inputs], ["Y"], domain="cnncc", name="bad", **attrs)
    graph = helper.make_graph([node], "g", [x], [y],
                              [numpy_helper.from_array(v, k) for k, v in inputs.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("cnncc", 1)])


@pytest.mark.parametrize("op,inputs,attrs,message", [
    ("Maxout", {}, {}, "missing required attribute 'pieces'"),
    ("Maxout", {}, {"pieces": 3}, "pieces=3 does not divide the 4 channels"),
    ("LocallyConnected2d", {"W": np.zeros((4, 4, 2, 4, 3), np.float32)}, {},
     "W must have rank 6"),
    ("LocallyConnected2d", {"W": np.zeros((3, 3, 2, 4, 3, 3), np.float32)}, {},
     r"filters for \[3, 3\] output positions but the output is \[4, 4\]"),
    ("TiledConv2d", {"W": np.zeros((2, 2, 2, 5, 3, 3), np.float32)}, {},
     "W reads 5 channels but X has 4"),
    ("Im2Col", {}, {}, "cnncc.Im2Col"),
])
def test_bad_cnncc_domain_nodes_are_refused_by_name(op, inputs, attrs, message):
    with pytest.raises(CompileError, match=message) as info:
        import_model(_cnncc_model(op, inputs, attrs))
    assert op == "Im2Col" or info.value.node == "bad"
