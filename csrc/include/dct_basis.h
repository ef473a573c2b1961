// Orthonormal DCT-II basis of SPEC section 1, C[u][n] = c_u cos(pi (2n+1) u / (2k)),
// filled once per call on the host (the CUDA kernels receive it as a kernel argument).
#pragma once
#include <cmath>

namespace relay_kernels {

constexpr int kMaxPatch = 16;

// Fills c[u * k + n] for u, n < k, in double and then in T.
template <typename T>
inline void fill_dct_basis(int k, T* c) {
  const double pi = 3.14159265358979323846;
  for (int u = 0; u < k; ++u) {
    const double cu = u == 0 ? std::sqrt(1.0 / k) : std::sqrt(2.0 / k);
    for (int n = 0; n < k; ++n) c[u * k + n] = static_cast<T>(cu * std::cos(pi * (2 * n + 1) * u / (2.0 * k)));
  }
}

}  // namespace relay_kernels
