// Canary of .ci/cuda_emu.sh: a kernel whose last thread writes one float past its dynamic shared
// memory. Under AddressSanitizer this program must fail with a heap-buffer-overflow report; if it
// exits cleanly, the sanitizer run cannot be trusted to catch out-of-bounds accesses in the kernels.
#include <cstdio>

#include "launchers.h"

__global__ void overflow_kernel(float* out) {
  RK_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const unsigned t = threadIdx.x;
  s[t + (t + 1 == blockDim.x ? 1 : 0)] = 1.0f;  // the last thread writes s[blockDim.x]
  __syncthreads();
  out[t] = s[t];
}

int main() {
  float out[64];
  RK_LAUNCH(1, 64, 64 * sizeof(float), nullptr, overflow_kernel)(out);
  std::printf("smem_overflow: the overflow was not caught (%s)\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}
