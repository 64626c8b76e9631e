"""GPU schedules of Conv, Gemm and MatMul (cnncc/lower/gpu_conv.py, gpu_gemm.py): one-node graphs
(plus a fused activation) lowered for CUDA, rendered, run on the cuda-emu build against the
reference interpreter (rtol 1e-4, atol 1e-5 x output scale), and a representative subset
compiled by nvcc for sm_80 + sm_90 (warnings as errors) with no register spills."""
from __future__ import annotations

import random

import numpy as np
import pytest

import cnncc
from cnncc.backends.cuda import render_module
from cnncc.backends.cuda.build import (EmuLibrary, build_emu_executable, build_emu_library,
                                       find_cxx, find_nvcc, nvcc_check, run_emu_executable)
from cnncc.ir import DType, Graph, TensorType, run_graph
from cnncc.ir.loop_walk import walk_stmts
from cnncc.ir.loop import For
from cnncc.lower.context import LowerCtx
from cnncc.lower.gpu_tiles import plan
from cnncc.lower.program import lower_graph
from cnncc.lower.rules import lower_node
from cnncc.passes.fuse_epilogue import fuse_epilogue

needs_cxx = pytest.mark.skipif(find_cxx() is None, reason="no g++: cuda-emu builds need a C++ "
                                                          "compiler")
needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not installed: CUDA compile "
                                                            "checks need the CUDA toolkit")
F32 = DType.float32


class Case:
    """A graph of one anchor node (and maybe its activation), its GPU lowering and feeds."""

    def __init__(self, name: str, g: Graph, seed: int, shared: bool):
        self.name, self.g, self.shared = name, g, shared
        rng = np.random.default_rng(seed)
        self.feeds = {n: rng.standard_normal(g.types[n].shape).astype(g.types[n].dtype.np)
                      for n in g.inputs}
        fused = fuse_epilogue(g)        # the activation goes into the anchor's epilogue
        assert len(fused.nodes) == 1, [n.op for n in fused.nodes]
        self.ctx = LowerCtx(fused, None, gpu=True)
        lower_node(self.ctx, fused.nodes[0])
        self.ctx.write_consts()         # the packed constants into the weight blob
        self.kernels = [k for k, _ in self.ctx.kernels]

    def run(self, lib: EmuLibrary, module) -> None:
        """Run the kernels in order on fresh storage; compare every output to the reference."""
        ctx, g = self.ctx, self.g
        values = {n: a.copy() for n, a in self.feeds.items()}
        for o in g.outputs:
            values[o] = np.full(g.types[o].shape, np.nan, g.types[o].dtype.np)
        blob = ctx.blob.array().copy()
        temps = {t: np.full(nbytes, 0xff, np.uint8) for t, (nbytes, _) in ctx.temps.items()}
        for k in self.kernels:
            arrays = {}
            for b in k.params:
                kind, where = ctx.binding[id(b)]
                if kind == "value":
                    a = values[where]
                elif kind == "const":
                    at = ctx.const_offsets[where]
                    a = blob[at:at + b.size * b.dtype.itemsize].view(b.dtype.np)
                else:
                    a = temps[where][:b.size * b.dtype.itemsize].view(b.dtype.np)
                arrays[b.name] = a.reshape(b.shape)
            lib.launch(module.kernel(k.name), arrays)
        ref = run_graph(g, self.feeds)
        for o in g.outputs:
            r, got = ref[o], values[o]
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(got, r, rtol=1e-4, atol=1e-5 * scale, err_msg=self.name)


def _act(g: Graph, y: str, act: str | None) -> str:
    if act == "Relu":
        return g.add_node("Relu", [y])[0]
    if act == "Clip":
        lo = g.add_param(g.fresh_name("lo"), np.array(0.0, np.float32))
        hi = g.add_param(g.fresh_name("hi"), np.array(6.0, np.float32))
        return g.add_node("Clip", [y, lo, hi])[0]
    return y


