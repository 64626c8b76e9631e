"""The anchors with their epilogues, made by the fuse_epilogue pass:

    FusedConv(X, W, B?, Z?; conv attrs, activation, activation_params)
        = activation(Conv(X, W, B) + Z)
    FusedConvTranspose(inputs of ConvTranspose; its attrs, activation, activation_params)
    FusedGemm(inputs of Gemm; its attrs, activation, activation_params)
        = activation(ConvTranspose(...)), activation(Gemm(...))

Z (optional) has exactly the conv output's shape and dtype. ``activation`` is "" (none) or one
of ACTIVATIONS; ``activation_params`` holds that activation's parameters in the order of
ACTIVATIONS[name] (Clip: min, max; LeakyRelu / Elu / Swish: alpha; HardSigmoid: alpha, beta),
or is empty for the op's defaults; GeluTanh is Gelu with approximate="tanh" (ACTIVATION_FORMS).
The reference is the composition of the Conv, Add and activation references of the op table.
"""
from __future__ import annotations

import numpy as np

from cnncc.ir.node import Node
from cnncc.ir.types import TensorType
from . import activation  # noqa: F401  (registers the activations and their Lowerings)
from . import conv_transpose, linalg  # noqa: F401  (the anchors of ACTIVATION_EPILOGUES)
from .activation_exprs import UNARY_LOWERING, fusable_params
from .registry import OP_TABLE, Attr, OpContext, OpDef, register, resolve_attrs, run_reference
from .spatial import WINDOW_ATTRS

# Activations that are a fusable op with fixed non-float attributes (the activation_params
# carry floats only): name -> (op, those attributes).
ACTIVATION_FORMS: dict[str, tuple[str, dict]] = {
    "GeluTanh": ("Gelu", {"approximate": "tanh"}),
}
# Activation -> the names of its parameters (the op's float attributes; Clip: its min/max
# inputs): every op whose Lowering is fusable, Clip, and the ACTIVATION_FORMS.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Clip": ("min", "max"),
    **{op: fusable_params(op) for op, low in UNARY_LOWERING.items() if low.fusable},
    **{name: fusable_params(op) for name, (op, _) in ACTIVATION_FORMS.items()},
}
CONV_ATTRS = tuple(WINDOW_ATTRS) + ("group",)


def conv_node(node: Node) -> Node:
    """The plain Conv of a FusedConv node (same name: its errors name the fused node)."""
    attrs = {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}
    return Node("Conv", list(node.inputs[:3]), list(node.outputs), attrs, node.name)


def activation_node(name: str, params: list[float], node_name: str = "") -> tuple[Node, list]:
    """The activation as a node of its own op (input "x") and the extra inputs it takes
    (Clip's bounds as float32 scalars; None = no bound); ``params`` empty = the defaults."""
    if name == "Clip":
        lo, hi = params if params else (-np.inf, np.inf)
        bounds = [None if abs(v) == np.inf else np.array(v, np.float32) for v in (lo, hi)]
        return Node("Clip", ["x", "lo", "hi"], ["y"], {}, node_name), bounds
    op, fixed = ACTIVATION_FORMS.get(name, (name, {}))
    attrs = {**fixed, **dict(zip(ACTIVATIONS[name], params))}
    return Node(op, ["x"], ["y"], attrs, node_name), []


# The fused ops other than FusedConv: an anchor whose epilogue applies an activation.
ACTIVATION_EPILOGUES = {"Fused" + anchor: anchor for anchor in ("ConvTranspose", "Gemm")}
EPILOGUE_ATTRS = ("activation", "activation_params")


def anchor_node(node: Node) -> Node:
    """The plain anchor (Conv, ConvTranspose, Gemm) of a fused node: its inputs but the residual,
    its outputs and name (its errors name the fused node), no epilogue attributes."""
    if node.op == "FusedConv":
        return conv_node(node)
    attrs = {k: v for k, v in node.attrs.items() if k not in EPILOGUE_ATTRS}
    return Node(ACTIVATION_EPILOGUES[node.op], list(node.inputs), list(node.outputs), attrs,
                node.name)


def fusable_activation(node: Node, lo: np.ndarray | None = None,
                       hi: np.ndarray | None = None) -> tuple[str, list[float]] | None:
    """(activation, activation_params) that a conv applies for activation node ``node``
    (Clip: its constant bounds ``lo``, ``hi``, None = unbounded), or None if not fusable."""
    if node.op == "Clip":
        return "Clip", [-np.inf if lo is None else float(lo.reshape(())),
                        np.inf if hi is None else float(hi.reshape(()))]
    if node.op not in ACTIVATIONS:
        return None
    attrs = resolve_attrs(OP_TABLE[node.op], node)
    name = node.op
    for form, (op, fixed) in ACTIVATION_FORMS.items():
        if op == node.op and all(attrs.get(k) == v for k, v in fixed.items()):
            name = form
    if node.op == "Gelu" and name == "Gelu" and attrs["approximate"] != "none":
        return None
    return name, [float(attrs[k]) for k in ACTIVATIONS[name]]


