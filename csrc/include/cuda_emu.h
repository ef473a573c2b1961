// CUDA emulation on the CPU (backend cuda_emu): what the unchanged kernels of csrc/cuda need from
// the CUDA headers, as host C++. Included instead of the CUDA headers when RK_CUDA_EMU is defined.
//
// A launch runs every block of the grid (blocks in parallel when the runtime is built with torch,
// see csrc/cuda_emu/runtime.cpp) and every thread of a block as a fiber; __syncthreads switches
// fibers with real barrier semantics. threadIdx & co. are per-OS-thread values that the block
// scheduler sets before resuming each fiber; __syncthreads is an opaque call, so the compiler
// re-reads them after it. Launch and dynamic shared memory go through RK_LAUNCH and
// RK_DYNAMIC_SMEM (the nvcc versions are in launchers.h). Static __shared__ is deliberately not
// provided: one variable would be shared by every block running at once, so its use must fail to
// compile rather than race.
#pragma once
#if !defined(RK_CUDA_EMU)
#error "cuda_emu.h is the RK_CUDA_EMU replacement of the CUDA headers"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------- runtime types
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaDeviceAttr : int { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct __align__(8) uint2 {
  unsigned x, y;
};
struct __align__(16) uint4 {
  unsigned x, y, z, w;
};

// Per OS thread; the block scheduler sets them before it resumes a fiber (initial-exec: the
// kernels read them in inner loops, and a dlopen'ed module would otherwise call __tls_get_addr).
#define RK_EMU_TLS thread_local __attribute__((tls_model("initial-exec")))
extern RK_EMU_TLS uint3 threadIdx;
extern RK_EMU_TLS uint3 blockIdx;
extern RK_EMU_TLS dim3 blockDim;
extern RK_EMU_TLS dim3 gridDim;

// Block-wide barrier: returns once every thread of the block has reached a barrier or exited.
void __syncthreads();

// ---------------------------------------------------------------- intrinsics
template <typename T> inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
// IEEE operations are correctly rounded on the host (the emulator is built without fast-math and
// with -ffp-contract=off), which is what the _rn intrinsics promise.
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
// libdevice's accurate logf/cosf (philox.h) map to the C library's; both are within 1 ulp but not
// bit-identical, so emulated normals agree with a GPU's to a few ulp, not bitwise.
// Defined in runtime.cpp (philox.h redeclares them, which an inline definition would not survive).
extern "C" float __nv_logf(float a);
extern "C" float __nv_cosf(float a);

// ---------------------------------------------------------------- half types
// Storage-only, as the kernels use them; conversions round to nearest even like the cvt.rn
// instructions, float -> half/bfloat16 turns every NaN into the canonical 0x7fff as they do.
struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};

namespace rk_emu {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Rounds m / 2^shift to nearest, ties to even (1 <= shift < 32).
inline uint32_t shift_rne(uint32_t m, int shift) {
  const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  return q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
}
}  // namespace rk_emu

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000) << 16;
  const uint32_t e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
  if (e == 0x1f) return rk_emu::bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return rk_emu::bits_float(sign | ((e + 112) << 23) | (m << 13));
}

inline __half __float2half_rn(float f) {
  const uint32_t u = rk_emu::float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {0x7fff};
  if (a >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00)};  // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                                // below 2^-14: subnormal
    const int e = static_cast<int>(a >> 23);
    const int shift = 126 - e;  // value = (m | 2^23) * 2^(e - 150), in units of 2^-24
    if (e == 0 || shift > 24) return {sign};
    return {static_cast<uint16_t>(sign | rk_emu::shift_rne((a & 0x7fffffu) | 0x800000u, shift))};
  }
  return {static_cast<uint16_t>(sign | rk_emu::shift_rne(a - 0x38000000u, 13))};
}

inline float __bfloat162float(__nv_bfloat16 h) { return rk_emu::bits_float(static_cast<uint32_t>(h.x) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = rk_emu::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16)};
}

// ---------------------------------------------------------------- runtime API
namespace rk_emu {
constexpr int kMaxSharedOptin = 232448;  // H100/H200: 227 KiB of dynamic shared memory per block
constexpr size_t kDefaultShared = 48 * 1024;

extern RK_EMU_TLS cudaError_t last_error;
inline cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) per kernel, as the driver keeps it.
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);

struct LaunchConfig {
  const void* kernel;
  dim3 grid, block;
  size_t smem;
};

// Runs thread_fn(ctx) on every thread of every block; a bad configuration returns the error CUDA's
// launch would give and runs nothing.
cudaError_t launch(const LaunchConfig& cfg, void (*thread_fn)(void*), void* ctx);

// The current block's dynamic shared memory: a fresh allocation of exactly the launch's size.
unsigned char* dynamic_smem();

// Barriers reached while some thread of the block had already exited (undefined in CUDA; the
// emulator releases them as sm_70+ hardware does). Zero for correct kernels.
long divergent_barriers();

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  LaunchConfig cfg;

  template <typename... Args>
  void operator()(Args&&... args) const {
    // Arguments are converted to the parameter types once, as CUDA copies them for the launch;
    // each thread then receives its own by-value copy.
    using Params = std::tuple<std::decay_t<P>...>;
    struct Ctx {
      void (*kernel)(P...);
      Params params;
    } ctx{kernel, Params(std::forward<Args>(args)...)};
    record(launch(cfg, [](void* c) {
      Ctx* x = static_cast<Ctx*>(c);
      std::apply(x->kernel, x->params);
    }, &ctx));
  }
};

template <typename... P>
Launch<P...> make_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return Launch<P...>{kernel, LaunchConfig{reinterpret_cast<const void*>(kernel), grid, block, smem}};
}
}  // namespace rk_emu

#define RK_LAUNCH(grid, block, smem, stream, ...) ::rk_emu::make_launch(__VA_ARGS__, grid, block, smem, stream)
#define RK_DYNAMIC_SMEM(name) unsigned char* const name = ::rk_emu::dynamic_smem()

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = rk_emu::last_error;
  rk_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return rk_emu::last_error; }

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
  }
  return "unknown error";
}

inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  if (dev != 0 || attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return rk_emu::record(cudaErrorInvalidValue);
  *value = rk_emu::kMaxSharedOptin;
  return cudaSuccess;
}

template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return rk_emu::record(cudaErrorInvalidValue);
  return rk_emu::record(rk_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value));
}

inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches complete before returning

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes == 0 ? 1 : bytes);
  return *p ? cudaSuccess : rk_emu::record(cudaErrorMemoryAllocation);
}
template <typename T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