def conv_case(name, xshape, oc, k, attrs=None, bias=True, act=None, seed=0) -> Case:
    attrs = dict(attrs or {})
    nd = len(xshape) - 2
    groups = attrs.get("group", 1)
    rng = np.random.default_rng(seed + 100)
    g = Graph(name)
    x = g.add_input("x", TensorType(F32, xshape))
    ks = (k,) * nd if isinstance(k, int) else tuple(k)
    w = g.add_param("w", (rng.standard_normal((oc, xshape[1] // groups) + ks) * 0.5)
                    .astype(np.float32))
    ins = [x, w]
    if bias:
        ins.append(g.add_param("b", rng.standard_normal(oc).astype(np.float32)))
    y, = g.add_node("Conv", ins, attrs, name=name)
    g.outputs = [_act(g, y, act)]
    depthwise = xshape[1] // groups == 1 and oc == groups
    return Case(name, g, seed, shared=not depthwise)


CONVS = [
    ("c1d_k3", (1, 4, 20), 6, 3, {"pads": [1, 2]}, True, "Relu"),
    ("c1d_k5_s2", (2, 3, 17), 5, 5, {"strides": [2], "pads": [2, 1]}, False, None),
    ("c1d_k7_d2", (1, 5, 40), 9, 7, {"dilations": [2], "pads": [3, 3]}, True, "Clip"),
    ("c2d_k1", (1, 16, 7, 9), 24, 1, {}, False, None),
    ("c2d_k1_s2", (1, 8, 9, 9), 12, 1, {"strides": [2, 2]}, True, "Relu"),
    ("c2d_k3", (2, 5, 9, 11), 7, 3, {"pads": [1, 1, 1, 1]}, True, "Clip"),
    ("c2d_k3_s2_asym", (1, 6, 10, 9), 10, 3, {"strides": [2, 2], "pads": [0, 1, 2, 1]}, True,
     None),
    ("c2d_k3_d2", (1, 4, 12, 12), 8, 3, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True,
     "Relu"),
    ("c2d_k5_g2", (1, 6, 11, 10), 10, 5, {"group": 2, "pads": [2, 1, 2, 1]}, True, None),
    ("c2d_k7_s2_stem", (1, 3, 23, 21), 16, 7, {"strides": [2, 2], "pads": [3, 3, 3, 3]},
     True, "Relu"),
    ("c2d_mult2", (1, 3, 8, 8), 6, 3, {"group": 3, "pads": [1, 1, 1, 1]}, True, None),
    ("c2d_k3_same", (1, 5, 7, 8), 6, 3, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, True,
     None),
    ("c2d_oc_odd", (1, 70, 6, 6), 65, 3, {"pads": [1, 1, 1, 1]}, True, "Relu"),
    ("c2d_batch3", (3, 4, 5, 5), 9, 3, {}, True, None),
    ("c2d_k_rect", (1, 17, 6, 9), 5, (3, 1), {"pads": [1, 0, 1, 0]}, False, None),
    ("resnet_3x3", (1, 64, 8, 8), 64, 3, {"pads": [1, 1, 1, 1]}, False, "Relu"),
    ("c2d_deep_split", (1, 128, 4, 4), 40, 3, {"pads": [1, 1, 1, 1]}, True, "Relu"),
    ("resnet_1x1_s2", (1, 32, 8, 8), 64, 1, {"strides": [2, 2]}, False, None),
    ("mbnet_pw", (1, 32, 10, 10), 48, 1, {}, True, "Clip"),
    ("dw_k3", (1, 8, 13, 14), 8, 3, {"group": 8, "pads": [1, 1, 1, 1]}, True, "Clip"),
    ("dw_k3_s2", (2, 6, 15, 15), 6, 3, {"group": 6, "strides": [2, 2], "pads": [1, 1, 1, 1]},
     True, "Relu"),
    ("dw_k5_d2_asym", (1, 4, 16, 13), 4, 5, {"group": 4, "dilations": [2, 2],
                                             "pads": [4, 3, 2, 4]}, False, None),
    ("dw_big", (1, 2, 70, 64), 2, 3, {"group": 2, "pads": [1, 1, 1, 1]}, True, None),
    ("dw_1d", (1, 5, 33), 5, 7, {"group": 5, "strides": [2], "pads": [3, 2]}, True, None),
    ("dw_3d", (1, 3, 5, 6, 7), 3, 3, {"group": 3, "pads": [1, 1, 1, 1, 1, 1]}, True, "Relu"),
    ("c3d_k3", (1, 3, 5, 6, 7), 5, 3, {"pads": [1, 1, 1, 1, 1, 1]}, True, None),
    ("c3d_k1_s2", (2, 4, 5, 5, 6), 6, 1, {"strides": [2, 2, 2]}, True, "Clip"),
]


def gemm_case(name, m, k, n, attrs=None, c_shape=None, b_input=False, c_input=False,
              act=None, seed=0) -> Case:
    attrs = dict(attrs or {})
    rng = np.random.default_rng(seed + 200)
    g = Graph(name)
    a = g.add_input("a", TensorType(F32, (k, m) if attrs.get("transA")
                                    else (m, k)))
    bshape = (n, k) if attrs.get("transB") else (k, n)
    b = g.add_input("b", TensorType(F32, bshape)) if b_input else \
        g.add_param("bw", rng.standard_normal(bshape).astype(np.float32))
    ins = [a, b]
    if c_shape is not None:
        ins.append(g.add_input("c", TensorType(F32, c_shape)) if c_input else
                   g.add_param("cw", rng.standard_normal(c_shape).astype(np.float32)))
    y, = g.add_node("Gemm", ins, attrs, name=name)
    g.outputs = [_act(g, y, act)]
    return Case(name, g, seed, shared=True)


GEMMS = [
    ("g_plain", 5, 33, 17, {}, (17,), False, False, None),
    ("g_trans", 6, 20, 9, {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, (6, 1),
     False, False, "Relu"),
    ("g_c_input", 7, 11, 13, {"beta": -1.5}, (7, 13), False, True, None),
    ("g_b_input_tb", 9, 30, 21, {"transB": 1, "alpha": 2.0}, (1, 21), True, False, "Clip"),
    ("g_b_input", 4, 18, 10, {"alpha": 0.25}, None, True, False, None),
    ("g_big_odd", 70, 40, 65, {}, (65,), False, False, None),
    ("g_gemv_split", 1, 512, 100, {"transB": 1}, (100,), False, False, "Relu"),
    ("g_gemv_split_b", 2, 300, 40, {}, None, True, False, None),
    ("g_scalar_c", 3, 5, 4, {"beta": 0.5}, (), False, False, None),
]


def matmul_case(name, ashape, bshape, b_const=False, dtype=F32, seed=0) -> Case:
    rng = np.random.default_rng(seed + 300)
    g = Graph(name)
    a = g.add_input("a", TensorType(dtype, ashape))
    b = g.add_param("bw", rng.standard_normal(bshape).astype(dtype.np)) if b_const else \
        g.add_input("b", TensorType(dtype, bshape))
    y, = g.add_node("MatMul", [a, b], {}, name=name)
    g.outputs = [y]
    return Case(name, g, seed, shared=dtype is F32)


MATMULS = [
    ("mm_const_b", (3, 4, 5), (5, 6), True),
    ("mm_batched", (4, 17, 19), (4, 19, 23), False),
    ("mm_bcast", (2, 1, 7, 9), (3, 9, 4), False),
    ("mm_bcast_b2d", (2, 3, 7, 9), (9, 5), False),
    ("mm_vec_a", (7,), (7, 5), False),
    ("mm_vec_b", (4, 6, 7), (7,), False),
    ("mm_odd", (65, 33), (33, 70), False),
    ("mm_gemv_const", (1, 600), (600, 30), True),
]


def _random_cases(seed: int, convs: int, gemms: int, matmuls: int) -> dict:
    """Seeded random configurations (shapes, strides, dilations, pads, groups, transposes,
    broadcasts) on top of the hand-picked ones."""
    rnd = random.Random(seed)
    cases = {}
    for i in range(convs):
        nd = rnd.choice([1, 2, 2, 3])
        batch, grp = rnd.choice([1, 1, 2]), rnd.choice([1, 1, 2, 3, "dw"])
        groups = rnd.randint(1, 6) if grp == "dw" else grp
        cin = groups if grp == "dw" else groups * rnd.randint(1, 6)
        oc = groups if grp == "dw" else groups * rnd.randint(1, 9)
        k = tuple(rnd.choice([1, 2, 3, 5]) for _ in range(nd))
        dil = [rnd.choice([1, 1, 2]) for _ in range(nd)]
        size = tuple(max(rnd.randint(3, 12 if nd < 3 else 6), (kk - 1) * d + 1)
                     for kk, d in zip(k, dil))
        attrs = {"strides": [rnd.choice([1, 1, 2, 3]) for _ in range(nd)], "dilations": dil,
                 "pads": [rnd.randint(0, 2) for _ in range(2 * nd)], "group": groups}
        name = f"rc{i}"
        cases[name] = conv_case(name, (batch, cin) + size, oc, k, attrs, rnd.random() < 0.7,
                                rnd.choice([None, "Relu", "Clip"]), seed=1000 + i)
    for i in range(gemms):
        m, k, n = rnd.randint(1, 70), rnd.randint(1, 300), rnd.randint(1, 70)
        attrs = {"transA": rnd.randint(0, 1), "transB": rnd.randint(0, 1),
                 "alpha": rnd.choice([1.0, 0.5]), "beta": rnd.choice([1.0, -2.0])}
        cs = rnd.choice([None, (n,), (m, 1), (m, n), (1, n), ()])
        name = f"rg{i}"
        cases[name] = gemm_case(name, m, k, n, attrs, cs, rnd.random() < 0.5,
                                cs is not None and rnd.random() < 0.5,
                                rnd.choice([None, "Relu"]), seed=1000 + i)
    for i in range(matmuls):
        b1 = tuple(rnd.choice([1, 2, 3]) for _ in range(rnd.randint(0, 2)))
        b2 = tuple(x if rnd.random() < 0.6 else 1 for x in b1)[rnd.randint(0, len(b1)):]
        m, k, n = rnd.randint(1, 40), rnd.randint(1, 200), rnd.randint(1, 40)
        name = f"rm{i}"
        cases[name] = matmul_case(name, b1 + (m, k), b2 + (k, n), not b2 and rnd.random() < 0.5,
                                  seed=1000 + i)
    return cases


def _cases() -> dict:
    cases = {}
    for i, (name, xs, oc, k, attrs, bias, act) in enumerate(CONVS):
        cases[name] = conv_case(name, xs, oc, k, attrs, bias, act, seed=i)
    for i, (name, m, k, n, attrs, cs, bi, ci, act) in enumerate(GEMMS):
        cases[name] = gemm_case(name, m, k, n, attrs, cs, bi, ci, act, seed=i)
    for i, (name, ash, bsh, bc) in enumerate(MATMULS):
        cases[name] = matmul_case(name, ash, bsh, bc, seed=i)
    cases["mm_f64"] = matmul_case("mm_f64", (3, 5, 6), (6, 4), dtype=DType.float64)
    g = Graph("conv_rt_w")              # run-time weights: the generic rule, grid-mapped
    x = g.add_input("x", TensorType(F32, (1, 3, 7, 7)))
    w = g.add_input("w", TensorType(F32, (4, 3, 3, 3)))
    g.outputs = g.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]}, name="conv_rt_w")
    cases["conv_rt_w"] = Case("conv_rt_w", g, 7, shared=False)
    cases.update(_random_cases(11, convs=24, gemms=10, matmuls=8))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def module():
    return render_module([k for c in CASES.values() for k in c.kernels], "schedules")


@pytest.fixture(scope="module")
def lib(module, tmp_path_factory) -> EmuLibrary:
    if find_cxx() is None:
        pytest.skip("no g++: cuda-emu builds need a C++ compiler")
    return EmuLibrary(build_emu_library(module.source))


@needs_cxx
@pytest.mark.parametrize("name", list(CASES))
def test_emulated_matches_reference(lib, module, name):
    CASES[name].run(lib, module)


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_are_gpu_schedules(module, name):
    case = CASES[name]
    for k in case.kernels:
        kinds = {s.kind for s in walk_stmts(k.body) if isinstance(s, For)}
        assert {"gpu_block", "gpu_thread"} <= kinds, k.name
        assert not kinds & {"parallel"}, k.name
    main = module.kernel(case.kernels[-1].name)
    device = main.device
    if case.shared:
        assert "CNNCC_SHARED" in device and "__syncthreads" in device, name
        for launch in main.launches[:1]:
            assert launch.shared_bytes > 0 and launch.shared_bytes <= 48 * 1024
            assert 64 <= np.prod(launch.block) <= 256
    elif name.startswith("dw"):
        assert "CNNCC_SHARED" not in device and "__syncthreads" not in device, name


def test_tiling_choices():
    t, s = plan(64, 56 * 56, 576)                   # ResNet 3x3 64 -> 64 at 56x56
    assert (t.bm, t.tm) == (64, 4) and t.tn >= 2 and t.threads in (128, 256) and s == 1
    t, s = plan(1000, 1000, 1000)
    assert (t.bm, t.bn, t.tm, t.tn, t.threads, s) == (64, 64, 4, 4, 256, 1)
    t, s = plan(1, 1000, 512)                       # a classifier gemv: K split
    assert t.bm == 1 and t.threads >= 128 and t.bn <= 256 and s > 1
    t, s = plan(512, 49, 4608)                      # ResNet 3x3 512 -> 512 at 7x7, batch 1
    assert t.tm * t.tn == 16 and s * 8 >= 96
    assert plan(512, 49, 4608, z=2)[1] == 1         # no split with a batch / groups on z
    for m, n in ((1, 7), (5, 17), (33, 65), (64, 4096), (1000, 1000)):
        t, _ = plan(m, n, 64)
        assert t.threads <= 256 and t.bk * (t.bm + t.bn + 2) * 4 <= 48 * 1024


# Representative full-size layers, compiled only (emulating them would take minutes).
BIG = {
    "resnet_3x3_56": lambda: conv_case("resnet_3x3_56", (1, 64, 56, 56), 64, 3,
                                       {"pads": [1, 1, 1, 1]}, False, "Relu"),
    "resnet_1x1_56": lambda: conv_case("resnet_1x1_56", (1, 64, 56, 56), 256, 1, {}, True),
    "mbnet_dw_112": lambda: conv_case("mbnet_dw_112", (1, 32, 112, 112), 32, 3,
                                      {"group": 32, "pads": [1, 1, 1, 1]}, True, "Clip"),
    "resnet_stem": lambda: conv_case("resnet_stem", (1, 3, 224, 224), 64, 7,
                                     {"strides": [2, 2], "pads": [3, 3, 3, 3]}, True, "Relu"),
    "fc_512_1000": lambda: gemm_case("fc_512_1000", 1, 512, 1000, {"transB": 1}, (1000,)),
    "resnet_3x3_7": lambda: conv_case("resnet_3x3_7", (1, 512, 7, 7), 512, 3,
                                      {"pads": [1, 1, 1, 1]}, False, "Relu"),
    "resnet_3x3_7_b8": lambda: conv_case("resnet_3x3_7_b8", (8, 512, 7, 7), 512, 3,
                                         {"pads": [1, 1, 1, 1]}, False, "Relu"),
    "mm_bert": lambda: matmul_case("mm_bert", (12, 128, 64), (12, 64, 128)),
}
CHECKED = ["c1d_k7_d2", "c2d_deep_split", "c2d_k3", "c2d_k5_g2", "c2d_oc_odd", "c2d_batch3", "dw_k3_s2", "dw_big",
           "dw_3d", "c3d_k3", "g_trans", "g_b_input_tb", "g_gemv_split", "mm_bcast", "mm_vec_b",
           "mm_f64"]


@needs_nvcc
def test_nvcc_compiles_without_spills(capsys):
    kernels = [k for name in CHECKED for k in CASES[name].kernels]
    big = {name: make() for name, make in BIG.items()}
    kernels += [k for c in big.values() for k in c.kernels]
    mod = render_module(kernels, "checked")
    usage = nvcc_check(mod.source, ("sm_80", "sm_90"))
    lines = []
    for arch in ("sm_80", "sm_90"):
        fns = usage[arch]
        for k in mod.kernels:
            for launch in k.launches:
                u = fns[launch.name]
                assert u.spill_stores == 0 and u.spill_loads == 0, (arch, launch.name, u)
                assert u.shared_bytes == launch.shared_bytes, (launch.name, u)
                assert u.shared_bytes <= 48 * 1024
                if arch == "sm_80" and k.name in big:
                    lines.append(f"{launch.name}: grid {launch.grid} block {launch.block} "
                                 f"smem {launch.shared_bytes} regs {u.registers}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize("name", ["g_gemv_split", "g_gemv_split_b", "mm_gemv_const",
                                  "c2d_deep_split"])
