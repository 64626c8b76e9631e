"""A whole program as one .cu: every kernel, its launcher, and a host entry that runs them all.

    module = render_program("net", kernels, calls, n_inputs=1, n_outputs=1,
                            weights_bytes=w.nbytes, arena_bytes=arena)

``calls`` lists the kernel launches in execution order; each binds every parameter of its kernel
to storage: ("input", i) / ("output", j) (the caller's device pointers), ("const", byte offset)
into the weights blob, ("arena", byte offset) into the scratch arena. The host entry points:

    int NAME_init(const unsigned char *weights);   // device copy of the blob + the arena
    int NAME_run(const float *const *inputs, float *const *outputs);
    void NAME_release(void);

With ``input_bytes`` / ``output_bytes`` given (what models use), NAME_run takes HOST pointers:
NAME_init also allocates device buffers for the inputs and outputs, and NAME_run copies the inputs
up, launches every kernel in order on one stream, copies the outputs back and synchronizes.
Without them, the pointers are device pointers used in place (for callers that manage device
memory). NAME_run returns the first CUDA error (0 on success); NAME_init must have succeeded
before. Inputs / outputs of other element types pass through the same pointer arrays and are
cast.

Kernels equal up to their names (ir/loop_walk.canonical_text: the same loop IR on other
buffers) are rendered once, under the first one's name, and each call of another launches that
one with its own storage: nvcc and the cuda-emu build compile every distinct kernel once
(MobileNetV2: 32 of 54, ResNet-50: 28 of 57, ConvNeXt-T: 55 of 219).
"""
from __future__ import annotations

from dataclasses import dataclass

from cnncc.ir import CompileError
from cnncc.ir.loop_walk import canonical_text
from .cexpr import c_type
from .codegen import CudaModule, render_module

STORAGE_KINDS = ("input", "output", "const", "arena")


@dataclass(frozen=True)
class KernelCall:
    """One launch: the kernel's name and per parameter (kind, index or byte offset)."""

    kernel: str
    args: tuple


def _check(name: str, kernels: dict, calls: list, n_in: int, n_out: int, wbytes: int,
           abytes: int) -> None:
    for call in calls:
        k = kernels.get(call.kernel)
        if k is None:
            raise CompileError(f"cuda program {name}: call of unknown kernel {call.kernel}")
        if len(call.args) != len(k.params):
            raise CompileError(f"cuda program {name}: {call.kernel} takes {len(k.params)} "
                               f"buffers, the call binds {len(call.args)}")
        for b, (kind, where) in zip(k.params, call.args):
            nbytes = b.size * b.dtype.itemsize
            limit = {"input": n_in, "output": n_out}.get(kind)
            if kind not in STORAGE_KINDS:
                raise CompileError(f"cuda program {name}: storage kind {kind!r} for {b.name}")
            if limit is not None and not 0 <= where < limit:
                raise CompileError(f"cuda program {name}: {kind} {where} out of range for "
                                   f"{b.name} ({limit} {kind}s)")
            total = wbytes if kind == "const" else abytes
            if limit is None and (where < 0 or where % 16 or where + nbytes > total):
                raise CompileError(f"cuda program {name}: {b.name} at {kind} offset {where} "
                                   f"({nbytes} bytes) is misaligned or past the {total}-byte "
                                   f"{'weights blob' if kind == 'const' else 'arena'}")


