// cuda_emu.h: runs cnncc-generated CUDA C on the host, for testing without a GPU.
//
//   g++ -std=c++20 -pthread -x c++ -include cuda_emu.h kernels.cu ...
//
// Two execution modes, same semantics and the same results (bit for bit) for race-free kernels:
//
// Fast mode (the default). The blocks of a grid are spread over host worker threads
// (CNNCC_EMU_THREADS, default: the CPUs this process may use; blocks are independent in CUDA),
// each worker running its blocks one after another. A block's CUDA threads run on the worker
// itself: threads 0, 1, ... each run to completion in turn, with no context switch at all, until
// thread 0 calls __syncthreads(). From then on every thread of that block is a user-space fiber
// (thread 0 stays on the worker's stack, the others get stacks of CNNCC_EMU_STACK_KB KiB,
// default 256, guard page below, pooled for the whole process): __syncthreads() switches to the
// next thread, and when the last one arrives the barrier releases and thread 0 resumes. A
// barrier that some threads of the block exit without reaching (divergent __syncthreads())
// aborts with a "__syncthreads() deadlock" message at once. Shared arrays are per-worker heap
// arrays, 0xff-filled (NaN for floats) at the start of every block.
//
// Pthread mode (CNNCC_EMU_PTHREADS defined, and always under -fsanitize=thread or =address).
// Blocks run one after another; the threads of a block are real pthreads (one per CUDA thread,
// reused from block to block), so a missing __syncthreads() is a real data race that
// ThreadSanitizer reports, and __syncthreads() is a pthread mutex + condition variable barrier
// (modelled exactly by TSan). Shared arrays are heap blocks allocated per block with their exact
// size, 0xff-filled and freed when the block ends, so AddressSanitizer reports out-of-bounds and
// stale accesses. A barrier that waits longer than CNNCC_EMU_BARRIER_TIMEOUT seconds (default 60)
// aborts with a "__syncthreads() deadlock" message.
//
// Both modes: threadIdx/blockIdx/blockDim/gridDim as in CUDA; CNNCC_SHARED(type, name, count)
// declares a block-shared array (the k-th declaration a thread executes names the block's k-th
// array; every thread must declare the same sizes); CNNCC_LAUNCH(kernel, grid, block, stream,
// args...) validates the launch configuration (cudaErrorInvalidConfiguration, reported by
// cudaGetLastError) and runs the grid synchronously. Device "memory" is host memory: cudaMalloc
// is an exact-size malloc, cudaMemcpy(Async) a memmove, and a host pointer may be passed to a
// kernel directly; streams exist only as handles. cnncc_emu_mode() (extern "C") names the mode:
// "fibers", "fibers-ucontext" (CNNCC_EMU_UCONTEXT or not x86-64: swapcontext, slower) or
// "pthreads". `__shared__` is deliberately not defined: a plain declaration would give each
// emulated thread its own copy; generated code uses CNNCC_SHARED.
#ifndef CNNCC_CUDA_EMU_H
#define CNNCC_CUDA_EMU_H
#define CNNCC_CUDA_EMU 1

#if !defined(CNNCC_EMU_PTHREADS)
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define CNNCC_EMU_PTHREADS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define CNNCC_EMU_PTHREADS 1
#endif
#endif
#endif
#if !defined(CNNCC_EMU_PTHREADS) && !defined(CNNCC_EMU_UCONTEXT) && !defined(__x86_64__)
#define CNNCC_EMU_UCONTEXT 1
#endif

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#if defined(CNNCC_EMU_UCONTEXT) && !defined(CNNCC_EMU_PTHREADS)
#include <ucontext.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

