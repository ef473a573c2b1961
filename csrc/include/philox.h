// Counter-based generator of SPEC section 4, shared by the CPU and CUDA kernels.
// Bit-compatible with triton.language.randn(key, counter): Philox4x32-10 with key
// (lo32(key), hi32(key)) and counter (lo32(counter), hi32(counter), 0, 0); the normal is
// Box-Muller on the first two output words.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RK_HD __host__ __device__ __forceinline__
#else
#define RK_HD inline
#endif

namespace relay_kernels {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with INT32_MAX * s < 1 in float
constexpr float kTwoPi = 6.283185307179586f;

struct PhiloxWords {
  uint32_t r0, r1, r2, r3;
};

RK_HD PhiloxWords philox4x32_10(uint64_t key, uint64_t counter) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t pb = static_cast<uint64_t>(kPhiloxRoundB) * c2;
    const uint64_t pa = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    c0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    c2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return {c0, c1, c2, c3};
}

// uint32 word -> float in [0, 1): reinterpret as int32, fold negatives with ~r, scale.
RK_HD float uniform_from_bits(uint32_t r) {
  int32_t s = static_cast<int32_t>(r);
  s = s < 0 ? ~s : s;
  return static_cast<float>(s) * kUniformScale;
}

// Box-Muller in float, as tl.randn: sqrt(-2 ln max(u0, 1e-7)) cos(2 pi u1).
RK_HD float normal_from_bits(uint32_t r0, uint32_t r1) {
  const float u0 = fmaxf(uniform_from_bits(r0), 1e-7f);
  const float u1 = uniform_from_bits(r1);
  return sqrtf(-2.0f * logf(u0)) * cosf(kTwoPi * u1);
}

RK_HD float philox_normal(uint64_t key, uint64_t counter) {
  const PhiloxWords w = philox4x32_10(key, counter);
  return normal_from_bits(w.r0, w.r1);
}

#if defined(__CUDACC__) || defined(RK_CUDA_EMU)
// --use_fast_math maps logf/cosf/sqrtf in device code to approximate instructions (lg2.approx,
// cos.approx). tl.randn calls libdevice's accurate __nv_logf/__nv_cosf, so the CUDA kernels
// draw through these, which call libdevice directly and use a correctly rounded sqrt.
// Under RK_CUDA_EMU (csrc/include/cuda_emu.h) they are the C library's logf/cosf.
extern "C" __device__ float __nv_logf(float);
extern "C" __device__ float __nv_cosf(float);

__device__ __forceinline__ float normal_from_bits_precise(uint32_t r0, uint32_t r1) {
  const float u0 = fmaxf(uniform_from_bits(r0), 1e-7f);
  const float u1 = uniform_from_bits(r1);
  return __fsqrt_rn(-2.0f * __nv_logf(u0)) * __nv_cosf(__fmul_rn(kTwoPi, u1));
}

__device__ __forceinline__ float philox_normal_precise(uint64_t key, uint64_t counter) {
  const PhiloxWords w = philox4x32_10(key, counter);
  return normal_from_bits_precise(w.r0, w.r1);
}
#endif

}  // namespace relay_kernels
