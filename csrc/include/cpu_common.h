// Building blocks of the CPU kernels (host only): function multi-versioning, the vectorized
// generator, row loads/stores across dtypes, the separable patch transforms and the circular
// box filter's running window. Every helper is always_inline so that it is compiled inside the
// multi-versioned (RK_CPU_CLONES) worker that calls it, with that worker's instruction set.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

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

// ------------------------------------------------------------------ generator (SPEC 4)

RK_INLINE uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
RK_INLINE float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// ln x for positive normal x (here u0 in [1e-7, 1)): Cephes logf written branch-free so the
// lanes vectorize; within ~1 ulp of logf.
RK_INLINE float log_approx(float x) {
  const uint32_t ix = f2u(x);
  const int32_t e0 = static_cast<int32_t>(ix >> 23) - 126;        // x = m 2^e, m in [0.5, 1)
  const float m = u2f((ix & 0x007fffffu) | 0x3f000000u);
  // All ones when m < sqrt(1/2) (as float), from the mantissa bits: a compare would branch.
  const int32_t low = (static_cast<int32_t>(ix & 0x007fffffu) - 0x3504f3) >> 31;
  const int32_t e = e0 + low;
  const float f = (m + u2f(f2u(m) & static_cast<uint32_t>(low))) - 1.0f;  // 2m - 1 or m - 1
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float ef = static_cast<float>(e);
  y += -2.12194440e-4f * ef;
  y += -0.5f * z;
  return (f + y) + 0.693359375f * ef;
}

// cos a for a in [0, 2 pi): quadrant q = round(a / (pi/2)), Cody-Waite reduction to
// [-pi/4, pi/4] and the Cephes sin/cos polynomials, selected without branches.
RK_INLINE float cos_approx(float a) {
  const int32_t q = static_cast<int32_t>(a * 0.63661977236758134f + 0.5f);
  const float qf = static_cast<float>(q);
  const float r = ((a - qf * 1.5703125f) - qf * 4.837512969970703125e-4f) - qf * 7.54978995489188216e-8f;
  const float z = r * r;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                  0.5f * z + 1.0f;
  // cos(r + q pi/2) = c, -s, -c, s: select and flip the sign with bit masks (no branches).
  const uint32_t odd = 0u - static_cast<uint32_t>(q & 1);
  const uint32_t v = (f2u(s) & odd) | (f2u(c) & ~odd);
  return u2f(v ^ (static_cast<uint32_t>((q + 1) & 2) << 30));
}

// r0[i], r1[i] = the first two Philox words of (key, counter + i), i < n (philox_bits.cpp:
// an explicit AVX2 path chosen at run time, scalar philox.h otherwise).
void philox_bits(uint64_t key, uint64_t counter, int n, uint32_t* r0, uint32_t* r1);

constexpr int kNormalChunk = 64;

// Box-Muller as tl.randn on Philox words, n <= kNormalChunk lanes; vectorizes in the caller's
// clone.
RK_INLINE void normals_from_bits(const uint32_t* RK_RESTRICT r0, const uint32_t* RK_RESTRICT r1, int n,
                                 float* RK_RESTRICT out) {
  for (int l = 0; l < n; ++l) {
    int32_t s0 = static_cast<int32_t>(r0[l]), s1 = static_cast<int32_t>(r1[l]);
    s0 ^= s0 >> 31;  // ~s for negative s
    s1 ^= s1 >> 31;
    const float u1 = static_cast<float>(s1) * kUniformScale;
    // u0 = max(u0, 1e-7) as an integer select: u0 < 1e-7 exactly when s0 < 215, and a float
    // select feeding the bit casts below keeps GCC from vectorizing the loop.
    const uint32_t tiny = static_cast<uint32_t>((s0 - 215) >> 31);
    const float u0 = u2f((f2u(static_cast<float>(s0) * kUniformScale) & ~tiny) | (f2u(1e-7f) & tiny));
    out[l] = __builtin_sqrtf(-2.0f * log_approx(u0)) * cos_approx(kTwoPi * u1);
  }
}

