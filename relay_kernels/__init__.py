"""relay_kernels: fused kernels for Relay Diffusion (RDM) as PyTorch custom ops.

    import relay_kernels as rk
    x_t = rk.relay_corrupt(x0, sigma, blur_sigma, k=4, block_scale=0.15, seed=seeds)
    x_next = rk.relay_step(x_cur, den, t_cur, t_next, seed=seeds, offset=offset)

The math is docs/SPEC.md's; `relay_kernels.reference` is its plain-PyTorch statement. Importing this
package initialises no GPU and does not import Triton.
"""

from . import _ops  # noqa: F401  (defines the torch.ops.relay_kernels.* schemas first)
from ._backend import BACKENDS, BackendUnavailableError, get_backend, set_backend
from .functional import (
    block_filter,
    block_noise,
    check_sampler_scalars,
    patch_blur,
    patch_dct,
    patch_idct,
    randn,
    relay_correct,
    relay_corrupt,
    relay_step,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "block_filter",
    "block_noise",
    "check_sampler_scalars",
    "get_backend",
    "patch_blur",
    "patch_dct",
    "patch_idct",
    "randn",
    "relay_correct",
    "relay_corrupt",
    "relay_step",
    "set_backend",
]
