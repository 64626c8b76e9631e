"""Ahead-of-time export: a compiled model as a self-contained shared library with a C header.

    export_library(generated, "out", "resnet")  ->  out/resnet.so, out/resnet.h, out/resnet.json

The library holds the generated code, the weight blob (an .incbin data section, never IR text)
and its own 64-byte aligned arena. It needs libc (and libm) and nothing else: no Python, no
cnncc, no OpenMP runtime (with threads > 1 it carries cnncc's thread pool, thread_pool.py). C API (see the generated header):

    int NAME_run(const float *const *inputs, float *const *outputs);       // 0 on success
    int NAME_run_with_arena(const float *const *inputs, float *const *outputs, void *arena);
    int NAME_run_batch(int n, const float *const *inputs, float *const *outputs);

NAME_run is thread-safe: a call takes the library's static arena when no other call holds it
(an atomic flag, so single-threaded use never allocates) and otherwise runs on an arena
allocated for that call (returns 1 when that allocation fails). NAME_run_batch runs n images
(batch_entry.py: throughput mode, images side by side on per-thread arenas, once n reaches the
thread count) when the model keeps images apart, else returns 2 (NAME.json "batch_refusal"
says why). NAME.json describes the
signature and carries the sha256 of NAME.so (checked by the loader, library.py).
Exporting needs a C compiler (``cc``, or $CC).

The compile cache (cnncc/cache.py) stores its libraries with ``weights_file=True``: the weights
go to NAME.weights beside the library (its sha256 in NAME.json) instead of into it, and every
entry point takes them as its first argument (NAME_run_ext(weights, inputs, outputs), ...):
linking ResNet-50's 100 MB into a .so cost 0.8 s of its cold compile, writing a file 0.1 s.
"""
from __future__ import annotations

import hashlib
import json
import keyword
import os
import re
import shutil
import subprocess
import tempfile
import time

from cnncc.ir import CompileError
from . import jit, thread_pool
from .batch_entry import arena_stride
from .objects import build_objects

FORMAT = "cnncc-library-1"
_C_KEYWORDS = set("""auto break case char const continue default do double else enum extern float
for goto if inline int long register restrict return short signed sizeof static struct switch
typedef union unsigned void volatile while _Bool _Complex _Imaginary bool true false""".split())


def c_identifier(stem: str) -> str:
    """A C identifier made from a file stem or net name (other characters become '_')."""
    name = re.sub(r"\W", "_", stem, flags=re.ASCII)
    name = name if name and not name[0].isdigit() else f"m_{name}"
    return f"{name}_" if name in _C_KEYWORDS else name