// float16: cuda_fp16.h's __half as the compiler's _Float16, with the conversions the generated
// code uses (each rounds once, to nearest even, as on the GPU).
typedef _Float16 __half;
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half_rn(float f) { return (__half)f; }
inline __half __double2half(double d) { return (__half)d; }

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct CUstream_st {
  int unused;
};
typedef CUstream_st *cudaStream_t;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace cuda_emu {

inline cudaError_t &last_error() {
  static cudaError_t err = cudaSuccess;
  return err;
}

inline cudaError_t fail(cudaError_t e) {
  last_error() = e;
  return e;
}

[[noreturn]] inline void die(const char *what) {
  fprintf(stderr, "cuda_emu: %s\n", what);
  abort();
}

[[noreturn]] inline void die_deadlock(unsigned arrived, unsigned n, const char *rest) {
  fprintf(stderr, "cuda_emu: __syncthreads() deadlock: %u of %u threads arrived%s "
          "(block %u,%u,%u)\n", arrived, n, rest, blockIdx.x, blockIdx.y, blockIdx.z);
  abort();
}

inline bool valid_config(dim3 grid, dim3 block) {
  unsigned long long threads = 1ull * block.x * block.y * block.z;
  return threads > 0 && threads <= 1024 && block.z <= 64 && grid.x > 0 && grid.y > 0 &&
         grid.z > 0 && grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535;
}

inline uint3 thread_index(dim3 block, unsigned t) {
  return uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
}

constexpr unsigned kMaxShared = 64;

// The shared arrays of one block: the k-th CNNCC_SHARED declaration a thread executes in a
// block names the block's k-th array (allocated by the first thread to declare it).
struct SharedArrays {
  void *ptr[kMaxShared] = {};
  size_t bytes[kMaxShared] = {};
  unsigned count = 0;
};

inline void *check_shared(SharedArrays &s, unsigned k, size_t bytes) {
  if (k >= kMaxShared) die("more than 64 shared arrays in a kernel");
  if (k >= s.count || s.bytes[k] != bytes)
    die("the threads of a block declare different shared arrays (CNNCC_SHARED)");
  return s.ptr[k];
}

#ifdef CNNCC_EMU_PTHREADS
inline const char *mode_name() { return "pthreads"; }

// ---- Pthread mode ----------------------------------------------------------------------------

// A reusable barrier for the threads of one block (plain pthreads: cheap to compile and
// modelled exactly by ThreadSanitizer).
class Barrier {
 public:
  explicit Barrier(unsigned n) : n_(n) {
    pthread_mutex_init(&mu_, nullptr);
    pthread_cond_init(&cv_, nullptr);
  }
  ~Barrier() {
    pthread_cond_destroy(&cv_);
    pthread_mutex_destroy(&mu_);
  }
  Barrier(const Barrier &) = delete;
  Barrier &operator=(const Barrier &) = delete;

  void wait() {
    pthread_mutex_lock(&mu_);
    unsigned gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++gen_;
      pthread_cond_broadcast(&cv_);
      pthread_mutex_unlock(&mu_);
      return;
    }
    timespec limit;
    clock_gettime(CLOCK_REALTIME, &limit);
    limit.tv_sec += timeout_seconds();
    while (gen_ == gen) {
      if (pthread_cond_timedwait(&cv_, &mu_, &limit) == ETIMEDOUT && gen_ == gen)
        die_deadlock(arrived_, n_, "");
    }
    pthread_mutex_unlock(&mu_);
  }

 private:
  static long timeout_seconds() {
    const char *s = getenv("CNNCC_EMU_BARRIER_TIMEOUT");
    long v = s ? atol(s) : 0;
    return v > 0 ? v : 60;
  }
  pthread_mutex_t mu_;
  pthread_cond_t cv_;
  unsigned n_, arrived_ = 0, gen_ = 0;
};

// State of the block being run: its barrier and its shared arrays.
struct Block {
  explicit Block(unsigned n) : barrier(n) { pthread_mutex_init(&mu, nullptr); }
  ~Block() { pthread_mutex_destroy(&mu); }
  Barrier barrier;
  pthread_mutex_t mu;
  SharedArrays shared;
  void release() {
    for (unsigned i = 0; i < shared.count; ++i) free(shared.ptr[i]);
    shared.count = 0;
  }
};

inline thread_local Block *current_block = nullptr;
inline thread_local unsigned shared_index = 0;
inline thread_local bool synced = false;  // this thread called __syncthreads() in this block

