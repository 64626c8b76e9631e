"""Old ONNX op forms -> the canonical (newest-opset) form of the IR.

Each rewrite is keyed by op type and looks at ``since``: the version of the op's ONNX definition in
effect at the model's opset (``onnx.defs.get_schema(op, opset).since_version``). Values that newer
opsets take as inputs (Clip min/max, Slice starts/ends/axes, Pad pads/value, Squeeze/Unsqueeze/
Reduce* axes, Split split, TopK k, Reshape shape, Dropout ratio) become constant parameters; ops
that were replaced (Upsample, Resize-10, Scatter) become their successors; Softmax-family ops before
13 get their coerced-2-D semantics spelled out with Flatten/Reshape.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import onnx

from cnncc.ir import CompileError, TensorType

# Ops whose ONNX name differs from the IR op they become (used by the unsupported-op check).
RENAMED_OPS = {"Upsample": "Resize", "Scatter": "ScatterElements"}

# float32 limits: Clip-6's attribute defaults, which mean "no bound".
_FLT_MAX = float(np.finfo(np.float32).max)
_REDUCE_18 = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
              "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"}


class Emitter(Protocol):
    """What a rewrite needs from the importer."""

    def type(self, value: str) -> TensorType: ...
    def value(self, value: str) -> np.ndarray | None: ...
    def const(self, hint: str, array: np.ndarray) -> str: ...
    def fresh(self, hint: str) -> str: ...
    def is_used(self, value: str) -> bool: ...
    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], outputs: list[str],
             name: str) -> None: ...


def convert_node(em: Emitter, op: str, inputs: list[str], outputs: list[str],
                 attrs: dict[str, Any], name: str, since: int) -> None:
    """Emit the canonical form of one ONNX node (possibly several IR nodes)."""
    # consumed_inputs (opset 1 era) only described in-place buffer reuse: meaningless to us.
    attrs.pop("consumed_inputs", None)
    rule = _RULES.get(op)
    if rule is None:
        em.emit(op, inputs, attrs, outputs, name)
        return
    if not inputs or not inputs[0]:
        raise _fail(name, op, since, "the first input is required")
    try:
        rule(em, inputs, outputs, attrs, name, since)
    except (TypeError, ValueError, IndexError, KeyError, OverflowError) as e:
        # Attributes of the wrong kind or shape in an old-form node (CompileErrors pass through).
        if isinstance(e, CompileError):
            raise
        raise _fail(name, op, since, f"malformed attributes or inputs ({e})") from None


def _fail(name: str, op: str, since: int, message: str) -> CompileError:
    return CompileError(f"{op} (version {since}): {message}", name)


def _ints(em: Emitter, name: str, what: str, values: list[int]) -> str:
    return em.const(f"{name}_{what}", np.asarray(values, dtype=np.int64).reshape(len(values)))


def _clip(em, inputs, outputs, attrs, name, since):
    if since < 11:
        x_type = em.type(inputs[0])
        extra = []
        for key, default in (("min", -_FLT_MAX), ("max", _FLT_MAX)):
            value = attrs.pop(key, default)
            # The attribute default is float32's range: the same as no bound at all.
            extra.append("" if value == default else
                         em.const(f"{name}_{key}", np.array(value, dtype=x_type.dtype.np)))
        inputs = [inputs[0]] + extra
        while inputs[-1] == "":
            inputs.pop()
    em.emit("Clip", inputs, attrs, outputs, name)


def _slice(em, inputs, outputs, attrs, name, since):
    if since < 10:
        if "starts" not in attrs or "ends" not in attrs:
            raise _fail(name, "Slice", since, "attributes 'starts' and 'ends' are required")
        new = [inputs[0], _ints(em, name, "starts", attrs.pop("starts")),
               _ints(em, name, "ends", attrs.pop("ends"))]
        if "axes" in attrs:
            new.append(_ints(em, name, "axes", attrs.pop("axes")))
        inputs = new
    em.emit("Slice", inputs, attrs, outputs, name)


def _pad(em, inputs, outputs, attrs, name, since):
    if since < 11:
        pads = attrs.pop("pads", attrs.pop("paddings", None))
        if pads is None:
            raise _fail(name, "Pad", since, "attribute 'pads' is required")
        value = attrs.pop("value", 0.0)
        x_type = em.type(inputs[0])
        inputs = [inputs[0], _ints(em, name, "pads", pads),
                  em.const(f"{name}_value", np.array(value).astype(x_type.dtype.np))]
    em.emit("Pad", inputs, attrs, outputs, name)


def _reduce(em, inputs, outputs, attrs, name, since, op):
    limit = 13 if op == "ReduceSum" else 18
    if since < limit and "axes" in attrs:
        inputs = [inputs[0], _ints(em, name, "axes", attrs.pop("axes"))]
    em.emit(op, inputs, attrs, outputs, name)


def _split(em, inputs, outputs, attrs, name, since):
    if since < 13 and "split" in attrs:
        inputs = [inputs[0], _ints(em, name, "split", attrs.pop("split"))]
    has_split = len(inputs) > 1 and inputs[1] != ""
    if not has_split and "num_outputs" not in attrs:
        # Before Split-18 an omitted split meant equal parts, one per output.
        attrs["num_outputs"] = len(outputs)
    em.emit("Split", inputs, attrs, outputs, name)


def _topk(em, inputs, outputs, attrs, name, since):
    if since < 10:
        if "k" not in attrs:
            raise _fail(name, "TopK", since, "attribute 'k' is required")
        inputs = [inputs[0], _ints(em, name, "k", [attrs.pop("k")])]
    em.emit("TopK", inputs, attrs, outputs, name)


def _reshape(em, inputs, outputs, attrs, name, since):
    if "shape" in attrs:          # Reshape-1
        inputs = [inputs[0], _ints(em, name, "shape", attrs.pop("shape"))]
    em.emit("Reshape", inputs, attrs, outputs, name)


def _dropout(em, inputs, outputs, attrs, name, since):
    if since < 12:
        ratio = attrs.pop("ratio", 0.5)
        if attrs.pop("is_test", 1) == 0:
            raise _fail(name, "Dropout", since, "is_test=0 (training mode) is not supported")
        if since < 10 and len(outputs) > 1 and outputs[1]:
            if em.is_used(outputs[1]):
                raise _fail(name, "Dropout", since, "the mask output of Dropout before version "
                            "10 (typed like the data) is not supported")
            outputs = outputs[:1]       # declared but never read: drop it
        x_type = em.type(inputs[0])
        dt = x_type.dtype.np if x_type.dtype.is_float else np.float32
        inputs = [inputs[0], em.const(f"{name}_ratio", np.array(ratio, dtype=dt))]
    em.emit("Dropout", inputs, attrs, outputs, name)


def _batchnorm(em, inputs, outputs, attrs, name, since):
    if since < 14:
        if attrs.pop("is_test", 1) == 0 and any(outputs[1:]):
            raise _fail(name, "BatchNormalization", since,
                        "training mode (is_test=0 with statistics outputs) is not supported")
        spatial = attrs.pop("spatial", 1)
        if spatial == 0:
            # spatial=0 means per-activation statistics; harmless only when they are per channel.
            for i in range(1, min(len(inputs), 5)):
                if inputs[i] and em.type(inputs[i]).rank != 1:
                    raise _fail(name, "BatchNormalization", since, "spatial=0 with "
                                "per-activation (not per-channel) statistics is not supported")
        if any(outputs[1:]):
            raise _fail(name, "BatchNormalization", since,
                        "the running/saved statistics outputs (training) are not supported")
        outputs = outputs[:1]
    em.emit("BatchNormalization", inputs, attrs, outputs, name)


def _gemm(em, inputs, outputs, attrs, name, since):
    attrs.pop("broadcast", None)    # Gemm < 7: numpy-style broadcasting of C is a superset
    em.emit("Gemm", inputs, attrs, outputs, name)


def _cast(em, inputs, outputs, attrs, name, since):
    to = attrs.get("to")
    if isinstance(to, (str, bytes)):       # Cast-1 spelled the type as a string
        text = to.decode() if isinstance(to, bytes) else to
        try:
            attrs["to"] = onnx.TensorProto.DataType.Value(text.upper())
        except ValueError:
            raise _fail(name, "Cast", since, f"unknown type name '{text}'") from None
    em.emit("Cast", inputs, attrs, outputs, name)


def _softmax_family(op: str):
    def rule(em, inputs, outputs, attrs, name, since):
        if since >= 13:
            em.emit(op, inputs, attrs, outputs, name)
            return
        # Before 13: the input is coerced to 2-D [prod(dims[:axis]), prod(dims[axis:])] and the
        # op runs over the second dimension, i.e. over all of dims[axis:] at once.
        x_type = em.type(inputs[0])
        rank = x_type.rank
        axis = attrs.pop("axis", 1)
        if not -rank <= axis <= rank or (rank == 0 and axis != 0):
            raise _fail(name, op, since, f"axis {axis} out of range for rank {rank}")
        axis = axis + rank if axis < 0 else axis
        if axis >= rank - 1 and rank > 0:
            em.emit(op, inputs, dict(attrs, axis=-1), outputs, name)
            return
        flat = em.fresh(f"{name}_flat")
        em.emit("Flatten", [inputs[0]], {"axis": axis}, [flat], em.fresh(f"{name}_flatten"))
        result = em.fresh(f"{name}_2d")
        em.emit(op, [flat], dict(attrs, axis=-1), [result], name)
        em.emit("Reshape", [result, _ints(em, name, "shape", list(x_type.shape))], {},
                outputs[:1], em.fresh(f"{name}_reshape"))
    return rule


def _nearest_mode(em, name, op, since, scales: np.ndarray) -> str:
    # Upsample / Resize-10 picked x_in = floor(x_out / scale) when upsampling and ceil when
    # downsampling (onnxruntime's "simple" nearest mode): one rule per whole op.
    if np.all(scales >= 1):
        return "floor"
    if np.all(scales <= 1):
        return "ceil"
    raise _fail(name, op, since, "nearest mode with scales both above and below 1 is not "
                "supported for this old op version")


def _upsample_like(em, inputs, outputs, attrs, name, since, op):
    mode = attrs.pop("mode", "nearest")
    if "scales" in attrs:       # Upsample-7
        x_type = em.type(inputs[0])
        scales_value = np.asarray(attrs.pop("scales"), dtype=np.float32)
        if scales_value.shape != (x_type.rank,):
            raise _fail(name, op, since, f"scales {scales_value.tolist()} do not match the "
                        f"input rank {x_type.rank}")
        scales = em.const(f"{name}_scales", scales_value)
    else:
        if len(inputs) < 2 or not inputs[1]:
            raise _fail(name, op, since, "input 'scales' is required")
        scales = inputs[1]
        scales_value = em.value(scales)
        if scales_value is None:
            raise _fail(name, op, since, "input 1 (scales) must be a constant: data-dependent "
                        "shapes are not supported")
    if mode not in ("nearest", "linear", "bilinear"):
        raise _fail(name, op, since, f"unknown mode '{mode}'")
    new_attrs: dict[str, Any] = {"coordinate_transformation_mode": "asymmetric"}
    if mode == "nearest":
        new_attrs["mode"] = "nearest"
        new_attrs["nearest_mode"] = _nearest_mode(em, name, op, since,
                                                  np.asarray(scales_value, dtype=np.float64))
    else:
        new_attrs["mode"] = "linear"
    if attrs:
        raise _fail(name, op, since, f"unknown attribute(s) {sorted(attrs)}")
    em.emit("Resize", [inputs[0], "", scales], new_attrs, outputs, name)


def _resize(em, inputs, outputs, attrs, name, since):
    if since < 11:
        _upsample_like(em, inputs, outputs, attrs, name, since, "Resize")
        return
    inputs = list(inputs)
    # Resize-11 required roi and scales inputs even when unused: empty constants mean omitted.
    for i in (1, 2):
        if i < len(inputs) and inputs[i]:
            value = em.value(inputs[i])
            if value is not None and value.size == 0:
                inputs[i] = ""
    while inputs and inputs[-1] == "":
        inputs.pop()
    em.emit("Resize", inputs, attrs, outputs, name)


def _upsample(em, inputs, outputs, attrs, name, since):
    _upsample_like(em, inputs, outputs, attrs, name, since, "Upsample")


def _scatter(em, inputs, outputs, attrs, name, since):
    em.emit("ScatterElements", inputs, attrs, outputs, name)


def _with_op(rule, op: str):
    def bound(em, inputs, outputs, attrs, name, since):
        return rule(em, inputs, outputs, attrs, name, since, op)
    return bound


def _axes_rule(op: str):
    def rule(em, inputs, outputs, attrs, name, since):
        if since < 13 and "axes" in attrs:
            inputs = [inputs[0], _ints(em, name, "axes", attrs.pop("axes"))]
        em.emit(op, inputs, attrs, outputs, name)
    return rule


_RULES = {
    "Clip": _clip, "Slice": _slice, "Pad": _pad, "Split": _split, "TopK": _topk,
    "Reshape": _reshape, "Dropout": _dropout, "BatchNormalization": _batchnorm, "Gemm": _gemm,
    "Cast": _cast, "Resize": _resize, "Upsample": _upsample, "Scatter": _scatter,
    "Squeeze": _axes_rule("Squeeze"), "Unsqueeze": _axes_rule("Unsqueeze"),
    "Softmax": _softmax_family("Softmax"), "LogSoftmax": _softmax_family("LogSoftmax"),
    "Hardmax": _softmax_family("Hardmax"),
    "ReduceSum": _with_op(_reduce, "ReduceSum"),
}
_RULES.update({op: _with_op(_reduce, op) for op in _REDUCE_18})
