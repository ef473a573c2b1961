// Block emulator of the cuda_emu backend (see csrc/include/cuda_emu.h).
//
// A block runs its threads as fibers on one OS thread. The scheduler makes passes over the fibers
// in thread order; in a pass each live fiber runs from where it stopped to its next __syncthreads
// (or its end). Only after a whole pass does any fiber continue, so every thread of the block
// reaches a barrier before any thread passes it. A thread that returns while others wait at a
// barrier no longer holds the barrier back (as on sm_70+ hardware, where exited threads do not
// block bar.sync; CUDA calls it undefined): the emulator releases the waiting threads and counts
// the event in divergent_barriers(), which stays zero for correct kernels.
//
// Fibers switch with a hand-written x86-64 context switch (callee-saved registers, MXCSR and the
// x87 control word; a few nanoseconds, versus a sigprocmask system call per swapcontext), with
// ucontext elsewhere. Stacks are mapped once per OS thread, each under a guard page, and reused.
// Blocks of a grid run in parallel with at::parallel_for when built with torch
// (RK_CUDA_EMU_WITH_TORCH), serially otherwise; each block writes only its own outputs, so the
// results do not depend on the number of threads.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda_emu.h"

#if defined(RK_CUDA_EMU_WITH_TORCH)
#include <ATen/Parallel.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define RK_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RK_EMU_ASAN 1
#endif
#endif
#if defined(RK_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

extern "C" float __nv_logf(float a) { return std::log(a); }
extern "C" float __nv_cosf(float a) { return std::cos(a); }

RK_EMU_TLS uint3 threadIdx;
RK_EMU_TLS uint3 blockIdx;
RK_EMU_TLS dim3 blockDim;
RK_EMU_TLS dim3 gridDim;

#if defined(__x86_64__)
// rk_emu_swap(save, to): saves the callee-saved state on the current stack, stores the stack
// pointer in *save and resumes the context whose stack pointer is `to`. A new fiber's stack is
// laid out so that the first swap "returns" into rk_emu_fiber_entry with the fiber in r12.
extern "C" __attribute__((visibility("hidden"))) void rk_emu_swap(void** save, void* to);
extern "C" __attribute__((visibility("hidden"))) void rk_emu_fiber_entry();
asm(R"(
  .text
  .globl rk_emu_swap
  .hidden rk_emu_swap
  .type rk_emu_swap, @function
rk_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size rk_emu_swap, .-rk_emu_swap

  .globl rk_emu_fiber_entry
  .hidden rk_emu_fiber_entry
  .type rk_emu_fiber_entry, @function
rk_emu_fiber_entry:
  movq %r12, %rdi
  call rk_emu_fiber_main
  ud2
  .size rk_emu_fiber_entry, .-rk_emu_fiber_entry
)");
#endif

namespace rk_emu {

RK_EMU_TLS cudaError_t last_error = cudaSuccess;

namespace {

#if defined(RK_EMU_ASAN)
constexpr size_t kStackBytes = 512 * 1024;  // instrumented frames are several times larger
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif
constexpr unsigned kMaxThreads = 1024;

std::atomic<long> g_divergent{0};
std::mutex g_attr_mutex;
std::map<const void*, int> g_max_dynamic_smem;  // per kernel, as set by cudaFuncSetAttribute

enum class State { kRunning, kAtBarrier, kDone };

struct Worker;

struct Fiber {
  Worker* worker;
  char* stack;  // lowest usable address
  uint3 tid;
  State state;
#if defined(__x86_64__)
  void* sp;
#else
  ucontext_t ctx;
#endif
  void* fake_stack;  // ASan's fake-stack handle while switched out
};

// One per OS thread that runs blocks: the fibers' stacks, mapped on first use and reused.
struct Worker {
  std::vector<Fiber> fibers;
  std::vector<void*> maps;
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
#if defined(__x86_64__)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
#endif
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  void (*fn)(void*) = nullptr;
  void* ctx = nullptr;
  unsigned char* smem = nullptr;

