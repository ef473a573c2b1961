"""Argument checks shared by every public op: each bad input gets an error that names it.

Value checks (signs of sigmas) read tensor data, which on a GPU is a host sync, so they run on
Python numbers and CPU tensors, and are skipped for accelerator tensors and under torch.compile
tracing (so sampling loops stay sync-free and CUDA-graph capturable).

Ranges (SPEC 8, "Non-finite values and bad input"; the same on every backend, checked before one is chosen):
* per-sample scalars (sigma, blur_sigma, t_cur, t_next): finite, of their sign, and representable in
  the compute dtype (float32 for half and float32 images): at most finfo.max, and t_cur (and t_next
  for relay_correct, whose D' divides by it) at least finfo.tiny, so neither rounds to 0 nor gives an
  infinite t_next / t_cur or t_cur / t_next. A blur sigma whose b^2 overflows is fine: the blur is
  then its limit (reference.blur_spectrum). Values on an accelerator are not read (no sync); a
  NaN there gives NaN in its own sample.
* op-wide floats: min_scale in [0, 1], prob_length in [float32 tiny, float32 max], blur_sigma_max
  in [0, float32 max], block_scale and s_block finite within float32, s_noise in [0, 1).
* seeds and counters inside int64 (SPEC 4): an int seed s needs s .. s + B - 1 in int64, and
  offset + N (randn, block_noise) or offset + 2N (ops drawing e and e') at most 2^63 - 1.
* tensors are dense, and per-sample tensors and seeds on meta only when the op runs on meta.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._contract import FLOAT32_MAX, FLOAT_DTYPES, INT64_MAX, INT64_MIN


def _can_read_values(t: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or t.device.type != "cpu":
        return False
    return not isinstance(t, torch._subclasses.fake_tensor.FakeTensor)


def image(x, name: str, k: int | None = None) -> torch.Tensor:
    """x must be a 4-D floating tensor [B, C, H, W] with H, W multiples of k (when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _dense(x, name)
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


def _dense(t: torch.Tensor, name: str) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def _with_data(t: torch.Tensor, name: str, device: torch.device) -> None:
    """A meta tensor has no values to compute with (unless the computation is on meta too)."""
    if t.device.type == "meta" and device.type != "meta":
        raise ValueError(f"{name} is on meta (shape only, no values) but the op runs on {device}")


def _fmt(v: float) -> str:
    return f"{v:.8g}"


def check_values(values, name: str, dtype: torch.dtype, *, positive=False, nonnegative=False) -> None:
    """Each value must be finite and survive the conversion to `dtype` (the op's compute dtype):
    at most finfo.max in magnitude and, when it must be positive, at least finfo.tiny (a smaller
    one would round to 0 or to a subnormal whose reciprocal overflows)."""
    fi = torch.finfo(dtype)
    low = fi.tiny if positive else 0.0 if nonnegative else -fi.max
    what = ("positive, and neither rounding to 0 nor overflowing" if positive else
            "non-negative, and not overflowing" if nonnegative else "not overflowing")
    for v in values:
        if v != v or v in (math.inf, -math.inf):
            raise ValueError(f"{name} must be finite, got {v}")
        if positive and v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
        if nonnegative and v < 0:
            raise ValueError(f"{name} must be non-negative, got {v}")
        if not low <= v <= fi.max:
            raise ValueError(f"{name} must be in [{_fmt(low)}, {_fmt(fi.max)}] ({what} in "
                             f"{str(dtype).replace('torch.', '')}, the op's compute dtype), got {v}")


def host_values(value) -> list[float] | None:
    """A per-sample scalar's values as Python floats, when reading them costs no device sync."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return [float(value)]
        except OverflowError:  # an int beyond the float range
            return [math.inf if value > 0 else -math.inf]
    if isinstance(value, torch.Tensor) and _can_read_values(value) and value.layout == torch.strided:
        return [float(v) for v in value.detach().reshape(-1).tolist()]
    return None


def per_sample(value, name: str, like: torch.Tensor, dtype: torch.dtype, *, positive=False,
               nonnegative=False) -> torch.Tensor:
    """A per-sample scalar as a [B] tensor of `dtype` on like's device.

    Accepts a Python number, a 0-d tensor, or a tensor of B elements ([B] or [B,1,1,1]). Values
    that can be read without a device sync are range-checked (check_values) before the conversion.
    """
    batch = like.shape[0]
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        check_values(host_values(value), name, dtype, positive=positive, nonnegative=nonnegative)
        return torch.full((batch,), float(value), dtype=dtype, device=like.device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor of {batch} values, got {type(value).__name__}")
    _dense(value, name)
    _with_data(value, name, like.device)
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
    host = host_values(value)
    if host is not None:
        check_values(host, name, dtype, positive=positive, nonnegative=nonnegative)
    if value.shape != (batch,) or value.dtype != dtype or value.device != like.device:
        value = value.reshape(batch).to(device=like.device, dtype=dtype)
    return value


def time_ratios(t_cur, t_next, dtype: torch.dtype, *, both: bool) -> None:
    """The sampler weights use t_next / t_cur (and t_cur / t_next when both): they must be finite
    in the compute dtype. Checked where the values can be read without a sync."""
    tc, tn = host_values(t_cur), host_values(t_next)
    if tc is None or tn is None:
        return
    n = max(len(tc), len(tn))
    big = torch.finfo(dtype).max
    for c, x in zip(tc * (n // len(tc)), tn * (n // len(tn)), strict=True):
        if x / c > big or (both and c / x > big):
            pair = f"t_next / t_cur = {x / c:.3g}" if x / c > big else f"t_cur / t_next = {c / x:.3g}"
            raise ValueError(f"{pair} overflows {str(dtype).replace('torch.', '')} (at most {_fmt(big)}); "
                             f"got t_cur={c}, t_next={x}")


def unit_interval(value, name: str) -> float:
    """A float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def real(value, name: str, low: float = -FLOAT32_MAX, high: float = FLOAT32_MAX, *, open_low=False) -> float:
    """A finite float in [low, high] ((low, high] with open_low). The default range is float32's: the
    fused kernels compute with these in float32 for every image dtype but float64."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if v != v or v in (math.inf, -math.inf) or not (low < v if open_low else low <= v) or v > high:
        raise ValueError(f"{name} must be finite and in {'(' if open_low else '['}{_fmt(low)}, {_fmt(high)}], "
                         f"got {value}")
    return v


def seeds(seed, batch: int, device) -> torch.Tensor:
    """Per-sample int64 seeds: an int s means s, s+1, ..., s+B-1; or a tensor of B integers."""
    if seed is None:
        raise ValueError("pass seed= (an int or one int64 seed per sample) or noise=(e, e_block)")
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seed = int(seed)
        if not INT64_MIN <= seed <= INT64_MAX - (batch - 1):
            raise ValueError(f"seed must be in [-2^63, 2^63 - {batch}] so that the batch's seeds seed .. "
                             f"seed + {batch - 1} fit in int64, got {seed}")
        # (arange's exclusive end, seed + batch, may itself be outside int64)
        return torch.arange(batch, dtype=torch.int64, device=device) + seed
    if not isinstance(seed, torch.Tensor):
        raise TypeError(f"seed must be an int or an int64 tensor, got {type(seed).__name__}")
    _dense(seed, "seed")
    _with_data(seed, "seed", torch.device(device))
    if seed.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise TypeError(f"seed must be an integer tensor (int64, int32, int16, int8 or uint8), got {seed.dtype}")
    if seed.dim() != 1 or seed.shape[0] != batch:
        raise ValueError(f"seed must hold one seed per sample, shape [{batch}], got {tuple(seed.shape)}")
    return seed.to(device=device, dtype=torch.int64)


def offset(value, n: int, draws: int) -> int:
    """The first generator counter of a call drawing `draws` fields of n = C*H*W normals per sample
    (counters offset .. offset + draws*n - 1): offset + draws*n must stay inside int64 (SPEC 4)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"offset must be an int, got {type(value).__name__}")
    value = int(value)
    top = INT64_MAX - draws * n
    if not 0 <= value <= top:
        used = "offset + 2N" if draws == 2 else "offset + N"
        raise ValueError(f"offset must be in [0, {top}]: {used} (N = {n}, the elements per sample) must stay "
                         f"inside int64, got {value}")
    return value


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
