// Register tiles for the spectral part of the fused kernel at patch size 4 (see spectral_tiles.h),
// AVX2 + FMA.
//
// A tile is 4 rows by 16 columns (4 patches). Each row is held as two vectors: A with every
// patch's columns 0 and 2, B with its columns 1 and 3, in lane pairs (2q, 2q + 1) for the same
// patch. That split is what a bfloat16 row gives for free (the even elements are the low halves
// of 32-bit lanes, one shift; the odd ones the high halves, one AND), it is undone for free when
// storing bfloat16 (one 16-bit blend), and it halves the lane broadcasts of the row transform:
// out[m] = sum_m' t[m'] M[m'][m] needs t[m'] broadcast over its lane pair (one in-lane permute
// per m'), and each broadcast serves both A's and B's outputs.
//
// Per input: the column transform C (4-point DCT butterflies) on A and B, then for each spectrum
// row u the row transform by M_{j,u}; the inputs' spectra add up in 8 accumulators; the inverse
// column transform writes 4 output rows.
#include "spectral_tiles.h"

#include <cstdint>

#include <c10/util/BFloat16.h>

#include "cpu_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RK_HAVE_AVX2_PATH 1
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors passed between inlined functions, see normals.cpp
#endif

namespace relay_kernels {
namespace cpu {

// The 4-point DCT basis' two scales: C[0][n] = C[2][n] = +-h, C[1][n], C[3][n] in +-{p, p r},
// h = 1/2, p = cos(pi/8)/sqrt(2), r = tan(pi/8).
constexpr double kHalf = 0.5;
constexpr double kP8 = 0.65328148243818826;

#ifdef RK_HAVE_AVX2_PATH
namespace {

#define RK_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline
using F = __m256;
using V = __m256i;
constexpr float kTan8 = 0.41421356237309503f;  // r = tan(pi/8)

RK_AVX2 V as_int(F v) { return _mm256_castps_si256(v); }
RK_AVX2 F as_float(V v) { return _mm256_castsi256_ps(v); }

// ------------------------------------------------------------------ rows <-> (A, B)

// bfloat16: A = columns 0, 2, ..., 14 and B = 1, 3, ..., 15, in order.
RK_AVX2 void load16(const c10::BFloat16* p, F& a, F& b) {
  const V v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  a = as_float(_mm256_slli_epi32(v, 16));
  b = as_float(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// float: A = columns (0, 2, 8, 10 | 4, 6, 12, 14), B = (1, 3, 9, 11 | 5, 7, 13, 15): one shuffle
// each, and one unpack each puts them back.
RK_AVX2 void load16(const float* p, F& a, F& b) {
  const F lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
  a = _mm256_shuffle_ps(lo, hi, 0x88);
  b = _mm256_shuffle_ps(lo, hi, 0xDD);
}

// Stores the pair in the order the source type S loaded it.
template <typename S>
RK_AVX2 void store16(float* p, F a, F b) {
  const F lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
  if constexpr (std::is_same<S, float>::value) {
    _mm256_storeu_ps(p, lo);
    _mm256_storeu_ps(p + 8, hi);
  } else {  // columns (0-3 | 8-11) and (4-7 | 12-15)
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
}

// Round to nearest even as c10::BFloat16(float) does (NaN to 0x7FC0), leaving the bfloat16 in
// the high half of each 32-bit lane: bits + 0x7FFF + (bit 16), with the +1 for an odd bit 16
// taken from a compare instead of two shifts.
RK_AVX2 V round_bf16_high(F v) {
  const V bits = as_int(v);
  const V even = _mm256_cmpeq_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x10000)), _mm256_setzero_si256());
  const V r = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x8000)), even);  // even: -1
  const V nan = as_int(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), nan);
}

