// Turns the runtime patch size into a compile-time constant K (2, 4, 8 or 16), so inner loops
// over a patch are fully unrolled. Usable from host code of both the CPU and CUDA builds.
#pragma once
#include <stdexcept>
#include <string>

#define RK_PATCH_SWITCH(k_value, K, ...)                                              \
  [&] {                                                                              \
    switch (k_value) {                                                               \
      case 2: { constexpr int K = 2; return __VA_ARGS__(); }                         \
      case 4: { constexpr int K = 4; return __VA_ARGS__(); }                         \
      case 8: { constexpr int K = 8; return __VA_ARGS__(); }                         \
      case 16: { constexpr int K = 16; return __VA_ARGS__(); }                       \
      default:                                                                       \
        throw std::invalid_argument("relay_kernels: patch size k must be 2, 4, 8 or 16, got " + \
                                    std::to_string(k_value));                       \
    }                                                                                \
  }()