def check_name(name: str) -> str:
    """``name`` if it is usable as the library's C prefix, else CompileError saying why."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise CompileError(f"library name {name!r} is not a C identifier (letters, digits and "
                           "'_', not starting with a digit)")
    if name in _C_KEYWORDS or keyword.iskeyword(name):
        raise CompileError(f"library name {name!r} is a reserved word; choose another --name")
    if len(name) > 200:
        raise CompileError(f"library name {name[:20]}... is too long (200 characters at most)")
    return name


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def export_library(gen, out_dir: str, name: str, emit: tuple[str, ...] = (),
                   extra: dict | None = None, report: dict | None = None,
                   batch_refusal: str | None = "unknown", weights_file: bool = False) -> dict:
    """Write ``out_dir``/``name``.so/.h/.json (and .ll / .s for ``emit`` "llvm" / "asm") of the
    generated program ``gen`` (model.Generated); returns {kind: path}.

    The library links the entry function and one position-independent object per unique
    kernel (from the kernel cache, or compiled in parallel: objects.py); ``extra``: more fields
    for the json (the cache stores its key there); ``batch_refusal``: why NAME_run_batch
    refuses other batch sizes (None: it runs them; cnncc.ir.batch); ``weights_file``: the
    weights in NAME.weights, passed to the entry points (see the module docstring)."""
    check_name(name)
    bad = [e for e in emit if e not in ("llvm", "asm")]
    if bad:
        raise CompileError(f"unknown --emit kind(s) {bad}: expected 'llvm' or 'asm'")
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise CompileError(f"exporting a library needs a C compiler: '{cc}' was not found "
                           "(install gcc or set $CC)")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    paths = {"library": base + ".so", "header": base + ".h", "metadata": base + ".json"}
    if weights_file:
        paths["weights"] = base + ".weights"
    prog = gen.program
    arena = max(prog.arena_bytes, 64)
    code, stats = build_objects(gen.unique, gen.lanes, gen.threads, gen.openmp)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnncc-aot-") as tmp:
        objs = []
        # The thread pool (thread_pool.py) goes into every multi-threaded library: its own
        # workers, hidden symbols, so two libraries in one process never share one pool.
        pool = [jit.emit_object(thread_pool.pool_ir(library=True))] if gen.threads > 1 else []
        for i, data in enumerate([jit.emit_object(gen.entry_text)] + pool +
                                 list(code.values())):
            objs.append(os.path.join(tmp, f"part{i}.o"))
            with open(objs[-1], "wb") as f:
                f.write(data)
        blob = os.path.join(tmp, "weights.bin")
        if not weights_file:
            prog.weights.tofile(blob)       # embedded (.incbin): written before linking
        wrapper = os.path.join(tmp, "wrapper.c")
        with open(wrapper, "w") as f:
            f.write(_wrapper_c(name, gen.entry_name, None if weights_file else blob, arena,
                               gen.threads, batch_refusal is None))
        # Written beside the target, then renamed: a reader never sees half a library.
        tmp_lib = os.path.join(tmp, "lib.so")
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", tmp_lib, wrapper, *objs,
               "-Wl,--as-needed", "-lm"]
        if gen.threads > 1:
            # Never unmapped, as libgomp is not: a dlclose while the pool's workers still run
            # its code (spinning, or one instruction from returning into it) crashed (SIGSEGV).
            cmd.append("-Wl,-z,nodelete")
        link = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            weights = {}
            if weights_file:
                # The weights file (ResNet-50: 100 MB) is written and hashed while cc links.
                prog.weights.tofile(paths["weights"])
                weights = {"weights_file": {
                    "name": name + ".weights", "bytes": int(prog.weights.nbytes),
                    "sha256": hashlib.sha256(prog.weights.data).hexdigest()}}
        finally:
            out = link.communicate()[0]
        if link.returncode != 0:
            raise CompileError(f"linking {paths['library']} failed: {out.strip()[:2000]}")
        digest = sha256_file(tmp_lib)
        shutil.move(tmp_lib, paths["library"] + ".tmp")
        os.replace(paths["library"] + ".tmp", paths["library"])
    if report is not None:
        report.update(stats.report(len(gen.symbols)), link=time.perf_counter() - t0)
    _write(paths["header"], _header(name, gen, arena, batch_refusal, weights_file))
    meta = {"format": FORMAT, "name": name, "library": name + ".so",
            "library_sha256": digest, "header": name + ".h",
            "inputs": [io_description(n, t) for n, t in gen.inputs],
            "outputs": [io_description(n, t) for n, t in gen.outputs],
            "arena_bytes": arena, "weights_bytes": int(prog.weights.nbytes),
            "memory": prog.memory.summary(),
            "threads": gen.threads, "thread_safe": True, "batch_refusal": batch_refusal,
            "target": jit.target_info(),
            "cnncc_version": _version(), **weights, **(extra or {})}
    _write(paths["metadata"], json.dumps(meta, indent=2) + "\n")
    ir_text = jit.optimized_ir(gen.ir_text) if emit else ""
    if "llvm" in emit:
        paths["llvm"] = base + ".ll"
        _write(paths["llvm"], ir_text)
    if "asm" in emit:
        paths["asm"] = base + ".s"
        _write(paths["asm"], jit.emit_assembly(ir_text, 0))
    return paths


def _version() -> str:
    from cnncc import __version__
    return __version__


def io_description(name: str, ttype) -> dict:
    """How the json describes one input or output."""
    return {"name": name, "shape": list(ttype.shape), "dtype": ttype.dtype.value}


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _wrapper_c(name: str, entry: str, blob: str | None, arena: int, threads: int,
               batches: bool) -> str:
    """The C entry points; ``blob``: the weight file embedded, None: the weights are the first
    argument of every entry point (named NAME_*_ext)."""
    stride = arena_stride(arena)
    if blob is None:
        sfx, wparam, warg = "_ext", "const void *cnncc_weights_blob, ", "cnncc_weights_blob, "
        weights = ""
    else:
        sfx, wparam, warg = "", "", ""
        weights = (f'__asm__(".section .rodata\\n.balign 64\\ncnncc_weights_blob:\\n.incbin '
                   f'\\"{blob}\\"\\n.previous");\n'
                   'extern const unsigned char cnncc_weights_blob[] '
                   '__asm__("cnncc_weights_blob");\n')
    return f"""/* generated by cnncc: C entry points of {name} */
#include <stdint.h>
#include <stdlib.h>
extern int32_t {entry}(void **inputs, void **outputs, const void *weights, void *arena);
extern int32_t {entry}_batch(int64_t n, int32_t mode, void **inputs, void **outputs,
                             const void *weights, void *arenas, int64_t arena_stride);
{weights}/* One arena per thread of the batch entry's throughput mode; NAME_run uses the first. */
static unsigned char cnncc_arena[{threads * stride}] __attribute__((aligned(64)));
static int cnncc_arena_busy;
const unsigned long {name}_arena_bytes = {arena};

int {name}_run_with_arena{sfx}({wparam}const float *const *inputs, float *const *outputs,
                          void *arena) {{
    return {entry}((void **)inputs, (void **)outputs, cnncc_weights_blob, arena);
}}

