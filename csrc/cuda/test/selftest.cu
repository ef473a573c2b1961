// Standalone self-test of the CUDA launchers (no torch): compares every op against a plain host
// reference that mirrors relay_kernels/reference.py, in float32 and float64, over awkward shapes.
// Build + run on a GPU machine from the repository root:
//   nvcc -O3 -std=c++17 --use_fast_math -arch=native -Icsrc/include -Icsrc/cuda \
//        csrc/cuda/*.cu csrc/cuda/test/selftest.cu -o /tmp/rk_selftest && /tmp/rk_selftest
// Without a GPU, .ci/cuda_emu.sh (make emu-asan) builds and runs it in the CPU emulator
// (csrc/include/cuda_emu.h) under AddressSanitizer + UBSan. Exit status 0 when every case passes.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "launchers.h"
#include "philox.h"

using namespace relay_kernels;
using namespace relay_kernels::cuda;

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);         \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

static int g_fail = 0;

struct Img {
  int B, C, H, W;
  size_t n() const { return size_t(B) * C * H * W; }
  size_t at(int b, int c, int y, int x) const { return ((size_t(b) * C + c) * H + y) * W + x; }
};

static double host_normal(uint64_t key, uint64_t counter) {  // reference: float32 Box-Muller
  const PhiloxWords w = philox4x32_10(key, counter);
  const float u0 = std::fmax(uniform_from_bits(w.r0), 1e-7f);
  const float u1 = uniform_from_bits(w.r1);
  return double(std::sqrt(-2.0f * std::log(u0)) * std::cos(kTwoPi * u1));
}

static std::vector<double> ref_dct(const std::vector<double>& x, Img s, int k, bool inverse) {
  std::vector<double> c(k * k), out(x.size());
  fill_dct_basis<double>(k, c.data());
  for (int b = 0; b < s.B; ++b)
    for (int ch = 0; ch < s.C; ++ch)
      for (int py = 0; py < s.H / k; ++py)
        for (int px = 0; px < s.W / k; ++px)
          for (int i = 0; i < k; ++i)
            for (int j = 0; j < k; ++j) {
              double acc = 0;
              for (int m = 0; m < k; ++m)
                for (int n = 0; n < k; ++n) {
                  const double p = x[s.at(b, ch, py * k + m, px * k + n)];
                  acc += inverse ? c[m * k + i] * p * c[n * k + j] : c[i * k + m] * p * c[j * k + n];
                }
              out[s.at(b, ch, py * k + i, px * k + j)] = acc;
            }
  return out;
}

static std::vector<double> ref_box(const std::vector<double>& e, Img s, int bs, bool transpose) {
  std::vector<double> out(e.size());
  const int sg = transpose ? 1 : -1;
  for (int b = 0; b < s.B; ++b)
    for (int ch = 0; ch < s.C; ++ch)
      for (int y = 0; y < s.H; ++y)
        for (int x = 0; x < s.W; ++x) {
          double acc = 0;
          for (int i = 0; i < bs; ++i)
            for (int j = 0; j < bs; ++j)
              acc += e[s.at(b, ch, ((y + sg * i) % s.H + s.H) % s.H, ((x + sg * j) % s.W + s.W) % s.W)];
          out[s.at(b, ch, y, x)] = acc / bs;
        }
  return out;
}

static std::vector<double> ref_randn(const std::vector<int64_t>& seed, Img s, uint64_t offset) {
  std::vector<double> out(s.n());
  const size_t per = out.size() / s.B;
  for (int b = 0; b < s.B; ++b)
    for (size_t i = 0; i < per; ++i) out[b * per + i] = host_normal(uint64_t(seed[b]), offset + i);
  return out;
}

template <typename T>
static void compare(const char* what, const std::vector<double>& ref, const std::vector<T>& got, double tol) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(double(got[i]) - ref[i]) / (1.0 + std::fabs(ref[i]));
    if (!(d <= worst)) { worst = d; at = i; }
  }
  const bool ok = worst <= tol;
  if (!ok) ++g_fail;
  std::printf("%-4s %-60s max rel err %.3e (at %zu)\n", ok ? "ok" : "FAIL", what, worst, at);
}

template <typename T> struct DT;
template <> struct DT<float> { static constexpr DType v = DType::kFloat; static constexpr double tol = 2e-5; };
template <> struct DT<double> { static constexpr DType v = DType::kDouble; static constexpr double tol = 1e-12; };