def test_long_reductions_with_few_blocks_split_k(module, name):
    """A gemv-like product splits K over blockIdx.z: two launches (partials, then the sum +
    epilogue), the partial sums in a scratch buffer of the node."""
    case = CASES[name]
    launches = module.kernel(case.kernels[0].name).launches
    assert len(launches) == 2 and launches[0].grid[2] > 1, launches
    assert case.ctx.temps


SANITIZED = ["c2d_k3_s2_asym", "c2d_batch3", "dw_k5_d2_asym", "g_gemv_split", "mm_bcast"]


@needs_cxx
@pytest.mark.parametrize("sanitize", ["address", "thread"])
def test_sanitizers_clean(sanitize):
    """Exact-size device buffers under AddressSanitizer (every clamped load stays in bounds,
    for every case) and ThreadSanitizer (the barriers order the shared tiles; a subset)."""
    names = list(CASES) if sanitize == "address" else SANITIZED
    kernels = [k for n in names for k in CASES[n].kernels]
    mod = render_module(kernels, f"san_{sanitize}")
    exe = build_emu_executable(mod, sanitize=sanitize)
    rng = np.random.default_rng(1)
    for k in kernels:
        arrays = {b.name: rng.standard_normal(b.shape).astype(b.dtype.np) for b in k.params}
        outs, proc = run_emu_executable(exe, mod.kernel(k.name), arrays)
        assert proc.returncode == 0, (k.name, proc.stderr[-3000:])


