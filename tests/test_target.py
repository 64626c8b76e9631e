"""The Target (ir/target.py): made once per compile from the host or CNNCC_FEATURES, read by
passes, lowering and the backend; and how idle OpenMP workers wait by default."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cnncc
from cnncc.ir.target import Target, host_caches, isa_level, feature_flags, parse_size

AVX2 = "+avx2,+fma,+avx,+sse4.2,+sse2,-avx512f"
AVX512 = "+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx2,+fma,+avx,+sse2"
CACHES = {"l1d": 32 << 10, "l2": 1 << 20, "l3": 16 << 20}


@pytest.mark.parametrize("features, isa, lanes, regs", [
    (AVX512 + ",+avx512vnni", "avx512_vnni", 16, 32),
    (AVX512, "avx512", 16, 32),
    (AVX2 + ",+avxvnni", "avx_vnni", 8, 16),
    (AVX2, "avx2", 8, 16),
    ("+avx,+sse2,-avx2,-fma", "avx", 8, 16),
    ("+sse2,+sse4.2,-avx", "sse", 4, 16),
    ("-sse2", "scalar", 4, 16),
])
def test_isa_levels(features, isa, lanes, regs):
    t = Target.from_features(features, "x", threads=3, caches=CACHES, cores=4)
    assert (t.isa, t.lanes, t.vector_registers) == (isa, lanes, regs)
    assert (t.l1d_bytes, t.l2_bytes, t.l3_bytes, t.cores, t.threads) == (32 << 10, 1 << 20,
                                                                          16 << 20, 4, 3)
    assert t.vnni == isa.endswith("vnni")
    assert "-avx512f" not in features or not t.flags & {"avx512f"}


def test_direct_conv_tiles_fit_the_general_registers():
    """A direct (NCHW) conv's register tile keeps one input base per pixel: with 32 vector
    registers it would hold 14 pixels, whose bases spill from x86-64's 16 general registers;
    the tile holds general_registers - 6 (APX's 32: more). AVX2's 16 vector registers give 6."""
    from cnncc.driver import lower
    from cnncc.ir.loop_walk import walk_stmts
    from cnncc.ir.loop import Allocate
    from cnncc.dsl.zoo import ZOO

    def pixels(features):
        t = Target.from_features(features, "x", threads=1, caches=CACHES, cores=1)
        prog = lower(cnncc.load_graph(ZOO["tiny_cnn"]()), "llvm", 0, t)
        direct = [k for k, _ in prog.ctx.kernels if "off" in [b.name for b in k.params]]
        assert direct                   # the convs with a tap offset table: conv_general
        return {s.buf.shape[0] for k in direct for s in walk_stmts(k.body)
                if isinstance(s, Allocate) and s.buf.name == "acc"}

    assert Target.from_features(AVX512, "x").general_registers == 16
    assert Target.from_features(AVX512 + ",+egpr", "x").general_registers == 32
    assert max(pixels(AVX512)) == 10
    assert max(pixels(AVX512 + ",+egpr")) > 10
    assert max(pixels(AVX2)) <= 12


def test_target_is_frozen_and_replace_makes_a_copy():
    t = Target.from_features(AVX512, caches=CACHES, cores=2)
    with pytest.raises(Exception):
        t.lanes = 8                                        # type: ignore[misc]
    half = t.replace(lanes=8, threads=1)
    assert (half.lanes, half.threads, t.lanes, t.threads) == (8, 1, 16, 2)
    assert Target.from_features(AVX512, caches=CACHES, cores=2, max_lanes=8).lanes == 8
    assert "16 x f32 lanes" in t.describe() and "L2 1 MiB" in t.describe()


def test_feature_flags_and_levels():
    assert feature_flags("+a,-b,+c") == {"a", "c"}
    assert isa_level(frozenset({"avx2", "avx", "sse2"})) == "avx"      # no FMA: not AVX2's level
    assert isa_level(frozenset({"avx2", "fma"})) == "avx2"
    assert isa_level(frozenset()) == "scalar"


@pytest.mark.parametrize("text, size", [("48K", 48 << 10), ("2048K", 2 << 20), ("32M", 32 << 20),
                                        ("1024", 1024), (" 1G\n", 1 << 30)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_host_caches_reads_sysfs(tmp_path):
    """Data and unified caches by level; instruction caches and unreadable entries left out."""
    for i, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                             ("2", "Unified", "1024K"), ("3", "Unified", "32768K"),
                                             ("4", "Unified", "bad")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(text + "\n")
    assert host_caches(str(tmp_path)) == {"l1d": 48 << 10, "l2": 1 << 20, "l3": 32 << 20}
    assert host_caches(str(tmp_path / "missing")) == {}
    t = Target.from_features(AVX2, caches={}, cores=1)     # nothing known: plausible fallbacks
    assert t.l1d_bytes > 0 and t.l2_bytes > t.l1d_bytes and t.l3_bytes > t.l2_bytes


def test_host_target_is_the_llvm_backends():
    from cnncc.backends.llvm import jit

    t = cnncc.host_target(2)
    assert t == jit.host_target(2) and t.threads == 2
    assert t.lanes == jit.vector_lanes() and t.features == jit.target_info()["features"]
    assert cnncc.host_target().threads == t.cores


def _child(code: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_avx2_features_give_an_avx2_target_and_the_same_numbers():
    """CNNCC_FEATURES without AVX-512 makes an 8-lane, 16-register Target on any host; the
    code compiled for it (NCHWc blocks of 8, tiles for 16 registers) matches the reference."""
    env = dict(os.environ, CNNCC_FEATURES=AVX2, CNNCC_CACHE="0")
    env.pop("CNNCC_CPU", None)
    res = _child("""
        import json, numpy as np, cnncc
        from cnncc.dsl import zoo
        t = cnncc.host_target(2)
        net = zoo.tiny_mobilenet()
        m = cnncc.compile(net, threads=2)
        r = cnncc.compile(net, target="reference")
        x = np.random.default_rng(3).standard_normal(m.input_shapes[0]).astype(np.float32)
        a, b = m(x)[0], r(x)[0]
        err = float(np.abs(a - b).max() / max(1e-30, float(np.abs(b).max())))
        print(json.dumps({"isa": t.isa, "lanes": t.lanes, "regs": t.vector_registers,
                          "err": err, "machine": m.machine.isa}))
    """, env)
    assert (res["isa"], res["lanes"], res["regs"], res["machine"]) == ("avx2", 8, 16, "avx2")
    assert res["err"] < 1e-4


def test_idle_workers_spin_briefly_then_sleep():
    """By default idle workers of the thread pool spin about 50 us after a call, then sleep:
    while the caller sleeps 200 ms after a 2-thread call the process uses little CPU (a worker
    that spun for good, as with OMP_WAIT_POLICY=ACTIVE, would use ~200 ms)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = _child("""
        import json, time, numpy as np, cnncc
        from cnncc.backends.llvm import jit
        from cnncc.dsl import zoo
        m = cnncc.compile(zoo.tiny_resnet(), threads=2, cache=False)
        x = np.ones(m.input_shapes[0], np.float32)
        for _ in range(20):
            m(x)
        burns = []
        for _ in range(3):
            m(x)
            c0 = time.process_time()
            time.sleep(0.2)
            burns.append(time.process_time() - c0)
        print(json.dumps({"burn": min(burns), "policy": jit.wait_policy(),
                          "spin": jit.SPIN_SECONDS[""], "workers": jit.pool_workers()}))
    """, env)
    assert "spin 50 us, then sleep (default)" in res["policy"] and res["workers"] == 1, res
    assert res["burn"] < 10 * res["spin"] + 0.002, res


@pytest.mark.parametrize("policy,spin", [("PASSIVE", "spin 0 us"), ("active", "spin 200000 us")])
def test_user_wait_policy_wins(policy, spin):
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    res = _child("""
        import json
        from cnncc.backends.llvm import jit
        print(json.dumps({"policy": jit.wait_policy()}))
    """, env)
    assert f"{spin}, then sleep (OMP_WAIT_POLICY={policy.lower()})" in res["policy"], res


def test_compiled_model_keeps_its_target():
    from cnncc.dsl import zoo

    t = cnncc.host_target(1)
    m = cnncc.compile(zoo.tiny_cnn(), threads=1, cache=False)
    assert m.machine == t
    x = np.zeros(m.input_shapes[0], np.float32)
    assert np.isfinite(m(x)[0]).all()


@pytest.mark.parametrize("target", ["reference", "llvm", "cuda-emu"])
def test_every_backend_refuses_unknown_options(target):
    """A misspelt option is an error naming it and the known ones, never silently ignored."""
    from cnncc.dsl import zoo

    with pytest.raises(cnncc.CompileError, match=rf"unknown option\(s\) for target {target}: "
                                                 r"\['therads'\] \(known: opt_level, threads"):
        cnncc.compile(zoo.tiny_cnn(), target=target, therads=2, cache=False)
