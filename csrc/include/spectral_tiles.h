// The spectral part of a fused band for patch size 4 in float, by register tiles (AVX2 + FMA,
// csrc/cpu/spectral_avx2.cpp): out = sum_j C^T [row u of (C in_j)] M_{j,u} over one band of 4 rows.
//
// Why a separate path: the generic code runs the three transforms as three passes over the band
// (column, row, column), storing and reloading every vector between them. A tile of 4 rows by 16
// columns keeps all three in registers, takes the column transforms as the 4-point DCT's
// butterflies, and lays rows out so that bfloat16 converts without shuffles (see the .cpp).
#pragma once
#include <cstdint>

namespace relay_kernels {
namespace cpu {

constexpr int kTileLanes = 8;

struct SpectralBand {
  int n_inputs;           // inputs to transform, at most 4
  const void* in[4];      // each input's first element of the band (float or bfloat16)
  const float* rows8[4];  // each input's row matrices from spectral_tile_rows
  int64_t width;          // W: the row stride of inputs and output, a multiple of 4
  void* out;              // the band's first output element (float or bfloat16)
};

using SpectralBandFn = void (*)(const SpectralBand&);

// The tile function for patch size k with bfloat16 (else float) inputs and output, or nullptr
// where there is none: k != 4, a CPU without AVX2 + FMA, or RELAY_KERNELS_CPU_ISA=scalar (the
// tests run both paths).
SpectralBandFn spectral_band_fn(int k, bool bf16_in, bool bf16_out);

// The row-transform vectors of one input from its M_{j,u}[m'][m] = mats[u * 16 + m' * 4 + m]:
// rows8[u][m'][half][l] = g_u^2 M_{j,u}[m'][2 (l mod 2) + half], the coefficients of the tile's
// A (half 0) and B (half 1) lanes, with the butterflies' scale g_u^2 (see dct4() there).
constexpr int kTileRowsSize = 4 * 4 * 2 * kTileLanes;
void spectral_tile_rows(const float* mats, float* rows8);

}  // namespace cpu
}  // namespace relay_kernels
