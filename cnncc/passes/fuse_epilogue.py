"""fuse_epilogue: an anchor's residual Add and activation become its epilogue (one fused node).

    Add(Conv(x, W, b), z) | Add(z, Conv(x, W, b))  ==>  FusedConv(x, W, b, z)
    act(Conv(x, W, b))                             ==>  FusedConv(x, W, b; activation=act)
    act(FusedConv(x, W, b, z?; no activation))     ==>  FusedConv(x, W, b, z?; activation=act)
    act(ConvTranspose(...)) | act(Gemm(...))       ==>  FusedConvTranspose(...; activation=act)
                                                        | FusedGemm(...; activation=act)

so Relu(Add(Conv(x, W, b), z)) ==> FusedConv(x, W, b, z; activation=Relu) in two steps, and the
lowering adds z and applies act in registers before the anchor's single store (CPU and GPU
schedules alike: this pass is the only conv/gemm + activation fusion).

act is one of ir/ops/fused.py ACTIVATIONS (Gelu in its tanh form as GeluTanh; Clip only with
constant bounds, an omitted bound becomes -inf / inf). Only when every fused intermediate has exactly
one user and is not a graph output (the rewriter guarantees it), every value is float32 and z
has exactly the conv output's shape (a broadcasting Add stays an Add). The fused node takes the
place of the last node it replaces, so z (an input of that node) is computed before it.
"""
from __future__ import annotations

from cnncc.ir import DType, Graph, Node
from cnncc.ir.ops.fused import (ACTIVATION_EPILOGUES, ACTIVATION_FORMS, ACTIVATIONS,
                                fusable_activation)
from cnncc.ir.rewrite import AnyValue, Builder, Match, Op, Opt, Param, Rule, apply_rules


def _float32(g: Graph, *values: str | None) -> bool:
    return all(g.types[v].dtype is DType.float32 for v in values if v)


def _conv_inputs(m: Match) -> list[str]:
    conv = m.nodes["conv"]
    return list(conv.inputs[:3]) + [""] * (3 - len(conv.inputs[:3]))


def _emit(b: Builder, m: Match, inputs: list[str], attrs: dict, op: str = "FusedConv") -> None:
    while inputs and not inputs[-1]:
        inputs.pop()
    b.node(op, inputs, attrs, outputs=list(m.root.outputs), name=m.nodes["conv"].name)


def _fuse_add(b: Builder, m: Match) -> bool:
    g = b.graph
    conv = m.nodes["conv"]
    y, z = conv.outputs[0], m.values["z"]
    if z == y or g.types[z] != g.types[y] or not _float32(g, y, *conv.inputs):
        return False
    _emit(b, m, _conv_inputs(m) + [z], dict(conv.attrs))
    return True


def _activation(g: Graph, act: Node, m: Match) -> tuple[str, list[float]] | None:
    """(activation name, activation_params) of an activation node, or None if not fusable."""
    if act.op == "Clip":
        return fusable_activation(act, *(m.param(g, k) for k in ("lo", "hi")))
    return fusable_activation(act)


def _fuse_act(b: Builder, m: Match) -> bool:
    g = b.graph
    conv = m.nodes["conv"]
    if conv.op == "FusedConv" and conv.attrs.get("activation", ""):
        return False
    if g.types[m.root.outputs[0]] != g.types[conv.outputs[0]] or \
            not _float32(g, conv.outputs[0], *conv.inputs):
        return False
    act = _activation(g, m.root, m)
    if act is None:
        return False
    attrs = dict(conv.attrs)
    attrs["activation"], attrs["activation_params"] = act
    if conv.op in _ANCHORS:
        _emit(b, m, list(conv.inputs), attrs, _ANCHORS[conv.op])
        return True
    inputs = _conv_inputs(m)
    if conv.op == "FusedConv" and len(conv.inputs) > 3:
        inputs.append(conv.inputs[3])
    _emit(b, m, inputs, attrs)
    return True


def _conv() -> Op:
    return Op("Conv", AnyValue("x"), AnyValue("w"), Opt(AnyValue("b")), bind="conv")


def _producer() -> Op:
    """A Conv, or a FusedConv not yet carrying an activation (checked in _fuse_act)."""
    return Op(("Conv", "FusedConv"), AnyValue("x"), AnyValue("w"), Opt(AnyValue("b")), Opt(AnyValue("z")),
              bind="conv")


def _anchor() -> Op:
    """A ConvTranspose or a Gemm, any inputs."""
    return Op(tuple(_ANCHORS), AnyValue("x"), exact=False, bind="conv")


_ANCHORS = {anchor: fused for fused, anchor in ACTIVATION_EPILOGUES.items()}
_UNARY = tuple(a for a in ACTIVATIONS if a != "Clip" and a not in ACTIVATION_FORMS)
_CLIP_BOUNDS = (Opt(Param("lo")), Opt(Param("hi")))

RULES = [
    Rule("conv_add", Op("Add", _conv(), AnyValue("z")), _fuse_add),
    Rule("add_conv", Op("Add", AnyValue("z"), _conv()), _fuse_add),
    Rule("conv_act", Op(_UNARY, _producer()), _fuse_act),
    Rule("conv_clip", Op("Clip", _producer(), *_CLIP_BOUNDS), _fuse_act),
    Rule("anchor_act", Op(_UNARY, _anchor()), _fuse_act),
    Rule("anchor_clip", Op("Clip", _anchor(), *_CLIP_BOUNDS), _fuse_act),
]


def fuse_epilogue(graph: Graph, ctx=None) -> Graph:
    return apply_rules(graph, RULES)