  Worker() { fibers.reserve(kMaxThreads); }
  ~Worker() {
    for (void* m : maps) munmap(m, kStackBytes + page);
  }

  void ensure(unsigned n) {
    while (fibers.size() < n) {
      void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) {
        std::perror("rk_emu: mmap of a fiber stack");
        std::abort();
      }
      mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
      maps.push_back(m);
      Fiber f{};
      f.worker = this;
      f.stack = static_cast<char*>(m) + page;
      fibers.push_back(f);
    }
  }
};

thread_local std::unique_ptr<Worker> tls_worker;
RK_EMU_TLS Worker* tls_fast_worker = nullptr;
RK_EMU_TLS Fiber* tls_current = nullptr;

Worker& worker() {
  if (tls_fast_worker == nullptr) {
    tls_worker.reset(new Worker());
    tls_fast_worker = tls_worker.get();
  }
  return *tls_fast_worker;
}

inline void start_switch(void** fake_save, const void* bottom, size_t size) {
#if defined(RK_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
  (void)fake_save, (void)bottom, (void)size;
#endif
}

inline void finish_switch(void* fake_save, const void** bottom_old, size_t* size_old) {
#if defined(RK_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
  (void)fake_save, (void)bottom_old, (void)size_old;
#endif
}

// Fiber -> scheduler. A finished fiber passes no fake-stack slot, so ASan frees its fake stack.
void yield_to_scheduler(Fiber* f) {
  Worker* w = f->worker;
  start_switch(f->state == State::kDone ? nullptr : &f->fake_stack, w->sched_bottom, w->sched_size);
#if defined(__x86_64__)
  rk_emu_swap(&f->sp, w->sched_sp);
#else
  swapcontext(&f->ctx, &w->sched_ctx);
#endif
  finish_switch(f->fake_stack, &w->sched_bottom, &w->sched_size);
}

}  // namespace

// Called from rk_emu_fiber_entry (assembly) only: hidden, so the call needs no PLT, and used.
extern "C" __attribute__((visibility("hidden"), used)) void rk_emu_fiber_main(Fiber* f) {
  Worker* w = f->worker;
  finish_switch(nullptr, &w->sched_bottom, &w->sched_size);
  w->fn(w->ctx);
  f->state = State::kDone;
  yield_to_scheduler(f);
  std::abort();  // a finished fiber is never resumed
}

