"""Triton backend: relay_kernels::<op>_triton for patch_dct, block_filter, noise, relay_fused.

Imported only when the triton backend is requested (it needs `triton`). Kernels run on CUDA
devices, or on the CPU under TRITON_INTERPRET=1 (how CI tests them).
"""

from .. import _ops
from .block_noise import block_filter_triton, noise_triton
from .patch_dct import patch_dct_triton
from .relay_fused import relay_fused_triton

# triton_op (and, under the interpreter, the custom_op in common.define_op) brings its own fake.
_ops.register_variant("_triton", fakes=False)

__all__ = ["block_filter_triton", "noise_triton", "patch_dct_triton", "relay_fused_triton"]