template <typename T>
T *shared_array(size_t count) {
  Block *b = current_block;
  size_t bytes = count * sizeof(T);
  pthread_mutex_lock(&b->mu);
  unsigned k = shared_index++;
  if (k < kMaxShared && k == b->shared.count) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) die("out of memory for a shared array");
    memset(p, 0xff, bytes);
    b->shared.ptr[k] = p;
    b->shared.bytes[k] = bytes;
    b->shared.count++;
  }
  void *p = check_shared(b->shared, k, bytes);
  pthread_mutex_unlock(&b->mu);
  return static_cast<T *>(p);
}

struct Team {
  dim3 grid, block;
  Block *state;
  void (*body)(const void *);
  const void *ctx;
};

struct Member {
  const Team *team;
  unsigned t;
};

inline void *run_member(void *arg) {
  const Member *m = static_cast<const Member *>(arg);
  const Team &tm = *m->team;
  unsigned t = m->t;
  current_block = tm.state;
  blockDim = tm.block;
  gridDim = tm.grid;
  threadIdx = thread_index(tm.block, t);
  for (unsigned z = 0; z < tm.grid.z; ++z)
    for (unsigned y = 0; y < tm.grid.y; ++y)
      for (unsigned x = 0; x < tm.grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        shared_index = 0;
        synced = false;
        tm.body(tm.ctx);
        // A block that shares nothing (no shared arrays, no barrier) needs no hand-over: its
        // threads may run ahead into their next block, as blocks are independent in CUDA.
        // Both conditions are the same for every thread of a block (uniform code).
        if (shared_index == 0 && !synced) continue;
        tm.state->barrier.wait();  // every thread is done with the block
        if (t == 0) tm.state->release();
        tm.state->barrier.wait();
      }
  current_block = nullptr;
  return nullptr;
}

inline void run_grid(dim3 grid, dim3 block, void (*body)(const void *), const void *ctx) {
  unsigned n = block.x * block.y * block.z;
  Block state(n);
  Team team{grid, block, &state, body, ctx};
  Member *members = new Member[n];
  pthread_t *ids = new pthread_t[n];
  for (unsigned t = 0; t < n; ++t) {
    members[t] = Member{&team, t};
    if (pthread_create(&ids[t], nullptr, run_member, &members[t]) != 0)
      die("cannot create a thread for an emulated CUDA thread");
  }
  for (unsigned t = 0; t < n; ++t) pthread_join(ids[t], nullptr);
  delete[] ids;
  delete[] members;
}

inline void syncthreads() {
  if (!current_block) die("__syncthreads() called outside a kernel");
  synced = true;
  current_block->barrier.wait();
}

#else  // fast mode

// ---- Fast mode: context switching --------------------------------------------------------------

#ifndef CNNCC_EMU_UCONTEXT
inline const char *mode_name() { return "fibers"; }

// switch_context(&save, next): pushes the callee-saved registers, stores the stack pointer in
// *save, loads `next` and pops/returns there. Caller-saved registers are the compiler's business
// (it is an ordinary call). A COMDAT group: every translation unit may include this header.
__asm__(
    ".pushsection .text.cnncc_emu_switch,\"axG\",@progbits,cnncc_emu_switch,comdat\n"
    ".globl cnncc_emu_switch\n"
    ".hidden cnncc_emu_switch\n"
    ".type cnncc_emu_switch,@function\n"
    ".p2align 4\n"
    "cnncc_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size cnncc_emu_switch, .-cnncc_emu_switch\n"
    ".popsection\n");
extern "C" __attribute__((visibility("hidden"))) void cnncc_emu_switch(void **save, void *next);

struct Context {
  void *sp;
};

// A fresh context that starts `entry` (which must never return) on the stack [base, base+size).
inline void make_context(Context &c, char *base, size_t size, void (*entry)()) {
  void **sp = reinterpret_cast<void **>(
      reinterpret_cast<uintptr_t>(base + size) & ~static_cast<uintptr_t>(15));
  *--sp = nullptr;                                // entry's return address (16-byte ABI slot)
  *--sp = reinterpret_cast<void *>(entry);        // where cnncc_emu_switch's `ret` goes
  for (int i = 0; i < 6; ++i) *--sp = nullptr;    // rbp rbx r12-r15 (rbp 0 ends backtraces)
  c.sp = sp;
}