def render_program(name: str, kernels: list, calls: list, n_inputs: int, n_outputs: int,
                   weights_bytes: int, arena_bytes: int, input_bytes: list | None = None,
                   output_bytes: list | None = None) -> CudaModule:
    """Kernels + launchers (render_module) followed by NAME_init / NAME_run / NAME_release."""
    by_name = {k.name: k for k in kernels}
    _check(name, by_name, calls, n_inputs, n_outputs, weights_bytes, arena_bytes)
    host = input_bytes is not None or output_bytes is not None
    if host and (len(input_bytes or ()) != n_inputs or len(output_bytes or ()) != n_outputs):
        raise CompileError(f"cuda program {name}: need the byte size of each of the {n_inputs} "
                           f"inputs and {n_outputs} outputs")
    first: dict[str, object] = {}
    rendered_as = {k.name: first.setdefault(canonical_text(k), k).name for k in kernels}
    mod = render_module(list(first.values()), name)
    ck = {k.name: k for k in mod.kernels}
    staged = [("in", i, n) for i, n in enumerate(input_bytes or ())] + \
        [("out", j, n) for j, n in enumerate(output_bytes or ())]
    lines = [
        f"// Program {name}: {len(calls)} launches of {len(first)} kernels, {weights_bytes} "
        f"bytes of weights, {arena_bytes} bytes of arena.",
        f"static unsigned char *{name}_weights = nullptr;",
        f"static unsigned char *{name}_arena = nullptr;",
    ]
    if host:
        lines += [f"static unsigned char *{name}_in[{max(n_inputs, 1)}];",
                  f"static unsigned char *{name}_out[{max(n_outputs, 1)}];"]
    lines += [
        "",
        f'extern "C" void {name}_release(void) {{',
        f"  cudaFree({name}_weights);",
        f"  cudaFree({name}_arena);",
        f"  {name}_weights = nullptr;",
        f"  {name}_arena = nullptr;",
    ]
    for kind, i, _ in staged:
        lines += [f"  cudaFree({name}_{kind}[{i}]);", f"  {name}_{kind}[{i}] = nullptr;"]
    lines += [
        "}",
        "",
        f'extern "C" int {name}_init(const unsigned char *weights) {{',
        f"  {name}_release();",
        "  cudaError_t err;",
        f"  if ((err = cudaMalloc((void **)&{name}_weights, {max(weights_bytes, 1)})) != "
        f"cudaSuccess) return (int)err;",
        f"  if ((err = cudaMalloc((void **)&{name}_arena, {max(arena_bytes, 1)})) != "
        f"cudaSuccess) return (int)err;",
    ]
    for kind, i, nbytes in staged:
        lines.append(f"  if ((err = cudaMalloc((void **)&{name}_{kind}[{i}], {max(nbytes, 1)})) "
                     f"!= cudaSuccess) return (int)err;")
    lines += [
        f"  return (int)cudaMemcpy({name}_weights, weights, {weights_bytes}, "
        f"cudaMemcpyHostToDevice);",
        "}",
        "",
        f'extern "C" int {name}_run(const float *const *inputs, float *const *outputs) {{',
        f"  if (!{name}_weights || !{name}_arena) return (int)cudaErrorInvalidValue;",
        "  cudaStream_t stream = 0;",
        "  int err;",
    ]
    for kind, i, nbytes in staged:
        if kind == "in":
            lines.append(f"  if ((err = (int)cudaMemcpyAsync({name}_in[{i}], inputs[{i}], "
                         f"{nbytes}, cudaMemcpyHostToDevice, stream)) != 0) return err;")
    for call in calls:
        k, launched = by_name[call.kernel], rendered_as[call.kernel]
        args = []
        for b, ro, (kind, where) in zip(k.params, ck[launched].readonly, call.args):
            t = f"{'const ' if ro else ''}{c_type(b.dtype)} *"
            src = {"input": f"{name}_in[{where}]" if host else f"inputs[{where}]",
                   "output": f"{name}_out[{where}]" if host else f"outputs[{where}]",
                   "const": f"({name}_weights + {where})",
                   "arena": f"({name}_arena + {where})"}[kind]
            args.append(f"({t}){src}")
        lines.append(f"  if ((err = {launched}_launch({', '.join(args)}, stream)) != 0) "
                     f"return err;")
    for kind, j, nbytes in staged:
        if kind == "out":
            lines.append(f"  if ((err = (int)cudaMemcpyAsync(outputs[{j}], {name}_out[{j}], "
                         f"{nbytes}, cudaMemcpyDeviceToHost, stream)) != 0) return err;")
    lines += ["  return (int)cudaStreamSynchronize(stream);", "}", ""]
    return CudaModule(name, mod.kernels, mod.source + "\n" + "\n".join(lines))


__all__ = ["KernelCall", "render_program"]
