// patch_dct on CPU: C P C^T (inverse C^T U C) on every k x k patch, as a column transform down
// each band of k rows (vectorized along x) followed by a row transform inside each patch.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cpu_common.h"
#include "dct_basis.h"
#include "patch_switch.h"

namespace relay_kernels {
namespace cpu {
namespace {

template <typename T>
struct DctArgs {
  const char* in;
  char* out;
  at::ScalarType st;
  int64_t height, width;
  const T* col;  // K x K, dst[u] = sum_n col[u][n] src[n]
  const T* row;  // K x K, dst[m] = sum_m' src[m'] row[m'][m]
};

// Bands [begin, end) of K rows (band = plane * (H / K) + patch row).
template <int K, typename T>
RK_CPU_CLONES void patch_dct_bands(const DctArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t w = a.width, band = K * w, esize = element_size(a.st);
  const bool native = a.st == scalar_type_of<T>();
  std::vector<T> buf(native ? band : 3 * band);
  T* tmp = buf.data();
  T* in_tile = native ? nullptr : tmp + band;
  T* out_tile = native ? nullptr : tmp + 2 * band;
  for (int64_t b = begin; b < end; ++b) {
    const char* src_bytes = a.in + b * band * esize;
    char* dst_bytes = a.out + b * band * esize;
    const T* src = native ? reinterpret_cast<const T*>(src_bytes) : in_tile;
    T* dst = native ? reinterpret_cast<T*>(dst_bytes) : out_tile;
    if (!native) load_n(src_bytes, a.st, band, in_tile);
    col_transform<K>(a.col, src, w, tmp);
    row_transform<K, false>(a.row, 0, tmp, w, dst);
    if (!native) store_n(out_tile, band, a.st, dst_bytes);
  }
}

template <typename T>
void run_patch_dct(const at::Tensor& x, at::Tensor& out, int64_t k, bool inverse) {
  T c[kMaxPatch * kMaxPatch], col[kMaxPatch * kMaxPatch], row[kMaxPatch * kMaxPatch];
  fill_dct_basis(static_cast<int>(k), c);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      // forward: col = C, row[m'][v] = C[v][m']; inverse: col[n][u] = C[u][n], row = C.
      col[i * k + j] = inverse ? c[j * k + i] : c[i * k + j];
      row[i * k + j] = inverse ? c[i * k + j] : c[j * k + i];
    }
  const int64_t h = x.size(2), w = x.size(3);
  DctArgs<T> args{static_cast<const char*>(x.const_data_ptr()), static_cast<char*>(out.data_ptr()),
                  x.scalar_type(), h, w, col, row};
  const int64_t bands = x.size(0) * x.size(1) * (h / k);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, k * w));
  RK_PATCH_SWITCH(k, K, [&] {
    parallel_chunks(bands, grain, [&](int64_t begin, int64_t end) { patch_dct_bands<K, T>(args, begin, end); });
  });
}

at::Tensor patch_dct_cpu(const at::Tensor& x_in, int64_t k, bool inverse) {
  check_patch_dct(x_in, k);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return out;
  if (x.scalar_type() == at::kDouble) {
    run_patch_dct<double>(x, out, k, inverse);
  } else {
    run_patch_dct<float>(x, out, k, inverse);
  }
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace relay_kernels

TORCH_LIBRARY_IMPL(relay_kernels, CPU, m) { m.impl("patch_dct", &relay_kernels::cpu::patch_dct_cpu); }