inline void switch_context(Context &from, Context &to) { cnncc_emu_switch(&from.sp, to.sp); }

#else
inline const char *mode_name() { return "fibers-ucontext"; }

struct Context {
  ucontext_t uc;
};

inline void make_context(Context &c, char *base, size_t size, void (*entry)()) {
  if (getcontext(&c.uc) != 0) die("getcontext failed");
  c.uc.uc_stack.ss_sp = base;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

inline void switch_context(Context &from, Context &to) {
  if (swapcontext(&from.uc, &to.uc) != 0) die("swapcontext failed");
}
#endif

// Fiber stacks for up to `count` threads, each with a PROT_NONE guard page below it; kept in a
// process-wide pool so that launches reuse stacks whose pages are already mapped in.
struct StackSet {
  StackSet *next;
  char *mem;
  size_t stride, size;
  unsigned count;
  char *stack(unsigned i) const { return mem + i * stride + (stride - size); }
};

inline pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
inline StackSet *pool_free = nullptr;

inline size_t stack_bytes() {
  static const size_t bytes = [] {
    const char *s = getenv("CNNCC_EMU_STACK_KB");
    long kb = s ? atol(s) : 0;
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t b = static_cast<size_t>(kb >= 16 ? kb : 256) * 1024;
    return (b + page - 1) / page * page;
  }();
  return bytes;
}

inline StackSet *acquire_stacks(unsigned n) {
  pthread_mutex_lock(&pool_mu);
  for (StackSet **p = &pool_free; *p; p = &(*p)->next) {
    if ((*p)->count >= n && (*p)->size == stack_bytes()) {
      StackSet *s = *p;
      *p = s->next;
      pthread_mutex_unlock(&pool_mu);
      return s;
    }
  }
  pthread_mutex_unlock(&pool_mu);
  unsigned count = 32;
  while (count < n) count *= 2;
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t size = stack_bytes(), stride = size + page;
  void *mem = mmap(nullptr, stride * count, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) die("cannot map stacks for emulated CUDA threads");
  StackSet *s = new StackSet{nullptr, static_cast<char *>(mem), stride, size, count};
  for (unsigned i = 0; i < count; ++i)
    if (mprotect(s->mem + i * stride, page, PROT_NONE) != 0) die("cannot protect a stack guard");
  return s;
}

inline void release_stacks(StackSet *s) {
  pthread_mutex_lock(&pool_mu);
  s->next = pool_free;
  pool_free = s;
  pthread_mutex_unlock(&pool_mu);
}

// ---- Fast mode: running blocks -----------------------------------------------------------------

// One launch. Helpers are detached threads holding a reference: one that starts late (a busy
// machine) finds no block left and just drops it; the launching thread waits for the blocks.
struct Grid {
  dim3 grid, block;
  unsigned n;                     // threads per block
  unsigned long long blocks;
  void (*body)(const void *);
  const void *ctx;
  std::atomic<unsigned long long> next{0}, done{0};
  std::atomic<unsigned> refs{1};
};

inline void drop(Grid *g) {
  if (g->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete g;
}

struct Fiber {
  Context ctx;
  unsigned shared_index;
};

inline void fiber_main();

// One host worker: runs blocks of a grid; a block's threads as described at the top.
struct Worker {
  const Grid *g;
  unsigned n, cur = 0, arrived = 0, exited = 0;
  bool fibers = false;            // the current block switched to fibers
  unsigned shared_index = 0;      // of thread `cur`: its next CNNCC_SHARED declaration
  uint3 *index;                   // threadIdx of every thread
  Fiber *fib;
  StackSet *stacks = nullptr;
  SharedArrays shared;
  size_t capacity[kMaxShared] = {};

  explicit Worker(const Grid *grid) : g(grid), n(grid->n) {
    index = new uint3[n];
    fib = new Fiber[n];
    for (unsigned t = 0; t < n; ++t) index[t] = thread_index(g->block, t);
  }
  ~Worker() {
    if (stacks) release_stacks(stacks);
    for (unsigned k = 0; k < kMaxShared; ++k) free(shared.ptr[k]);
    delete[] fib;
    delete[] index;
  }
  Worker(const Worker &) = delete;
  Worker &operator=(const Worker &) = delete;

  void run_block();
  void enter_fibers();
  void advance(bool exiting);
};

inline thread_local Worker *worker = nullptr;

// Threads 0, 1, ... in turn; when thread 0 waits at a barrier the block goes on as fibers and
// thread 0's body returns here only after the whole block is done.
inline void Worker::run_block() {
  fibers = false;
  shared.count = 0;
  for (unsigned t = 0; t < n; ++t) {
    cur = t;
    threadIdx = index[t];
    shared_index = 0;
    g->body(g->ctx);
    if (fibers) {
      advance(true);
      return;
    }
  }
}

// Thread `cur` waits at its first barrier while running plainly: threads before it exited
// without that barrier (divergent) unless it is thread 0; then threads 1.. become fibers.
inline void Worker::enter_fibers() {
  if (cur != 0) {
    char rest[64];
    snprintf(rest, sizeof rest, ", %u exited without it", cur);
    die_deadlock(1, n, rest);
  }
  if (!stacks && n > 1) stacks = acquire_stacks(n);
  for (unsigned t = 1; t < n; ++t) {
    // Stack tops staggered by cache lines: equal page offsets would make every fiber's top
    // frames compete for the same few cache sets.
    make_context(fib[t].ctx, stacks->stack(t), stacks->size - t % 64 * 64, fiber_main);
    fib[t].shared_index = 0;
  }
  arrived = exited = 0;
  fibers = true;
}

// Thread `cur` waits at a barrier (or exits): run the next thread; after the last one, release
// the barrier (all waiting) or end the block (all exited) by going back to thread 0.
inline void Worker::advance(bool exiting) {
  unsigned me = cur, next = me + 1;
  ++(exiting ? exited : arrived);
  if (next == n) {
    if (arrived && exited) {
      char rest[64];
      snprintf(rest, sizeof rest, ", %u exited without it", exited);
      die_deadlock(arrived, n, rest);
    }
    arrived = 0;
    next = 0;
  }
  if (next == me) return;
  fib[me].shared_index = shared_index;
  cur = next;
  threadIdx = index[next];
  shared_index = fib[next].shared_index;
  switch_context(fib[me].ctx, fib[next].ctx);
}

// Entry of threads 1.. of a block in fiber mode. An exited thread is never resumed: the block
// ends (back to thread 0) or the deadlock check aborts.
inline void fiber_main() {
  Worker *w = worker;
  w->g->body(w->g->ctx);
  w->advance(true);
  die("an exited emulated CUDA thread was resumed");
}

template <typename T>
T *shared_array(size_t count) {
  Worker &w = *worker;
  size_t bytes = count * sizeof(T);
  unsigned k = w.shared_index++;
  if (k < kMaxShared && k == w.shared.count) {
    if (w.capacity[k] < bytes) {
      free(w.shared.ptr[k]);
      w.shared.ptr[k] = malloc(bytes ? bytes : 1);
      if (!w.shared.ptr[k]) die("out of memory for a shared array");
      w.capacity[k] = bytes;
    }
    memset(w.shared.ptr[k], 0xff, bytes);
    w.shared.bytes[k] = bytes;
    w.shared.count++;
  }
  return static_cast<T *>(check_shared(w.shared, k, bytes));
}

inline void syncthreads() {
  Worker *w = worker;
  if (!w) die("__syncthreads() called outside a kernel");
  if (!w->fibers) w->enter_fibers();
  w->advance(false);
}

// Runs blocks of `g` until none is left.
inline void work(Grid *g) {
  Worker w(g);
  worker = &w;
  blockDim = g->block;
  gridDim = g->grid;
  unsigned long long gx = g->grid.x, gy = g->grid.y;
  for (;;) {
    unsigned long long b = g->next.fetch_add(1, std::memory_order_relaxed);
    if (b >= g->blocks) break;
    blockIdx = uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>(b / gx % gy),
                     static_cast<unsigned>(b / (gx * gy))};
    w.run_block();
    if (g->done.fetch_add(1, std::memory_order_acq_rel) + 1 == g->blocks) g->done.notify_all();
  }
  worker = nullptr;
}

inline void *helper_main(void *arg) {
  Grid *g = static_cast<Grid *>(arg);
  work(g);
  drop(g);
  return nullptr;
}

// Host workers per launch: $CNNCC_EMU_THREADS, else the CPUs this process may run on.
inline unsigned worker_limit() {
  static const unsigned limit = [] {
    const char *s = getenv("CNNCC_EMU_THREADS");
    long v = s ? atol(s) : 0;
    if (v <= 0) {
      cpu_set_t set;
      v = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                      : sysconf(_SC_NPROCESSORS_ONLN);
    }
    return static_cast<unsigned>(v < 1 ? 1 : v > 256 ? 256 : v);
  }();
  return limit;
}

inline void run_grid(dim3 grid, dim3 block, void (*body)(const void *), const void *ctx) {
  Grid *g = new Grid;
  g->grid = grid;
  g->block = block;
  g->n = block.x * block.y * block.z;
  g->blocks = 1ull * grid.x * grid.y * grid.z;
  g->body = body;
  g->ctx = ctx;
  unsigned long long helpers = worker_limit() - 1;
  if (helpers > g->blocks - 1) helpers = g->blocks - 1;
  if (helpers) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (unsigned long long i = 0; i < helpers; ++i) {
      pthread_t id;
      g->refs.fetch_add(1, std::memory_order_relaxed);
      if (pthread_create(&id, &attr, helper_main, g) != 0) {
        g->refs.fetch_sub(1, std::memory_order_relaxed);
        break;  // fewer helpers: the launching thread does the rest
      }
    }
    pthread_attr_destroy(&attr);
  }
  work(g);
  for (unsigned long long d; (d = g->done.load(std::memory_order_acquire)) < g->blocks;)
    g->done.wait(d, std::memory_order_acquire);
  drop(g);
}
#endif  // fast mode

