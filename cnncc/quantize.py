"""Static post-training quantization: a float model in, a standard QDQ ONNX model out.

    cnncc quantize model.onnx -o model.int8.onnx --calibration images/ --per-channel
    cnncc.quantize("model.onnx", "model.int8.onnx", calibration="data.npz")
    net.quantize(data)                                  # a DSL net: returns the ModelProto

Steps: BatchNorm is folded into the convs (cnncc's own passes, so the quantized convs are the
ones that run); the activations every conv reads and writes (after a ReLU or Clip(0, M) that
directly follows it), the outputs of Adds of two such tensors and of average pools reading
one, and the input of a Gemm / MatMul with a constant 2-D weight reading one, are calibrated
(a MaxPool's, Flatten's, Reshape's output takes its input's scale and zero point: those ops
then run on the 8-bit values, cnncc/passes/fuse_quantized_ops.py) on the data
given by running the
float model compiled with those tensors as extra outputs: per tensor, uint8, asymmetric, the
range covering 0 (minmax: the extreme values seen; percentile: the mean over samples of the
0.01 and 99.99 percentiles). Conv weights become int8, symmetric (zero point 0, range
[-127, 127], or [-63, 63] with ``reduce_range``: the fast AVX2 path), per output channel
(``per_channel``) or per tensor, and so do the Gemm / MatMul weights (per output column);
biases int32 at the scale
x_scale * w_scale. Every quantized tensor T gets QuantizeLinear -> DequantizeLinear after its
producer; weights and biases are stored quantized behind a DequantizeLinear, as onnxruntime's
quantize_static(quant_format=QDQ) writes them. A model with several (float32) inputs is
calibrated from an .npz holding one array of samples per input name. A fifth of the samples
(at least one, when there are two or more) are held out of calibration and used to report
the top-1 agreement and the error of the quantized model's first output against the float
model's.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ir import CompileError, DType, Graph, InputError, Node, TensorType
from .ir.rewrite import remove_unused_params
from .passes.fuse_quantized import relu_bounds

METHODS = ("minmax", "percentile")


@dataclass
class QuantizeReport:
    calibrated: int             # samples calibrated on
    held_out: int               # samples compared on
    top1_agreement: float       # fraction of held-out samples with the same argmax (nan: none)
    max_abs_error: float        # of the first output, over the held-out samples
    rel_error: float            # ||int8 - fp32|| / ||fp32|| of the first output
    tensors: int                # activations quantized
    convs: int                  # convs and gemms with quantized weights

    def __str__(self) -> str:
        if not self.held_out:
            return (f"quantized {self.convs} convs/gemms and {self.tensors} activations on "
                    f"{self.calibrated} samples (no held-out sample to compare on)")
        return (f"quantized {self.convs} convs/gemms and {self.tensors} activations on "
                f"{self.calibrated} samples; on {self.held_out} held-out: top-1 agreement "
                f"{self.top1_agreement:.1%}, max |int8 - fp32| {self.max_abs_error:.4g}, "
                f"relative error {self.rel_error:.3g}")


def load_calibration(spec: Any, shape: tuple[int, ...], samples: int = 16,
                     seed: int = 0) -> np.ndarray:
    """Samples (N, *shape[1:]) float32 from a folder of images or .npy files, an .npz/.npy
    file or an array; None: ``samples`` seeded standard-normal inputs."""
    if spec is None:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((samples,) + tuple(shape[1:])).astype(np.float32)
    if isinstance(spec, (str, os.PathLike)) and os.path.isdir(spec):
        from .images import ImageLoader, list_inputs
        return ImageLoader(shape)(list_inputs(os.fspath(spec)))
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"calibration data {path}: not a readable .npy/.npz file ({e})") \
                from None
        arrays = [loaded[k] for k in loaded.files] if hasattr(loaded, "files") else [loaded]
    else:
        arrays = [np.asarray(spec)]
    batches = []
    for a in arrays:
        if a.shape == tuple(shape[1:]):
            a = a[None]
        if a.ndim != len(shape) or a.shape[1:] != tuple(shape[1:]):
            raise InputError(f"calibration data holds an array of shape {list(a.shape)}; the "
                             f"model takes {list(shape)} (give (N, ...) batches or single samples)")
        batches.append(a.astype(np.float32))
    data = np.concatenate(batches)
    if not len(data):
        raise InputError("calibration data is empty")
    return data


def calibration_inputs(spec: Any, g: Graph, samples: int) -> dict[str, np.ndarray]:
    """Samples per model input: one input reads ``spec`` as load_calibration does; several
    need an .npz file (or a dict) with one array of (N, ...) samples per input name, N equal
    (None: seeded random inputs for each)."""
    shapes = {x: g.types[x].shape for x in g.inputs}
    if len(shapes) == 1 or spec is None:
        return {x: load_calibration(spec, shape, samples, seed=i)
                for i, (x, shape) in enumerate(shapes.items())}
    if isinstance(spec, (str, os.PathLike)) and os.fspath(spec).endswith(".npz") \
            and os.path.isfile(spec):
        with np.load(os.fspath(spec), allow_pickle=False) as f:
            spec = {k: f[k] for k in f.files}
    if not isinstance(spec, dict) or set(spec) != set(shapes):
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise InputError(f"the model has inputs {list(shapes)}: calibration data must be an "
                         f".npz (or a dict) with one array per input name, got {got}")
    data = {x: load_calibration(np.asarray(spec[x]), shapes[x]) for x in shapes}
    counts = {x: len(a) for x, a in data.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"calibration arrays hold different sample counts: {counts}")
    return data


def _progress(done: int, total: int, what: str) -> None:
    if not sys.stderr.isatty() and done not in (total,):
        return
    width = 30
    fill = width * done // max(total, 1)
    sys.stderr.write(f"\r{what} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _float_graph(source: Any) -> Graph:
    from .driver import load_graph
    from .passes import PassContext, run_pipeline
    graph = load_graph(source)
    for x in graph.inputs:
        if graph.types[x].dtype is not DType.float32:
            raise CompileError(f"cnncc quantize needs float32 model inputs; input {x!r} is "
                               f"{graph.types[x].dtype}")
    if any(n.op in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in graph.nodes):
        raise CompileError("the model is already quantized")
    # BatchNorm folded into the convs; nothing compiler-internal (the result is exported).
    keep = {"canonicalize", "fold_constants", "fold_batch_norm", "eliminate_dead_code"}
    from .passes import PASS_NAMES
    ctx = PassContext(opt_level=1, skip=frozenset(set(PASS_NAMES) - keep))
    return run_pipeline(graph, ctx)


# Ops that run on 8-bit values unchanged when their output takes their input's scale and
# zero point (max and data movement commute with the quantization: fuse_quantized_ops).
SAME_PARAMS = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze")
POOLS = ("GlobalAveragePool", "AveragePool")


def _gemm_weight(g: Graph, n: Node) -> bool:
    """A Gemm / MatMul on a float activation with a constant 2-D weight (and a 1-D bias)."""
    if n.op not in ("Gemm", "MatMul") or len(n.inputs) < 2 or n.inputs[1] not in g.params:
        return False
    ok = g.params[n.inputs[1]].ndim == 2 and g.types[n.inputs[0]].rank == 2 \
        and g.types[n.inputs[0]].dtype is DType.float32 and not n.attrs.get("transA", 0)
    bias = n.inputs[2] if len(n.inputs) > 2 else ""
    return ok and (not bias or bias in g.params and g.params[bias].ndim <= 1)


def _quantized_tensors(g: Graph) -> tuple[list[str], list[Node], dict[str, str]]:
    """(activations to quantize, convs and gemms with constant weights, the activations that
    take another one's scale and zero point) in graph order."""
    users = g.users()

    def post(t: str) -> str:            # after a ReLU / ReLU6 that the QConv will fuse
        use = users.get(t, [])
        if len(use) == 1 and relu_bounds(g, use[0]) is not None and t not in g.outputs:
            return use[0].outputs[0]
        return t
    convs = [n for n in g.nodes if n.op == "Conv" and n.inputs[1] in g.params
             and g.types[n.inputs[0]].dtype is DType.float32]
    chosen: list[str] = []
    for c in convs:
        chosen += [c.inputs[0], post(c.outputs[0])]
    same: dict[str, str] = {}
    for n in g.nodes:
        if n.op == "Add" and len(n.inputs) == 2 and all(i in chosen for i in n.inputs) \
                and g.types[n.inputs[0]] == g.types[n.inputs[1]]:
            chosen.append(post(n.outputs[0]))
        elif n.op in POOLS and n.inputs[0] in chosen:
            chosen.append(n.outputs[0])
        elif n.op in SAME_PARAMS and n.inputs[0] in chosen and len(n.outputs) == 1:
            same[n.outputs[0]] = same.get(n.inputs[0], n.inputs[0])
            chosen.append(n.outputs[0])
    gemms = [n for n in g.nodes if _gemm_weight(g, n) and n.inputs[0] in chosen]
    seen, out = set(), []
    for t in chosen:
        if t not in seen and t not in g.outputs and t not in g.params:
            seen.add(t)
            out.append(t)
    return out, convs + gemms, {t: s for t, s in same.items() if t in seen and s in seen}


def _ranges(g: Graph, tensors: list[str], data: dict[str, np.ndarray], method: str,
            threads: int | None) -> dict[str, tuple[float, float]]:
    from .driver import compile as compile_
    probe = g.copy()
    probe.outputs = list(g.outputs) + [t for t in tensors if t not in g.outputs]
    model = compile_(probe, threads=threads, cache=False)
    lo = {t: [] for t in tensors}
    hi = {t: [] for t in tensors}
    count = len(next(iter(data.values())))
    for i in range(count):
        outs = model.run({x: a[i:i + 1] for x, a in data.items()})
        for t in tensors:
            v = outs[t]
            if method == "minmax":
                lo[t].append(float(v.min()))
                hi[t].append(float(v.max()))
            else:
                a, b = np.percentile(v, [0.01, 99.99])
                lo[t].append(float(a))
                hi[t].append(float(b))
        _progress(i + 1, count, "calibrating")
    agg = (min, max) if method == "minmax" else (np.mean, np.mean)
    return {t: (float(agg[0](lo[t])), float(agg[1](hi[t]))) for t in tensors}


def activation_params(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """uint8 asymmetric (scale, zero point) covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise CompileError("calibration produced a non-finite activation (NaN or Inf)")
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zp)


def weight_params(w: np.ndarray, per_channel: bool,
                  qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scale per output channel or scalar), symmetric in
    [-qmax, qmax]."""
    axes = tuple(range(1, w.ndim)) if per_channel else None
    amax = np.abs(w.astype(np.float64)).max(axis=axes)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    s = scale.reshape((-1,) + (1,) * (w.ndim - 1)) if per_channel else scale
    q = np.clip(np.rint(w.astype(np.float64) / s.astype(np.float64)), -qmax, qmax).astype(np.int8)
    return q, scale


def insert_qdq(g: Graph, tensors: list[str], ranges: dict, convs: list[Node],
               per_channel: bool, qmax: int = 127, same: dict | None = None) -> Graph:
    """``g`` with Q -> DQ after every tensor of ``tensors`` (``same`` maps a tensor to the one
    whose scale and zero point it takes) and quantized conv / gemm weights and biases."""
    q = g.copy()
    params: dict[str, tuple] = {}
    same = same or {}
    for t in sorted(tensors, key=lambda t: t in same):      # calibrated ones first
        if t in same:
            params[t] = params[same[t]]
            continue
        scale, zp = activation_params(*ranges[t])
        params[t] = (q.add_param(f"{t}_scale", np.asarray(scale, np.float32)),
                     q.add_param(f"{t}_zero_point", np.asarray(zp, np.uint8)), scale)
    renamed: dict[str, str] = {}
    scales: dict[str, np.float32] = {}          # dequantized value -> its scale
    new_nodes: list[Node] = []

    def qdq(t: str) -> None:
        s, z, _ = params[t]
        tq, tdq = q.fresh_name(f"{t}_quantized"), q.fresh_name(f"{t}_dequantized")
        q.types[tq] = TensorType(DType.uint8, q.types[t].shape)
        q.types[tdq] = q.types[t]
        new_nodes.append(Node("QuantizeLinear", [t, s, z], [tq], {}, q.fresh_name(f"{t}_Q")))
        new_nodes.append(Node("DequantizeLinear", [tq, s, z], [tdq], {},
                              q.fresh_name(f"{t}_DQ")))
        renamed[t] = tdq
        scales[tdq] = params[t][2]

    for t in q.inputs:
        if t in params:
            qdq(t)
    conv_names = {c.name for c in convs}
    for node in q.nodes:
        node.inputs = [renamed.get(i, i) for i in node.inputs]
        if node.name in conv_names:
            _quantize_conv(q, node, scales, per_channel, new_nodes, qmax)
        new_nodes.append(node)
        for o in node.outputs:
            if o in params:
                qdq(o)
    q.nodes = new_nodes
    return q


def _quantize_conv(g: Graph, conv: Node, scales: dict, per_channel: bool,
                   nodes: list[Node], qmax: int) -> None:
    """Weights (and bias) of ``conv`` (or a Gemm / MatMul) stored quantized, read through
    DequantizeLinear; ``scales``: the scale of each dequantized activation (the bias is
    quantized at x_scale * w_scale when the input is one; else it stays float). A Gemm / MatMul
    weight is scaled per output column (axis 1 of [K, N], 0 with transB)."""
    w = g.params[conv.inputs[1]]
    axis = 0 if conv.op == "Conv" or conv.attrs.get("transB", 0) else 1
    wq, ws = weight_params(np.moveaxis(w, axis, 0), per_channel, qmax)
    wq = np.ascontiguousarray(np.moveaxis(wq, 0, axis))
    attrs = {"axis": axis} if per_channel else {}

    def dq(hint: str, value: np.ndarray, scale: np.ndarray, zp_dtype) -> str:
        v = g.add_param(f"{hint}_quantized", value)
        s = g.add_param(f"{hint}_scale", scale)
        z = g.add_param(f"{hint}_zero_point", np.zeros(scale.shape, zp_dtype))
        out = g.fresh_name(f"{hint}_dequantized")
        g.types[out] = TensorType(DType.float32, value.shape)
        nodes.append(Node("DequantizeLinear", [v, s, z], [out], dict(attrs),
                          g.fresh_name(f"{hint}_DQ")))
        return out
    new_w = dq(f"{conv.name}_w", wq, ws, np.int8)
    if len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] in g.params:
        x_scale = scales.get(conv.inputs[0])
        if x_scale is not None:
            bs = (np.float32(x_scale) * np.broadcast_to(ws, (w.shape[axis],))).astype(np.float32)
            b = g.params[conv.inputs[2]].astype(np.float64)
            bq = np.clip(np.rint(b / bs.astype(np.float64)), -2**31 + 1, 2**31 - 1)
            if not per_channel:
                bs = bs[:1].reshape(())
            conv.inputs[2] = dq(f"{conv.name}_b", bq.astype(np.int32), bs, np.int32)
    conv.inputs[1] = new_w


def quantize(model: Any, output: str | os.PathLike | None = None, calibration: Any = None,
             per_channel: bool = False, method: str = "minmax", threads: int | None = None,
             reduce_range: bool = False,
             samples: int = 16, verbose: bool = True) -> tuple[Any, QuantizeReport]:
    """Quantize ``model`` (ONNX path/bytes/ModelProto, Graph or DSL net) to QDQ ONNX; write it
    to ``output`` when given. Returns (ModelProto, QuantizeReport). ``reduce_range``: 7-bit
    weights, which AVX2 without VNNI multiplies with one vpmaddubsw pair a word instead of two
    vpmaddwd."""
    from .driver import compile as compile_
    from .export_onnx import save_onnx, to_onnx
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    g = _float_graph(model)
    data = calibration_inputs(calibration, g, samples)
    total = len(next(iter(data.values())))
    if calibration is None and verbose:
        print(f"no calibration data given: calibrating on {total} seeded random inputs",
              file=sys.stderr)
    held = total // 5 if total >= 5 else (1 if total >= 2 else 0)
    calib = {x: a[:total - held] for x, a in data.items()}
    check = [{x: a[i:i + 1] for x, a in data.items()} for i in range(total - held, total)]
    tensors, convs, same = _quantized_tensors(g)
    ranges = _ranges(g, [t for t in tensors if t not in same], calib, method, threads)
    qmax = 63 if reduce_range else 127
    qg = remove_unused_params(insert_qdq(g, tensors, ranges, convs, per_channel, qmax,
                                         same)).verify()
    proto = save_onnx(qg, output) if output is not None else to_onnx(qg)
    report = QuantizeReport(total - held, held, float("nan"), float("nan"), float("nan"),
                            len(tensors), len(convs))
    if held:
        fm, qm = compile_(g, threads=threads, cache=False), compile_(qg, threads=threads,
                                                                     cache=False)
        ref = np.concatenate([np.asarray(fm.run(s)[g.outputs[0]]) for s in check])
        got = np.concatenate([np.asarray(qm.run(s)[qg.outputs[0]]) for s in check])
        flat = lambda a: a.reshape(len(check), -1)                          # noqa: E731
        report.top1_agreement = float(np.mean(flat(ref).argmax(1) == flat(got).argmax(1)))
        report.max_abs_error = float(np.abs(got - ref).max())
        report.rel_error = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    if verbose:
        print(report, file=sys.stderr)
    return proto, report


def add_quantize_arguments(p: Any) -> None:
    p.add_argument("model", help="float ONNX model or zoo name")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                   help="where the QDQ model is written")
    p.add_argument("--calibration", metavar="DIR|FILE.npz|FILE.npy",
                   help="a folder of images or .npy samples, or an .npz/.npy of samples; a "
                        "model with several inputs: an .npz with one array per input name "
                        "(default: --samples seeded random inputs)")
    p.add_argument("--per-channel", action="store_true",
                   help="one weight scale per output channel (default: per tensor)")
    p.add_argument("--method", choices=METHODS, default="minmax",
                   help="activation ranges: extremes seen, or mean 0.01/99.99 percentiles")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights ([-63, 63]): one vpmaddubsw pair per 4 channels on AVX2 "
                        "without VNNI, instead of two vpmaddwd (less precise)")
    p.add_argument("--samples", type=int, default=16,
                   help="random samples when no --calibration is given")
    p.add_argument("--threads", type=int, default=None)


def run_quantize(args: Any, resolve_model: Any) -> int:
    quantize(resolve_model(args.model), args.output, calibration=args.calibration,
             per_channel=args.per_channel, method=args.method, threads=args.threads,
             reduce_range=args.reduce_range,
             samples=args.samples)
    print(f"wrote {args.output}")
    return 0