template <typename S>
RK_AVX2 void store16(c10::BFloat16* p, F a, F b) {
  static_assert(std::is_same<S, c10::BFloat16>::value, "bfloat16 output from bfloat16 input only");
  const V v = _mm256_blend_epi16(_mm256_srli_epi32(round_bf16_high(a), 16), round_bf16_high(b), 0xAA);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

// ------------------------------------------------------------------ one tile

// The column transform C x = g * t' with g = (h, p, h, p) and
//   t'0 = s0 + s1, t'2 = s0 - s1, t'1 = d0 + r d1, t'3 = r d0 - d1,
// s0 = x0 + x3, s1 = x1 + x2, d0 = x0 - x3, d1 = x1 - x2. The inverse C^T a is the same
// butterflies backwards on a'_u = a_u / g_u. Both g factors go into the row matrices
// (spectral_tile_rows multiplies M_{j,u} by g_u^2): 6 adds and 2 FMAs instead of 16 FMAs.
RK_AVX2 void dct4(F x0, F x1, F x2, F x3, F* t) {
  const F r = _mm256_set1_ps(kTan8);
  const F s0 = _mm256_add_ps(x0, x3), s1 = _mm256_add_ps(x1, x2);
  const F d0 = _mm256_sub_ps(x0, x3), d1 = _mm256_sub_ps(x1, x2);
  t[0] = _mm256_add_ps(s0, s1);
  t[1] = _mm256_fmadd_ps(r, d1, d0);
  t[2] = _mm256_sub_ps(s0, s1);
  t[3] = _mm256_fmsub_ps(r, d0, d1);
}

RK_AVX2 void idct4(const F* a, F* o) {
  const F r = _mm256_set1_ps(kTan8);
  const F e0 = _mm256_add_ps(a[0], a[2]), e1 = _mm256_sub_ps(a[0], a[2]);
  const F f0 = _mm256_fmadd_ps(r, a[3], a[1]), f1 = _mm256_fmsub_ps(r, a[1], a[3]);
  o[0] = _mm256_add_ps(e0, f0);
  o[1] = _mm256_add_ps(e1, f1);
  o[2] = _mm256_sub_ps(e1, f1);
  o[3] = _mm256_sub_ps(e0, f0);
}

// acc_a, acc_b += the row transform of spectrum row (ta, tb) by one M: m[m'][0] are the A
// lanes' coefficients (M[m'][0], M[m'][2]), m[m'][1] the B lanes' (M[m'][1], M[m'][3]).
RK_AVX2 void row_times(F ta, F tb, const float* m, F& acc_a, F& acc_b) {
  const F t0 = _mm256_permute_ps(ta, 0xA0), t2 = _mm256_permute_ps(ta, 0xF5);  // pair's first, second
  const F t1 = _mm256_permute_ps(tb, 0xA0), t3 = _mm256_permute_ps(tb, 0xF5);
  acc_a = _mm256_fmadd_ps(t0, _mm256_loadu_ps(m), acc_a);
  acc_b = _mm256_fmadd_ps(t0, _mm256_loadu_ps(m + 8), acc_b);
  acc_a = _mm256_fmadd_ps(t1, _mm256_loadu_ps(m + 16), acc_a);
  acc_b = _mm256_fmadd_ps(t1, _mm256_loadu_ps(m + 24), acc_b);
  acc_a = _mm256_fmadd_ps(t2, _mm256_loadu_ps(m + 32), acc_a);
  acc_b = _mm256_fmadd_ps(t2, _mm256_loadu_ps(m + 40), acc_b);
  acc_a = _mm256_fmadd_ps(t3, _mm256_loadu_ps(m + 48), acc_a);
  acc_b = _mm256_fmadd_ps(t3, _mm256_loadu_ps(m + 56), acc_b);
}

// One tile of kInputs inputs: src[j] and dst point at the tile's top-left element, rows
// `stride` elements apart.
template <int kInputs, typename S, typename D>
RK_AVX2 void tile(const S* const* src, const float* const* rows, int64_t stride, D* dst) {
  F acc_a[4], acc_b[4];
  for (int u = 0; u < 4; ++u) acc_a[u] = acc_b[u] = _mm256_setzero_ps();
  for (int j = 0; j < kInputs; ++j) {
    F xa[4], xb[4], ta[4], tb[4];
    for (int n = 0; n < 4; ++n) load16(src[j] + n * stride, xa[n], xb[n]);
    dct4(xa[0], xa[1], xa[2], xa[3], ta);
    dct4(xb[0], xb[1], xb[2], xb[3], tb);
    for (int u = 0; u < 4; ++u) row_times(ta[u], tb[u], rows[j] + u * 64, acc_a[u], acc_b[u]);
  }
  F oa[4], ob[4];
  idct4(acc_a, oa);
  idct4(acc_b, ob);
  for (int n = 0; n < 4; ++n) store16<S>(dst + n * stride, oa[n], ob[n]);
}

constexpr int kTileCols = 16;

template <int kInputs, typename S, typename D>
__attribute__((target("avx2,fma"))) void band_tiles(const SpectralBand& a) {
  const int64_t w = a.width;
  const S* src[kInputs];
  const float* rows[kInputs];
  for (int j = 0; j < kInputs; ++j) {
    src[j] = static_cast<const S*>(a.in[j]);
    rows[j] = a.rows8[j];
  }
  D* out = static_cast<D*>(a.out);
  int64_t x = 0;
  for (; x + kTileCols <= w; x += kTileCols) {
    tile<kInputs>(src, rows, w, out + x);
    for (int j = 0; j < kInputs; ++j) src[j] += kTileCols;
  }
  if (x < w) {  // W mod 16 = 4, 8 or 12: the last patches go through zero-padded copies
    const int64_t rest = w - x;
    S pad[kInputs][4 * kTileCols];
    D pad_out[4 * kTileCols];
    const S* at[kInputs];
    for (int j = 0; j < kInputs; ++j) {
      for (int r = 0; r < 4; ++r)
        for (int l = 0; l < kTileCols; ++l) pad[j][r * kTileCols + l] = l < rest ? src[j][r * w + l] : S(0.0f);
      at[j] = pad[j];
    }
    tile<kInputs>(at, rows, kTileCols, pad_out);
    for (int r = 0; r < 4; ++r)
      for (int64_t l = 0; l < rest; ++l) out[r * w + x + l] = pad_out[r * kTileCols + l];
  }
}

template <typename S, typename D>
__attribute__((target("avx2,fma"))) void band(const SpectralBand& a) {
  switch (a.n_inputs) {
    case 1: return band_tiles<1, S, D>(a);
    case 2: return band_tiles<2, S, D>(a);
    case 3: return band_tiles<3, S, D>(a);
    default: return band_tiles<4, S, D>(a);
  }
}

}  // namespace
#endif

SpectralBandFn spectral_band_fn(int k, bool bf16_in, bool bf16_out) {
#ifdef RK_HAVE_AVX2_PATH
  if (k != 4 || !avx2_fma_enabled() || (bf16_out && !bf16_in)) return nullptr;
  using B = c10::BFloat16;
  if (bf16_in) return bf16_out ? band<B, B> : band<B, float>;
  return band<float, float>;
#else
  (void)k, (void)bf16_in, (void)bf16_out;
  return nullptr;
#endif
}

void spectral_tile_rows(const float* mats, float* rows) {
  for (int u = 0; u < 4; ++u) {
    const double g2 = u % 2 == 0 ? kHalf * kHalf : kP8 * kP8;  // the butterflies' scale, see dct4()
    for (int i = 0; i < 4; ++i)        // m'
      for (int half = 0; half < 2; ++half)  // A lanes (m = 0, 2), B lanes (m = 1, 3)
        for (int l = 0; l < kTileLanes; ++l) {
          const int m = 2 * (l % 2) + half;
          rows[((u * 4 + i) * 2 + half) * kTileLanes + l] = static_cast<float>(g2 * mats[u * 16 + i * 4 + m]);
        }
  }
}

}  // namespace cpu
}  // namespace relay_kernels
