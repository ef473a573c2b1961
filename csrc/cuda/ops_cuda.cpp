// Torch glue of the CUDA backend: checks (checks.h, shared with the CPU kernels), contiguous NCHW
// operands, dtype dispatch to the torch-free launchers (launchers.h) on the current stream, and
// the CUDA registrations of the kernel ops. No host synchronization: the ops are graph-capturable.
#if defined(RK_WITH_CUDA)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "checks.h"
#include "launchers.h"

namespace relay_kernels {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cuda::DType::kHalf;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kFloat: return cuda::DType::kFloat;
    case at::kDouble: return cuda::DType::kDouble;
    default: TORCH_CHECK(false, "relay_kernels: unsupported dtype ", t);
  }
}

cuda::ImageShape image_shape(at::IntArrayRef s) { return {s[0], s[1], s[2], s[3]}; }

void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), "relay_kernels: the CUDA kernel got ", what, " on ", t.device());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "relay_kernels: CUDA ", op, " failed: ", cudaGetErrorString(err));
}

// Spatial indices must fit in int inside the kernels.
void check_plane(int64_t h, int64_t w) {
  TORCH_CHECK(h * w < (int64_t{1} << 31), "relay_kernels: H * W must be below 2^31, got ", h, " x ", w);
}

at::Tensor patch_dct_cuda(const at::Tensor& x_in, int64_t k, bool inverse) {
  check_patch_dct(x_in, k);
  check_cuda(x_in, "x");
  check_plane(x_in.size(2), x_in.size(3));
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  check_launch(cuda::launch_patch_dct(to_dtype(x.scalar_type()), x.const_data_ptr(), out.mutable_data_ptr(),
                                      image_shape(x.sizes()), static_cast<int>(k), inverse,
                                      c10::cuda::getCurrentCUDAStream()),
               "patch_dct");
  return out;
}

at::Tensor block_filter_cuda(const at::Tensor& e_in, int64_t block_size, bool transpose) {
  check_block_filter(e_in, block_size);
  check_cuda(e_in, "e");
  check_plane(e_in.size(2), e_in.size(3));
  const c10::cuda::CUDAGuard guard(e_in.device());
  const at::Tensor e = e_in.contiguous();
  at::Tensor out = at::empty(e.sizes(), e.options().memory_format(at::MemoryFormat::Contiguous));
  if (e.numel() == 0) return out;
  check_launch(cuda::launch_block_filter(to_dtype(e.scalar_type()), e.const_data_ptr(), out.mutable_data_ptr(),
                                         image_shape(e.sizes()), static_cast<int>(block_size), transpose,
                                         c10::cuda::getCurrentCUDAStream()),
               "block_filter");
  return out;
}

at::Tensor noise_cuda(const at::Tensor& seed_in, at::IntArrayRef shape, int64_t offset, int64_t block_size,
                      at::ScalarType dtype) {
  check_noise(seed_in, shape, block_size, dtype);
  check_cuda(seed_in, "seed");
  const c10::cuda::CUDAGuard guard(seed_in.device());
  const at::Tensor seed = seed_in.contiguous();
  at::Tensor out = at::empty(shape, seed.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (block_size > 0) {
    check_plane(shape[2], shape[3]);
    check_launch(cuda::launch_block_noise(to_dtype(dtype), seed.const_data_ptr<int64_t>(), out.mutable_data_ptr(),
                                          image_shape(shape), offset, static_cast<int>(block_size), stream),
                 "noise");
  } else {
    check_launch(cuda::launch_noise(to_dtype(dtype), seed.const_data_ptr<int64_t>(), out.mutable_data_ptr(),
                                    shape[0], out.numel() / shape[0], offset, stream),
                 "noise");
  }
  return out;
}

at::Tensor relay_fused_cuda(at::TensorList inputs, const at::Tensor& weights,
                            const std::optional<at::Tensor>& noise_scale, double block_scale, int64_t block_size,
                            const std::optional<at::Tensor>& seed, int64_t offset,
                            const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& noise_block) {
  const FusedShape fs =
      check_relay_fused(inputs, weights, noise_scale, block_size, seed, noise, noise_block);
  const at::Tensor& x0 = inputs[0];
  check_cuda(x0, "inputs[0]");
  check_plane(fs.height, fs.width);
  const c10::cuda::CUDAGuard guard(x0.device());
  const at::ScalarType acc = compute_scalar_type(x0.scalar_type());

  // Keep the contiguous operands alive until the launch is enqueued.
  std::vector<at::Tensor> ins;
  ins.reserve(inputs.size());
  for (const at::Tensor& x : inputs) ins.push_back(x.contiguous());
  const at::Tensor w = weights.contiguous();
  at::Tensor ns, sd, nz, nb;
  cuda::FusedParams p{};
  for (size_t j = 0; j < ins.size(); ++j) p.inputs[j] = ins[j].const_data_ptr();
  p.n_inputs = static_cast<int>(ins.size());
  p.weights = w.const_data_ptr();
  p.block_scale = block_scale;
  p.block_size = static_cast<int>(block_size);
  p.offset = offset;
  if (fs.has_noise) {
    ns = noise_scale->contiguous();
    p.noise_scale = ns.const_data_ptr();
    if (fs.use_seed) {
      sd = seed->contiguous();
      p.seed = sd.const_data_ptr<int64_t>();
    } else {
      // Given noise is read in the compute dtype (as the reference's noise.to(cdt)).
      nz = noise->to(acc).contiguous();
      nb = noise_block->to(acc).contiguous();
      p.noise = nz.const_data_ptr();
      p.noise_block = nb.const_data_ptr();
    }
  }
  at::Tensor out = at::empty(x0.sizes(), x0.options().memory_format(at::MemoryFormat::Contiguous));
  p.out = out.mutable_data_ptr();
  if (out.numel() == 0) return out;
  check_launch(cuda::launch_relay_fused(to_dtype(x0.scalar_type()), p, image_shape(x0.sizes()),
                                        static_cast<int>(fs.k), c10::cuda::getCurrentCUDAStream()),
               "relay_fused");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(relay_kernels, CUDA, m) {
  m.impl("patch_dct", &patch_dct_cuda);
  m.impl("block_filter", &block_filter_cuda);
  m.impl("noise", &noise_cuda);
  m.impl("relay_fused", &relay_fused_cuda);
}

}  // namespace relay_kernels
#endif  // RK_WITH_CUDA
