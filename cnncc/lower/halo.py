"""Halos: blocked activations stored inside a zero ring, so a padded conv reads them in place.

A dense NCHWc conv with padding reads a zero-padded input. Copying the input into a padded
scratch costs a pass over it (ResNet-18: ten copies, ~0.35 ms of ~11 ms at 2 threads, none of
them scaling with threads). Instead the producer of such a value writes it into the interior of
a larger buffer [N, CB, H + 2 * hh, W + 2 * hw, c] whose ring of hh rows / hw columns is zeroed
by a small kernel before the producer runs (the arena is shared: the zeros do not survive
between runs). Every reader indexes pixel (h, w) at (h + hh, w + hw).

A value gets a halo only when its producer and every reader know the layout (dense and
depthwise ConvNCHWc, as input or residual, and PoolNCHWc), it is not a graph input or output,
and some reader is a dense conv that pads; the halo is the largest padding of those readers
(per axis, either side), so each of them finds every padding pixel it reads inside the ring.
"""
from __future__ import annotations

from cnncc.ir import DType, Graph
from cnncc.ir.loop import Buffer, Cmp, Const, F32, For, If, Kernel, Or, Store, Var, seq
from cnncc.ir.ops.spatial import resolve_window
from cnncc.ir.ops.layout import group_span
from cnncc.ir.schedule import Schedule

from .context import LowerCtx, op_context
from .cpu_schedule import parallel_outer

# The ops whose CPU lowering reads and writes halo'd values.
HALO_OPS = ("ConvNCHWc", "PoolNCHWc")


def _dense_pads(g: Graph, node) -> tuple[int, int] | None:
    """The (rows, columns) of zero padding a dense blocked conv reads around its input X."""
    octx = op_context(g, node)
    if octx["in_layout"] != "NCHWc" or node.inputs[1] not in g.types:
        return None
    xs, ws = g.types[node.inputs[0]].shape, g.types[node.inputs[1]].shape
    group = octx["group"]
    if group != 1 and group_span(ws[1] * group, ws[0], group, octx["block"]) is None:
        return None         # depthwise: reads its input unpadded
    plain = (xs[0], ws[1] * group) + tuple(xs[2:4])
    win = resolve_window(octx, plain, ws[2:])
    return (max(win.begin(0), win.end(0)), max(win.begin(1), win.end(1)))


def plan_halos(g: Graph) -> dict[str, tuple[int, int]]:
    """Value name -> (hh, hw) for every blocked value stored with a halo."""
    producer = {o: n for n in g.nodes for o in n.outputs if o}
    users = g.users()
    halos: dict[str, tuple[int, int]] = {}
    for value, node in producer.items():
        if node.op not in HALO_OPS or value != node.outputs[0] or value in g.outputs \
                or len(g.types[value].shape) != 5 or g.types[value].dtype is not DType.float32:
            continue
        readers = users.get(value, [])
        if not readers or any(r.op not in HALO_OPS or r.inputs.index(value) not in (0, 3)
                              or value in r.inputs[1:3] for r in readers):
            continue
        pads = [p for r in readers if r.op == "ConvNCHWc" and r.inputs[0] == value
                for p in [_dense_pads(g, r)] if p is not None]
        hh, hw = max((p[0] for p in pads), default=0), max((p[1] for p in pads), default=0)
        if hh or hw:
            halos[value] = (hh, hw)
    return halos


def halo_nbytes(ctx: LowerCtx, name: str) -> int:
    """Bytes of ``name``'s storage: its type's, plus the ring when it has a halo."""
    t = ctx.graph.types[name]
    if name not in ctx.halo:
        return t.nbytes
    nb, cb, h, w, c = t.shape
    hh, hw = ctx.halo[name]
    return nb * cb * (h + 2 * hh) * (w + 2 * hw) * c * t.dtype.itemsize


def blocked(ctx: LowerCtx, name: str, bname: str) -> tuple[Buffer, int, int]:
    """(buffer, hh, hw) over blocked value ``name``: pixel (h, w) is at (h + hh, w + hw)."""
    if name not in ctx.halo:
        return ctx.value(name, bname=bname), 0, 0
    nb, cb, h, w, c = ctx.graph.types[name].shape
    hh, hw = ctx.halo[name]
    buf = Buffer(bname, DType.float32, (nb, cb, h + 2 * hh, w + 2 * hw, c))
    ctx.binding[id(buf)] = ("value", name)
    return buf, hh, hw


def zero_halo(ctx: LowerCtx, name: str, kname: str) -> None:
    """When ``name`` has a halo: a kernel storing 0 in its ring (whole rows above and below,
    hw pixels left and right of the others), to run before its producer."""
    if name not in ctx.halo:
        return
    buf, hh, hw = blocked(ctx, name, "y")
    nb, cb, hp, wp, c = buf.shape
    flat = Buffer("y", DType.float32, (nb, cb, hp, wp * c))
    ctx.binding[id(flat)] = ctx.binding[id(buf)]
    n, b, r, a, e, e2 = Var("n"), Var("cb"), Var("r"), Var("a"), Var("e"), Var("e2")
    zero = Const(0.0, F32)
    edge = Or(Cmp("lt", r, Const(hh)), Cmp("ge", r, Const(hp - hh)))
    row = For(a, wp * c, Store(flat, (n, b, r, a), zero))
    sides = seq(For(e, hw * c, Store(flat, (n, b, r, e), zero)),
                For(e2, hw * c, Store(flat, (n, b, r, e2 + (wp - hw) * c), zero))) if hw \
        else None
    body = For(n, nb, For(b, cb, For(r, hp, If(edge, row, sides))))
    sch = Schedule(Kernel(f"{kname}_halo", [flat], body))
    for loop, ext in (("a", wp * c), ("e", hw * c), ("e2", hw * c)):
        if ext >= ctx.lanes:
            sch.vectorize(sch.split(loop, ctx.lanes, mode="tail")[1])
    ring = nb * cb * c * (2 * hh * wp + 2 * hw * (hp - 2 * hh))
    ctx.emit(parallel_outer(sch.kernel, ["n", "cb", "r"], ctx, ring))
