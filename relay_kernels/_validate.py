"""Argument checks shared by every public op: each bad input gets an error that names it.

Value checks (signs of sigmas) read tensor data, which on a GPU is a host sync, so they run on
Python numbers and CPU tensors, and are skipped for accelerator tensors and under torch.compile
tracing (so sampling loops stay sync-free and CUDA-graph capturable).
"""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _can_read_values(t: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or t.device.type != "cpu":
        return False
    return not isinstance(t, torch._subclasses.fake_tensor.FakeTensor)


def image(x, name: str, k: int | None = None) -> torch.Tensor:
    """x must be a 4-D floating tensor [B, C, H, W] with H, W multiples of k (when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if k is not None:
        h, w = x.shape[-2:]
        if h % k or w % k:
            raise ValueError(f"{name}: H and W must be multiples of the patch size k={k}, got {h}x{w}")
    return x


def size_param(value, name: str, x: torch.Tensor | None = None) -> int:
    """A patch or block size: a positive int no larger than the image."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if x is not None and value > min(x.shape[-2:]):
        raise ValueError(f"{name}={value} is larger than the image ({x.shape[-2]}x{x.shape[-1]})")
    return value


def same_as(t, like: torch.Tensor, name: str, like_name: str) -> torch.Tensor:
    image(t, name)
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}")
    return t


def per_sample(value, name: str, like: torch.Tensor, dtype: torch.dtype, *, positive=False,
               nonnegative=False) -> torch.Tensor:
    """A per-sample scalar as a [B] tensor of `dtype` on like's device.

    Accepts a Python number, a 0-d tensor, or a tensor of B elements ([B] or [B,1,1,1]).
    """
    batch = like.shape[0]
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        _check_sign(v, name, positive, nonnegative)
        return torch.full((batch,), v, dtype=dtype, device=like.device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor of {batch} values, got {type(value).__name__}")
    if not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
    if value.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(f"gradients with respect to {name} are not implemented "
                                  "(the ops are linear in their image inputs only); pass it detached")
    if value.numel() == 1 and value.dim() <= 1:
        value = value.reshape(1).expand(batch)
    elif value.numel() != batch or (value.dim() > 1 and any(s != 1 for s in value.shape[1:])):
        raise ValueError(f"{name} must be a float or hold one value per sample (batch {batch}), "
                         f"got shape {tuple(value.shape)}")
    if value.shape != (batch,) or value.dtype != dtype or value.device != like.device:
        value = value.reshape(batch).to(device=like.device, dtype=dtype)
    if (positive or nonnegative) and _can_read_values(value):
        # As Python floats (one op instead of three); NaN passes, and NaN comes out.
        low = min((v for v in value.tolist() if v == v), default=1.0)
        if positive and low <= 0:
            raise ValueError(f"{name} must be positive, got {value.tolist()}")
        if nonnegative and low < 0:
            raise ValueError(f"{name} must be non-negative, got {value.tolist()}")
    return value


def _check_sign(v: float, name: str, positive: bool, nonnegative: bool) -> None:
    if positive and not v > 0 and v == v:
        raise ValueError(f"{name} must be positive, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be non-negative, got {v}")


def unit_interval(value, name: str) -> float:
    """A float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def seeds(seed, batch: int, device) -> torch.Tensor:
    """Per-sample int64 seeds: an int s means s, s+1, ..., s+B-1; or a tensor of B integers."""
    if seed is None:
        raise ValueError("pass seed= (an int or one int64 seed per sample) or noise=(e, e_block)")
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return torch.arange(int(seed), int(seed) + batch, dtype=torch.int64, device=device)
    if not isinstance(seed, torch.Tensor):
        raise TypeError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
    if seed.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise TypeError(f"seed must be an integer tensor, got {seed.dtype}")
    if seed.dim() != 1 or seed.shape[0] != batch:
        raise ValueError(f"seed must hold one seed per sample, shape [{batch}], got {tuple(seed.shape)}")
    return seed.to(device=device, dtype=torch.int64)


def offset(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"offset must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"offset must be non-negative, got {value}")
    return int(value)


def noise_pair(noise, like: torch.Tensor, like_name: str):
    if not isinstance(noise, (tuple, list)) or len(noise) != 2:
        raise TypeError("noise must be a pair (e, e_block) of tensors shaped like the image")
    e, e_block = noise
    same_as(e, like, "noise[0]", like_name)
    same_as(e_block, like, "noise[1]", like_name)
    return e, e_block


def shape(value) -> tuple[int, ...]:
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"shape must be a non-empty tuple of ints, got {value!r}")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in value):
        raise ValueError(f"shape must hold positive ints, got {tuple(value)}")
    return tuple(int(s) for s in value)
