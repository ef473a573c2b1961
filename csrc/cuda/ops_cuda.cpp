// Torch glue of the CUDA backend: checks (checks.h, shared with the CPU kernels), contiguous NCHW
// operands, dtype dispatch to the torch-free launchers (launchers.h) on the current stream, and
// the CUDA registrations of the kernel ops. No host synchronization: the ops are graph-capturable.
//
// The same file is the glue of the cuda_emu backend (RK_CUDA_EMU, csrc/cuda_emu/ops_cuda_emu.cpp):
// there the kernels run in the CPU emulator on CPU tensors and register as CPU kernels of the ops
// <op>_cuda_emu. Only the device parts below (device check, guard, stream, registration) differ.
#if defined(RK_WITH_CUDA) || defined(RK_CUDA_EMU)
#include <ATen/ATen.h>
#include <torch/library.h>
#if !defined(RK_CUDA_EMU)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <optional>

#include "checks.h"
#include "launchers.h"

namespace relay_kernels {
namespace {

#if defined(RK_CUDA_EMU)
constexpr const char* kKernelName = "emulated CUDA kernel";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {  // the emulator runs on the calling thread: nothing to enter
  explicit DeviceGuard(at::Device) {}
};
inline cudaStream_t current_stream() { return nullptr; }
#else
constexpr const char* kKernelName = "CUDA kernel";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

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
  TORCH_CHECK(on_kernel_device(t), "relay_kernels: the ", kKernelName, " got ", what, " on ", t.device());
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
  const DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  check_launch(cuda::launch_patch_dct(to_dtype(x.scalar_type()), x.const_data_ptr(), out.mutable_data_ptr(),
                                      image_shape(x.sizes()), static_cast<int>(k), inverse,
                                      current_stream()),
               "patch_dct");
  return out;
}

at::Tensor block_filter_cuda(const at::Tensor& e_in, int64_t block_size, bool transpose) {
  check_block_filter(e_in, block_size);
  check_cuda(e_in, "e");
  check_plane(e_in.size(2), e_in.size(3));
  const DeviceGuard guard(e_in.device());
  const at::Tensor e = e_in.contiguous();
  at::Tensor out = at::empty(e.sizes(), e.options().memory_format(at::MemoryFormat::Contiguous));
  if (e.numel() == 0) return out;
  check_launch(cuda::launch_block_filter(to_dtype(e.scalar_type()), e.const_data_ptr(), out.mutable_data_ptr(),
                                         image_shape(e.sizes()), static_cast<int>(block_size), transpose,
                                         current_stream()),
               "block_filter");
  return out;
}

at::Tensor noise_cuda(const at::Tensor& seed_in, at::IntArrayRef shape, int64_t offset, int64_t block_size,
                      at::ScalarType dtype) {
  check_noise(seed_in, shape, offset, block_size, dtype);
  check_cuda(seed_in, "seed");
  const DeviceGuard guard(seed_in.device());
  const at::Tensor seed = seed_in.contiguous();
  at::Tensor out = at::empty(shape, seed.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const cudaStream_t stream = current_stream();
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
      check_relay_fused(inputs, weights, noise_scale, block_size, seed, offset, noise, noise_block);
  const at::Tensor& x0 = inputs[0];
  check_cuda(x0, "inputs[0]");
  check_plane(fs.height, fs.width);
  const DeviceGuard guard(x0.device());
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
                                        static_cast<int>(fs.k), current_stream()),
               "relay_fused");
  return out;
}

}  // namespace

#if defined(RK_CUDA_EMU)
TORCH_LIBRARY_IMPL(relay_kernels, CPU, m) {
  m.impl("patch_dct_cuda_emu", &patch_dct_cuda);
  m.impl("block_filter_cuda_emu", &block_filter_cuda);
  m.impl("noise_cuda_emu", &noise_cuda);
  m.impl("relay_fused_cuda_emu", &relay_fused_cuda);
}
#else
TORCH_LIBRARY_IMPL(relay_kernels, CUDA, m) {
  m.impl("patch_dct", &patch_dct_cuda);
  m.impl("block_filter", &block_filter_cuda);
  m.impl("noise", &noise_cuda);
  m.impl("relay_fused", &relay_fused_cuda);
}
#endif

}  // namespace relay_kernels
#endif  // RK_WITH_CUDA || RK_CUDA_EMU
