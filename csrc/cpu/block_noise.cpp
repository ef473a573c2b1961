// noise and block_filter on CPU. Normals come from the vectorized Philox generator (SPEC 4);
// Block_s (SPEC 3) is a circular s x s box sum produced row by row from a ring of the last s
// horizontal box sums, so generated noise is never materialized beyond a few rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu_common.h"

namespace relay_kernels {
namespace cpu {
namespace {

// ---------------------------------------------------------------- plain normals (block_size 0)

struct NormalArgs {
  char* out;
  at::ScalarType st;
  const int64_t* seed;
  int64_t offset, per_sample;
};

// Flat elements [begin, end) of the [B, N] output: sample b, index i uses counter offset + i.
template <typename T>
RK_CPU_CLONES void normals_flat(const NormalArgs& a, int64_t begin, int64_t end) {
  constexpr int64_t kTile = 4096;
  const int64_t esize = element_size(a.st);
  const bool native = a.st == scalar_type_of<T>();
  std::vector<T> tile(native ? 0 : kTile);
  for (int64_t i = begin; i < end;) {
    const int64_t b = i / a.per_sample, j = i % a.per_sample;
    const int64_t n = std::min({end - i, a.per_sample - j, kTile});
    char* dst = a.out + i * esize;
    T* t = native ? reinterpret_cast<T*>(dst) : tile.data();
    philox_normals(static_cast<uint64_t>(a.seed[b]), static_cast<uint64_t>(a.offset + j), n, t);
    if (!native) store_n(t, n, a.st, dst);
    i += n;
  }
}

// ---------------------------------------------------------------- Block_s rows

template <typename T>
struct BoxArgs {
  char* out;
  at::ScalarType out_st;
  int64_t channels, height, width;
  int s;
  bool transpose;
  // source: Philox (seed, offset) or a contiguous tensor (in, in_st)
  const int64_t* seed;
  int64_t offset;
  const char* in;
  at::ScalarType in_st;
};

// Rows [begin, end) in processing order (row unit = plane * H + r; y = r, or H - 1 - r when
// transposed), so a thread's consecutive rows of a plane reuse the box filter's window.
template <typename T, bool kSeed>
RK_CPU_CLONES void box_rows(const BoxArgs<T>& a, int64_t begin, int64_t end) {
  const int64_t h = a.height, w = a.width, hw = h * w;
  const int64_t out_esize = element_size(a.out_st);
  const bool native = a.out_st == scalar_type_of<T>();
  std::vector<T> buf(static_cast<int64_t>(a.s + 1) * w + a.s + (native ? 0 : w));
  BoxRows<T> box(h, w, a.s, a.transpose, buf.data());
  T* row_tile = buf.data() + static_cast<int64_t>(a.s + 1) * w + a.s;
  using Src = typename std::conditional<kSeed, PhiloxRows<T>, TensorRows<T>>::type;
  Src src{};
  int64_t plane = -1;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t p = u / h, r = u % h, y = a.transpose ? h - 1 - r : r;
    if (p != plane) {
      plane = p;
      box.reset();
      if constexpr (kSeed) {
        src = PhiloxRows<T>{static_cast<uint64_t>(a.seed[p / a.channels]),
                            static_cast<uint64_t>(a.offset + (p % a.channels) * hw), w};
      } else {
        const int64_t in_esize = element_size(a.in_st);
        src = TensorRows<T>{a.in + p * hw * in_esize, a.in_st, w, w * in_esize};
      }
    }
    box.seek(src, y);
    char* dst = a.out + (p * hw + y * w) * out_esize;
    T* t = native ? reinterpret_cast<T*>(dst) : row_tile;
    box.next(src, t);
    if (!native) store_n(t, w, a.out_st, dst);
  }
}

template <typename T, bool kSeed>
void run_box_rows(const BoxArgs<T>& args, int64_t planes) {
  const int64_t rows = planes * args.height;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, args.width));
  parallel_chunks(rows, grain, [&](int64_t begin, int64_t end) { box_rows<T, kSeed>(args, begin, end); });
}

at::Tensor noise_cpu(const at::Tensor& seed_in, at::IntArrayRef shape, int64_t offset, int64_t block_size,
                     at::ScalarType dtype) {
  check_noise(seed_in, shape, offset, block_size, dtype);
  const at::Tensor seed = seed_in.contiguous();
  at::Tensor out = at::empty(shape, seed.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const bool dbl = dtype == at::kDouble;
  if (block_size == 0) {
    NormalArgs args{static_cast<char*>(out.data_ptr()), dtype, seed.const_data_ptr<int64_t>(), offset,
                    out.numel() / shape[0]};
    parallel_chunks(out.numel(), 8192, [&](int64_t begin, int64_t end) {
      // Normals are generated in float32 (as tl.randn); float64 only widens them.
      normals_flat<float>(args, begin, end);
    });
    return out;
  }
  const int64_t channels = shape[1], planes = shape[0] * shape[1];
  auto run = [&](auto zero) {
    using T = decltype(zero);
    BoxArgs<T> args{static_cast<char*>(out.data_ptr()), dtype, channels, shape[2], shape[3],
                    static_cast<int>(block_size), false, seed.const_data_ptr<int64_t>(), offset, nullptr,
                    dtype};
    run_box_rows<T, true>(args, planes);
  };
  if (dbl) run(double{}); else run(float{});
  return out;
}

at::Tensor block_filter_cpu(const at::Tensor& e_in, int64_t block_size, bool transpose) {
  check_block_filter(e_in, block_size);
  const at::Tensor e = e_in.contiguous();
  at::Tensor out = at::empty(e.sizes(), e.options().memory_format(at::MemoryFormat::Contiguous));
  if (e.numel() == 0) return out;
  auto run = [&](auto zero) {
    using T = decltype(zero);
    BoxArgs<T> args{static_cast<char*>(out.data_ptr()), e.scalar_type(), e.size(1), e.size(2), e.size(3),
                    static_cast<int>(block_size), transpose, nullptr, 0,
                    static_cast<const char*>(e.const_data_ptr()), e.scalar_type()};
    run_box_rows<T, false>(args, e.size(0) * e.size(1));
  };
  if (e.scalar_type() == at::kDouble) run(double{}); else run(float{});
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace relay_kernels

TORCH_LIBRARY_IMPL(relay_kernels, CPU, m) {
  m.impl("noise", &relay_kernels::cpu::noise_cpu);
  m.impl("block_filter", &relay_kernels::cpu::block_filter_cpu);
}