def test_lower_graph_picks_gpu_schedules():
    """lower_graph(gpu=True) routes Conv/Gemm/MatMul to these schedules, with the activation
    of the fused node (fuse_epilogue) in the epilogue."""
    case = CASES["c2d_k3"]
    prog = lower_graph(fuse_epilogue(case.g), None, gpu=True)
    kernels = [k for k, _ in prog.ctx.kernels]
    assert len(kernels) == 1
    src = render_module(kernels, "lg").source
    assert "CNNCC_SHARED" in src and "cnncc_min_f32" in src      # the fused Clip(0, 6)


@needs_cxx
def test_small_network_on_cuda_emu_target():
    """Stem conv + Relu, depthwise + Clip, pointwise, global pool, Gemm: cnncc.compile with
    target cuda-emu against the reference interpreter."""
    rng = np.random.default_rng(5)
    g = Graph("net")
    x = g.add_input("x", TensorType(F32, (2, 3, 20, 20)))

    def prm(name, shape):
        return g.add_param(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))
    y, = g.add_node("Conv", [x, prm("w0", (16, 3, 7, 7)), prm("b0", (16,))],
                    {"strides": [2, 2], "pads": [3, 3, 3, 3]})
    y, = g.add_node("Relu", [y])
    y, = g.add_node("Conv", [y, prm("w1", (16, 1, 3, 3)), prm("b1", (16,))],
                    {"group": 16, "pads": [1, 1, 1, 1]})
    y = _act(g, y, "Clip")
    y, = g.add_node("Conv", [y, prm("w2", (24, 16, 1, 1))], {})
    y, = g.add_node("GlobalAveragePool", [y])
    y, = g.add_node("Flatten", [y], {"axis": 1})
    y, = g.add_node("Gemm", [y, prm("w3", (10, 24)), prm("b3", (10,))], {"transB": 1})
    g.outputs = [y]
    feeds = {"x": rng.standard_normal((2, 3, 20, 20)).astype(np.float32)}
    got = cnncc.compile(g, target="cuda-emu").run(feeds)[y]
    ref = run_graph(g, feeds)[y]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max()))
