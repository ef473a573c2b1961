// Host launchers of the CUDA kernels (no torch): raw pointers, shapes and a cudaStream_t in, a
// cudaError_t out (the launch error from cudaGetLastError, or a configuration error). The torch
// glue (ops_cuda.cpp) checks inputs, makes them contiguous NCHW and turns errors into exceptions.
// Nothing here synchronizes the host, so every op can be captured in a CUDA graph.
//
// The second half (nvcc, or the CPU emulator under RK_CUDA_EMU: csrc/include/cuda_emu.h) holds
// the device building blocks the .cu files share: dtype conversion, vectorized row segments, the
// separable patch DCT and the circular box filter, and the two macros that stand for CUDA-only
// syntax in the kernels: RK_LAUNCH(grid, block, smem, stream, kernel)(args...) is
// kernel<<<grid, block, smem, stream>>>(args...), RK_DYNAMIC_SMEM(name) declares the 16-byte
// aligned dynamic shared memory `name`.
#pragma once
#if defined(RK_CUDA_EMU)
#include "cuda_emu.h"
#else
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

namespace relay_kernels {
namespace cuda {

// Storage dtype of images. Half types compute in float, float in float, double in double;
// "accumulator" buffers (weights, noise_scale, given noise tensors) are float or double.
enum class DType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3 };

struct ImageShape {
  int64_t batch, channels, height, width;
};

// C P C^T on every k x k patch (C^T U C when inverse); x and out contiguous NCHW.
cudaError_t launch_patch_dct(DType dtype, const void* x, void* out, ImageShape shape, int k, bool inverse,
                             cudaStream_t stream);

// (1/s) sum_{i,j<s} e[(y-i)%H, (x-j)%W] (transpose: e[(y+i)%H, (x+j)%W]).
cudaError_t launch_block_filter(DType dtype, const void* e, void* out, ImageShape shape, int block_size,
                                bool transpose, cudaStream_t stream);

// Plain normals: out[b * per_sample + i] = normal(seed[b], offset + i).
cudaError_t launch_noise(DType dtype, const int64_t* seed, void* out, int64_t batch, int64_t per_sample,
                         int64_t offset, cudaStream_t stream);

// Block_s of the normals above, for a [B, C, H, W] output.
cudaError_t launch_block_noise(DType dtype, const int64_t* seed, void* out, ImageShape shape, int64_t offset,
                               int block_size, cudaStream_t stream);

struct FusedParams {
  const void* inputs[4];    // n_inputs images of the storage dtype
  int n_inputs;             // 1..4
  const void* weights;      // accumulator dtype, [B, n_inputs, k, k]
  const void* noise_scale;  // accumulator dtype [B], or null for no noise term
  double block_scale;
  int block_size;
  const int64_t* seed;      // [B] keys when the noise is drawn (noise == null)
  int64_t offset;
  const void* noise;        // accumulator dtype, image shape, or null (then drawn from seed)
  const void* noise_block;  // idem
  void* out;
};

// out = idct(sum_j weights[:, j] * dct(inputs[j])) + noise_scale[b] * (e + block_scale * Block_s(e')).
cudaError_t launch_relay_fused(DType dtype, const FusedParams& params, ImageShape shape, int k,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace relay_kernels

#if defined(__CUDACC__) || defined(RK_CUDA_EMU)
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define RK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define RK_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include <cstring>

#include "dct_basis.h"

namespace relay_kernels {
namespace cuda {

constexpr int kThreads = 256;  // every kernel of this backend runs 256-thread blocks

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// --use_fast_math turns '/' on floats into an approximate division; the box filter's 1/s must
// round as the reference's does.
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return a / b; }

__device__ __forceinline__ int posmod(int v, int n) {
  const int r = v % n;
  return r < 0 ? r + n : r;
}

// ---------------------------------------------------------------- vectorized row segments
// A patch row of K elements is loaded/stored in chunks of up to 16 bytes when the base pointer
// is 16-byte aligned (rows start at multiples of K elements, so every chunk is then aligned).

template <int Bytes> struct VecType;
template <> struct VecType<2> { using type = unsigned short; };
template <> struct VecType<4> { using type = unsigned int; };
template <> struct VecType<8> { using type = uint2; };
template <> struct VecType<16> { using type = uint4; };

template <typename T, int K>
struct SegVec {
  static constexpr int kBytes = K * sizeof(T) < 16 ? K * static_cast<int>(sizeof(T)) : 16;
  static constexpr int kPer = kBytes / static_cast<int>(sizeof(T));
  using type = typename VecType<kBytes>::type;
};

template <typename T, int K>
__device__ __forceinline__ void load_seg(const T* __restrict__ p, acc_t<T> (&v)[K], bool vec) {
  using V = SegVec<T, K>;
  if (vec) {
#pragma unroll
    for (int i = 0; i < K; i += V::kPer) {
      const typename V::type w = *reinterpret_cast<const typename V::type*>(p + i);
      T raw[V::kPer];
      memcpy(raw, &w, V::kBytes);
#pragma unroll
      for (int t = 0; t < V::kPer; ++t) v[i + t] = to_acc(raw[t]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) v[i] = to_acc(p[i]);
  }
}

template <typename T, int K>
__device__ __forceinline__ void store_seg(T* __restrict__ p, const acc_t<T> (&v)[K], bool vec) {
  using V = SegVec<T, K>;
  if (vec) {
#pragma unroll
    for (int i = 0; i < K; i += V::kPer) {
      T raw[V::kPer];
#pragma unroll
      for (int t = 0; t < V::kPer; ++t) raw[t] = from_acc<T>(v[i + t]);
      typename V::type w;
      memcpy(&w, raw, V::kBytes);
      *reinterpret_cast<typename V::type*>(p + i) = w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) p[i] = from_acc<T>(v[i]);
  }
}

// Shared-memory row segments of the accumulator type (always aligned: rows have a multiple of K
// elements and buffers start 16-byte aligned).
template <typename A, int K>
__device__ __forceinline__ void smem_store_seg(A* p, const A (&v)[K]) {
  using V = SegVec<A, K>;
#pragma unroll
  for (int i = 0; i < K; i += V::kPer) {
    typename V::type w;
    memcpy(&w, &v[i], V::kBytes);
    *reinterpret_cast<typename V::type*>(p + i) = w;
  }
}

template <typename A, int K>
__device__ __forceinline__ void smem_load_seg(const A* p, A (&v)[K]) {
  using V = SegVec<A, K>;
#pragma unroll
  for (int i = 0; i < K; i += V::kPer) {
    const typename V::type w = *reinterpret_cast<const typename V::type*>(p + i);
    memcpy(&v[i], &w, V::kBytes);
  }
}

// ---------------------------------------------------------------- patch DCT
// The orthonormal basis travels as a __grid_constant__ kernel argument, so with K a template
// parameter every coefficient is a constant-bank operand of an FMA.
template <typename A, int K>
struct Basis {
  A c[K * K];  // c[u * K + n] = C[u][n]
};

template <typename A, int K>
inline Basis<A, K> make_basis() {
  Basis<A, K> b;
  fill_dct_basis<A>(K, b.c);
  return b;
}

// out[u] = sum_n C[u][n] in[n], with C[u][K-1-n] = (-1)^u C[u][n] halving the multiplies.
template <typename A, int K>
__device__ __forceinline__ void dct_fwd(const Basis<A, K>& cb, const A (&in)[K], A (&out)[K]) {
  constexpr int kHalfK = K / 2;
  A sum[kHalfK], dif[kHalfK];
#pragma unroll
  for (int n = 0; n < kHalfK; ++n) {
    sum[n] = in[n] + in[K - 1 - n];
    dif[n] = in[n] - in[K - 1 - n];
  }
#pragma unroll
  for (int u = 0; u < K; ++u) {
    A acc = 0;
#pragma unroll
    for (int n = 0; n < kHalfK; ++n) acc += cb.c[u * K + n] * ((u & 1) ? dif[n] : sum[n]);
    out[u] = acc;
  }
}

// out[n] = sum_u C[u][n] in[u]: even-u and odd-u halves give out[n] and out[K-1-n] together.
template <typename A, int K>
__device__ __forceinline__ void dct_inv(const Basis<A, K>& cb, const A (&in)[K], A (&out)[K]) {
  constexpr int kHalfK = K / 2;
#pragma unroll
  for (int n = 0; n < kHalfK; ++n) {
    A even = 0, odd = 0;
#pragma unroll
    for (int u = 0; u < K; u += 2) even += cb.c[u * K + n] * in[u];
#pragma unroll
    for (int u = 1; u < K; u += 2) odd += cb.c[u * K + n] * in[u];
    out[n] = even + odd;
    out[K - 1 - n] = even - odd;
  }
}

template <typename A, int K>
__device__ __forceinline__ void dct_1d(const Basis<A, K>& cb, const A (&in)[K], A (&out)[K], bool inverse) {
  if (inverse) {
    dct_inv(cb, in, out);
  } else {
    dct_fwd(cb, in, out);
  }
}

// Patch-strip tiles: a tile is R = G*K rows (G patch rows of one plane, G | H/K) by TW columns
// (TW = W, or kTileTasks(K) columns with a ragged last tile). Row tasks (one K-wide row segment)
// and column tasks (one K-high patch column) both number G*TW <= kTileTasks(K).
template <int K>
__host__ __device__ constexpr int tile_tasks() {
  return K == 2 ? 1024 : (K == 16 ? 256 : 512);
}

struct StripTile {
  int rows, cols;  // R, TW
  int tiles_x, tiles_y;
  int64_t count;
};

// Largest G dividing H/K with G * TW <= tasks, reduced further while fits(R, TW) is false.
template <typename Fits>
inline StripTile choose_strip_tile(int64_t h, int64_t w, int k, int tasks, Fits fits) {
  int tw = static_cast<int>(w <= tasks ? w : tasks);
  const int patch_rows = static_cast<int>(h / k);
  auto best_g = [&](int limit) {
    int g = 1;
    for (int d = 1; d <= patch_rows && d <= limit; ++d)
      if (patch_rows % d == 0) g = d;
    return g;
  };
  int g = best_g(tasks / tw);
  while (!fits(g * k, tw)) {
    if (g > 1) {
      g = best_g(g - 1);
    } else if (tw > k) {
      tw = (tw / 2 + k - 1) / k * k;
    } else {
      break;
    }
  }
  StripTile t;
  t.rows = g * k;
  t.cols = tw;
  t.tiles_x = static_cast<int>((w + tw - 1) / tw);
  t.tiles_y = patch_rows / g;
  return t;
}

// ---------------------------------------------------------------- circular box filter
// Block_s over a rows x cols tile at (y0, x0) of one H x W plane: E holds the tile plus an s-1
// halo (above/left, or below/right when transpose) read through src(y, x) with wraparound, V the
// vertical sums; sink(r, x, value) receives (1/s) * box sum. Sums run in the reference's order
// (i = 0, 1, ..., s-1 of torch.roll), vertical first. E and V have row stride `stride` >=
// cols + s - 1 and must not overlap; sink may write into E.
template <typename A, typename Src, typename Sink>
__device__ __forceinline__ void box_tile(A* E, A* V, int stride, int rows, int cols, int s, bool transpose, int y0,
                                         int x0, int h, int w, Src src, Sink sink) {
  const int halo = s - 1;
  const int er = rows + halo, ec = cols + halo;
  const int oy = transpose ? y0 : y0 - halo, ox = transpose ? x0 : x0 - halo;
  for (int i = threadIdx.x; i < er * ec; i += blockDim.x) {
    const int q = i / ec, xp = i - q * ec;
    E[q * stride + xp] = src(posmod(oy + q, h), posmod(ox + xp, w));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * ec; i += blockDim.x) {
    const int r = i / ec, xp = i - r * ec;
    A sum = 0;
    for (int d = 0; d < s; ++d) sum += E[(r + (transpose ? d : halo - d)) * stride + xp];
    V[r * stride + xp] = sum;
  }
  __syncthreads();
  const A inv_den = static_cast<A>(s);
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int r = i / cols, x = i - r * cols;
    A sum = 0;
    for (int d = 0; d < s; ++d) sum += V[r * stride + x + (transpose ? d : halo - d)];
    sink(r, x, div_rn(sum, inv_den));
  }
}

// Elements of the E region (halo tile), rounded up so that what follows stays 16-byte aligned.
template <typename A>
__host__ __device__ inline int64_t box_e_elems(int rows, int stride, int s) {
  const int64_t n = static_cast<int64_t>(rows + s - 1) * stride;
  constexpr int64_t per16 = 16 / sizeof(A);
  return (n + per16 - 1) / per16 * per16;
}

// Opt a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
inline cudaError_t prepare_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int dev = 0, max_bytes = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&max_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  if (bytes > static_cast<size_t>(max_bytes)) return cudaErrorInvalidConfiguration;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

inline bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace cuda
}  // namespace relay_kernels
#endif  // __CUDACC__ || RK_CUDA_EMU
