"""Constant evaluation of one node: the one constant folder, behind import-time folding, the
fold_constants pass and the lowering (which folds what the passes left, e.g. at opt_level 0)."""
from __future__ import annotations

import numpy as np

from .errors import CompileError
from .graph import Graph, Node
from .ops import run_reference

# Folding never materializes more than this per node: a ConstantOfShape asking for gigabytes stays
# a runtime node (or is refused by inference when absurd).
FOLD_LIMIT_BYTES = 64 << 20
# Ops whose result is not a function of their inputs: never folded.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                              "RandomUniformLike", "Bernoulli", "Multinomial"})
# Ops kept as nodes though their inputs are constants: DequantizeLinear of quantized weights
# carries the integers and scales the int8 kernels need (cnncc/passes/fuse_quantized.py folds
# the ones it does not fuse).
KEEP_QUANTIZED = frozenset({"DequantizeLinear"})
# Ops whose result depends only on the input's type, so they fold even on runtime inputs.
TYPE_ONLY = frozenset({"Shape", "Size"})


def fold_node(graph: Graph, node: Node, limit: int | None = FOLD_LIMIT_BYTES,
              keep: frozenset = KEEP_QUANTIZED) -> list[np.ndarray] | None:
    """The outputs of ``node`` if they are compile-time constants (and at most ``limit`` bytes;
    None: any size), else None.

    ``graph.types`` must already hold the node's output types (they are checked against).
    Ops in ``keep`` are not folded.
    """
    present = [i for i in node.inputs if i]
    if node.op in NONDETERMINISTIC or node.op in keep or (
            not present and node.op != "Constant"):
        return None
    params = graph.params
    if node.op not in TYPE_ONLY and not all(i in params for i in present):
        return None
    out_types = [graph.types[o] for o in node.outputs if o]
    if limit is not None and sum(t.nbytes for t in out_types) > limit:
        return None
    args, in_types = [], []
    for i in node.inputs:
        if not i:
            args.append(None)
            in_types.append(None)
            continue
        t = graph.types[i]
        # Shape/Size only look at the type: a zero-strided stand-in costs no memory.
        args.append(params[i] if i in params else np.broadcast_to(t.dtype.np.type(0), t.shape))
        in_types.append(t)
    try:
        with np.errstate(all="ignore"):
            results = run_reference(node, args, in_types)
    except CompileError:
        raise
    except Exception as e:  # noqa: BLE001 - any numpy failure of a reference is the model's
        raise CompileError(f"{node.op}: constant folding failed ({type(e).__name__}: {e})",
                           node.name) from None
    values = []
    for out, value in zip(node.outputs, results):
        if not out:
            values.append(None)
            continue
        t = graph.types[out]
        if value.shape != t.shape or value.dtype != t.dtype.np:
            raise CompileError(f"{node.op}: reference produced {value.dtype}{list(value.shape)}, "
                               f"inferred {t}", node.name)
        values.append(np.array(value))
    return values
