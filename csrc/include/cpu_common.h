// Building blocks of the CPU kernels (host only): function multi-versioning, the generator's
// entry point, row loads/stores across dtypes, the separable patch transforms and the circular
// box filter's running window. Every helper is always_inline so that it is compiled inside the
// multi-versioned (RK_CPU_CLONES) worker that calls it, with that worker's instruction set.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// AVX-512 (x86-64-v4) or AVX2 + FMA (x86-64-v3) where the CPU has it, baseline x86-64
// otherwise, chosen at load time; never -march=native.
#define RK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RK_CPU_CLONES
#endif

#if defined(__GNUC__)
#define RK_INLINE inline __attribute__((always_inline))
#define RK_RESTRICT __restrict__
#else
#define RK_INLINE inline
#define RK_RESTRICT
#endif

namespace relay_kernels {
namespace cpu {

// ------------------------------------------------------------------ instruction sets

// True where the hand-written AVX2 + FMA paths may run (the generator, the spectral tiles): the
// CPU has both, and RELAY_KERNELS_CPU_ISA is not "scalar" (which forces the portable paths; the
// tests check both against the reference). Decided once per process.
inline bool avx2_fma_enabled() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool enabled = [] {
    const char* cap = std::getenv("RELAY_KERNELS_CPU_ISA");
    if (cap != nullptr && std::strcmp(cap, "scalar") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return enabled;
#else
  return false;
#endif
}

// ------------------------------------------------------------------ work sharing

// f(begin, end) over [0, n) on at::parallel_for's threads, the range handed out in chunks from a
// shared counter rather than split once: a thread that starts late (woken from sleep after the
// caller's Python code, or descheduled on a shared machine) takes fewer chunks instead of
// holding the call up at the end. About 8 chunks per thread, at least `grain` items each (each
// chunk restarts a worker's running state, e.g. the box filter's window).
template <class F>
void parallel_chunks(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), (n + grain - 1) / grain);
  if (threads <= 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  const int64_t chunk = std::max<int64_t>(grain, (n + 8 * threads - 1) / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t begin = next.fetch_add(chunk); begin < n; begin = next.fetch_add(chunk))
      f(begin, std::min(n, begin + chunk));
  });
}

// ------------------------------------------------------------------ generator (SPEC 4)

// out[i] = normal(key, counter + i), i < n, in float (normals.cpp: AVX2 + FMA chosen at run
// time, a portable path otherwise).
void philox_normals_f32(uint64_t key, uint64_t counter, int64_t n, float* out);

template <typename T>
RK_INLINE void philox_normals(uint64_t key, uint64_t counter, int64_t n, T* RK_RESTRICT out) {
  if constexpr (std::is_same<T, float>::value) {
    philox_normals_f32(key, counter, n, out);
  } else {  // the normals are float (as tl.randn) whatever the compute type
    constexpr int64_t kChunk = 256;
    alignas(64) float buf[kChunk];
    for (int64_t i = 0; i < n; i += kChunk) {
      const int64_t m = n - i < kChunk ? n - i : kChunk;
      philox_normals_f32(key, counter + static_cast<uint64_t>(i), m, buf);
      for (int64_t l = 0; l < m; ++l) out[i + l] = static_cast<T>(buf[l]);
    }
  }
}

// ------------------------------------------------------------------ dtype conversion of rows