template <typename F>
void launch(dim3 grid, dim3 block, cudaStream_t, const F &body) {
  if (!valid_config(grid, block)) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  run_grid(grid, block, [](const void *f) { (*static_cast<const F *>(f))(); }, &body);
}

}  // namespace cuda_emu

extern "C" inline __attribute__((used)) const char *cnncc_emu_mode() {
  return cuda_emu::mode_name();
}

inline void __syncthreads() { cuda_emu::syncthreads(); }

// __dp4a(int, int, int) (sm_61+): c + the sum of the 4 signed byte products of a and b,
// wrapping modulo 2^32 as the instruction does (summed unsigned: no signed overflow).
inline int __dp4a(int a, int b, int c) {
  unsigned s = (unsigned)c;
  for (int k = 0; k < 32; k += 8)
    s += (unsigned)((int)(signed char)(a >> k) * (int)(signed char)(b >> k));
  return (int)s;
}

#define CNNCC_SHARED(type, name, count) \
  type *const name = cuda_emu::shared_array<type>(count)
#define CNNCC_LAUNCH(kernel, grid, block, stream, ...) \
  cuda_emu::launch(grid, block, stream, [&]() { kernel(__VA_ARGS__); })

inline cudaError_t cudaGetLastError() {
  cudaError_t e = cuda_emu::last_error();
  cuda_emu::last_error() = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return cuda_emu::last_error(); }
inline const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void **p, size_t bytes) {
  if (!p) return cuda_emu::fail(cudaErrorInvalidValue);
  *p = malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : cuda_emu::fail(cudaErrorMemoryAllocation);
}
template <typename T>
inline cudaError_t cudaMalloc(T **p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void **>(p), bytes);
}
inline cudaError_t cudaFree(void *p) {
  free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind) {
  if (bytes && (!dst || !src)) return cuda_emu::fail(cudaErrorInvalidValue);
  if (bytes) memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaMemset(void *dst, int value, size_t bytes) {
  if (bytes && !dst) return cuda_emu::fail(cudaErrorInvalidValue);
  if (bytes) memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t = nullptr) {
  return cudaMemset(dst, value, bytes);
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s) {
  if (!s) return cuda_emu::fail(cudaErrorInvalidValue);
  *s = new CUstream_st{0};
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

#endif  // CNNCC_CUDA_EMU_H
