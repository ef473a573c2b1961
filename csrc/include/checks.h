// Input checks of the kernel contract (docs/KERNELS.md), shared by the CPU kernels and the CUDA
// host glue so every backend rejects the same inputs with the same RuntimeError message. The
// Python-side kernels (Triton, reference) apply the same rules from relay_kernels/_contract.py;
// tests/test_contract.py holds both to the same error type and message, rule by rule.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>
#include <optional>

namespace relay_kernels {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Half types compute in float32; float32 and float64 in themselves.
inline at::ScalarType compute_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_patch_size(int64_t k) {
  TORCH_CHECK(k == 2 || k == 4 || k == 8 || k == 16,
              "relay_kernels: patch size k must be 2, 4, 8 or 16, got ", k);
}

inline void check_float_dtype(at::ScalarType t, const char* what) {
  TORCH_CHECK(is_supported_float(t), "relay_kernels: ", what,
              " must be float16, bfloat16, float32 or float64, got ", t);
}

// A [B, C, H, W] image; H and W multiples of k when k > 0.
inline void check_image(const at::Tensor& x, const char* what, int64_t k) {
  TORCH_CHECK(x.defined(), "relay_kernels: ", what, " is undefined");
  TORCH_CHECK(x.dim() == 4, "relay_kernels: ", what, " must be a 4-D [B, C, H, W] tensor, got shape ",
              x.sizes());
  check_float_dtype(x.scalar_type(), what);
  if (k > 0) {
    TORCH_CHECK(x.size(2) % k == 0 && x.size(3) % k == 0, "relay_kernels: ", what,
                " height and width must be multiples of the patch size k = ", k, ", got shape ",
                x.sizes());
  }
}

inline void check_block_size(int64_t s, int64_t h, int64_t w) {
  TORCH_CHECK(s >= 1 && s <= std::min(h, w), "relay_kernels: block_size must be in [1, min(H, W)] = [1, ",
              std::min(h, w), "], got ", s);
}

inline void check_seed(const at::Tensor& seed, int64_t batch, const at::Device& device) {
  TORCH_CHECK(seed.scalar_type() == at::kLong, "relay_kernels: seed must be an int64 tensor, got ",
              seed.scalar_type());
  TORCH_CHECK(seed.dim() == 1 && seed.numel() == batch,
              "relay_kernels: seed must have shape [B] = [", batch, "], got ", seed.sizes());
  TORCH_CHECK(seed.device() == device, "relay_kernels: seed is on ", seed.device(),
              " but the op runs on ", device);
}

// Sample b draws counters offset .. offset + draws * n - 1 (n elements per sample): all inside
// int64 (SPEC 4).
inline void check_offset(int64_t offset, int64_t n, int64_t draws) {
  const int64_t max = std::numeric_limits<int64_t>::max();
  const int64_t top = n > max / draws ? -1 : max - draws * n;
  TORCH_CHECK(offset >= 0 && offset <= top, "relay_kernels: offset must be in [0, ", top,
              "] so that the counters offset + ", draws, " * N (N = ", n, " elements per sample) fit in int64, got ",
              offset);
}

inline void check_patch_dct(const at::Tensor& x, int64_t k) {
  check_patch_size(k);
  check_image(x, "x", k);
}

inline void check_block_filter(const at::Tensor& e, int64_t block_size) {
  check_image(e, "e", 0);
  if (e.numel() > 0) check_block_size(block_size, e.size(2), e.size(3));
}

inline void check_noise(const at::Tensor& seed, at::IntArrayRef shape, int64_t offset, int64_t block_size,
                        at::ScalarType dtype) {
  TORCH_CHECK(!shape.empty(), "relay_kernels: noise shape must have at least one dimension [B, ...]");
  for (int64_t d : shape) TORCH_CHECK(d >= 0, "relay_kernels: noise shape must be non-negative, got ", shape);
  check_float_dtype(dtype, "noise dtype");
  check_seed(seed, shape[0], seed.device());
  TORCH_CHECK(block_size >= 0, "relay_kernels: block_size must be >= 0 (0 = plain normals), got ", block_size);
  if (block_size > 0) {
    TORCH_CHECK(shape.size() == 4, "relay_kernels: block noise (block_size > 0) needs a 4-D shape [B, C, H, W], got ",
                shape);
    if (shape[0] * shape[1] * shape[2] * shape[3] > 0) check_block_size(block_size, shape[2], shape[3]);
  }
  int64_t per_sample = 1;
  for (size_t i = 1; i < shape.size(); ++i) per_sample *= shape[i];
  check_offset(offset, per_sample, 1);
}

struct FusedShape {
  int64_t batch, channels, height, width, k, n_inputs;
  bool has_noise;  // noise_scale given
  bool use_seed;   // noise drawn from seed (otherwise from the noise / noise_block tensors)
};

inline FusedShape check_relay_fused(at::TensorList inputs, const at::Tensor& weights,
                                    const std::optional<at::Tensor>& noise_scale, int64_t block_size,
                                    const std::optional<at::Tensor>& seed, int64_t offset,
                                    const std::optional<at::Tensor>& noise,
                                    const std::optional<at::Tensor>& noise_block) {
  TORCH_CHECK(inputs.size() >= 1 && inputs.size() <= 4, "relay_kernels: relay_fused takes 1 to 4 inputs, got ",
              inputs.size());
  const at::Tensor& x0 = inputs[0];
  TORCH_CHECK(weights.defined() && weights.dim() == 4 && weights.size(2) == weights.size(3),
              "relay_kernels: weights must have shape [B, n_inputs, k, k], got ",
              weights.defined() ? weights.sizes() : at::IntArrayRef{});
  const int64_t k = weights.size(3);
  check_patch_size(k);
  check_image(x0, "inputs[0]", k);
  for (size_t j = 1; j < inputs.size(); ++j) {
    TORCH_CHECK(inputs[j].defined() && inputs[j].sizes() == x0.sizes(), "relay_kernels: inputs[", j,
                "] has shape ", inputs[j].defined() ? inputs[j].sizes() : at::IntArrayRef{},
                " but inputs[0] has shape ", x0.sizes());
    TORCH_CHECK(inputs[j].scalar_type() == x0.scalar_type(), "relay_kernels: inputs[", j, "] is ",
                inputs[j].scalar_type(), " but inputs[0] is ", x0.scalar_type());
    TORCH_CHECK(inputs[j].device() == x0.device(), "relay_kernels: inputs[", j, "] is on ", inputs[j].device(),
                " but inputs[0] is on ", x0.device());
  }
  const int64_t batch = x0.size(0), n = static_cast<int64_t>(inputs.size());
  const at::ScalarType wdt = compute_scalar_type(x0.scalar_type());
  TORCH_CHECK(weights.size(0) == batch && weights.size(1) == n, "relay_kernels: weights must have shape [B, n_inputs, k, k] = [",
              batch, ", ", n, ", k, k], got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == wdt, "relay_kernels: weights must be ", wdt, " for ", x0.scalar_type(),
              " inputs, got ", weights.scalar_type());
  TORCH_CHECK(weights.device() == x0.device(), "relay_kernels: weights are on ", weights.device(),
              " but inputs on ", x0.device());
  FusedShape fs{batch, x0.size(1), x0.size(2), x0.size(3), k, n, noise_scale.has_value(), false};
  if (!fs.has_noise) return fs;
  const at::Tensor& ns = *noise_scale;
  TORCH_CHECK(ns.dim() == 1 && ns.numel() == batch, "relay_kernels: noise_scale must have shape [B] = [", batch,
              "], got ", ns.sizes());
  TORCH_CHECK(ns.scalar_type() == wdt, "relay_kernels: noise_scale must be ", wdt, ", got ", ns.scalar_type());
  TORCH_CHECK(ns.device() == x0.device(), "relay_kernels: noise_scale is on ", ns.device(), " but inputs on ",
              x0.device());
  TORCH_CHECK(noise.has_value() == noise_block.has_value(),
              "relay_kernels: give both noise and noise_block, or neither (and a seed)");
  if (noise.has_value()) {
    for (const at::Tensor* t : {&*noise, &*noise_block}) {
      const char* what = t == &*noise ? "noise" : "noise_block";
      TORCH_CHECK(t->sizes() == x0.sizes(), "relay_kernels: ", what, " must have the inputs' shape ", x0.sizes(),
                  ", got ", t->sizes());
      check_float_dtype(t->scalar_type(), what);
      TORCH_CHECK(t->device() == x0.device(), "relay_kernels: ", what, " is on ", t->device(), " but inputs on ",
                  x0.device());
    }
  } else {
    TORCH_CHECK(seed.has_value(), "relay_kernels: relay_fused with noise_scale needs a seed or the noise tensors");
    check_seed(*seed, batch, x0.device());
    check_offset(offset, fs.channels * fs.height * fs.width, 2);
    fs.use_seed = true;
  }
  if (x0.numel() > 0) check_block_size(block_size, fs.height, fs.width);
  return fs;
}

}  // namespace relay_kernels