template <typename T>
static T* to_dev(const std::vector<double>& h) {
  std::vector<T> t(h.begin(), h.end());
  T* d;
  CK(cudaMalloc(&d, t.size() * sizeof(T) + 16));
  CK(cudaMemcpy(d, t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
static std::vector<T> from_dev(const T* d, size_t n) {
  std::vector<T> h(n);
  CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

static std::vector<double> rand_vec(size_t n, unsigned seed) {
  std::vector<double> v(n);
  srand(seed);
  for (auto& x : v) x = double(rand()) / RAND_MAX * 2 - 1;
  return v;
}

template <typename T>
static void run_case(Img s, int k, int nin, int bs, double beta, int noise_mode) {
  char name[200];
  const size_t n = s.n();
  const cudaStream_t st = 0;
  T* out;
  CK(cudaMalloc(&out, n * sizeof(T)));
  std::vector<int64_t> seed(s.B);
  for (int b = 0; b < s.B; ++b) seed[b] = 1234567890123LL * (b + 1) + 7;
  int64_t* dseed;
  CK(cudaMalloc(&dseed, s.B * sizeof(int64_t)));
  CK(cudaMemcpy(dseed, seed.data(), s.B * sizeof(int64_t), cudaMemcpyHostToDevice));
  const ImageShape shp{s.B, s.C, s.H, s.W};

  // patch_dct both ways
  std::vector<std::vector<double>> xs;
  std::vector<T*> dx;
  for (int j = 0; j < nin; ++j) {
    xs.push_back(rand_vec(n, 11 + j));
    dx.push_back(to_dev<T>(xs.back()));
  }
  for (int inv = 0; inv < 2; ++inv) {
    CK(launch_patch_dct(DT<T>::v, dx[0], out, shp, k, inv, st));
    CK(cudaDeviceSynchronize());
    std::snprintf(name, sizeof name, "patch_dct inv=%d k=%d [%d,%d,%d,%d] %s", inv, k, s.B, s.C, s.H, s.W,
                  sizeof(T) == 8 ? "f64" : "f32");
    compare(name, ref_dct(xs[0], s, k, inv), from_dev(out, n), DT<T>::tol);
  }
  // block_filter both ways
  for (int tr = 0; tr < 2; ++tr) {
    CK(launch_block_filter(DT<T>::v, dx[0], out, shp, bs, tr, st));
    CK(cudaDeviceSynchronize());
    std::snprintf(name, sizeof name, "block_filter s=%d transpose=%d [%d,%d,%d,%d]", bs, tr, s.B, s.C, s.H, s.W);
    compare(name, ref_box(xs[0], s, bs, tr), from_dev(out, n), DT<T>::tol);
  }
  // noise: plain and block
  const uint64_t offset = 12345;
  const std::vector<double> e0 = ref_randn(seed, s, offset);
  CK(launch_noise(DT<T>::v, dseed, out, s.B, n / s.B, offset, st));
  CK(cudaDeviceSynchronize());
  compare("noise block_size=0", e0, from_dev(out, n), 1e-5);
  CK(launch_block_noise(DT<T>::v, dseed, out, shp, offset, bs, st));
  CK(cudaDeviceSynchronize());
  std::snprintf(name, sizeof name, "noise block_size=%d", bs);
  compare(name, ref_box(e0, s, bs, false), from_dev(out, n), 1e-5);

  // relay_fused
  std::vector<double> w = rand_vec(size_t(s.B) * nin * k * k, 99), ns(s.B);
  for (int b = 0; b < s.B; ++b) ns[b] = 0.5 + b;
  using A = T;
  A* dw = to_dev<A>(w);
  A* dns = to_dev<A>(ns);
  std::vector<double> spec(n, 0.0);
  for (int j = 0; j < nin; ++j) {
    const std::vector<double> u = ref_dct(xs[j], s, k, false);
    for (int b = 0; b < s.B; ++b)
      for (int ch = 0; ch < s.C; ++ch)
        for (int y = 0; y < s.H; ++y)
          for (int x = 0; x < s.W; ++x)
            spec[s.at(b, ch, y, x)] += w[((size_t(b) * nin + j) * k + y % k) * k + x % k] * u[s.at(b, ch, y, x)];
  }
  std::vector<double> ref = ref_dct(spec, s, k, true);
  FusedParams p{};
  for (int j = 0; j < nin; ++j) p.inputs[j] = dx[j];
  p.n_inputs = nin;
  p.weights = dw;
  p.block_scale = beta;
  p.block_size = bs;
  p.offset = int64_t(offset);
  p.out = out;
  A *dn = nullptr, *dnb = nullptr;
  if (noise_mode != 0) {
    p.noise_scale = dns;
    std::vector<double> e, eb;
    if (noise_mode == 1) {
      p.seed = dseed;
      Img s2 = s;
      e = ref_randn(seed, s, offset);
      eb = ref_randn(seed, s2, offset + n / s.B);
    } else {
      e = rand_vec(n, 5);
      eb = rand_vec(n, 6);
      dn = to_dev<A>(e);
      dnb = to_dev<A>(eb);
      p.noise = dn;
      p.noise_block = dnb;
    }
    const std::vector<double> blk = ref_box(eb, s, bs, false);
    for (size_t i = 0; i < n; ++i) ref[i] += ns[i / (n / s.B)] * (e[i] + beta * blk[i]);
  }
  CK(launch_relay_fused(DT<T>::v, p, shp, k, st));
  CK(cudaDeviceSynchronize());
  std::snprintf(name, sizeof name, "relay_fused k=%d n=%d s=%d beta=%.2f noise=%d [%d,%d,%d,%d]", k, nin, bs, beta,
                noise_mode, s.B, s.C, s.H, s.W);
  compare(name, ref, from_dev(out, n), noise_mode == 1 ? 2e-5 : DT<T>::tol);

  for (T* d : dx) cudaFree(d);
  cudaFree(dw);
  cudaFree(dns);
  cudaFree(dn);
  cudaFree(dnb);
  cudaFree(out);
  cudaFree(dseed);
}

int main() {
  const int ks[] = {2, 4, 8, 16};
  for (int k : ks) {
    run_case<float>({2, 3, 2 * k, 3 * k}, k, 2, k, 0.15, 1);
    run_case<float>({1, 1, 4 * k, 70 * k}, k, 4, 3, 0.5, 2);  // W > one tile: ragged column tiles
    run_case<float>({3, 2, 5 * k, k}, k, 1, 1, 0.0, 0);
    run_case<double>({2, 2, 3 * k, 2 * k}, k, 3, 2, 0.15, 1);
    run_case<double>({1, 3, 2 * k, 5 * k}, k, 2, std::min(2 * k, 5), 1.0, 2);
  }
  std::printf(g_fail ? "%d FAILED\n" : "all passed\n", g_fail);
  return g_fail ? 1 : 0;
}
