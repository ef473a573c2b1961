// The Philox words of SPEC 4 for runs of consecutive counters, with explicit AVX-512/AVX2 paths.
// GCC's auto-vectorizer turns the 32x32->64 products into lane shuffles (about 3x slower than
// this), so the SIMD versions spell them out with mul_epu32 on even and odd lanes. The path
// is chosen once at run time from the CPU's features; no -march flag is needed.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu_common.h"
#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RK_HAVE_AVX2_PATH 1
// The SIMD helpers below pass vectors between always-inlined functions of one target; GCC's
// note that such signatures would change the ABI of a non-inlined call does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace relay_kernels {
namespace cpu {
namespace {

void philox_bits_scalar(uint64_t key, uint64_t counter, int n, uint32_t* r0, uint32_t* r1) {
  for (int i = 0; i < n; ++i) {
    const PhiloxWords w = philox4x32_10(key, counter + static_cast<uint64_t>(i));
    r0[i] = w.r0;
    r1[i] = w.r1;
  }
}

#ifdef RK_HAVE_AVX2_PATH
// kWays independent states per iteration: one round is a chain of dependent multiply, shuffle
// and xor steps, so interleaving states hides its latency. The 32x32->64 products come from
// mul_epu32 on even lanes and on odd lanes moved down by a dword shuffle (shuffles run on another
// port than multiplies and shifts).
constexpr int kWays = 4;

struct Avx2 {
  using V = __m256i;
  static constexpr int kLanes = 8;
  __attribute__((target("avx2"))) static V load(const uint32_t* p) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  }
  __attribute__((target("avx2"))) static void store(uint32_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  __attribute__((target("avx2"))) static V set1(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
  __attribute__((target("avx2"))) static V zero() { return _mm256_setzero_si256(); }
  __attribute__((target("avx2"))) static V bxor(V a, V b) { return _mm256_xor_si256(a, b); }
  __attribute__((target("avx2"))) static void mulhilo(V a, V m, V& hi, V& lo) {
    const V even = _mm256_mul_epu32(a, m);
    const V odd = _mm256_mul_epu32(_mm256_shuffle_epi32(a, 0xF5), m);
    hi = _mm256_blend_epi32(_mm256_shuffle_epi32(even, 0xF5), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_shuffle_epi32(odd, 0xA0), 0xAA);
  }
};

struct Avx512 {
  using V = __m512i;
  static constexpr int kLanes = 16;
  __attribute__((target("avx512f"))) static V load(const uint32_t* p) { return _mm512_load_si512(p); }
  __attribute__((target("avx512f"))) static void store(uint32_t* p, V v) { _mm512_storeu_si512(p, v); }
  __attribute__((target("avx512f"))) static V set1(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  __attribute__((target("avx512f"))) static V zero() { return _mm512_setzero_si512(); }
  __attribute__((target("avx512f"))) static V bxor(V a, V b) { return _mm512_xor_si512(a, b); }
  __attribute__((target("avx512f"))) static void mulhilo(V a, V m, V& hi, V& lo) {
    const V even = _mm512_mul_epu32(a, m);
    const V odd = _mm512_mul_epu32(_mm512_shuffle_epi32(a, _MM_PERM_DDBB), m);
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_shuffle_epi32(even, _MM_PERM_DDBB), odd);
    lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_shuffle_epi32(odd, _MM_PERM_CCAA));
  }
};

template <typename S>
inline __attribute__((always_inline)) void philox_bits_simd(uint64_t key, uint64_t counter, int n, uint32_t* r0,
                                                            uint32_t* r1) {
  using V = typename S::V;
  constexpr int kStep = S::kLanes * kWays;
  const V ma = S::set1(kPhiloxRoundA), mb = S::set1(kPhiloxRoundB);
  int i = 0;
  for (; i + kStep <= n; i += kStep) {
    alignas(64) uint32_t lo[kStep], hi[kStep];
    for (int l = 0; l < kStep; ++l) {
      const uint64_t c = counter + static_cast<uint64_t>(i + l);
      lo[l] = static_cast<uint32_t>(c);
      hi[l] = static_cast<uint32_t>(c >> 32);
    }
    V c0[kWays], c1[kWays], c2[kWays], c3[kWays];
    for (int w = 0; w < kWays; ++w) {
      c0[w] = S::load(lo + S::kLanes * w);
      c1[w] = S::load(hi + S::kLanes * w);
      c2[w] = S::zero();
      c3[w] = S::zero();
    }
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      const V vk0 = S::set1(k0), vk1 = S::set1(k1);
      for (int w = 0; w < kWays; ++w) {
        V hi_b, lo_b, hi_a, lo_a;
        S::mulhilo(c2[w], mb, hi_b, lo_b);
        S::mulhilo(c0[w], ma, hi_a, lo_a);
        c0[w] = S::bxor(S::bxor(hi_b, c1[w]), vk0);
        c2[w] = S::bxor(S::bxor(hi_a, c3[w]), vk1);
        c1[w] = lo_b;
        c3[w] = lo_a;
      }
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
    for (int w = 0; w < kWays; ++w) {
      S::store(r0 + i + S::kLanes * w, c0[w]);
      S::store(r1 + i + S::kLanes * w, c1[w]);
    }
  }
  philox_bits_scalar(key, counter + static_cast<uint64_t>(i), n - i, r0 + i, r1 + i);
}

__attribute__((target("avx2"))) void philox_bits_avx2(uint64_t key, uint64_t counter, int n, uint32_t* r0,
                                                     uint32_t* r1) {
  philox_bits_simd<Avx2>(key, counter, n, r0, r1);
}

__attribute__((target("avx512f"))) void philox_bits_avx512(uint64_t key, uint64_t counter, int n, uint32_t* r0,
                                                          uint32_t* r1) {
  philox_bits_simd<Avx512>(key, counter, n, r0, r1);
}
#endif

using BitsFn = void (*)(uint64_t, uint64_t, int, uint32_t*, uint32_t*);

// RELAY_KERNELS_CPU_ISA=avx2|scalar caps the path (the tests check every path gives the same bits).
BitsFn choose() {
  const char* cap = std::getenv("RELAY_KERNELS_CPU_ISA");
  const bool allow512 = cap == nullptr || std::strcmp(cap, "avx512") == 0;
  const bool allow2 = allow512 || std::strcmp(cap, "avx2") == 0;
#ifdef RK_HAVE_AVX2_PATH
  __builtin_cpu_init();
  if (allow512 && __builtin_cpu_supports("avx512f")) return philox_bits_avx512;
  if (allow2 && __builtin_cpu_supports("avx2")) return philox_bits_avx2;
#endif
  (void)allow2;
  return philox_bits_scalar;
}

}  // namespace

void philox_bits(uint64_t key, uint64_t counter, int n, uint32_t* r0, uint32_t* r1) {
  static const BitsFn fn = choose();
  fn(key, counter, n, r0, r1);
}

}  // namespace cpu
}  // namespace relay_kernels