int {name}_run{sfx}({wparam}const float *const *inputs, float *const *outputs) {{
    if (!__atomic_exchange_n(&cnncc_arena_busy, 1, __ATOMIC_ACQUIRE)) {{
        int rc = {name}_run_with_arena{sfx}({warg}inputs, outputs, cnncc_arena);
        __atomic_store_n(&cnncc_arena_busy, 0, __ATOMIC_RELEASE);
        return rc;
    }}
    /* Another thread holds the static arena: this call gets its own. */
    void *arena = aligned_alloc(64, {(arena + 63) // 64 * 64});
    if (!arena) return 1;
    int rc = {name}_run_with_arena{sfx}({warg}inputs, outputs, arena);
    free(arena);
    return rc;
}}

int {name}_run_batch{sfx}({wparam}int n, const float *const *inputs, float *const *outputs) {{
    if (!{int(batches)}) return 2;  /* the model mixes images: see NAME.json batch_refusal */
    if (n <= 0) return n < 0 ? 2 : 0;
    void *arenas = cnncc_arena;
    if (__atomic_exchange_n(&cnncc_arena_busy, 1, __ATOMIC_ACQUIRE)) {{
        arenas = aligned_alloc(64, {threads * stride});
        if (!arenas) return 1;
    }}
    int rc = {entry}_batch(n, 0, (void **)inputs, (void **)outputs, cnncc_weights_blob,
                           arenas, {stride});
    if (arenas == cnncc_arena) __atomic_store_n(&cnncc_arena_busy, 0, __ATOMIC_RELEASE);
    else free(arenas);
    return rc;
}}
"""


def _wrap(text: str, width: int = 90) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) >= width:
            lines.append(line)
            line = ""
        line = f"{line} {word}" if line else word
    return lines + [line]


def _c_string(text: str) -> str:
    """``text`` as a C string literal (anything but plain characters octal-escaped)."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        out.append(c if c.isascii() and (c.isalnum() or c in " _-.:/") else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _header(name: str, gen, arena: int, batch_refusal: str | None,
            weights_file: bool = False) -> str:
    up = name.upper()
    # Entry points of a library whose weights are in NAME.weights take them first.
    sfx, wparam = ("_ext", "const void *weights, ") if weights_file else ("", "")
    lines = [f"/* generated by cnncc: {name} */", f"#ifndef {up}_H", f"#define {up}_H",
             "#include <stdint.h>", "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
             f"#define {up}_NUM_INPUTS {len(gen.inputs)}",
             f"#define {up}_NUM_OUTPUTS {len(gen.outputs)}",
             f"#define {up}_ARENA_BYTES {arena}", ""]
    for kind, items in (("input", gen.inputs), ("output", gen.outputs)):
        for i, (n, t) in enumerate(items):
            tag = f"{up}_{kind.upper()}{i}"
            size = 1
            for d in t.shape:
                size *= d
            lines += [f"/* {kind} {i}: {t.dtype.value}[{', '.join(map(str, t.shape))}] "
                      "(dense row-major) */",
                      f"#define {tag}_NAME {_c_string(n)}",
                      f"#define {tag}_DTYPE \"{t.dtype.value}\"",
                      f"#define {tag}_RANK {len(t.shape)}",
                      f"#define {tag}_SIZE {size}",
                      f"static const int64_t {tag}_SHAPE[] = "
                      f"{{{', '.join(map(str, t.shape)) or '1'}}};"
                      + ("  /* rank 0: placeholder */" if not t.shape else ""), ""]
    lines += ["/* Runs one inference. inputs/outputs: one pointer per tensor, in the order above,",
              " * to dense row-major data of the dtype above (float32 unless stated otherwise).",
              " * Returns 0 on success, 1 when no arena memory could be allocated. Thread-safe:",
              " * concurrent calls are allowed (a call that finds the library's arena in use",
              " * allocates its own for that call). */",
              *([f"/* weights: the {gen.program.weights.nbytes} bytes of {name}.weights, "
                 "64-byte aligned. */"] if weights_file else []),
              f"int {name}_run{sfx}({wparam}const float *const *inputs, "
              "float *const *outputs);",
              f"/* Same, on a caller-owned arena of {up}_ARENA_BYTES bytes (64-byte aligned);",
              " * calls running at the same time need different arenas. */",
              f"int {name}_run_with_arena{sfx}({wparam}const float *const *inputs, "
              "float *const *outputs, void *arena);",
              f"extern const unsigned long {name}_arena_bytes;", "",
              "/* Runs n images: every tensor above with its leading (batch) dim n instead of 1,",
              " * image after image in each tensor. Outputs equal n calls of the function above.",
              f" * With several threads ({gen.threads} compiled in), from n >= threads on the "
              "images run side by side,", " * one per thread (throughput mode); fewer images run "
              "one after another, each split", " * across the threads (latency mode). "
              "Thread-safe. Returns 0 on success, 1 when no arena", " * memory could be "
              "allocated, 2 when n < 0 or the model cannot take other batch sizes"
              + (":" if batch_refusal else " (this one can)."),
              *([f" * {line}" for line in _wrap(batch_refusal.replace("*/", "* /"))]
                if batch_refusal else []),
              " */", f"int {name}_run_batch{sfx}({wparam}int n, const float *const *inputs, "
              "float *const *outputs);", "",
              "#ifdef __cplusplus", "}", "#endif", "#endif", ""]
    return "\n".join(lines)
