"""inline_channel_gather: a channel gather read only by convs that can read its inputs in place
(1x1 convs, fused depthwise -> 1x1 convs; an NCHW one by the layout change) is not copied.

    Y = ChannelGather(X_0, X_1, ...; sources, block=c);  ConvNCHWc(Y, W, B?, Z?) (every reader)
        ==>  Y = ChannelGather(X_0, X_1, ...; sources, block=c, view=1);  the same convs

A 1x1 conv sums over its input channels, so the order and the buffers they come from are free:
the lowering (cnncc/lower/gathered_input.py) packs the conv's weights with their input
channels sorted by the buffer and channel they are read from, and its reduction reads each
X_i's channels in place (a loop per input; no copy, no FLOP wasted on other channels). The gather with view=1 emits no kernel and gets no memory. ShuffleNet's channel
split and shuffle, composed by fold_channel_shuffle into one gather per unit, go into the next
unit's first 1x1 conv this way.

A fused depthwise -> 1x1 conv (DwPwConvNCHWc) reads a view too: its depthwise runs over the
blocks of the X_i holding the gathered channels (a lane it does not need is zeroed).
An NCHW gather of one input X read only by ToNCHWc (ShuffleNet v1's shuffle between an NCHW
grouped conv and a blocked depthwise conv) is a view as well: the layout change reads X's
channels in the gather's order (one copy, not two).

A blocked gather applies when every reader of Y is such a reader: a ConvNCHWc reading Y as its input X with
group 1, a 1x1 kernel, no padding, NCHWc input and no input scale or prologue (those read X by
whole blocks), or a DwPwConvNCHWc reading Y as its X; Y is no graph output, and Y is not already
free: a batch-1 range of whole blocks of one input (any range in NCHW) is a slice its readers
read in place (cnncc/lower/concat_inplace.py). Runs last, after the passes that rewrite the
convs (depthwise_separable, fuse_prologue, fuse_channel_scale).
"""
from __future__ import annotations

from cnncc.ir import Graph, Node


def _reads_in_place(g: Graph, conv: Node, y: str) -> bool:
    """``conv`` is a dense 1x1 unpadded blocked conv, or a fused depthwise -> 1x1 conv, reading
    ``y`` only as its input X."""
    a = conv.attrs
    if conv.op == "DwPwConvNCHWc":
        return (conv.inputs[0] == y and y not in conv.inputs[1:]
                and all(v in g.params for v in conv.inputs[1:5] if v))
    return (conv.op == "ConvNCHWc" and conv.inputs[0] == y and y not in conv.inputs[1:]
            and len(conv.inputs) <= 4 and conv.inputs[1] in g.params
            and a.get("group", 1) == 1 and a.get("in_layout", "NCHWc") == "NCHWc"
            and g.types[conv.inputs[1]].shape[2:] == (1, 1)
            and not any(a.get("pads", [])) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))


def _whole_block_slice(g: Graph, node: Node) -> bool:
    """A batch-1 gather of whole blocks of one input (any channels in NCHW), in order: already a
    view (a slice)."""
    src, block = list(node.attrs["sources"]), node.attrs.get("block", 0) or 1
    s0 = src[0]
    return (len(node.inputs) == 1 and g.types[node.inputs[0]].shape[0] == 1
            and src == list(range(s0, s0 + len(src))) and not s0 % block
            and not len(src) % block)


def _readers_ok(g: Graph, node: Node, readers: list[Node]) -> bool:
    y = node.outputs[0]
    if node.attrs.get("block"):
        return all(_reads_in_place(g, r, y) for r in readers)
    return len(node.inputs) == 1 and all(r.op == "ToNCHWc" for r in readers)


def inline_channel_gather(graph: Graph, ctx=None) -> Graph:
    g = graph.copy()
    users = g.users()
    outputs = set(g.outputs)
    for node in g.nodes:      # (g is a deep copy: its nodes are ours to change)
        if node.op == "ChannelGather" and not node.attrs.get("view") and node.outputs[0] not in outputs \
                and not any(v in g.params or v in g.inputs for v in node.inputs) \
                and not _whole_block_slice(g, node):
            readers = users.get(node.outputs[0], [])
            if readers and _readers_ok(g, node, readers):
                node.attrs["view"] = 1
    return g