namespace {

#if !defined(__x86_64__)
void ucontext_entry(unsigned lo, unsigned hi) {
  rk_emu_fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void init_fiber(Fiber& f) {
  f.state = State::kRunning;
  f.fake_stack = nullptr;
#if defined(RK_EMU_ASAN)
  __asan_unpoison_memory_region(f.stack, kStackBytes);  // stale redzones of the previous block
#endif
#if defined(__x86_64__)
  // Frame popped by rk_emu_swap: [MXCSR | x87 CW], r15, r14, r13, r12 = fiber, rbx, rbp, return
  // address = rk_emu_fiber_entry; the top stays 16-byte aligned for the call it makes.
  uint64_t* top = reinterpret_cast<uint64_t*>(f.stack + kStackBytes);
  uint64_t* sp = top - 8;
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  sp[1] = sp[2] = sp[3] = 0;
  sp[4] = reinterpret_cast<uint64_t>(&f);
  sp[5] = sp[6] = 0;
  sp[7] = reinterpret_cast<uint64_t>(&rk_emu_fiber_entry);
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(&ucontext_entry), 2, static_cast<unsigned>(p),
              static_cast<unsigned>(p >> 32));
#endif
}

void resume(Worker& w, Fiber& f) {
  threadIdx = f.tid;
  tls_current = &f;
  start_switch(&w.sched_fake, f.stack, kStackBytes);
#if defined(__x86_64__)
  rk_emu_swap(&w.sched_sp, f.sp);
#else
  swapcontext(&w.sched_ctx, &f.ctx);
#endif
  finish_switch(w.sched_fake, nullptr, nullptr);
  tls_current = nullptr;
}

void run_block(Worker& w, const LaunchConfig& cfg, uint64_t linear_block) {
  blockIdx.x = static_cast<unsigned>(linear_block % cfg.grid.x);
  blockIdx.y = static_cast<unsigned>(linear_block / cfg.grid.x % cfg.grid.y);
  blockIdx.z = static_cast<unsigned>(linear_block / cfg.grid.x / cfg.grid.y);
  // Fresh, exactly sized shared memory per block (so ASan and valgrind see overflows), filled
  // with 0xff bytes (NaN in every float type) so reads of never-written shared memory show up.
  w.smem = nullptr;
  if (cfg.smem > 0) {
    void* p = nullptr;
    if (posix_memalign(&p, 16, cfg.smem) != 0) {
      std::fprintf(stderr, "rk_emu: cannot allocate %zu bytes of shared memory\n", cfg.smem);
      std::abort();
    }
    std::memset(p, 0xff, cfg.smem);
    w.smem = static_cast<unsigned char*>(p);
  }
  const unsigned n = cfg.block.x * cfg.block.y * cfg.block.z;
  w.ensure(n);
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = w.fibers[i];
    f.tid = uint3{i % cfg.block.x, i / cfg.block.x % cfg.block.y, i / (cfg.block.x * cfg.block.y)};
    init_fiber(f);
  }
  unsigned live = n;
  while (live > 0) {
    unsigned waiting = 0;
    for (unsigned i = 0; i < n; ++i) {
      Fiber& f = w.fibers[i];
      if (f.state == State::kDone) continue;
      f.state = State::kRunning;
      resume(w, f);
      if (f.state == State::kDone) {
        --live;
      } else {
        ++waiting;
      }
    }
    if (waiting > 0 && live < n) g_divergent.fetch_add(1, std::memory_order_relaxed);
  }
  std::free(w.smem);
  w.smem = nullptr;
}

}  // namespace

unsigned char* dynamic_smem() { return worker().smem; }

long divergent_barriers() { return g_divergent.load(); }

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kMaxSharedOptin) return cudaErrorInvalidValue;
  const std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_max_dynamic_smem[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t launch(const LaunchConfig& cfg, void (*thread_fn)(void*), void* ctx) {
  const dim3 g = cfg.grid, b = cfg.block;
  // CUDA's limits: grid.x < 2^31, grid.y and grid.z <= 65535, <= 1024 threads (z <= 64).
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    return cudaErrorInvalidConfiguration;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 ||
      static_cast<uint64_t>(b.x) * b.y * b.z > kMaxThreads)
    return cudaErrorInvalidConfiguration;
  if (cfg.smem > kDefaultShared) {
    int allowed = 0;
    {
      const std::lock_guard<std::mutex> lock(g_attr_mutex);
      auto it = g_max_dynamic_smem.find(cfg.kernel);
      if (it != g_max_dynamic_smem.end()) allowed = it->second;
    }
    if (cfg.smem > static_cast<size_t>(allowed)) return cudaErrorInvalidValue;  // no opt-in, as on a GPU
  }
  const uint64_t blocks = static_cast<uint64_t>(g.x) * g.y * g.z;
  auto run_range = [&](int64_t begin, int64_t end) {
    Worker& w = worker();
    if (tls_current != nullptr) std::abort();  // a launch from inside a kernel is not supported
    w.fn = thread_fn;
    w.ctx = ctx;
    gridDim = g;
    blockDim = b;
    for (int64_t i = begin; i < end; ++i) run_block(w, cfg, static_cast<uint64_t>(i));
  };
#if defined(RK_CUDA_EMU_WITH_TORCH)
  at::parallel_for(0, static_cast<int64_t>(blocks), 1, run_range);
#else
  run_range(0, static_cast<int64_t>(blocks));
#endif
  return cudaSuccess;
}

}  // namespace rk_emu

void __syncthreads() {
  rk_emu::Fiber* f = rk_emu::tls_current;
  f->state = rk_emu::State::kAtBarrier;
  rk_emu::yield_to_scheduler(f);
}
