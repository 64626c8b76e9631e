"""Every kernel of the test models compiles with nvcc for sm_80 and sm_90: all warnings are
errors, no register spills, static shared memory within the 48 KiB of a block.

Models: the DSL zoo, the light CNNs shipped in the onnx package and ../shared/models (when
present), one nvcc run per model (the shared models together: symbols are prefixed per model).
The per-family table (launch geometry, registers, shared memory) is printed with -s.
"""
from __future__ import annotations

import collections
import glob
import re
from pathlib import Path

import onnx
import pytest

import cnncc
from cnncc.backends.cuda.build import find_nvcc, nvcc_check
from cnncc.backends.cuda.model import generate
from cnncc.driver import lower
from cnncc.dsl import zoo, zoo_blocks
from cnncc.passes import PassContext, run_pipeline

pytestmark = pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")

ARCHS = ("sm_80", "sm_90")
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SHARED_LIMIT = 48 * 1024


def _programs(sources: dict) -> list:
    out = []
    for label, source in sources.items():
        graph = run_pipeline(cnncc.load_graph(source), PassContext(opt_level=3, target="cuda"))
        out.append((label, generate(lower(graph, "cuda", 3))))
    return out


def _normalized(ck) -> str:
    """A kernel's device code with its launch names replaced by placeholders."""
    text = ck.device
    for i, launch in enumerate(ck.launches):
        text = re.sub(rf"\b{re.escape(launch.name)}\b", f"CNNCC_LAUNCH_{i}", text)
    return text


def _deduplicated(programs: list) -> tuple[str, dict]:
    """The programs' CUDA source with every kernel whose device code equals an earlier one's
    up to its names compiled once: its __global__ functions are replaced by macros naming the
    first's, which its launcher then calls (ptxas would report the same resources for both).
    Returns (source, {launch name: the launch name compiled for it})."""
    first: dict = {}
    compiled: dict = {}
    sources = []
    for _, gen in programs:
        source = gen.module.source
        for ck in gen.module.kernels:
            names = [launch.name for launch in ck.launches]
            same = first.setdefault(_normalized(ck), names)
            compiled.update(zip(names, same))
            if same is not names:
                assert source.count(ck.device) == 1, ck.name
                source = source.replace(ck.device, "".join(
                    f"#define {n} {m}\n" for n, m in zip(names, same)))
        sources.append(source)
    return "\n".join(sources), compiled


def _check(programs: list) -> dict:
    source, compiled = _deduplicated(programs)
    usage = nvcc_check(source, ARCHS)
    for arch in usage:
        usage[arch].update({n: usage[arch][m] for n, m in compiled.items()
                            if m in usage[arch] and n != m})
    for arch in ARCHS:
        for gen_label, gen in programs:
            for ck in gen.module.kernels:
                for launch in ck.launches:
                    use = usage[arch].get(launch.name)
                    assert use is not None, f"{arch}: no resource report for {launch.name}"
                    assert use.spill_stores == 0 and use.spill_loads == 0, \
                        f"{gen_label} {launch.name} spills on {arch}: {use}"
                    assert use.shared_bytes <= SHARED_LIMIT, f"{launch.name}: {use}"
                    assert launch.shared_bytes == use.shared_bytes, \
                        f"{launch.name}: rendered {launch.shared_bytes} B of shared memory, " \
                        f"ptxas reports {use.shared_bytes}"
    return usage


def family_table(programs: list, usage: dict) -> list[str]:
    """One line per (op, launch geometry): kernels, registers (sm_80/sm_90), shared bytes."""
    rows = collections.OrderedDict()
    for _, gen in programs:
        ops = {k.name: gen.program.ctx.graph.nodes[i].op if i < len(gen.program.ctx.graph.nodes)
               else "output copy" for k, i in gen.program.ctx.kernels}
        for ck in gen.module.kernels:
            for launch in ck.launches:
                key = (ops.get(ck.name, "?"), launch.block)
                regs = tuple(usage[a][launch.name].registers for a in ARCHS)
                row = rows.setdefault(key, [0, [], [], launch.shared_bytes])
                row[0] += 1
                row[1].append(regs[0])
                row[2].append(regs[1])
                row[3] = max(row[3], launch.shared_bytes)
    return [f"{op:24s} block {str(block):14s} {n:4d} kernels  regs sm_80 {min(r80)}-{max(r80)} "
            f"sm_90 {min(r90)}-{max(r90)}  shared {sh} B"
            for (op, block), (n, r80, r90, sh) in rows.items()]


LIGHT = sorted(LIGHT_DIR.glob("light_*.onnx"))


def test_all_nine_light_models_are_checked():
    assert len(LIGHT) == 9, [p.stem for p in LIGHT]


# One test (one nvcc run) per model: pytest-xdist spreads them over the workers.
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_program_compiles_with_nvcc(name):
    kw = {"input_size": 32} if name in zoo_blocks.BLOCK_NETS else {}    # the same kernels
    programs = _programs({name: zoo.ZOO[name](**kw)})
    print("\n".join(family_table(programs, _check(programs))))


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem for p in LIGHT])
def test_onnx_light_model_compiles_with_nvcc(path):
    programs = _programs({path.stem: str(path)})
    print("\n".join(family_table(programs, _check(programs))))


def test_shared_models_compile_with_nvcc(shared_models):
    sources = {Path(p).stem: p for p in sorted(glob.glob(str(shared_models / "*.onnx")))}
    assert len(sources) >= 3, sorted(sources)
    programs = _programs(sources)
    print("\n".join(family_table(programs, _check(programs))))
