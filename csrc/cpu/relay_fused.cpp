// relay_fused on CPU: out = idct(sum_j W_j * dct(in_j)) + noise_scale[b] (e + beta Block_s(e')).
//
// The spectral weighting is folded into the row transform: for spectrum row u,
// idct-rows(W_j[u,:] * dct-rows(t)) = t M_{j,u} with M_{j,u} = C^T diag(W_j[u,:]) C, so each
// input costs one column transform (C, vectorized along x) and one k x k row transform per patch
// row, and the sum costs one final column transform (C^T). An input whose weights are one
// constant c (relay_step's x_cur: its weight is g everywhere) is added as c x, untransformed,
// except on patches holding a NaN or infinity, which become NaN as the transform would make them.
// Each band of k image rows is read once per input and written once, with the noise generated
// for that band in the same pass. At patch size 4 in float32/bfloat16 on CPUs with AVX2 + FMA,
// the transforms of a band run as register tiles instead (spectral_tiles.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "checks.h"
#include "cpu_common.h"
#include "dct_basis.h"
#include "patch_switch.h"
#include "spectral_tiles.h"

namespace relay_kernels {
namespace cpu {
namespace {

enum class NoiseKind { kNone, kSeed, kTensor };

template <typename T>
struct FusedArgs {
  int64_t n_inputs, channels, height, width;
  const char* in[4];
  at::ScalarType in_st;
  char* out;
  const T* mats;  // [B][n][K][K * K]: M_{j,u}[m'][m]
  // [B][n]: 1 where input j's weights are one constant c for sample b (then its term is
  // idct(c dct(x)) = c x, no transform: relay_step's x_cur, a blur with sigma 0), with c in scalar.
  const uint8_t* uniform;
  const T* scalar;
  const T* col;   // C[u][n]
  const T* colt;  // C^T: colt[n][u] = C[u][n]
  // noise term
  const T* noise_scale;  // [B]
  T block_scale;
  int block_size;
  bool block_term;
  const int64_t* seed;
  int64_t offset;
  const char* noise;
  at::ScalarType noise_st;
  const char* noise_block;
  at::ScalarType noise_block_st;
  // Register tiles for the spectral part (T = float, K = 4, float or bfloat16 inputs; else
  // null): into a float band, or rounded straight into a bfloat16 output.
  SpectralBandFn tiles, tiles_to_bf16;
  const float* rows8;  // [B][n][kTileRowsSize]
};

// dst = NaN on every K x K patch of the band whose x holds a NaN or infinity.
template <int K, typename T>
RK_INLINE void poison_patches(const T* RK_RESTRICT x, int64_t w, T* RK_RESTRICT dst) {
  for (int64_t p = 0; p < w; p += K) {
    bool bad = false;
    for (int r = 0; r < K; ++r) bad = bad || any_nonfinite(x + r * w + p, K);
    if (!bad) continue;
    for (int r = 0; r < K; ++r)
      for (int m = 0; m < K; ++m) dst[r * w + p + m] = std::numeric_limits<T>::quiet_NaN();
  }
}

// Bands [begin, end) of K rows; band = plane * (H / K) + patch row.
template <int K, typename T, NoiseKind kNoise>
RK_CPU_CLONES void fused_bands(const FusedArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t w = a.width, h = a.height, hw = h * w, hp = h / K, band = K * w;
  const int64_t esize = element_size(a.in_st);
  const bool native = a.in_st == scalar_type_of<T>();
  // bfloat16 converts inside the first and last transforms (cheap bit shifts); float16's
  // conversion is scalar code, so it keeps its own pass.
  const bool bf16 = std::is_same<T, float>::value && a.in_st == at::kBFloat16;
  const bool noisy = kNoise != NoiseKind::kNone;
  const bool block = noisy && a.block_term;
  const int64_t box_size = block ? static_cast<int64_t>(a.block_size + 1) * w + a.block_size : 0;
  std::vector<T> buf(2 * band + (native ? 0 : 2 * band) + (noisy ? band : 0) + (block ? band : 0) + box_size);
  T* tmp = buf.data();
  T* acc = tmp + band;
  T* next = acc + band;
  T* in_tile = nullptr;
  T* out_tile = nullptr;
  T* e_tile = nullptr;
  T* blk = nullptr;
  if (!native) { in_tile = next; out_tile = next + band; next += 2 * band; }
  if (noisy) { e_tile = next; next += band; }
  if (block) { blk = next; next += band; }
  BoxRows<T> box(h, w, block ? a.block_size : 1, false, next);
  using Src = typename std::conditional<kNoise == NoiseKind::kSeed, PhiloxRows<T>, TensorRows<T>>::type;
  Src src{};
  int64_t plane = -1;
  constexpr int64_t kMat = K * K * K;

  for (int64_t u = begin; u < end; ++u) {
    const int64_t p = u / hp, y0 = (u % hp) * K, b = p / a.channels, c = p % a.channels;
    const int64_t first = p * hw + y0 * w;  // flat index of the band's first element
    // Ask for input bands before they are needed, so that their loads from memory overlap work
    // instead of stalling the transforms: with generated noise (compute-bound) this band's, before
    // the noise is drawn; otherwise the next band's, while this one is transformed.
    const int64_t ahead = kNoise == NoiseKind::kSeed ? 0 : band;
    if (u + 1 < end || ahead == 0) {
      for (int64_t j = 0; j < a.n_inputs; ++j) {
        const char* bytes = a.in[j] + (first + ahead) * esize;
        for (int64_t off = 0; off < band * esize; off += 64) __builtin_prefetch(bytes + off);
      }
    }
    // e_tile = noise_scale (e + beta Block_s(e')), before the transforms (see above).
    if constexpr (kNoise != NoiseKind::kNone) {
      // e at counters offset + i, e' at offset + N + i (SPEC 4), i = c H W + y W + x.
      if constexpr (kNoise == NoiseKind::kSeed) {
        philox_normals(static_cast<uint64_t>(a.seed[b]), static_cast<uint64_t>(a.offset + c * hw + y0 * w), band,
                       e_tile);
      } else {
        load_n(a.noise + first * element_size(a.noise_st), a.noise_st, band, e_tile);
      }
      const T ns = a.noise_scale[b];
      T* RK_RESTRICT e = e_tile;
      if (block) {
        if (p != plane) {
          plane = p;
          box.reset();
          if constexpr (kNoise == NoiseKind::kSeed) {
            src = PhiloxRows<T>{static_cast<uint64_t>(a.seed[b]),
                                static_cast<uint64_t>(a.offset + a.channels * hw + c * hw), w};
          } else {
            const int64_t nb = element_size(a.noise_block_st);
            src = TensorRows<T>{a.noise_block + p * hw * nb, a.noise_block_st, w, w * nb};
          }
        }
        box.seek(src, y0);
        for (int r = 0; r < K; ++r) box.template next<false>(src, blk + r * w);  // s Block_s rows
        const T beta = a.block_scale / static_cast<T>(a.block_size);
        const T* RK_RESTRICT bl = blk;
        for (int64_t i = 0; i < band; ++i) e[i] = ns * (e[i] + beta * bl[i]);
      } else {
        for (int64_t i = 0; i < band; ++i) e[i] = ns * e[i];
      }
    }
    const uint8_t* uniform = a.uniform + b * a.n_inputs;
    bool has_uniform = false;  // some input is added as c x
    for (int64_t j = 0; j < a.n_inputs; ++j) has_uniform = has_uniform || uniform[j];
    char* out_bytes = a.out + first * esize;
    T* RK_RESTRICT dst = native ? reinterpret_cast<T*>(out_bytes) : out_tile;
    // Nothing is added after the transforms (a blur): bfloat16 rounds straight into the output.
    const bool direct_bf16 = bf16 && !has_uniform && kNoise == NoiseKind::kNone;
    bool spectral = false;  // dst (or the output) holds the transformed inputs' sum
    if (a.tiles != nullptr) {
      SpectralBand sb{};
      for (int64_t j = 0; j < a.n_inputs; ++j) {
        if (uniform[j]) continue;
        sb.in[sb.n_inputs] = a.in[j] + first * esize;
        sb.rows8[sb.n_inputs++] = a.rows8 + (b * a.n_inputs + j) * kTileRowsSize;
      }
      sb.width = w;
      if (sb.n_inputs > 0) {
        sb.out = direct_bf16 ? static_cast<void*>(out_bytes) : static_cast<void*>(dst);
        (direct_bf16 ? a.tiles_to_bf16 : a.tiles)(sb);
        if (direct_bf16) continue;
        spectral = true;
      }
    } else {
      bool in_acc = false;  // acc holds a spectrum
      for (int64_t j = 0; j < a.n_inputs; ++j) {
        if (uniform[j]) continue;
        const char* bytes = a.in[j] + first * esize;
        if (native) {
          col_transform<K>(a.col, reinterpret_cast<const T*>(bytes), w, tmp);
        } else if (bf16) {
          col_transform<K>(a.col, reinterpret_cast<const at::BFloat16*>(bytes), w, tmp);
        } else {
          load_n(bytes, a.in_st, band, in_tile);
          col_transform<K>(a.col, static_cast<const T*>(in_tile), w, tmp);
        }
        const T* m = a.mats + (b * a.n_inputs + j) * kMat;
        if (!in_acc) row_transform<K, false>(m, K * K, tmp, w, acc);
        else row_transform<K, true>(m, K * K, tmp, w, acc);
        in_acc = true;
      }
      if (in_acc && direct_bf16) {
        col_transform<K>(a.colt, static_cast<const T*>(acc), w, reinterpret_cast<at::BFloat16*>(out_bytes));
        continue;
      }
      if (in_acc) col_transform<K>(a.colt, static_cast<const T*>(acc), w, dst);
      spectral = in_acc;
    }
    bool written = spectral;
    for (int64_t j = 0; j < a.n_inputs; ++j) {
      if (!uniform[j]) continue;
      const char* bytes = a.in[j] + first * esize;
      const T* RK_RESTRICT x = native ? reinterpret_cast<const T*>(bytes) : in_tile;
      if (!native) load_n(bytes, a.in_st, band, in_tile);
      const T cj = a.scalar[b * a.n_inputs + j];
      if (written) {
        for (int64_t i = 0; i < band; ++i) dst[i] += cj * x[i];
      } else {
        for (int64_t i = 0; i < band; ++i) dst[i] = cj * x[i];
      }
      written = true;
      // The transform would spread a NaN or infinity over its whole patch (SPEC, non-finite
      // values); c x keeps it on its pixel, so such patches are set to NaN here. One integer
      // pass over the band, in cache, finds whether there is anything to do.
      if (any_nonfinite(x, band)) poison_patches<K>(x, w, dst);
    }
    if constexpr (kNoise != NoiseKind::kNone) {
      const T* RK_RESTRICT e = e_tile;
      for (int64_t i = 0; i < band; ++i) dst[i] += e[i];
    }
    if (!native) store_n(out_tile, band, a.in_st, out_bytes);
  }
}

template <typename T>
at::Tensor run_fused(const FusedShape& fs, const std::vector<at::Tensor>& inputs, const at::Tensor& weights,
                     const std::optional<at::Tensor>& noise_scale, double block_scale, int64_t block_size,
                     const std::optional<at::Tensor>& seed, int64_t offset, const std::optional<at::Tensor>& noise,
                     const std::optional<at::Tensor>& noise_block) {
  const at::Tensor& x0 = inputs[0];
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(at::MemoryFormat::Contiguous));
  if (x0.numel() == 0) return out;
  const int k = static_cast<int>(fs.k);
  const int64_t n = fs.n_inputs, batch = fs.batch;

