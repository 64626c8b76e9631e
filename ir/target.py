"""Target: the machine code is generated for, made once per compile and handed down.

A frozen description of one CPU as the code generator sees it: its ISA level, vector lanes and
registers, cache sizes and cores, and the threads the program will run on. The driver makes it
(from the host, or from CNNCC_CPU / CNNCC_FEATURES, which the llvm backend reads); passes,
lowering and backends only read it: none of them asks the machine again. Tile and block choices
are functions of it (cnncc/lower/conv_nchwc_tiles.py), never constants measured on one machine.

Feature strings are LLVM's (``+avx2,+fma,-avx512f,...``), as llvmlite reports the host's.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

# ISA levels, best first: the first whose features are all present names the target. The
# int8 dot-product levels (VNNI) sit above the plain vector levels they extend.
ISA_LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("avx512_vnni", ("avx512f", "avx512bw", "avx512vl", "avx512vnni", "fma")),
    ("avx512", ("avx512f", "fma")),
    ("avx_vnni", ("avx2", "fma", "avxvnni")),
    ("avx2", ("avx2", "fma")),
    ("avx", ("avx",)),
    ("sse", ("sse2",)),
)
SCALAR = "scalar"

# Used only where the operating system does not say (no sysfs): common sizes of current x86
# cores, so a missing /sys gives plausible tiles rather than none.
FALLBACK_CACHES = {"l1d": 32 << 10, "l2": 1 << 20, "l3": 8 << 20}


@dataclass(frozen=True)
class Target:
    """A CPU as the code generator sees it (see the module docstring)."""
    isa: str                    # an ISA_LEVELS name, or "scalar"
    features: str               # LLVM feature string the code is compiled with
    cpu: str                    # LLVM CPU name
    lanes: int                  # float32 lanes of the widest vector unit used
    vector_registers: int       # architectural vector registers (32 zmm, 16 ymm/xmm)
    l1d_bytes: int              # per core
    l2_bytes: int               # per core
    l3_bytes: int               # the last level, shared
    cores: int                  # cores this process may run on
    threads: int                # threads the generated program runs on
    model_name: str = ""        # the CPU's marketing name (/proc/cpuinfo), for logs and reports

    @property
    def fma(self) -> bool:
        return "fma" in self.flags

    @property
    def flags(self) -> frozenset[str]:
        return feature_flags(self.features)

    @property
    def vnni(self) -> bool:
        """int8 dot products (vpdpbusd) with AVX-512 VNNI or AVX-VNNI."""
        return self.isa in ("avx512_vnni", "avx_vnni")

    @property
    def vector_pipes(self) -> int:
        """Vector ALU pipes of a core, two of which multiply integers (AMD Zen: FP0-3; Intel
        cores: ports 0, 1, 5): the throughput model of the int8 dot paths divides by it
        (cnncc/lower/conv_int8_dot.py)."""
        return 4 if self.cpu.startswith("znver") or self.model_name.startswith("AMD") else 3

    @property
    def general_registers(self) -> int:
        """General-purpose (integer) registers: 16 on x86-64, 32 with APX's extended ones."""
        return 32 if "egpr" in self.flags else 16

    @property
    def vector_bytes(self) -> int:
        return self.lanes * 4

    def replace(self, **changes) -> "Target":
        """A copy with ``changes`` (e.g. ``threads=1``, or ``lanes=8`` to use half-width
        vectors on an AVX-512 machine)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for reports: ISA, vectors, caches, cores, threads."""
        kib = lambda n: f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"   # noqa: E731
        return (f"{self.model_name or self.cpu}, {self.isa}: {self.lanes} x f32 lanes, {self.vector_registers} "
                f"vector registers, L1d {kib(self.l1d_bytes)} / L2 {kib(self.l2_bytes)} / "
                f"L3 {kib(self.l3_bytes)}, {self.cores} core(s), {self.threads} thread(s)")

    @classmethod
    def from_features(cls, features: str, cpu: str = "generic", threads: int | None = None,
                      caches: dict[str, int] | None = None, cores: int | None = None,
                      max_lanes: int | None = None, model_name: str | None = None) -> "Target":
        """The Target of a CPU with LLVM ``features``; caches and cores default to this
        machine's (sysfs, the affinity mask); ``max_lanes`` caps the vector width."""
        flags = feature_flags(features)
        isa = isa_level(flags)
        if "avx512f" in flags:
            lanes, regs = 16, 32
        elif "avx" in flags:
            lanes, regs = 8, 16
        else:                   # SSE2, part of every x86-64; LLVM splits wider vectors itself
            lanes, regs = 4, 16
        if max_lanes:
            lanes = min(lanes, max_lanes)
        caches = dict(FALLBACK_CACHES, **(caches if caches is not None else host_caches()))
        cores = cores or host_cores()
        return cls(isa, features, cpu, lanes, regs, caches["l1d"], caches["l2"], caches["l3"],
                   cores, threads or cores,
                   host_model_name() if model_name is None else model_name)


def feature_flags(features: str) -> frozenset[str]:
    """The enabled names of an LLVM feature string."""
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


def isa_level(flags: frozenset[str]) -> str:
    for name, needs in ISA_LEVELS:
        if all(f in flags for f in needs):
            return name
    return SCALAR


def host_model_name(path: str = "/proc/cpuinfo") -> str:
    """The CPU's name as the kernel reports it ("" when it does not)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def host_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict[str, int]:
    """{"l1d", "l2", "l3": bytes} of this machine's first core as sysfs reports them; the
    levels it does not report are left out."""
    found: dict[str, int] = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return found
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            level = _read(os.path.join(root, entry, "level"))
            kind = _read(os.path.join(root, entry, "type"))
            size = parse_size(_read(os.path.join(root, entry, "size")))
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or size <= 0:
            continue
        key = "l1d" if level == "1" else f"l{level}"
        if key in FALLBACK_CACHES:
            found[key] = size
    return found


def parse_size(text: str) -> int:
    """Bytes of a sysfs cache size ("48K", "2048K", "32M", "1024")."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * scale


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