template <typename S, typename T>
RK_INLINE void convert_n(const S* RK_RESTRICT src, int64_t n, T* RK_RESTRICT dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(static_cast<float>(src[i]));
}
template <typename T>
RK_INLINE void convert_n(const double* RK_RESTRICT src, int64_t n, T* RK_RESTRICT dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// dst[i] = T(src[i]) for a contiguous run of n elements of dtype st.
template <typename T>
RK_INLINE void load_n(const void* src, at::ScalarType st, int64_t n, T* RK_RESTRICT dst) {
  switch (st) {
    case at::kFloat: convert_n(static_cast<const float*>(src), n, dst); break;
    case at::kDouble: convert_n(static_cast<const double*>(src), n, dst); break;
    case at::kHalf: convert_n(static_cast<const at::Half*>(src), n, dst); break;
    default: convert_n(static_cast<const at::BFloat16*>(src), n, dst); break;
  }
}

template <typename T>
RK_INLINE void store_n(const T* RK_RESTRICT src, int64_t n, at::ScalarType st, void* dst) {
  switch (st) {
    case at::kFloat: for (int64_t i = 0; i < n; ++i) static_cast<float*>(dst)[i] = static_cast<float>(src[i]); break;
    case at::kDouble: for (int64_t i = 0; i < n; ++i) static_cast<double*>(dst)[i] = static_cast<double>(src[i]); break;
    case at::kHalf: for (int64_t i = 0; i < n; ++i) static_cast<at::Half*>(dst)[i] = static_cast<at::Half>(static_cast<float>(src[i])); break;
    default: for (int64_t i = 0; i < n; ++i) static_cast<at::BFloat16*>(dst)[i] = static_cast<at::BFloat16>(static_cast<float>(src[i])); break;
  }
}

template <typename T>
constexpr at::ScalarType scalar_type_of() { return std::is_same<T, double>::value ? at::kDouble : at::kFloat; }

inline int64_t element_size(at::ScalarType st) { return static_cast<int64_t>(c10::elementSize(st)); }

// ------------------------------------------------------------------ separable patch transforms
// A band is K consecutive image rows of width W, stored row-major (row stride W).

// dst[u][x] = sum_n A[u][n] src[n][x]: the transform down the columns of every patch, one
// vector along x, in T. src and dst may also be bfloat16 (S, D), converted in the same loop
// (a shift in, a rounding out, both vectorized) instead of in passes of their own.
template <int K, typename T, typename S, typename D>
RK_INLINE void col_transform(const T* RK_RESTRICT a, const S* RK_RESTRICT src, int64_t w, D* RK_RESTRICT dst) {
  for (int u = 0; u < K; ++u) {
    T coef[K];
    for (int n = 0; n < K; ++n) coef[n] = a[u * K + n];
    D* RK_RESTRICT d = dst + u * w;
    for (int64_t x = 0; x < w; ++x) {
      T s = coef[0] * static_cast<T>(src[x]);
      for (int n = 1; n < K; ++n) s += coef[n] * static_cast<T>(src[n * w + x]);
      d[x] = static_cast<D>(s);
    }
  }
}

// dst[r][p K + m] (+)= sum_m' src[r][p K + m'] R_r[m'][m] on every patch p of row r, with a
// K x K matrix per row r (r_stride = 0 shares one matrix).
template <int K, bool kAccumulate, typename T>
RK_INLINE void row_transform(const T* RK_RESTRICT r_mats, int64_t r_stride, const T* RK_RESTRICT src, int64_t w,
                             T* RK_RESTRICT dst) {
  for (int r = 0; r < K; ++r) {
    T mat[K * K];
    for (int i = 0; i < K * K; ++i) mat[i] = r_mats[r * r_stride + i];
    const T* RK_RESTRICT s = src + r * w;
    T* RK_RESTRICT d = dst + r * w;
    for (int64_t p = 0; p < w; p += K) {
      T o[K];
      for (int m = 0; m < K; ++m) o[m] = s[p] * mat[m];
      for (int i = 1; i < K; ++i)
        for (int m = 0; m < K; ++m) o[m] += s[p + i] * mat[i * K + m];
      for (int m = 0; m < K; ++m) d[p + m] = kAccumulate ? d[p + m] + o[m] : o[m];
    }
  }
}

// ------------------------------------------------------------------ circular box filter (SPEC 3)

// dst[x] = src[x] + src[x + step] + ... + src[x + (m - 1) step], x < n, summed in that order, in
// one pass: blocks of 32 partial sums stay in registers instead of m passes through memory.
template <typename T>
RK_INLINE void sum_shifted(const T* RK_RESTRICT src, int m, int64_t step, int64_t n, T* RK_RESTRICT dst) {
  constexpr int64_t kBlock = 32;
  int64_t x = 0;
  for (; x + kBlock <= n; x += kBlock) {
    T v[kBlock];
    for (int l = 0; l < kBlock; ++l) v[l] = src[x + l];
    for (int j = 1; j < m; ++j)
      for (int l = 0; l < kBlock; ++l) v[l] += src[x + j * step + l];
    for (int l = 0; l < kBlock; ++l) dst[x + l] = v[l];
  }
  for (; x < n; ++x) {
    T v = src[x];
    for (int j = 1; j < m; ++j) v += src[x + j * step];
    dst[x] = v;
  }
}

// Rows of Block_s(e) (transpose: the mirrored window) produced one after another from a source
// of e rows, keeping the horizontal box sums of the last s source rows in a ring of s rows.
// Output row y needs source rows y - i (transpose: y + i), i < s, so rows are produced in
// increasing y (transpose: decreasing y) and each source row is generated once.
// The source row at window position y' (unwrapped: y - i, which may be negative) lives in ring
// slot y' mod s, and the slots are added in slot order: the order of the s terms of an output row
// is a function of y alone, never of the row a worker started from, so the bits do not depend on
// how rows are split among threads or on which other samples share the batch.
// Scratch: (s + 1) * W + s elements of T.
template <typename T>
struct BoxRows {
  int64_t h, w;
  int s;
  bool transpose;
  T* ring;
  T* ext;
  int64_t next_y = -1;

  BoxRows(int64_t h_, int64_t w_, int s_, bool transpose_, T* scratch)
      : h(h_), w(w_), s(s_), transpose(transpose_), ring(scratch), ext(scratch + static_cast<int64_t>(s_) * w_) {}

  int64_t wrap(int64_t y) const { y %= h; return y < 0 ? y + h : y; }
  int64_t step() const { return transpose ? -1 : 1; }
  T* slot_of(int64_t y) const {
    const int64_t r = y % s;
    return ring + (r < 0 ? r + s : r) * w;
  }

  // Horizontal box sum of the source row at unwrapped window position y into its ring slot.
  template <class Src>
  RK_INLINE void push(Src& src, int64_t y) {
    const int pad = s - 1;
    T* e = transpose ? ext : ext + pad;
    src(wrap(y), e);
    if (transpose) {
      for (int i = 0; i < pad; ++i) ext[w + i] = ext[i];
    } else {
      for (int i = 0; i < pad; ++i) ext[i] = ext[w + i];
    }
    sum_shifted(ext, s, 1, w, slot_of(y));
  }

  // Start (or continue) at output row y.
  template <class Src>
  RK_INLINE void seek(Src& src, int64_t y) {
    if (y == next_y) return;
    for (int i = s - 1; i >= 1; --i) push(src, y - step() * i);
    next_y = y;
  }

  // out = Block row next_y (times s when kNormalize is false: a caller that scales the row
  // anyway folds 1/s into its own factor); advances. A worker stops at the end of a plane, so
  // next_y never wraps while the ring is in use.
  template <bool kNormalize = true, class Src>
  RK_INLINE void next(Src& src, T* RK_RESTRICT out) {
    push(src, next_y);
    sum_shifted(ring, s, w, w, out);
    if (kNormalize) {
      if ((s & (s - 1)) == 0) {  // 1/s is exact: the product equals the quotient
        const T inv = T(1) / static_cast<T>(s);
        for (int64_t x = 0; x < w; ++x) out[x] *= inv;
      } else {
        const T sd = static_cast<T>(s);
        for (int64_t x = 0; x < w; ++x) out[x] = out[x] / sd;
      }
    }
    next_y = next_y + step();
  }

  void reset() { next_y = -1; }
};

// ------------------------------------------------------------------ non-finite values

// True when some x[i], i < n, is NaN or infinite: an integer max over the magnitude bits (an
// integer reduction vectorizes without reassociating float math).
template <typename T>
RK_INLINE bool any_nonfinite(const T* RK_RESTRICT x, int64_t n) {
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  constexpr U kMagnitude = ~U(0) >> 1;
  constexpr U kInf = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U most = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, x + i, sizeof(U));
    bits &= kMagnitude;
    most = bits > most ? bits : most;
  }
  return most >= kInf;
}

// Sources of e rows for BoxRows: src(row, dst) writes the W values of source row `row`.
template <typename T>
struct PhiloxRows {
  uint64_t key, base;  // counter of (row 0, x 0)
  int64_t w;
  RK_INLINE void operator()(int64_t row, T* dst) const {
    philox_normals(key, base + static_cast<uint64_t>(row * w), w, dst);
  }
};

template <typename T>
struct TensorRows {
  const char* plane;  // row 0 of a contiguous plane
  at::ScalarType st;
  int64_t w, row_bytes;
  RK_INLINE void operator()(int64_t row, T* dst) const { load_n(plane + row * row_bytes, st, w, dst); }
};

}  // namespace cpu
}  // namespace relay_kernels