  // M_{j,u}[m'][m] = sum_v C[v][m'] W_j[u][v] C[v][m], in double.
  double cd[kMaxPatch * kMaxPatch];
  fill_dct_basis(k, cd);
  T col[kMaxPatch * kMaxPatch], colt[kMaxPatch * kMaxPatch];
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      col[i * k + j] = static_cast<T>(cd[i * k + j]);
      colt[i * k + j] = static_cast<T>(cd[j * k + i]);
    }
  const at::Tensor wts = weights.contiguous();
  const T* wp = wts.const_data_ptr<T>();
  std::vector<T> mats(static_cast<size_t>(batch * n * k * k * k));
  for (int64_t bj = 0; bj < batch * n; ++bj)
    for (int u = 0; u < k; ++u) {
      const T* wr = wp + (bj * k + u) * k;
      T* m = mats.data() + (bj * k + u) * k * k;
      for (int i = 0; i < k; ++i)
        for (int o = 0; o < k; ++o) {
          double s = 0;
          for (int v = 0; v < k; ++v) s += cd[v * k + i] * static_cast<double>(wr[v]) * cd[v * k + o];
          m[i * k + o] = static_cast<T>(s);
        }
    }

  std::vector<uint8_t> uniform(static_cast<size_t>(batch * n));
  std::vector<T> scalar(static_cast<size_t>(batch * n));
  for (int64_t bj = 0; bj < batch * n; ++bj) {
    const T* wr = wp + bj * k * k;
    bool same = true;  // false for NaN weights, which must spread over the patch as the DCT does
    for (int i = 0; i < k * k; ++i) same = same && wr[i] == wr[0];
    uniform[bj] = same;
    scalar[bj] = wr[0];
  }

