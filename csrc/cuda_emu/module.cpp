// The Python module relay_kernels._cuda_emu. Importing it runs the TORCH_LIBRARY_IMPL
// registrations of ops_cuda_emu.cpp (CPU kernels of the <op>_cuda_emu ops). It also exposes probes
// of the emulator itself for tests/test_cuda_emu.py: tiny kernels in CUDA syntax that check
// barrier semantics, thread/block indexing and CUDA's launch-configuration errors.
#include <Python.h>

#include <vector>

#include "cuda_emu.h"

namespace {

// Every round, each thread bumps a shared arrival counter and writes its slot, waits at the
// barrier, checks that all n threads arrived and reads a neighbour's slot, waits again (so the
// next round's writes cannot overtake the reads). Mismatches are counted per thread.
__global__ void barrier_kernel(int rounds, int* errors) {
  RK_DYNAMIC_SMEM(smem);
  int* slots = reinterpret_cast<int*>(smem);
  int* arrived = slots + blockDim.x;
  const int n = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  if (t == 0) *arrived = 0;
  __syncthreads();
  int bad = 0;
  for (int r = 0; r < rounds; ++r) {
    slots[t] = t * 1000 + r;
    ++*arrived;  // one OS thread runs a block's fibers, so this is not a data race here
    __syncthreads();
    const int src = (t + r + 1) % n;
    bad += *arrived != n * (r + 1);
    bad += slots[src] != src * 1000 + r;
    __syncthreads();
  }
  errors[blockIdx.x * n + t] = bad;
}

// Threads of the upper half return before the barriers the lower half waits at.
__global__ void early_exit_kernel(int* out) {
  RK_DYNAMIC_SMEM(smem);
  int* s = reinterpret_cast<int*>(smem);
  const int t = static_cast<int>(threadIdx.x), half = static_cast<int>(blockDim.x / 2);
  if (t >= half) return;
  s[t] = t;
  __syncthreads();
  out[t] = s[(t + 1) % half];
}

// Writes the linear thread id at the linear (block, thread) position of a 3-D launch.
__global__ void index_kernel(int* out) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  out[b * n + t] = static_cast<int>(b * 1000000 + t);
}

__global__ void empty_kernel() {}

PyObject* error_result(cudaError_t e) { return PyUnicode_FromString(cudaGetErrorString(e)); }

// barrier_probe(blocks, threads, rounds) -> number of failed checks
PyObject* barrier_probe(PyObject*, PyObject* args) {
  int blocks, threads, rounds;
  if (!PyArg_ParseTuple(args, "iii", &blocks, &threads, &rounds)) return nullptr;
  std::vector<int> errors(static_cast<size_t>(blocks) * threads, -1);
  RK_LAUNCH(blocks, threads, (threads + 1) * sizeof(int), nullptr, barrier_kernel)(rounds, errors.data());
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return error_result(e);
  long bad = 0;
  for (int v : errors) bad += v != 0;
  return PyLong_FromLong(bad);
}

// early_exit_probe(threads) -> (values read by the lower half, divergent barriers counted)
PyObject* early_exit_probe(PyObject*, PyObject* args) {
  int threads;
  if (!PyArg_ParseTuple(args, "i", &threads)) return nullptr;
  std::vector<int> out(threads / 2, -1);
  const long before = rk_emu::divergent_barriers();
  RK_LAUNCH(1, threads, threads * sizeof(int), nullptr, early_exit_kernel)(out.data());
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return error_result(e);
  PyObject* values = PyList_New(static_cast<Py_ssize_t>(out.size()));
  for (size_t i = 0; i < out.size(); ++i) PyList_SET_ITEM(values, i, PyLong_FromLong(out[i]));
  return Py_BuildValue("(Nl)", values, rk_emu::divergent_barriers() - before);
}

// index_probe(gx, gy, gz, bx, by, bz) -> number of wrong or missing (block, thread) entries
PyObject* index_probe(PyObject*, PyObject* args) {
  unsigned gx, gy, gz, bx, by, bz;
  if (!PyArg_ParseTuple(args, "IIIIII", &gx, &gy, &gz, &bx, &by, &bz)) return nullptr;
  const size_t nb = static_cast<size_t>(gx) * gy * gz, nt = static_cast<size_t>(bx) * by * bz;
  std::vector<int> out(nb * nt, -1);
  RK_LAUNCH(dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr, index_kernel)(out.data());
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return error_result(e);
  long bad = 0;
  for (size_t b = 0; b < nb; ++b)
    for (size_t t = 0; t < nt; ++t) bad += out[b * nt + t] != static_cast<int>(b * 1000000 + t);
  return PyLong_FromLong(bad);
}

// launch_status(gx, gy, gz, threads, smem, optin) -> CUDA's error string of that launch
// (optin > 0: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, optin) first, whose error wins).
PyObject* launch_status(PyObject*, PyObject* args) {
  unsigned gx, gy, gz, threads;
  unsigned long long smem;
  int optin;
  if (!PyArg_ParseTuple(args, "IIIIKi", &gx, &gy, &gz, &threads, &smem, &optin)) return nullptr;
  // empty_kernel is never opted in, so earlier calls cannot leak an attribute into this one.
  if (optin > 0) {
    const cudaError_t e = cudaFuncSetAttribute(&index_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return error_result(e);
    }
    std::vector<int> out(static_cast<size_t>(gx) * gy * gz * threads);
    RK_LAUNCH(dim3(gx, gy, gz), threads, smem, nullptr, index_kernel)(out.data());
  } else {
    RK_LAUNCH(dim3(gx, gy, gz), threads, smem, nullptr, empty_kernel)();
  }
  return error_result(cudaGetLastError());
}

PyObject* divergent_barriers(PyObject*, PyObject*) { return PyLong_FromLong(rk_emu::divergent_barriers()); }

PyMethodDef methods[] = {
    {"barrier_probe", barrier_probe, METH_VARARGS, "barrier_probe(blocks, threads, rounds) -> failed checks"},
    {"early_exit_probe", early_exit_probe, METH_VARARGS, "early_exit_probe(threads) -> (values, divergent)"},
    {"index_probe", index_probe, METH_VARARGS, "index_probe(gx, gy, gz, bx, by, bz) -> wrong entries"},
    {"launch_status", launch_status, METH_VARARGS, "launch_status(gx, gy, gz, threads, smem, optin) -> str"},
    {"divergent_barriers", divergent_barriers, METH_NOARGS, "barriers reached after a thread exited"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyObject* PyInit__cuda_emu(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_cuda_emu", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