// out[i] = normal(key, counter + i), i < n.
template <typename T>
RK_INLINE void philox_normals(uint64_t key, uint64_t counter, int64_t n, T* RK_RESTRICT out) {
  alignas(64) uint32_t r0[kNormalChunk], r1[kNormalChunk];
  alignas(64) float buf[kNormalChunk];
  for (int64_t i = 0; i < n; i += kNormalChunk) {
    const int m = static_cast<int>(n - i < kNormalChunk ? n - i : kNormalChunk);
    philox_bits(key, counter + static_cast<uint64_t>(i), m, r0, r1);
    normals_from_bits(r0, r1, m, buf);
    for (int l = 0; l < m; ++l) out[i + l] = static_cast<T>(buf[l]);
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
// vector along x.
template <int K, typename T>
RK_INLINE void col_transform(const T* RK_RESTRICT a, const T* RK_RESTRICT src, int64_t w, T* RK_RESTRICT dst) {
  for (int u = 0; u < K; ++u) {
    T coef[K];
    for (int n = 0; n < K; ++n) coef[n] = a[u * K + n];
    T* RK_RESTRICT d = dst + u * w;
    for (int64_t x = 0; x < w; ++x) {
      T s = coef[0] * src[x];
      for (int n = 1; n < K; ++n) s += coef[n] * src[n * w + x];
      d[x] = s;
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

// Rows of Block_s(e) (transpose: the mirrored window) produced one after another from a source
// of e rows, keeping the horizontal box sums of the last s source rows in a ring of s rows.
// Output row y needs source rows y - i (transpose: y + i), i < s, so rows are produced in
// increasing y (transpose: decreasing y) and each source row is generated once.
// Scratch: (s + 1) * W + s elements of T.
template <typename T>
struct BoxRows {
  int64_t h, w;
  int s;
  bool transpose;
  T* ring;
  T* ext;
  int64_t next_y = -1;
  int slot = 0;

  BoxRows(int64_t h_, int64_t w_, int s_, bool transpose_, T* scratch)
      : h(h_), w(w_), s(s_), transpose(transpose_), ring(scratch), ext(scratch + static_cast<int64_t>(s_) * w_) {}

  int64_t wrap(int64_t y) const { y %= h; return y < 0 ? y + h : y; }
  int64_t step() const { return transpose ? -1 : 1; }

  // Horizontal box sum of source row `row` into the next ring slot.
  template <class Src>
  RK_INLINE void push(Src& src, int64_t row) {
    const int pad = s - 1;
    T* e = transpose ? ext : ext + pad;
    src(row, e);
    if (transpose) {
      for (int i = 0; i < pad; ++i) ext[w + i] = ext[i];
    } else {
      for (int i = 0; i < pad; ++i) ext[i] = ext[w + i];
    }
    T* RK_RESTRICT hs = ring + static_cast<int64_t>(slot) * w;
    const T* RK_RESTRICT xs = ext;
    for (int64_t x = 0; x < w; ++x) hs[x] = xs[x];
    for (int j = 1; j < s; ++j)
      for (int64_t x = 0; x < w; ++x) hs[x] += xs[x + j];
    slot = slot + 1 == s ? 0 : slot + 1;
  }

  // Start (or continue) at output row y.
  template <class Src>
  RK_INLINE void seek(Src& src, int64_t y) {
    if (y == next_y) return;
    slot = 0;
    for (int i = s - 1; i >= 1; --i) push(src, wrap(y - step() * i));
    next_y = y;
  }

  // out = Block row next_y; advances.
  template <class Src>
  RK_INLINE void next(Src& src, T* RK_RESTRICT out) {
    push(src, next_y);
    const T* RK_RESTRICT r = ring;
    for (int64_t x = 0; x < w; ++x) out[x] = r[x];
    for (int i = 1; i < s; ++i)
      for (int64_t x = 0; x < w; ++x) out[x] += r[i * w + x];
    const T sd = static_cast<T>(s);
    for (int64_t x = 0; x < w; ++x) out[x] = out[x] / sd;
    next_y = wrap(next_y + step());
  }

  void reset() { next_y = -1; }
};

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
