"""cnncc's thread pool (backends/llvm/thread_pool.py): parallel loops and the batch entry run on
it; a caller that finds it busy (another thread, a nested loop) runs alone; a forked child gets
workers of its own; an exported library stops its workers when it is unloaded. Numbers are
checked against the reference interpreter (rel. error <= 1e-4) or bitwise against 1 thread."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cnncc
from cnncc.backends.llvm import jit
from cnncc.backends.llvm.thread_pool import pool_ir
from cnncc.dsl import zoo

pytestmark = pytest.mark.xdist_group("thread_pool")


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def resnet2():
    net = zoo.tiny_resnet()
    return (cnncc.compile(net, threads=2, cache=False), cnncc.compile(net, threads=1, cache=False),
            cnncc.compile(net, target="reference"))


def test_pool_module_is_valid_ir_for_the_jit_and_for_libraries():
    for library in (False, True):
        text = pool_ir(library=library)
        assert "define void @cnncc_parallel(ptr %fn, ptr %ctx, i32 %n)" in text
        assert ("@__dso_handle" in text) == library
    assert "spin_ns = hidden global i64 7000," in pool_ir(7000)


def test_two_threads_match_one_thread_and_the_reference(resnet2):
    two, one, ref = resnet2
    x = np.random.default_rng(0).standard_normal(two.input_shapes[0]).astype(np.float32)
    y2, y1, yr = two(x), one(x), ref(x)
    assert np.abs(y2 - yr).max() <= 1e-4 * np.abs(yr).max()
    assert np.abs(y2 - y1).max() <= 1e-5 * np.abs(yr).max()
    assert jit.pool_workers() >= 1


def test_callers_on_several_python_threads(resnet2):
    """Four Python threads call one 2-thread model at once: one of them holds the pool, the
    others run their kernels alone; every result is right."""
    two, _, ref = resnet2
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(two.input_shapes[0]).astype(np.float32) for _ in range(4)]
    want = [ref(x) for x in xs]
    errors = []

    def work(i: int) -> None:
        for _ in range(15):
            y = two(xs[i])
            if np.abs(y - want[i]).max() > 1e-4 * np.abs(want[i]).max():
                errors.append(i)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors


def test_batch_throughput_mode_nests_kernels_on_one_thread(resnet2):
    """Throughput mode holds the pool for the images; each image's parallel loops run alone."""
    two, one, _ = resnet2
    x = np.random.default_rng(2).standard_normal((5,) + tuple(two.input_shapes[0][1:]))
    x = x.astype(np.float32)
    want = np.concatenate([one(x[i:i + 1]) for i in range(5)])
    for mode in ("throughput", "latency"):
        np.testing.assert_allclose(two.run_batch(x, mode=mode)[0], want, rtol=0, atol=1e-5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_starts_its_own_workers():
    res = _child("""
        import json, os, numpy as np, cnncc
        from cnncc.backends.llvm import jit
        from cnncc.dsl import zoo
        net = zoo.tiny_resnet()
        m = cnncc.compile(net, threads=2, cache=False)
        ref = cnncc.compile(net, target="reference")
        x = np.random.default_rng(3).standard_normal(m.input_shapes[0]).astype(np.float32)
        want = ref(x)
        m(x)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            before = jit.pool_workers()
            err = float(np.abs(m(x) - want).max() / np.abs(want).max())
            os.write(w, json.dumps({"before": before, "after": jit.pool_workers(),
                                    "err": err}).encode())
            os._exit(0)
        os.close(w)
        child = json.loads(os.read(r, 4096))
        os.waitpid(pid, 0)
        print(json.dumps(dict(child, parent=jit.pool_workers())))
    """)
    assert res["before"] == 0 and res["after"] == 1 and res["parent"] == 1, res
    assert res["err"] <= 1e-4, res


def test_exported_library_unloads_with_its_workers(tmp_path):
    """dlclose of a 2-thread library whose workers are alive (spinning or asleep) must not
    crash: the library is linked -z nodelete (as libgomp is), so its code stays mapped for its
    workers, and loading it again gives the same library. Loaded, run and closed three times."""
    paths = cnncc.export(zoo.tiny_resnet(), tmp_path, name="pooled", threads=2)
    ref = cnncc.compile(zoo.tiny_resnet(), target="reference")
    x = np.random.default_rng(4).standard_normal(ref.input_shapes[0]).astype(np.float32)
    want = ref(x)
    np.save(tmp_path / "x.npy", x)
    res = _child(f"""
        import ctypes, json, time, _ctypes, numpy as np
        x = np.load({str(tmp_path / 'x.npy')!r})
        outs = []
        for round in range(3):
            lib = ctypes.CDLL({paths['library']!r})
            y = np.zeros({list(want.shape)}, np.float32)
            ins = (ctypes.c_void_p * 1)(x.ctypes.data)
            out = (ctypes.c_void_p * 1)(y.ctypes.data)
            for _ in range(5):
                assert lib.pooled_run(ins, out) == 0
            outs.append(y.tolist())
            if round == 1:
                time.sleep(0.05)        # workers asleep at unload this time
            _ctypes.dlclose(lib._handle)
        print(json.dumps({{"y": outs}}))
    """)
    for y in res["y"]:
        y = np.asarray(y, np.float32)
        assert np.abs(y - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move a worker")
def test_worker_moves_off_the_callers_cpu():
    # Some kernels (this VM's among them) place a woken worker on the CPU of the thread that woke
    # it and leave it there: two threads then ran at one thread's speed. A worker that finds
    # itself on the caller's CPU when it takes a job moves to the other CPUs of its mask. Forced
    # here by pinning both to one CPU (in a child: the pinning must not outlive the test).
    res = _child("""
        import json, os, numpy as np, cnncc
        from cnncc import dsl
        def big(x):
            return dsl.conv2d(dsl.conv2d(x, 64, 3, padding=1), 64, 3, padding=1)
        net = dsl.build(big, (1, 64, 96, 96))
        m2 = cnncc.compile(net, threads=2, cache=False)
        m1 = cnncc.compile(net, threads=1, cache=False)
        x = np.random.default_rng(5).standard_normal((1, 64, 96, 96)).astype(np.float32)
        before = set(os.listdir("/proc/self/task"))
        want = m1(x)
        allowed = os.sched_getaffinity(0)
        m2(x)
        workers = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
        cpu = min(allowed)
        os.sched_setaffinity(0, {cpu})
        for w in workers:
            os.sched_setaffinity(w, {cpu})
        diff = max(float(np.abs(m2(x) - want).max()) for _ in range(20))
        print(json.dumps({"workers": len(workers), "cpu": cpu, "allowed": sorted(allowed),
                          "after": [sorted(os.sched_getaffinity(w)) for w in workers],
                          "diff": diff}))
    """)
    assert res["workers"] == 1, res
    assert res["after"] == [[c for c in res["allowed"] if c != res["cpu"]]], res
    assert res["diff"] == 0.0, res


def test_sleeping_worker_is_steered_off_the_callers_cpu_before_its_wake_up():
    # A worker woken from its futex sleep was placed on the waker's (the caller's) CPU and waited
    # there until the caller's time slice ended: a small model ran its first calls after an idle
    # gap on one thread. The caller now narrows each sleeping worker's affinity to its start mask
    # minus the caller's CPU before waking it, whether or not the worker gets to take a job (it
    # skips the syscall when the worker's mask already leaves that CPU out: the caller moves to
    # another CPU every round here).
    res = _child("""
        import json, os, time, numpy as np, cnncc
        from cnncc.dsl import zoo
        net = zoo.tiny_resnet()
        m2 = cnncc.compile(net, threads=2, cache=False)
        m1 = cnncc.compile(net, threads=1, cache=False)
        x = np.random.default_rng(3).standard_normal(m2.input_shapes[0]).astype(np.float32)
        want = m1(x)
        allowed = sorted(os.sched_getaffinity(0))
        before = set(os.listdir("/proc/self/task"))
        m2(x)
        workers = [int(t) for t in set(os.listdir("/proc/self/task")) - before]
        seen, diff = [], 0.0
        for k in range(8):
            cpu = allowed[k % len(allowed)]
            os.sched_setaffinity(0, {cpu})     # another CPU than the round before
            time.sleep(0.02)            # far past the 50 us spin: the worker sleeps
            diff = max(diff, float(np.abs(m2(x) - want).max()))
            seen.append([cpu, [sorted(os.sched_getaffinity(w)) for w in workers]])
            os.sched_setaffinity(0, set(allowed))
        print(json.dumps({"workers": len(workers), "allowed": allowed, "seen": seen,
                          "diff": diff}))
    """)
    assert res["workers"] == 1, res
    if len(res["allowed"]) < 2:
        pytest.skip("one CPU: no other CPU to steer a worker to")
    for cpu, masks in res["seen"]:
        assert masks == [[c for c in res["allowed"] if c != cpu]], res
    assert res["diff"] == 0.0, res
