// cuda_emu.h: runs cnncc-generated CUDA C on the host, for testing without a GPU.
//
//   g++ -std=c++20 -pthread -x c++ -include cuda_emu.h kernels.cu ...
//
// A launch runs the grid's blocks one after another. The threads of a block are real
// (p)threads (one per CUDA thread, reused from block to block), so a missing
// __syncthreads() is a real data race that -fsanitize=thread reports, and __syncthreads() is a
// real barrier (pthread mutex + condition variable: ThreadSanitizer models it exactly). Shared
// arrays (CNNCC_SHARED) are heap blocks allocated per block with their exact size, filled with
// 0xff bytes (NaN for floats) and freed when the block ends, so -fsanitize=address reports
// out-of-bounds and stale accesses; cudaMalloc'd memory is exact-size heap memory too.
// Device "memory" is host memory: cudaMemcpy is memcpy, and a host pointer may be passed to a
// kernel directly. Launches are synchronous; streams exist only as handles.
// A barrier that waits longer than CNNCC_EMU_BARRIER_TIMEOUT seconds (default 60: a
// __syncthreads() not reached by every thread of the block) aborts with a message.
// `__shared__` is deliberately not defined: a plain declaration would give each emulated thread
// its own copy; generated code uses CNNCC_SHARED.
#ifndef CNNCC_CUDA_EMU_H
#define CNNCC_CUDA_EMU_H
#define CNNCC_CUDA_EMU 1

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

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

inline void die(const char *what) {
  fprintf(stderr, "cuda_emu: %s\n", what);
  abort();
}

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
      if (pthread_cond_timedwait(&cv_, &mu_, &limit) == ETIMEDOUT && gen_ == gen) {
        fprintf(stderr, "cuda_emu: __syncthreads() deadlock: %u of %u threads arrived "
                "(block %u,%u,%u)\n", arrived_, n_, blockIdx.x, blockIdx.y, blockIdx.z);
        abort();
      }
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

constexpr unsigned kMaxShared = 64;

// State of the block being run: its barrier and its shared arrays.
struct Block {
  explicit Block(unsigned n) : barrier(n) { pthread_mutex_init(&mu, nullptr); }
  ~Block() { pthread_mutex_destroy(&mu); }
  Barrier barrier;
  pthread_mutex_t mu;
  void *shared[kMaxShared] = {};
  unsigned nshared = 0;
  void release() {
    for (unsigned i = 0; i < nshared; ++i) free(shared[i]);
    nshared = 0;
  }
};

inline thread_local Block *current_block = nullptr;
inline thread_local unsigned shared_index = 0;
inline thread_local bool synced = false;  // this thread called __syncthreads() in this block

// The k-th CNNCC_SHARED declaration a thread executes in a block names the block's k-th array.
template <typename T>
T *shared_array(size_t count) {
  Block *b = current_block;
  pthread_mutex_lock(&b->mu);
  unsigned k = shared_index++;
  if (k >= kMaxShared) die("more than 64 shared arrays in a kernel");
  if (k == b->nshared) {
    void *p = malloc(count * sizeof(T));
    if (!p) die("out of memory for a shared array");
    memset(p, 0xff, count * sizeof(T));
    b->shared[b->nshared++] = p;
  }
  void *p = b->shared[k];
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
  threadIdx = uint3{t % tm.block.x, t / tm.block.x % tm.block.y, t / (tm.block.x * tm.block.y)};
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

inline void launch_team(dim3 grid, dim3 block, void (*body)(const void *), const void *ctx) {
  unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  unsigned n = static_cast<unsigned>(threads);
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

template <typename F>
void launch(dim3 grid, dim3 block, cudaStream_t, const F &body) {
  launch_team(grid, block, [](const void *f) { (*static_cast<const F *>(f))(); }, &body);
}

}  // namespace cuda_emu

inline void __syncthreads() {
  cuda_emu::synced = true;
  cuda_emu::current_block->barrier.wait();
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
