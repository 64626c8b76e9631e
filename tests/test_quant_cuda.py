"""int8 convs on the CUDA backend (cnncc/lower/gpu_conv_int8.py): dense, strided / dilated,
1x1, grouped, 3-channel and split-reduction QLinearConvs on __dp4a, uint8 weights whose
w - w_zero_point leaves int8 on int32 products, depthwise convs; zero points at 0, 255, -128
and 127 with extreme bytes; a small net quantized by `cnncc quantize` (QConv with ReLU6,
residual adds, depthwise). nvcc compiles the generated CUDA C (one call, sm_75: the oldest
architecture nvcc 13 has; __dp4a needs sm_61) and the cuda-emu target runs it.

Bounds: cuda-emu computes what the llvm int8 kernels compute (exact int32 sums, the same
float32 requantization), so their outputs are equal; against the reference target and
onnxruntime a QLinearConv may be one output step off at a rounding tie (float32 vs float64
requantization, tests/test_quant.py); a quantized net within 3% of its largest output of the
reference (a one-step difference grows through the layers, tests/test_quant.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h, numpy_helper as nh

import cnncc
from cnncc.backends.cuda.build import find_nvcc, nvcc_check
from cnncc.backends.cuda.model import generate
from cnncc.driver import lower
from cnncc.dsl import functional as F, layers as L
from cnncc.dsl.net import build
from cnncc.passes import PassContext, run_pipeline

ort = pytest.importorskip("onnxruntime")

MODEL_TOL = 0.03
U8, S8 = np.uint8, np.int8
# name: (x dtype, x shape, weight dtype, weight shape, attributes, x zero point, w zero point,
#        y zero point, x bytes (None: random with both extremes), runs on __dp4a)
CONVS = {
    "dense_u8": (U8, (2, 8, 7, 6), S8, (16, 8, 3, 3), dict(pads=[1, 1, 1, 1]), 128, 0, 3,
                 None, True),
    "strided_s8": (S8, (1, 5, 9, 9), S8, (12, 5, 3, 3),
                   dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), -7, 0, 5, None,
                   True),
    "pw_zp0": (U8, (1, 24, 5, 6), S8, (40, 24, 1, 1), {}, 0, 0, 0, None, True),
    "grouped_zp127": (S8, (1, 8, 6, 6), S8, (12, 2, 3, 3), dict(group=4, pads=[1, 1, 1, 1]),
                      127, 0, -3, None, True),
    "stem_zp255": (U8, (1, 3, 8, 8), S8, (8, 3, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]),
                   255, 0, 128, None, True),
    "dense_zpmin": (S8, (1, 6, 5, 5), S8, (8, 6, 3, 3), dict(pads=[1, 1, 1, 1]), -128, 0, 0,
                    None, True),
    "split_saturating": (U8, (1, 64, 4, 4), S8, (16, 64, 3, 3), dict(pads=[1, 1, 1, 1]), 255,
                         0, 30, 0, True),
    "u8_weights": (U8, (1, 4, 6, 6), U8, (8, 4, 3, 3), dict(pads=[1, 1, 1, 1]), 77, 100, 10,
                   None, False),
    "dw_zp0": (U8, (1, 16, 7, 7), S8, (16, 1, 3, 3), dict(group=16, pads=[1, 1, 1, 1]), 0, 0,
               2, None, False),
    "dw_s2_zpmin": (S8, (2, 16, 9, 11), S8, (16, 1, 3, 3),
                    dict(group=16, strides=[2, 2], pads=[0, 1, 1, 0]), -128, 0, 0, None, False),
}
NVCC_ARCH = ("sm_75",)


def _tt(dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def convs_model():
    """One QLinearConv per case (input x_NAME, output NAME); the inputs."""
    rng = np.random.default_rng(11)

    def ints(dtype, shape):
        i = np.iinfo(dtype)
        v = rng.integers(i.min, i.max + 1, shape).astype(dtype)
        v.reshape(-1)[:2] = [i.min, i.max]
        return v
    nodes, inputs, outputs, inits, feeds = [], [], [], [], {}
    for name, (xd, xs, wd, ws, attrs, xz, wz, yz, fill, _) in CONVS.items():
        x = ints(xd, xs) if fill is None else np.full(xs, fill, xd)
        w = ints(wd, ws) if fill is None else np.full(ws, -128, wd)
        oc = ws[0]
        per_channel = oc % 2 == 0 and name != "strided_s8"
        w_scale = rng.uniform(0.002, 0.02, oc if per_channel else ()).astype(np.float32)
        c = {"xs": np.float32(0.05), "xz": np.array(xz, xd), "w": w, "ws": w_scale,
             "wz": np.array(wz, wd), "ys": np.float32(0.3 if fill is None else 5.0),
             "yz": np.array(yz, xd), "b": rng.integers(-4000, 4000, oc).astype(np.int32)}
        inits += [nh.from_array(np.asarray(v), f"{k}_{name}") for k, v in c.items()]
        nodes.append(h.make_node("QLinearConv", [f"x_{name}"] + [f"{k}_{name}" for k in c],
                                 [name], name=name, **attrs))
        inputs.append(h.make_tensor_value_info(f"x_{name}", _tt(xd), xs))
        outputs.append(h.make_tensor_value_info(name, _tt(xd), None))
        feeds[f"x_{name}"] = x
    g = h.make_graph(nodes, "convs", inputs, outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return onnx.shape_inference.infer_shapes(m), feeds


def _net(x):
    """3-channel stem, depthwise, 1x1, residual add, ReLU6, grouped and strided 3x3 convs."""
    def cbr(y, out, k, stride=1, groups=1, act=F.relu6, name="c"):
        y = L.conv2d(y, out, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                     name=f"{name}.conv")
        y = L.batch_norm(y, name=f"{name}.bn")
        return act(y) if act is not None else y
    y = cbr(x, 16, 3, 2, name="stem")
    z = cbr(y, 16, 3, groups=16, name="dw")
    z = cbr(z, 16, 1, act=None, name="pw")
    y = F.relu(z + y)
    y = cbr(y, 24, 3, 2, groups=4, act=F.relu, name="grouped")
    y = cbr(y, 32, 1, name="expand")
    return L.dense(F.flatten(F.global_avg_pool(y)), 10, name="fc")


def _cuda_module(model):
    graph = run_pipeline(cnncc.load_graph(model), PassContext(opt_level=3, target="cuda"))
    return generate(lower(graph, "cuda", 3)).module


def _steps(a, b) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0))


@pytest.fixture(scope="module")
def convs():
    model, feeds = convs_model()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in model.graph.output], sess.run(None, feeds)))
    return model, feeds, want


@pytest.fixture(scope="module")
def net():
    fnet = build(_net, (1, 3, 12, 11), "qnet", 3)
    proto, _ = cnncc.quantize(fnet, samples=4, per_channel=True, verbose=False)
    x = np.random.default_rng(3).standard_normal((1, 3, 12, 11)).astype(np.float32)
    return proto, x


def test_int8_convs_compile_with_nvcc_on_dp4a(convs, net):
    """Every conv case and the quantized net's kernels in one nvcc call (no register spills);
    the dense, 1x1, grouped and split kernels use __dp4a, the depthwise and uint8-weight ones
    do not."""
    mod = _cuda_module(convs[0])
    for name, case in CONVS.items():
        kernels = [k for k in mod.kernels if k.name.endswith(f"_{name}")]
        assert len(kernels) == 1, (name, [k.name for k in mod.kernels])
        assert ("__dp4a(" in kernels[0].device) == case[-1], name
    split = next(k for k in mod.kernels if k.name.endswith("_split_saturating"))
    assert len(split.launches) == 2          # the reduction split over blockIdx.z, then summed
    net_src = _cuda_module(net[0]).source
    assert net_src.count("__dp4a(") >= 4
    if find_nvcc() is None:
        pytest.skip("nvcc not installed: the CUDA compile check needs the CUDA toolkit "
                    "(the kernel structure above was checked)")
    usage = nvcc_check(mod.source + "\n" + net_src, NVCC_ARCH)["sm_75"]
    fns = {ln.name for k in mod.kernels for ln in k.launches}
    assert fns <= set(usage)
    assert not any(u.spill_stores or u.spill_loads for u in usage.values())


def test_int8_convs_on_cuda_emu_match_llvm_reference_and_onnxruntime(convs):
    model, feeds, want = convs
    emu = cnncc.compile(model, target="cuda-emu", cache=False).run(feeds)
    llvm = cnncc.compile(model, cache=False).run(feeds)
    ref = cnncc.compile(model, target="reference").run(feeds)
    for name in CONVS:
        assert emu[name].dtype == want[name].dtype and emu[name].shape == want[name].shape
        np.testing.assert_array_equal(emu[name], llvm[name], err_msg=name)
        assert _steps(emu[name], ref[name]) <= 1, name
        assert _steps(emu[name], want[name]) <= 1, name
    out = want["split_saturating"]
    assert (out == 0).any() or (out == 255).any()         # the requantization saturates


def test_quantized_net_on_cuda_emu(net):
    """QConvs (ReLU, ReLU6, a residual add) on cuda-emu equal the llvm int8 program."""
    proto, x = net
    graph = run_pipeline(cnncc.load_graph(proto), PassContext(opt_level=3, target="cuda"))
    qconvs = [n for n in graph.nodes if n.op == "QConv"]
    assert len(qconvs) == 5 and not any(n.op == "Conv" for n in graph.nodes)
    assert any(len(n.inputs) > 9 and n.inputs[9] for n in qconvs)        # residual
    assert any(n.attrs.get("relu_max") == 6.0 for n in qconvs)
    emu = cnncc.compile(proto, target="cuda-emu", cache=False)(x)[0]
    llvm = cnncc.compile(proto, cache=False)(x)[0]
    ref = cnncc.compile(proto, target="reference")(x)[0]
    np.testing.assert_array_equal(emu, llvm)
    assert np.abs(emu - ref).max() <= MODEL_TOL * np.abs(ref).max()


def test_dot4_i8i8_is_exact_everywhere(tmp_path):
    """The loop IR's dot4_i8i8 (__dp4a) on the interpreter, llvm (8/16 lanes and scalars) and
    cuda_emu.h at extreme bytes (-128 x -128, 127 x -128) and int32 wrap-around."""
    from cnncc.backends.cuda import render_module
    from cnncc.backends.cuda.build import EmuLibrary, build_emu_library
    from cnncc.backends.llvm.kernels import compile_kernel
    from cnncc.ir import DType
    from cnncc.ir.loop import Buffer, Call, For, Kernel, Store, Var
    from cnncc.ir.loop_interp import run_kernel
    from cnncc.lower.gpu_schedule import gpu_map
    i32, n = DType.int32, 37
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (n, 4)).astype(np.int8)
    w = rng.integers(-128, 128, (n, 4)).astype(np.int8)
    a[:3], w[0], w[1], w[2] = -128, -128, 127, [-128, 127, -128, 127]
    c = rng.integers(-2**24, 2**24, n).astype(np.int32)
    c[0], c[1] = 2**31 - 1, -2**31                 # wraps up / down as the instruction does
    want = ((c.astype(np.int64) + (a.astype(np.int64) * w).sum(1) + 2**31) % 2**32
            - 2**31).astype(np.int32)
    arrays = {"c": c, "a": a.view(np.int32)[:, 0].copy(), "w": w.view(np.int32)[:, 0].copy()}
    acc, av, wv, y = (Buffer(k, i32, (n,)) for k in "cawy")
    i = Var("i")

    def kernel(kind):
        return Kernel("d", [y, acc, av, wv],
                      For(i, n, Store(y, (i,), Call("dot4_i8i8", (acc[i], av[i], wv[i]), i32)),
                          kind))
    got = dict(arrays, y=np.zeros(n, np.int32))
    run_kernel(kernel("serial"), got)
    np.testing.assert_array_equal(got["y"], want, err_msg="interpreter")
    for lanes in (1, 8, 16):
        got = dict(arrays, y=np.zeros(n, np.int32))
        compile_kernel(kernel("vectorized" if lanes > 1 else "serial"), lanes=lanes)(got)
        np.testing.assert_array_equal(got["y"], want, err_msg=f"llvm, {lanes} lanes")
    mod = render_module([gpu_map(kernel("serial"), ["i"])], "dp4a")
    assert "__dp4a(" in mod.source
    got = dict(arrays, y=np.zeros(n, np.int32))
    EmuLibrary(build_emu_library(mod.source, workdir=tmp_path)).launch(mod.kernel("d"), got)
    np.testing.assert_array_equal(got["y"], want, err_msg="cuda_emu.h")


def test_dp4a_needs_sm61():
    from cnncc.backends.cuda.device import check_arch
    src = "int f(int a) { return __dp4a(a, a, 0); }"
    with pytest.raises(cnncc.CompileError, match="__dp4a.*sm_61.*sm_52"):
        check_arch(src, "sm_52")
    check_arch(src, "sm_61")
    check_arch("int f(void) { return 0; }", "sm_52")
