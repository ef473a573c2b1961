// The torch glue of the CUDA backend (csrc/cuda/ops_cuda.cpp) built for the emulator: the same
// checks and launches, on CPU tensors, registered as the CPU kernels of the <op>_cuda_emu ops.
#if !defined(RK_CUDA_EMU)
#error "build with -DRK_CUDA_EMU (setup.py does when RELAY_KERNELS_CUDA_EMU=1)"
#endif
#include "../cuda/ops_cuda.cpp"
