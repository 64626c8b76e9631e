"""cnncc's thread pool, written as LLVM IR: what generated code calls to run a loop on N threads.

    void cnncc_parallel(ptr fn, ptr ctx, i32 n)       fn: void (ptr ctx, i32 thread, i32 team)

The caller publishes the job, wakes sleeping workers, and runs ``fn(ctx, 0, team)`` itself; each
worker that is awake in time runs ``fn(ctx, w, team)`` (w = 1 .. team-1). ``fn`` must take its
work from a counter shared through ``ctx`` (every parallel loop and the batch entry do), so a
participant may run it any number of times, including zero: when the caller has claimed every
chunk before a worker woke up, the call returns without waiting for that worker. That is the
difference from libgomp's GOMP_parallel, whose join waits for every thread of the team: a
sleeping worker woken by the first kernel after an idle gap cost small models 0.3-1.5 ms per call
at 2 threads on a 2-core VM (README, Threads).

Workers spin ``cnncc_pool_spin_ns`` nanoseconds (by the clock, so no per-CPU calibration) after
their last job, then sleep on a futex; the caller wakes them only when some sleep. Both spin
loops call sched_yield every few dozen pauses: on a VM or a loaded machine a worker can share a
CPU with the caller, and a spinning thread would keep the other one (the caller with the rest of
the chunks, or the worker finishing its chunk) off that CPU for a whole time slice. A second
caller while a job runs (another thread, or a parallel loop nested in a parallel region) runs its
job alone (n = 1). After fork() the child starts its own workers. ``cnncc_pool_shutdown`` stops
the workers (an atexit hook of the JIT; a destructor of an exported library, which is linked
``-z nodelete`` with threads > 1: dlclose leaves it mapped, the destructor runs at exit).

This VM's kernel placed a woken worker on the waker's CPU and left it there, queued behind the
caller until the caller's time slice ended: two threads ran at one thread's speed in about half
of the processes (MobileNetV2 at 2 threads 3.0 ms instead of 1.7-1.9), and a small model called
after an idle gap ran its first ~30 calls (~3 ms) on one thread (tiny_resnet 0.11 ms instead of
0.065; seen in the scheduler's trace: the woken worker migrated to the caller's CPU and waited
there). So the pool keeps its workers off the caller's CPU in two places: before waking sleepers
the caller narrows each one's affinity to the CPUs it started with but the caller's own
(cnncc_pool_steer: one sched_setaffinity per worker, only when some sleep and the caller's CPU is
not the one the worker was last narrowed to leave out), and a worker that takes a job on the CPU
the caller published (sched_getcpu, a few ns) moves itself the same way (the caller may have
moved onto it while it spun). Never a fixed core: the mask follows the caller's CPU.

Memory ordering: the caller stores open=0 then reads active; a worker increments active then
reads open (both seq_cst), so either the worker sees the job closed or the caller waits for it;
fn and ctx are written before open=1 and read only after it. A sleeper increments ``sleepers``
before its futex wait on ``gen``; the caller increments ``gen`` before reading ``sleepers``: the
wait returns at once when gen moved, so no wake-up is lost. Linux x86-64 only (futex 202).
"""
from __future__ import annotations

from string import Template

SPIN_NS_DEFAULT = 50_000        # see README, Threads: measured on a 2-core Zen 5 VM

SYMBOL = "cnncc_parallel"
SHUTDOWN = "cnncc_pool_shutdown"
SPIN_GLOBAL = "cnncc_pool_spin_ns"
STARTED_GLOBAL = "cnncc_pool_started"

_SYS_FUTEX = 202
_SYS_GETTID = 186
STEERED_WORKERS = 64    # workers 1..63 are steered off the caller's CPU before a wake-up
_FUTEX_WAIT_PRIVATE = 128
_FUTEX_WAKE_PRIVATE = 129
_CLOCK_MONOTONIC = 1

