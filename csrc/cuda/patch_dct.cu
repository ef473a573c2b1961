// Patch DCT (SPEC 1): C P C^T on every k x k patch, C^T U C when inverse.
// A block loads a strip tile (G patch rows x TW columns) with vectorized row segments, transforms
// rows in registers, columns through shared memory, and stores row segments again.
#include "launchers.h"
#include "patch_switch.h"

namespace relay_kernels {
namespace cuda {
namespace {

template <typename T>
struct DctArgs {
  const T* x;
  T* out;
  int channels, height, width;
  int rows, cols, tiles_x, tiles_y;  // StripTile
  bool inverse, vec;
};

template <typename T, int K>
__global__ void __launch_bounds__(kThreads)
    patch_dct_kernel(const __grid_constant__ DctArgs<T> a, const __grid_constant__ Basis<acc_t<T>, K> cb) {
  using A = acc_t<T>;
  constexpr int kTpt = tile_tasks<K>() / kThreads;
  RK_DYNAMIC_SMEM(smem_raw);
  A* buf = reinterpret_cast<A*>(smem_raw);

  int64_t tile = blockIdx.x;
  const int tx = static_cast<int>(tile % a.tiles_x);
  tile /= a.tiles_x;
  const int ty = static_cast<int>(tile % a.tiles_y);
  const int64_t plane = tile / a.tiles_y;
  const int x0 = tx * a.cols, y0 = ty * a.rows;
  const int tw = min(a.cols, a.width - x0);
  const int64_t plane_off = plane * a.height * a.width;
  const int segs = a.cols / K;          // row segments per tile row
  const int ntask = a.rows / K * a.cols;  // == rows * segs

  // Rows: global -> registers -> 1-D transform -> shared memory.
#pragma unroll
  for (int p = 0; p < kTpt; ++p) {
    const int q = threadIdx.x + p * kThreads;
    const int r = q / segs, pc = q - r * segs;
    if (q < ntask && pc * K < tw) {
      A v[K], z[K];
      load_seg<T, K>(a.x + plane_off + static_cast<int64_t>(y0 + r) * a.width + x0 + pc * K, v, a.vec);
      dct_1d(cb, v, z, a.inverse);
      smem_store_seg<A, K>(buf + r * a.cols + pc * K, z);
    }
  }
  __syncthreads();
  // Columns: each task owns one K-high patch column, transformed in place.
#pragma unroll
  for (int p = 0; p < kTpt; ++p) {
    const int q = threadIdx.x + p * kThreads;
    const int g = q / a.cols, x = q - g * a.cols;
    if (q < ntask && x < tw) {
      A v[K], z[K];
#pragma unroll
      for (int m = 0; m < K; ++m) v[m] = buf[(g * K + m) * a.cols + x];
      dct_1d(cb, v, z, a.inverse);
#pragma unroll
      for (int m = 0; m < K; ++m) buf[(g * K + m) * a.cols + x] = z[m];
    }
  }
  __syncthreads();
#pragma unroll
  for (int p = 0; p < kTpt; ++p) {
    const int q = threadIdx.x + p * kThreads;
    const int r = q / segs, pc = q - r * segs;
    if (q < ntask && pc * K < tw) {
      A z[K];
      smem_load_seg<A, K>(buf + r * a.cols + pc * K, z);
      store_seg<T, K>(a.out + plane_off + static_cast<int64_t>(y0 + r) * a.width + x0 + pc * K, z, a.vec);
    }
  }
}

template <typename T>
cudaError_t launch_typed(const void* x, void* out, ImageShape s, int k, bool inverse, cudaStream_t stream) {
  using A = acc_t<T>;
  return RK_PATCH_SWITCH(k, K, [&]() -> cudaError_t {
    const int tasks = tile_tasks<K>();
    StripTile t = choose_strip_tile(s.height, s.width, K, tasks, [](int, int) { return true; });
    t.count = s.batch * s.channels * t.tiles_y * static_cast<int64_t>(t.tiles_x);
    if (t.count == 0) return cudaSuccess;
    if (t.count > 0x7fffffff) return cudaErrorInvalidConfiguration;
    DctArgs<T> a;
    a.x = static_cast<const T*>(x);
    a.out = static_cast<T*>(out);
    a.channels = static_cast<int>(s.channels);
    a.height = static_cast<int>(s.height);
    a.width = static_cast<int>(s.width);
    a.rows = t.rows;
    a.cols = t.cols;
    a.tiles_x = t.tiles_x;
    a.tiles_y = t.tiles_y;
    a.inverse = inverse;
    a.vec = aligned16(x) && aligned16(out);
    const size_t smem = static_cast<size_t>(t.rows) * t.cols * sizeof(A);
    RK_LAUNCH(static_cast<unsigned>(t.count), kThreads, smem, stream, patch_dct_kernel<T, K>)(
        a, make_basis<A, K>());
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_patch_dct(DType dtype, const void* x, void* out, ImageShape shape, int k, bool inverse,
                             cudaStream_t stream) {
  switch (dtype) {
    case DType::kHalf: return launch_typed<__half>(x, out, shape, k, inverse, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(x, out, shape, k, inverse, stream);
    case DType::kFloat: return launch_typed<float>(x, out, shape, k, inverse, stream);
    case DType::kDouble: return launch_typed<double>(x, out, shape, k, inverse, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace relay_kernels