  FusedArgs<T> args{};
  // float compute with float or bfloat16 images takes the register tiles where the CPU has them.
  std::vector<float> tables;
  if constexpr (std::is_same<T, float>::value) {
    const at::ScalarType st = x0.scalar_type();
    if (st == at::kFloat || st == at::kBFloat16) {
      args.tiles = spectral_band_fn(k, st == at::kBFloat16, false);
      args.tiles_to_bf16 = st == at::kBFloat16 ? spectral_band_fn(k, true, true) : nullptr;
    }
    if (args.tiles != nullptr) {
      tables.resize(static_cast<size_t>(batch * n * kTileRowsSize));
      for (int64_t bj = 0; bj < batch * n; ++bj)
        spectral_tile_rows(mats.data() + bj * k * k * k, tables.data() + bj * kTileRowsSize);
      args.rows8 = tables.data();
    }
  }
  args.uniform = uniform.data();
  args.scalar = scalar.data();
  args.n_inputs = n;
  args.channels = fs.channels;
  args.height = fs.height;
  args.width = fs.width;
  for (int64_t j = 0; j < n; ++j) args.in[j] = static_cast<const char*>(inputs[j].const_data_ptr());
  args.in_st = x0.scalar_type();
  args.out = static_cast<char*>(out.data_ptr());
  args.mats = mats.data();
  args.col = col;
  args.colt = colt;

