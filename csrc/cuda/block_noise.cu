// Noise (SPEC 3-4): the counter-based normals, and the circular box filter Block_s applied either
// to a given tensor (block_filter) or to normals drawn in the kernel (block noise), which are never
// written to memory. A block owns a TH x TW output tile and builds it from a halo tile in shared
// memory (launchers.h: box_tile).
#include <type_traits>

#include "launchers.h"
#include "philox.h"

namespace relay_kernels {
namespace cuda {
namespace {

// ---------------------------------------------------------------- plain normals (any rank)

constexpr int kNoisePerThread = 4;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    noise_kernel(const int64_t* __restrict__ seed, T* __restrict__ out, int64_t total, int64_t per_sample,
                 uint64_t offset) {
  // Consecutive threads write consecutive elements, so every store of a warp is coalesced.
  const int64_t base = static_cast<int64_t>(blockIdx.x) * (kThreads * kNoisePerThread) + threadIdx.x;
#pragma unroll
  for (int p = 0; p < kNoisePerThread; ++p) {
    const int64_t idx = base + p * kThreads;
    if (idx < total) {
      const int64_t b = idx / per_sample, i = idx - b * per_sample;
      const float v = philox_normal_precise(static_cast<uint64_t>(seed[b]), offset + static_cast<uint64_t>(i));
      out[idx] = from_acc<T>(static_cast<acc_t<T>>(v));
    }
  }
}

// ---------------------------------------------------------------- box filter tiles

constexpr int kBoxTileRows = 32, kBoxTileCols = 64;

template <typename T>
struct BoxArgs {
  const T* e;             // block_filter source, or null: draw normals from seed
  const int64_t* seed;
  uint64_t offset;
  T* out;
  int channels, height, width, s;
  int rows, cols, tiles_x, tiles_y;
  bool transpose;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) box_kernel(const __grid_constant__ BoxArgs<T> a) {
  using A = acc_t<T>;
  RK_DYNAMIC_SMEM(smem_raw);
  A* E = reinterpret_cast<A*>(smem_raw);
  const int stride = a.cols + a.s - 1;
  A* V = E + box_e_elems<A>(a.rows, stride, a.s);

  int64_t tile = blockIdx.x;
  const int tx = static_cast<int>(tile % a.tiles_x);
  tile /= a.tiles_x;
  const int ty = static_cast<int>(tile % a.tiles_y);
  const int64_t plane = tile / a.tiles_y;
  const int x0 = tx * a.cols, y0 = ty * a.rows;
  const int tw = min(a.cols, a.width - x0), th = min(a.rows, a.height - y0);
  const int64_t plane_off = plane * a.height * a.width;
  T* out = a.out + plane_off;
  auto sink = [&](int r, int x, A v) { out[static_cast<int64_t>(y0 + r) * a.width + x0 + x] = from_acc<T>(v); };

  if (a.e != nullptr) {
    const T* e = a.e + plane_off;
    box_tile<A>(E, V, stride, th, tw, a.s, a.transpose, y0, x0, a.height, a.width,
                [&](int y, int x) { return static_cast<A>(to_acc(e[static_cast<int64_t>(y) * a.width + x])); }, sink);
  } else {
    // Sample b = plane / C; element i = c*H*W + y*W + x at counter offset + i.
    const uint64_t key = static_cast<uint64_t>(a.seed[plane / a.channels]);
    const uint64_t base = a.offset + static_cast<uint64_t>(plane % a.channels) * a.height * a.width;
    box_tile<A>(E, V, stride, th, tw, a.s, false, y0, x0, a.height, a.width,
                [&](int y, int x) {
                  return static_cast<A>(philox_normal_precise(key, base + static_cast<uint64_t>(y) * a.width + x));
                },
                sink);
  }
}

template <typename A>
size_t box_smem_bytes(int rows, int cols, int s) {
  const int stride = cols + s - 1;
  return static_cast<size_t>(box_e_elems<A>(rows, stride, s) + static_cast<int64_t>(rows) * stride) * sizeof(A);
}

template <typename T>
cudaError_t launch_box(const T* e, const int64_t* seed, uint64_t offset, T* out, ImageShape s, int block_size,
                       bool transpose, cudaStream_t stream) {
  using A = acc_t<T>;
  if (s.batch * s.channels * s.height * s.width == 0) return cudaSuccess;
  if (block_size < 1) return cudaErrorInvalidValue;
  // Shrink the tile for large s so the halo tile fits the default 48 KiB; opt in beyond that.
  int rows = static_cast<int>(s.height < kBoxTileRows ? s.height : kBoxTileRows);
  int cols = static_cast<int>(s.width < kBoxTileCols ? s.width : kBoxTileCols);
  while (box_smem_bytes<A>(rows, cols, block_size) > 48 * 1024 && (rows > 1 || cols > 1)) {
    if (cols >= rows) {
      cols = (cols + 1) / 2;
    } else {
      rows = (rows + 1) / 2;
    }
  }
  const size_t smem = box_smem_bytes<A>(rows, cols, block_size);
  cudaError_t err = prepare_smem(box_kernel<T>, smem);
  if (err != cudaSuccess) return err;
  BoxArgs<T> a;
  a.e = e;
  a.seed = seed;
  a.offset = offset;
  a.out = out;
  a.channels = static_cast<int>(s.channels);
  a.height = static_cast<int>(s.height);
  a.width = static_cast<int>(s.width);
  a.s = block_size;
  a.rows = rows;
  a.cols = cols;
  a.tiles_x = static_cast<int>((s.width + cols - 1) / cols);
  a.tiles_y = static_cast<int>((s.height + rows - 1) / rows);
  a.transpose = transpose;
  const int64_t count = s.batch * s.channels * a.tiles_x * static_cast<int64_t>(a.tiles_y);
  if (count > 0x7fffffff) return cudaErrorInvalidConfiguration;
  RK_LAUNCH(static_cast<unsigned>(count), kThreads, smem, stream, box_kernel<T>)(a);
  return cudaGetLastError();
}

template <typename F>
cudaError_t dispatch(DType dtype, F f) {
  switch (dtype) {
    case DType::kHalf: return f(static_cast<__half*>(nullptr));
    case DType::kBFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
    case DType::kFloat: return f(static_cast<float*>(nullptr));
    case DType::kDouble: return f(static_cast<double*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_block_filter(DType dtype, const void* e, void* out, ImageShape shape, int block_size,
                                bool transpose, cudaStream_t stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch_box<T>(static_cast<const T*>(e), nullptr, 0, static_cast<T*>(out), shape, block_size, transpose,
                         stream);
  });
}

cudaError_t launch_block_noise(DType dtype, const int64_t* seed, void* out, ImageShape shape, int64_t offset,
                               int block_size, cudaStream_t stream) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return launch_box<T>(nullptr, seed, static_cast<uint64_t>(offset), static_cast<T*>(out), shape, block_size, false,
                         stream);
  });
}

cudaError_t launch_noise(DType dtype, const int64_t* seed, void* out, int64_t batch, int64_t per_sample,
                         int64_t offset, cudaStream_t stream) {
  const int64_t total = batch * per_sample;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + kThreads * kNoisePerThread - 1) / (kThreads * kNoisePerThread);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    RK_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, noise_kernel<T>)(
        seed, static_cast<T*>(out), total, per_sample, static_cast<uint64_t>(offset));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace relay_kernels
