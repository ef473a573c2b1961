// The CUDA kernels of csrc/cuda/relay_fused.cu, compiled unchanged as host C++ for the cuda_emu backend.
#if !defined(RK_CUDA_EMU)
#error "build with -DRK_CUDA_EMU (setup.py does when RELAY_KERNELS_CUDA_EMU=1)"
#endif
#include "../cuda/relay_fused.cu"