  at::Tensor ns_t, seed_t, noise_t, noise_block_t;
  std::vector<T> ns(static_cast<size_t>(batch));
  NoiseKind kind = NoiseKind::kNone;
  if (fs.has_noise) {
    ns_t = noise_scale->contiguous();
    for (int64_t b = 0; b < batch; ++b) ns[b] = ns_t.const_data_ptr<T>()[b];
    args.noise_scale = ns.data();
    args.block_scale = static_cast<T>(block_scale);
    args.block_size = static_cast<int>(block_size);
    args.offset = offset;
    if (fs.use_seed) {
      kind = NoiseKind::kSeed;
      seed_t = seed->contiguous();
      args.seed = seed_t.const_data_ptr<int64_t>();
      // With generated noise e' is finite, so beta = 0 drops the term exactly.
      args.block_term = block_scale != 0.0;
    } else {
      kind = NoiseKind::kTensor;
      noise_t = noise->contiguous();
      noise_block_t = noise_block->contiguous();
      args.noise = static_cast<const char*>(noise_t.const_data_ptr());
      args.noise_st = noise_t.scalar_type();
      args.noise_block = static_cast<const char*>(noise_block_t.const_data_ptr());
      args.noise_block_st = noise_block_t.scalar_type();
      args.block_term = true;  // keeps NaN in noise_block visible even when beta = 0
    }
  }

  const int64_t bands = batch * fs.channels * (fs.height / k);
  const int64_t grain = std::max<int64_t>(1, 16384 / (k * fs.width));
  RK_PATCH_SWITCH(k, K, [&] {
    parallel_chunks(bands, grain, [&](int64_t begin, int64_t end) {
      switch (kind) {
        case NoiseKind::kNone: fused_bands<K, T, NoiseKind::kNone>(args, begin, end); break;
        case NoiseKind::kSeed: fused_bands<K, T, NoiseKind::kSeed>(args, begin, end); break;
        case NoiseKind::kTensor: fused_bands<K, T, NoiseKind::kTensor>(args, begin, end); break;
      }
    });
  });
  return out;
}

at::Tensor relay_fused_cpu(at::TensorList inputs_in, const at::Tensor& weights,
                           const std::optional<at::Tensor>& noise_scale, double block_scale, int64_t block_size,
                           const std::optional<at::Tensor>& seed, int64_t offset,
                           const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_block) {
  const FusedShape fs = check_relay_fused(inputs_in, weights, noise_scale, block_size, seed, offset, noise, noise_block);
  std::vector<at::Tensor> inputs;
  inputs.reserve(inputs_in.size());
  for (const at::Tensor& x : inputs_in) inputs.push_back(x.contiguous());
  if (inputs[0].scalar_type() == at::kDouble)
    return run_fused<double>(fs, inputs, weights, noise_scale, block_scale, block_size, seed, offset, noise,
                             noise_block);
  return run_fused<float>(fs, inputs, weights, noise_scale, block_scale, block_size, seed, offset, noise,
                          noise_block);
}

}  // namespace
}  // namespace cpu
}  // namespace relay_kernels

TORCH_LIBRARY_IMPL(relay_kernels, CPU, m) { m.impl("relay_fused", &relay_kernels::cpu::relay_fused_cpu); }