_IR = r"""
@cnncc_pool_gen = internal global i32 0, align 64
@cnncc_pool_open = internal global i32 0, align 64
@cnncc_pool_active = internal global i32 0, align 64
@cnncc_pool_busy = internal global i32 0, align 64
@cnncc_pool_sleepers = internal global i32 0, align 64
@cnncc_pool_started = hidden global i32 0, align 64
@cnncc_pool_live = internal global i32 0, align 4
@cnncc_pool_quit = internal global i32 0, align 4
@cnncc_pool_atfork = internal global i32 0, align 4
@cnncc_pool_fn = internal global ptr null, align 64
@cnncc_pool_ctx = internal global ptr null, align 8
@cnncc_pool_team = internal global i32 0, align 4
@cnncc_pool_caller_cpu = internal global i32 -1, align 4
; Worker w's thread id and CPU mask at start (w < $steered; 0: not started or not steered).
@cnncc_pool_tids = internal global [$steered x i32] zeroinitializer, align 64
@cnncc_pool_masks = internal global [$steered x <16 x i64>] zeroinitializer, align 64
; The CPU + 1 that worker w's affinity was last narrowed to leave out (0: none): a caller on that
; CPU need not steer it again (one syscall per worker only when the caller's CPU changed).
@cnncc_pool_off = internal global [$steered x i32] zeroinitializer, align 64
@cnncc_pool_spin_ns = hidden global i64 $spin_ns, align 64
@llvm.global_dtors = appending global [1 x { i32, ptr, ptr }] [{ i32, ptr, ptr } { i32 65535, ptr @cnncc_pool_shutdown, ptr null }]

declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_detach(i64)
; What glibc's pthread_atfork does (a static wrapper, not a symbol the JIT can resolve): the
; handler is registered for this shared object (__dso_handle: removed again at dlclose; null in
; the JIT, whose code is never unloaded).
declare i32 @__register_atfork(ptr, ptr, ptr, ptr)
$dso_decl
declare i64 @syscall(i64, ...)
declare i32 @clock_gettime(i32, ptr)
declare i32 @sched_yield()
declare i32 @sched_getcpu()
declare i32 @sched_getaffinity(i32, i64, ptr)
declare i32 @sched_setaffinity(i32, i64, ptr)
declare i64 @llvm.vector.reduce.or.v16i64(<16 x i64>)
declare void @llvm.x86.sse2.pause()

define internal i64 @cnncc_pool_now() nounwind {
entry:
  %ts = alloca { i64, i64 }, align 8
  call i32 @clock_gettime(i32 $clock, ptr %ts)
  %sp = getelementptr { i64, i64 }, ptr %ts, i32 0, i32 0
  %np = getelementptr { i64, i64 }, ptr %ts, i32 0, i32 1
  %s = load i64, ptr %sp
  %n = load i64, ptr %np
  %sn = mul i64 %s, 1000000000
  %t = add i64 %sn, %n
  ret i64 %t
}

define internal void @cnncc_pool_wake_all() nounwind {
entry:
  call i64 (i64, ...) @syscall(i64 $futex, ptr @cnncc_pool_gen, i64 $wake, i64 2147483647)
  ret void
}

; Move thread %tid (0: the calling one) off CPU %cpu: allow it every CPU of %allowed (its mask at
; start, 1024 bits) but that one. Does nothing when that leaves no CPU or %cpu is out of range.
define internal void @cnncc_pool_avoid(i32 %tid, ptr %allowed, i32 %cpu) nounwind {
entry:
  %in_range = icmp ult i32 %cpu, 1024
  br i1 %in_range, label %mask, label %done

mask:
  %m = alloca <16 x i64>, align 64
  %all = load <16 x i64>, ptr %allowed, align 64
  %word = lshr i32 %cpu, 6
  %bit = and i32 %cpu, 63
  %bit64 = zext i32 %bit to i64
  %one = shl i64 1, %bit64
  %clear = xor i64 %one, -1
  %w = extractelement <16 x i64> %all, i32 %word
  %w1 = and i64 %w, %clear
  %without = insertelement <16 x i64> %all, i64 %w1, i32 %word
  %rest = call i64 @llvm.vector.reduce.or.v16i64(<16 x i64> %without)
  %some = icmp ne i64 %rest, 0
  br i1 %some, label %move, label %done

move:
  store <16 x i64> %without, ptr %m, align 64
  call i32 @sched_setaffinity(i32 %tid, i64 128, ptr %m)
  br label %done

done:
  ret void
}

; Before waking sleeping workers: steer each one off the caller's CPU %cpu, so the wake-up places
; it on another CPU instead of queueing it behind the caller.
define internal void @cnncc_pool_steer(i32 %cpu) nounwind {
entry:
  %started = load atomic i32, ptr @cnncc_pool_started monotonic, align 4
  %cap = icmp slt i32 %started, $steered
  %last = select i1 %cap, i32 %started, i32 ${steered_last}
  br label %loop

loop:
  %w = phi i32 [ 1, %entry ], [ %w1, %next ]
  %more = icmp sle i32 %w, %last
  br i1 %more, label %one, label %done

one:
  %tp = getelementptr [$steered x i32], ptr @cnncc_pool_tids, i32 0, i32 %w
  %tid = load atomic i32, ptr %tp acquire, align 4
  %known = icmp ne i32 %tid, 0
  br i1 %known, label %check, label %next

check:
  %op = getelementptr [$steered x i32], ptr @cnncc_pool_off, i32 0, i32 %w
  %off = load atomic i32, ptr %op monotonic, align 4
  %cpu1 = add i32 %cpu, 1
  %done_before = icmp eq i32 %off, %cpu1
  br i1 %done_before, label %next, label %move

move:
  %mp = getelementptr [$steered x <16 x i64>], ptr @cnncc_pool_masks, i32 0, i32 %w
  call void @cnncc_pool_avoid(i32 %tid, ptr %mp, i32 %cpu)
  store atomic i32 %cpu1, ptr %op monotonic, align 4
  br label %next

next:
  %w1 = add i32 %w, 1
  br label %loop

done:
  ret void
}

; A worker: wait for the next job (spin, then sleep), run it if it is still open.
define internal ptr @cnncc_pool_worker(ptr %arg) nounwind {
entry:
  %w64 = ptrtoint ptr %arg to i64
  %w = trunc i64 %w64 to i32
  %allowed = alloca <16 x i64>, align 64
  store <16 x i64> zeroinitializer, ptr %allowed, align 64
  call i32 @sched_getaffinity(i32 0, i64 128, ptr %allowed)
  %steerable = icmp slt i32 %w, $steered
  br i1 %steerable, label %register, label %ready

register:
  %mp = getelementptr [$steered x <16 x i64>], ptr @cnncc_pool_masks, i32 0, i32 %w
  %mask0 = load <16 x i64>, ptr %allowed, align 64
  store <16 x i64> %mask0, ptr %mp, align 64
  %tid64 = call i64 (i64, ...) @syscall(i64 $gettid)
  %tid = trunc i64 %tid64 to i32
  %tp = getelementptr [$steered x i32], ptr @cnncc_pool_tids, i32 0, i32 %w
  store atomic i32 %tid, ptr %tp release, align 4
  br label %ready

ready:
  %seen0 = load atomic i32, ptr @cnncc_pool_gen acquire, align 4
  br label %idle

idle:
  %seen = phi i32 [ %seen0, %ready ], [ %seen, %woke ], [ %now_gen, %leave ]
  %t0 = call i64 @cnncc_pool_now()
  %limit = load atomic i64, ptr @cnncc_pool_spin_ns monotonic, align 8
  br label %spin

spin:
  %i = phi i64 [ 0, %idle ], [ %i1, %spin_more ], [ %i1, %clock ]
  %g = load atomic i32, ptr @cnncc_pool_gen acquire, align 4
  %moved = icmp ne i32 %g, %seen
  br i1 %moved, label %job, label %pause

pause:
  call void @llvm.x86.sse2.pause()
  %i1 = add i64 %i, 1
  %low = and i64 %i1, 31
  %look = icmp eq i64 %low, 0
  br i1 %look, label %clock, label %spin_more

spin_more:
  br label %spin

clock:
  call i32 @sched_yield()
  %t = call i64 @cnncc_pool_now()
  %spent = sub i64 %t, %t0
  %enough = icmp sge i64 %spent, %limit
  br i1 %enough, label %sleep, label %spin

sleep:
  atomicrmw add ptr @cnncc_pool_sleepers, i32 1 seq_cst
  %seen64 = zext i32 %seen to i64
  call i64 (i64, ...) @syscall(i64 $futex, ptr @cnncc_pool_gen, i64 $wait, i64 %seen64, ptr null)
  atomicrmw sub ptr @cnncc_pool_sleepers, i32 1 seq_cst
  br label %woke

woke:
  %g2 = load atomic i32, ptr @cnncc_pool_gen acquire, align 4
  %moved2 = icmp ne i32 %g2, %seen
  br i1 %moved2, label %job, label %idle

job:
  %now_gen = load atomic i32, ptr @cnncc_pool_gen acquire, align 4
  %quit = load atomic i32, ptr @cnncc_pool_quit acquire, align 4
  %stop = icmp ne i32 %quit, 0
  br i1 %stop, label %exit, label %enter

enter:
  atomicrmw add ptr @cnncc_pool_active, i32 1 seq_cst
  %open = load atomic i32, ptr @cnncc_pool_open seq_cst, align 4
  %team = load atomic i32, ptr @cnncc_pool_team monotonic, align 4
  %is_open = icmp ne i32 %open, 0
  %member = icmp slt i32 %w, %team
  %go = and i1 %is_open, %member
  br i1 %go, label %run, label %leave

run:
  %here = call i32 @sched_getcpu()
  %caller_cpu = load atomic i32, ptr @cnncc_pool_caller_cpu monotonic, align 4
  %shared = icmp eq i32 %here, %caller_cpu
  br i1 %shared, label %move_off, label %call

move_off:
  call void @cnncc_pool_avoid(i32 0, ptr %allowed, i32 %caller_cpu)
  br i1 %steerable, label %note_off, label %call

note_off:
  %op = getelementptr [$steered x i32], ptr @cnncc_pool_off, i32 0, i32 %w
  %caller_cpu1 = add i32 %caller_cpu, 1
  store atomic i32 %caller_cpu1, ptr %op monotonic, align 4
  br label %call

call:
  %fn = load atomic ptr, ptr @cnncc_pool_fn monotonic, align 8
  %ctx = load atomic ptr, ptr @cnncc_pool_ctx monotonic, align 8
  call void %fn(ptr %ctx, i32 %w, i32 %team)
  br label %leave

leave:
  atomicrmw sub ptr @cnncc_pool_active, i32 1 release
  br label %idle

exit:
  atomicrmw sub ptr @cnncc_pool_live, i32 1 seq_cst
  ret ptr null
}

; In a forked child the workers do not exist: start afresh (the job state is the parent's).
define internal void @cnncc_pool_after_fork() nounwind {
entry:
  store [$steered x i32] zeroinitializer, ptr @cnncc_pool_tids
  store [$steered x i32] zeroinitializer, ptr @cnncc_pool_off
  store i32 0, ptr @cnncc_pool_started
  store i32 0, ptr @cnncc_pool_live
  store i32 0, ptr @cnncc_pool_sleepers
  store i32 0, ptr @cnncc_pool_active
  store i32 0, ptr @cnncc_pool_open
  store i32 0, ptr @cnncc_pool_busy
  ret void
}

; Start workers until there are n - 1 (called with the pool locked).
define internal void @cnncc_pool_grow(i32 %n) nounwind {
entry:
  %tid = alloca i64, align 8
  %want = sub i32 %n, 1
  %quit = load atomic i32, ptr @cnncc_pool_quit acquire, align 4
  %stopped = icmp ne i32 %quit, 0
  br i1 %stopped, label %done, label %fork_hook

fork_hook:
  %hooked = load i32, ptr @cnncc_pool_atfork
  %first = icmp eq i32 %hooked, 0
  br i1 %first, label %hook, label %loop

hook:
  store i32 1, ptr @cnncc_pool_atfork
  call i32 @__register_atfork(ptr null, ptr null, ptr @cnncc_pool_after_fork, ptr $dso_arg)
  br label %loop

loop:
  %have = load atomic i32, ptr @cnncc_pool_started monotonic, align 4
  %more = icmp slt i32 %have, %want
  br i1 %more, label %spawn, label %done

spawn:
  %index = add i32 %have, 1
  %index64 = zext i32 %index to i64
  %arg = inttoptr i64 %index64 to ptr
  atomicrmw add ptr @cnncc_pool_live, i32 1 seq_cst
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @cnncc_pool_worker, ptr %arg)
  %ok = icmp eq i32 %rc, 0
  br i1 %ok, label %created, label %failed

created:
  %handle = load i64, ptr %tid
  call i32 @pthread_detach(i64 %handle)
  store atomic i32 %index, ptr @cnncc_pool_started monotonic, align 4
  br label %loop

failed:
  atomicrmw sub ptr @cnncc_pool_live, i32 1 seq_cst
  br label %done

done:
  ret void
}

define void @cnncc_parallel(ptr %fn, ptr %ctx, i32 %n) nounwind {
entry:
  %many = icmp sgt i32 %n, 1
  br i1 %many, label %lock, label %alone

alone:
  call void %fn(ptr %ctx, i32 0, i32 1)
  ret void

lock:
  %pair = cmpxchg ptr @cnncc_pool_busy, i32 0, i32 1 acquire monotonic
  %owner = extractvalue { i32, i1 } %pair, 1
  br i1 %owner, label %locked, label %alone

locked:
  call void @cnncc_pool_grow(i32 %n)
  %have = load atomic i32, ptr @cnncc_pool_started monotonic, align 4
  %avail = add i32 %have, 1
  %fits = icmp slt i32 %n, %avail
  %team = select i1 %fits, i32 %n, i32 %avail
  %solo = icmp sle i32 %team, 1
  br i1 %solo, label %solo_run, label %publish

solo_run:
  call void %fn(ptr %ctx, i32 0, i32 1)
  br label %unlock

publish:
  %cpu = call i32 @sched_getcpu()
  store atomic i32 %cpu, ptr @cnncc_pool_caller_cpu monotonic, align 4
  store atomic ptr %fn, ptr @cnncc_pool_fn monotonic, align 8
  store atomic ptr %ctx, ptr @cnncc_pool_ctx monotonic, align 8
  store atomic i32 %team, ptr @cnncc_pool_team monotonic, align 4
  store atomic i32 1, ptr @cnncc_pool_open seq_cst, align 4
  atomicrmw add ptr @cnncc_pool_gen, i32 1 seq_cst
  %sleeping = load atomic i32, ptr @cnncc_pool_sleepers seq_cst, align 4
  %wake = icmp ne i32 %sleeping, 0
  br i1 %wake, label %wake_them, label %work

wake_them:
  call void @cnncc_pool_steer(i32 %cpu)
  call void @cnncc_pool_wake_all()
  br label %work

work:
  call void %fn(ptr %ctx, i32 0, i32 %team)
  store atomic i32 0, ptr @cnncc_pool_open seq_cst, align 4
  br label %join

join:
  %spins = phi i32 [ 0, %work ], [ %spins1, %wait ], [ 0, %yield ]
  %inside = load atomic i32, ptr @cnncc_pool_active seq_cst, align 4
  %clear = icmp eq i32 %inside, 0
  br i1 %clear, label %unlock, label %wait

wait:
  call void @llvm.x86.sse2.pause()
  %spins1 = add i32 %spins, 1
  %often = icmp ult i32 %spins1, 64
  br i1 %often, label %join, label %yield

yield:
  call i32 @sched_yield()
  br label %join

unlock:
  store atomic i32 0, ptr @cnncc_pool_busy release, align 4
  ret void
}

; Stop the workers and wait (at most ~1 s) until they have left the pool's code.
define void @cnncc_pool_shutdown() nounwind {
entry:
  store atomic i32 1, ptr @cnncc_pool_quit seq_cst, align 4
  atomicrmw add ptr @cnncc_pool_gen, i32 1 seq_cst
  call void @cnncc_pool_wake_all()
  %t0 = call i64 @cnncc_pool_now()
  br label %check

check:
  %live = load atomic i32, ptr @cnncc_pool_live seq_cst, align 4
  %gone = icmp sle i32 %live, 0
  br i1 %gone, label %done, label %wait

wait:
  call void @llvm.x86.sse2.pause()
  %t = call i64 @cnncc_pool_now()
  %spent = sub i64 %t, %t0
  %late = icmp sgt i64 %spent, 1000000000
  br i1 %late, label %done, label %check

done:
  ret void
}
"""


def pool_ir(spin_ns: int = SPIN_NS_DEFAULT, library: bool = False) -> str:
    """The pool's LLVM IR module (no triple or data layout: the JIT sets them); ``library``: for
    a shared library (its fork handler is tied to the library's __dso_handle)."""
    dso = "@__dso_handle" if library else "null"
    decl = "@__dso_handle = external hidden global i8" if library else ""
    return Template(_IR).substitute(spin_ns=int(spin_ns), futex=_SYS_FUTEX, dso_arg=dso,
                                    dso_decl=decl,
                                    wake=_FUTEX_WAKE_PRIVATE, wait=_FUTEX_WAIT_PRIVATE,
                                    clock=_CLOCK_MONOTONIC, gettid=_SYS_GETTID,
                                    steered=STEERED_WORKERS, steered_last=STEERED_WORKERS - 1)