def check_activation(ctx: OpContext, attr: str = "activation") -> None:
    """Check the activation named by attribute ``attr`` and its ``attr``_params."""
    name, params = ctx[attr], ctx[f"{attr}_params"]
    if not name:
        ctx.check(not params, f"{attr}_params {params} given without an {attr}")
        return
    ctx.check(name in ACTIVATIONS, f"unknown {attr} '{name}' (supported: "
              f"{', '.join(sorted(ACTIVATIONS))})")
    want = ACTIVATIONS[name]
    ctx.check(len(params) in (0, len(want)),
              f"{attr} {name} takes {len(want)} {attr}_params "
              f"({', '.join(want) or 'none'}), got {len(params)}: {params}")
    ctx.check(all(np.isfinite(p) or (name == "Clip" and np.isinf(p)) for p in params),
              f"{attr}_params {params} must be finite numbers")


def _infer_fused_conv(ctx: OpContext) -> list[TensorType]:
    conv = conv_node(ctx.node)
    (y,) = OP_TABLE["Conv"].infer(OpContext(conv, OP_TABLE["Conv"], ctx.types[:3],
                                            ctx.consts[:3]))
    ctx.check(y.dtype.is_float, f"FusedConv computes in float types, got {y.dtype}")
    if ctx.has(3):
        z = ctx.type(3)
        ctx.check(z.dtype == y.dtype, f"residual Z is {z.dtype} but the conv output is "
                  f"{y.dtype}")
        ctx.check(z.shape == y.shape, f"residual Z has shape {list(z.shape)} but the conv "
                  f"output has shape {list(y.shape)}; they must be equal (no broadcasting)")
    check_activation(ctx)
    return [y]


def _fused_conv_reference(ctx: OpContext, x: np.ndarray, w: np.ndarray,
                          b: np.ndarray | None = None, z: np.ndarray | None = None) -> np.ndarray:
    node = ctx.node
    (y,) = run_reference(conv_node(node), [x, w, b])
    if z is not None:
        (y,) = run_reference(Node("Add", ["y", "z"], ["s"], {}, node.name), [y, z])
    return run_activation(ctx["activation"], ctx["activation_params"], y,
                          node.name).astype(x.dtype)


def run_activation(name: str, params: list[float], y: np.ndarray,
                   node_name: str = "") -> np.ndarray:
    """The reference of activation ``name`` ("" = none) applied to ``y``."""
    if not name:
        return y
    act, extra = activation_node(name, params, node_name)
    extra = [None if e is None else e.astype(y.dtype) for e in extra]
    (y,) = run_reference(act, [y] + extra)
    return y


register(OpDef("FusedConv", infer=_infer_fused_conv, reference=_fused_conv_reference,
               inputs=(2, 4),
               attrs={**WINDOW_ATTRS, "group": Attr("int", 1), "activation": Attr("str", ""),
                      "activation_params": Attr("floats", [])},
               doc="activation(Conv(X, W, B) + Z): the conv epilogue fusion of fuse_epilogue "
                   "(internal op)."))


def _register_activation_epilogue(name: str, anchor: str) -> None:
    base = OP_TABLE[anchor]

    def infer(ctx: OpContext) -> list[TensorType]:
        plain = anchor_node(ctx.node)
        (y,) = base.infer(OpContext(plain, base, ctx.types, ctx.consts))
        ctx.check(y.dtype.is_float, f"{name} computes in float types, got {y.dtype}")
        check_activation(ctx)
        return [y]

    def reference(ctx: OpContext, *inputs: np.ndarray | None) -> np.ndarray:
        (y,) = run_reference(anchor_node(ctx.node), list(inputs))
        return run_activation(ctx["activation"], ctx["activation_params"], y, ctx.node.name)

    register(OpDef(name, infer=infer, reference=reference, inputs=base.inputs,
                   attrs={**base.attrs, "activation": Attr("str", ""),
                          "activation_params": Attr("floats", [])},
                   doc=f"activation({anchor}(...)): the {anchor} epilogue fusion of "
                       "fuse_epilogue (internal op)."))


for _name, _anchor in ACTIVATION_EPILOGUES.items():
    _register_activation_epilogue(_name, _anchor)
