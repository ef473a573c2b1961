// The fused relay kernel (KERNELS.md): out = idct(sum_j W_j * dct(in_j)) + ns[b] (e + beta Block_s(e')).
// One block owns a strip tile (G patch rows of one plane x TW columns, launchers.h). Phases:
//   1. Block_s(e') of the tile into shared memory, from a halo tile of e' (drawn or loaded);
//   2. per input: rows (vector loads, 1-D DCT in registers) -> shared memory -> columns, where each
//      column task accumulates W_j * dct(in_j) in registers across inputs (next input's loads are
//      issued before the column pass);
//   3. inverse column DCT -> shared memory -> inverse row DCT, plus the noise, vector stores.
#include "launchers.h"
#include "patch_switch.h"
#include "philox.h"

namespace relay_kernels {
namespace cuda {
namespace {

enum NoiseMode : int { kNoNoise = 0, kSeedNoise = 1, kTensorNoise = 2 };

template <typename T>
struct FusedArgs {
  using A = acc_t<T>;
  const T* in[4];
  int n_in;
  const A* weights;      // [B, n_in, K, K]
  const A* noise_scale;  // [B]
  A block_scale;
  int s;
  const int64_t* seed;
  uint64_t offset;
  const A* noise;
  const A* noise_block;
  T* out;
  int channels, height, width;
  int rows, cols, tiles_x, tiles_y;  // StripTile
  int mode;                          // NoiseMode
  bool use_block;                    // mode != none and block_scale != 0
  bool vec;                          // every image pointer 16-byte aligned
};

template <typename T, int K>
__global__ void __launch_bounds__(kThreads)
    relay_fused_kernel(const __grid_constant__ FusedArgs<T> a, const __grid_constant__ Basis<acc_t<T>, K> cb) {
  using A = acc_t<T>;
  constexpr int kTpt = tile_tasks<K>() / kThreads;
  RK_DYNAMIC_SMEM(smem_raw);
  A* smem = reinterpret_cast<A*>(smem_raw);

  int64_t tile = blockIdx.x;
  const int tx = static_cast<int>(tile % a.tiles_x);
  tile /= a.tiles_x;
  const int ty = static_cast<int>(tile % a.tiles_y);
  const int64_t plane = tile / a.tiles_y;
  const int b = static_cast<int>(plane / a.channels), c = static_cast<int>(plane % a.channels);
  const int x0 = tx * a.cols, y0 = ty * a.rows;
  const int tw = min(a.cols, a.width - x0);
  const int64_t hw = static_cast<int64_t>(a.height) * a.width;
  const int64_t plane_off = plane * hw;
  const int segs = a.cols / K;
  const int ntask = a.rows / K * a.cols;

  // Shared memory: [E halo tile | V vertical sums] when the block term is on, the DCT buffer
  // reusing V and the box result reusing E; just the DCT buffer otherwise.
  const int stride = a.cols + (a.use_block ? a.s - 1 : 0);
  A* blk = smem;
  A* buf = a.use_block ? smem + box_e_elems<A>(a.rows, stride, a.s) : smem;
  const uint64_t key = a.mode == kSeedNoise ? static_cast<uint64_t>(a.seed[b]) : 0;
  const uint64_t counter0 = a.offset + static_cast<uint64_t>(c) * hw;  // e: offset + c*H*W + y*W + x

  // Phase 1: Block_s(e') with e' at counters offset + N + i (N = C*H*W).
  if (a.use_block) {
    const uint64_t counter1 = counter0 + static_cast<uint64_t>(a.channels) * hw;
    const A* nb = a.noise_block + plane_off;
    auto sink = [&](int r, int x, A v) { blk[r * a.cols + x] = v; };
    if (a.mode == kSeedNoise) {
      box_tile<A>(smem, buf, stride, a.rows, tw, a.s, false, y0, x0, a.height, a.width,
                  [&](int y, int x) {
                    return static_cast<A>(philox_normal_precise(key, counter1 + static_cast<uint64_t>(y) * a.width + x));
                  },
                  sink);
    } else {
      box_tile<A>(smem, buf, stride, a.rows, tw, a.s, false, y0, x0, a.height, a.width,
                  [&](int y, int x) { return nb[static_cast<int64_t>(y) * a.width + x]; }, sink);
    }
    __syncthreads();
  }

  // Phase 2: spectrum acc = sum_j W_j * dct(in_j), one K-high patch column per column task.
  A acc[kTpt][K];
  A seg[kTpt][K];
#pragma unroll
  for (int p = 0; p < kTpt; ++p)
#pragma unroll
    for (int u = 0; u < K; ++u) acc[p][u] = 0;

  auto load_input = [&](int j) {
#pragma unroll
    for (int p = 0; p < kTpt; ++p) {
      const int q = threadIdx.x + p * kThreads;
      const int r = q / segs, pc = q - r * segs;
      if (q < ntask && pc * K < tw)
        load_seg<T, K>(a.in[j] + plane_off + static_cast<int64_t>(y0 + r) * a.width + x0 + pc * K, seg[p], a.vec);
    }
  };
  load_input(0);
  for (int j = 0; j < a.n_in; ++j) {
#pragma unroll
    for (int p = 0; p < kTpt; ++p) {
      const int q = threadIdx.x + p * kThreads;
      const int r = q / segs, pc = q - r * segs;
      if (q < ntask && pc * K < tw) {
        A z[K];
        dct_fwd(cb, seg[p], z);
        smem_store_seg<A, K>(buf + r * a.cols + pc * K, z);
      }
    }
    __syncthreads();
    if (j + 1 < a.n_in) load_input(j + 1);
#pragma unroll
    for (int p = 0; p < kTpt; ++p) {
      const int q = threadIdx.x + p * kThreads;
      const int g = q / a.cols, x = q - g * a.cols;
      if (q < ntask && x < tw) {
        A v[K], y[K];
#pragma unroll
        for (int m = 0; m < K; ++m) v[m] = buf[(g * K + m) * a.cols + x];
        dct_fwd(cb, v, y);
        // weights[b, j, u, v] with v = x mod K (tiles start at multiples of K).
        const A* w = a.weights + (static_cast<int64_t>(b) * a.n_in + j) * K * K + (x % K);
#pragma unroll
        for (int u = 0; u < K; ++u) acc[p][u] += __ldg(w + u * K) * y[u];
      }
    }
    __syncthreads();
  }

  // Phase 3: inverse columns -> shared memory; inverse rows + noise -> global.
#pragma unroll
  for (int p = 0; p < kTpt; ++p) {
    const int q = threadIdx.x + p * kThreads;
    const int g = q / a.cols, x = q - g * a.cols;
    if (q < ntask && x < tw) {
      A v[K];
      dct_inv(cb, acc[p], v);
#pragma unroll
      for (int m = 0; m < K; ++m) buf[(g * K + m) * a.cols + x] = v[m];
    }
  }
  __syncthreads();
  const A ns = a.mode != kNoNoise ? a.noise_scale[b] : A(0);
#pragma unroll
  for (int p = 0; p < kTpt; ++p) {
    const int q = threadIdx.x + p * kThreads;
    const int r = q / segs, pc = q - r * segs;
    if (q < ntask && pc * K < tw) {
      A z[K], o[K];
      smem_load_seg<A, K>(buf + r * a.cols + pc * K, z);
      dct_inv(cb, z, o);
      const int64_t pix = static_cast<int64_t>(y0 + r) * a.width + x0 + pc * K;  // y*W + x within the plane
      if (a.mode != kNoNoise) {
        A e[K];
        if (a.mode == kSeedNoise) {
#pragma unroll
          for (int n = 0; n < K; ++n) e[n] = static_cast<A>(philox_normal_precise(key, counter0 + pix + n));
        } else {
          load_seg<A, K>(a.noise + plane_off + pix, e, a.vec);
        }
#pragma unroll
        for (int n = 0; n < K; ++n) {
          const A mix = a.use_block ? e[n] + a.block_scale * blk[r * a.cols + pc * K + n] : e[n];
          o[n] += ns * mix;
        }
      }
      store_seg<T, K>(a.out + plane_off + pix, o, a.vec);
    }
  }
}

template <typename T>
cudaError_t launch_typed(const FusedParams& p, ImageShape s, int k, cudaStream_t stream) {
  using A = acc_t<T>;
  if (p.n_inputs < 1 || p.n_inputs > 4) return cudaErrorInvalidValue;
  FusedArgs<T> a;
  for (int j = 0; j < 4; ++j) a.in[j] = j < p.n_inputs ? static_cast<const T*>(p.inputs[j]) : nullptr;
  a.n_in = p.n_inputs;
  a.weights = static_cast<const A*>(p.weights);
  a.noise_scale = static_cast<const A*>(p.noise_scale);
  a.block_scale = static_cast<A>(p.block_scale);
  a.s = p.block_size;
  a.seed = p.seed;
  a.offset = static_cast<uint64_t>(p.offset);
  a.noise = static_cast<const A*>(p.noise);
  a.noise_block = static_cast<const A*>(p.noise_block);
  a.out = static_cast<T*>(p.out);
  a.channels = static_cast<int>(s.channels);
  a.height = static_cast<int>(s.height);
  a.width = static_cast<int>(s.width);
  a.mode = p.noise_scale == nullptr ? kNoNoise : (p.noise != nullptr ? kTensorNoise : kSeedNoise);
  if (a.mode == kSeedNoise && p.seed == nullptr) return cudaErrorInvalidValue;
  if (a.mode == kTensorNoise && p.noise_block == nullptr) return cudaErrorInvalidValue;
  a.use_block = a.mode != kNoNoise && p.block_scale != 0.0;
  if (a.use_block && p.block_size < 1) return cudaErrorInvalidValue;
  a.vec = aligned16(p.out) && aligned16(p.noise);
  for (int j = 0; j < p.n_inputs; ++j) a.vec = a.vec && aligned16(p.inputs[j]);
  if (s.batch * s.channels * s.height * s.width == 0) return cudaSuccess;

  return RK_PATCH_SWITCH(k, K, [&]() -> cudaError_t {
    const int sb = a.use_block ? a.s : 1;
    auto smem_bytes = [&](int rows, int cols) {
      const int stride = cols + sb - 1;
      const int64_t elems = a.use_block ? box_e_elems<A>(rows, stride, sb) + static_cast<int64_t>(rows) * stride
                                        : static_cast<int64_t>(rows) * cols;
      return static_cast<size_t>(elems) * sizeof(A);
    };
    StripTile t = choose_strip_tile(s.height, s.width, K, tile_tasks<K>(),
                                    [&](int rows, int cols) { return smem_bytes(rows, cols) <= 48 * 1024; });
    t.count = s.batch * s.channels * t.tiles_y * static_cast<int64_t>(t.tiles_x);
    if (t.count > 0x7fffffff) return cudaErrorInvalidConfiguration;
    a.rows = t.rows;
    a.cols = t.cols;
    a.tiles_x = t.tiles_x;
    a.tiles_y = t.tiles_y;
    const size_t smem = smem_bytes(t.rows, t.cols);
    cudaError_t err = prepare_smem(relay_fused_kernel<T, K>, smem);
    if (err != cudaSuccess) return err;
    RK_LAUNCH(static_cast<unsigned>(t.count), kThreads, smem, stream, relay_fused_kernel<T, K>)(
        a, make_basis<A, K>());
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_relay_fused(DType dtype, const FusedParams& params, ImageShape shape, int k,
                               cudaStream_t stream) {
  switch (dtype) {
    case DType::kHalf: return launch_typed<__half>(params, shape, k, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(params, shape, k, stream);
    case DType::kFloat: return launch_typed<float>(params, shape, k, stream);
    case DType::kDouble: return launch_typed<double>(params, shape, k, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace relay_kernels
