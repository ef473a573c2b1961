"""Ahead-of-time compile of every Triton kernel for sm_80 / sm_90, without a GPU.

    python -m relay_kernels.triton.aot --arch 80,90 [--subset] [--json FILE]

A stand-in driver reports a CUDA GPU of the asked architecture while the backend's own launchers
run on CPU tensors; each kernel launch is caught and, instead of running, compiled (Triton ships
ptxas) for every autotune configuration left after pruning. So arguments are specialised exactly as
in a real launch (ints equal to 1 become constants, pointers and ints divisible by 16 are marked).
Every case also checks the launch grid against CUDA's limits. Prints registers, spills and shared
memory per configuration and exits non-zero if any configuration fails to compile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget

from . import block_noise, patch_dct, relay_fused

LAUNCHER_MODULES = (block_noise, patch_dct, relay_fused)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
GRID_LIMITS = (2**31 - 1, 65535, 65535)
# Spill stores above this many bytes per thread make an autotune config "spills badly"; the
# configs in common/block_noise are pruned so that none of the full sweep's configs do.
SPILL_LIMIT = 256


class StandInDriver:
    """What JITFunction.run and the autotuner ask of triton.runtime.driver.active, for one arch.

    The device id is the arch, so each JITFunction keeps one binder (which holds the target) per
    arch in its device_caches.
    """

    def __init__(self, arch: int):
        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.arch

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def is_active(self):
        return True


@dataclass
class Launch:
    kernel: object
    grid: object
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for torch.library.wrap_triton in the launcher modules: records, never runs."""

    def __init__(self):
        self.launches: list[Launch] = []

    def __call__(self, kernel):
        rec = self

        class _Bound:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: rec.launches.append(Launch(kernel, grid, args, kwargs))

        return _Bound()


@contextlib.contextmanager
def recording():
    rec = _Recorder()
    saved = [(m, m.wrap_triton) for m in LAUNCHER_MODULES]
    for m in LAUNCHER_MODULES:
        m.wrap_triton = rec
    try:
        yield rec
    finally:
        for m, w in saved:
            m.wrap_triton = w


@contextlib.contextmanager
def stand_in_driver(arch: int):
    from triton.runtime.driver import driver

    saved = driver.__dict__.get("_active")  # reset_active() would probe for a real GPU
    driver.set_active(StandInDriver(arch))
    try:
        yield
    finally:
        driver._active = saved


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    call: object = field(compare=False, repr=False)  # () -> runs one launcher


def _img(b, c, h, w, dtype):
    return torch.zeros(b, c, h, w, dtype=dtype)


def _seed(b):
    return torch.arange(b, dtype=torch.int64)


def _fused_case(k, dtype, n_in, mode, c=3, s=4, h=32):
    """relay_fused as patch_blur (mode none), relay_corrupt/step/correct (n_in 1/2/4)."""
    def call():
        b = 2
        xs = [_img(b, c, h, h, dtype) for _ in range(n_in)]
        w = torch.ones(b, n_in, k, k, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        scale = None if mode == "none" else torch.ones(b, dtype=w.dtype)
        seed = _seed(b) if mode == "seed" else None
        e = _img(b, c, h, h, dtype) if mode == "given" else None
        eb = _img(b, c, h, h, dtype) if mode == "given" else None
        relay_fused.relay_fused(xs, w, scale, 0.5, s, seed, 0, e, eb)
    return Case(f"relay_fused k={k} {dtype_name(dtype)} n_in={n_in} noise={mode} C={c} s={s} H=W={h}", call)


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def full_cases() -> list[Case]:
    cases = []
    for dtype in DTYPES:
        dn = dtype_name(dtype)
        for k in (2, 4, 8, 16):
            for h in sorted({32, 3 * k if k < 16 else 48}):  # H, W divisible by 16 or not
                for inverse in (False, True):
                    cases.append(Case(f"patch_dct k={k} {dn} inverse={inverse} H=W={h}",
                                      lambda k=k, h=h, inverse=inverse, dtype=dtype:
                                      patch_dct.patch_dct(_img(2, 3, h, h, dtype), k, inverse)))
            cases.append(_fused_case(k, dtype, 1, "none"))
            cases.append(_fused_case(k, dtype, 1, "seed"))
            cases.append(_fused_case(k, dtype, 1, "seed", c=1))
            cases.append(_fused_case(k, dtype, 2, "seed"))
            cases.append(_fused_case(k, dtype, 4, "seed"))
            cases.append(_fused_case(k, dtype, 1, "given"))
            for s in (1, 16):  # s = 1 is a constexpr; 16 has the largest halo of the default tiles
                cases.append(_fused_case(k, dtype, 1, "seed", s=s))
        for s in (1, 2, 4, 8, 16):  # every halo width HS of the default tiles
            for transpose in (False, True):
                cases.append(Case(f"block_filter {dn} s={s} transpose={transpose}",
                                  lambda s=s, t=transpose, dtype=dtype:
                                  block_noise.block_filter(_img(2, 3, 64, 64, dtype), s, t)))
            for c in (1, 3):
                cases.append(Case(f"noise {dn} block s={s} C={c}",
                                  lambda s=s, c=c, dtype=dtype:
                                  block_noise.noise(_seed(2), [2, c, 64, 64], 0, s, dtype)))
        for shape, offset in (([2, 3, 32, 32], 0), ([2, 3, 5, 7], 1), ([2, 1, 9, 9], 12345)):
            cases.append(Case(f"noise {dn} plain shape={shape} offset={offset}",
                              lambda shape=shape, offset=offset, dtype=dtype:
                              block_noise.noise(_seed(2), shape, offset, 0, dtype)))
    cases.append(_big_batch_case())
    return cases


def _big_batch_case() -> Case:
    """More samples than CUDA's grid.y allows (65,535)."""
    return Case("noise float32 plain B=70000",
                lambda: block_noise.noise(_seed(70000), [70000, 3], 0, 0, torch.float32))


def subset_cases() -> list[Case]:
    """Every kernel, every noise mode, C = 1, the default block size 4, each dtype once (run_case
    compiles only the first autotune config left after pruning for these)."""
    f16, bf16, f32, f64 = DTYPES
    return [
        Case("patch_dct k=4 float32 inverse=False H=W=32",
             lambda: patch_dct.patch_dct(_img(2, 1, 32, 32, f32), 4, False)),
        Case("patch_dct k=8 float64 inverse=True H=W=24",
             lambda: patch_dct.patch_dct(_img(2, 1, 24, 24, f64), 8, True)),
        Case("block_filter float16 s=4 transpose=False",
             lambda: block_noise.block_filter(_img(2, 1, 64, 64, f16), 4, False)),
        Case("block_filter bfloat16 s=4 transpose=True",
             lambda: block_noise.block_filter(_img(2, 1, 64, 64, bf16), 4, True)),
        Case("noise float32 block s=4 C=1", lambda: block_noise.noise(_seed(2), [2, 1, 64, 64], 0, 4, f32)),
        Case("noise bfloat16 plain shape=[2, 1, 5, 7] offset=1",
             lambda: block_noise.noise(_seed(2), [2, 1, 5, 7], 1, 0, bf16)),
        _big_batch_case(),
        _fused_case(4, f32, 1, "none", c=1),
        _fused_case(4, f16, 1, "seed", c=1),
        _fused_case(8, f64, 2, "seed", c=1),
        _fused_case(4, bf16, 4, "given", c=1),
    ]


# ---------------------------------------------------------------------------- compile


@dataclass
class Result:
    case: str
    arch: int
    config: str
    ok: bool
    regs: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = -1
    seconds: float = 0.0
    error: str = ""
    ptx: str = field(default="", repr=False)  # kept only when asked (tests grep it)


_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def _ptxas_stats(log: str) -> dict:
    out = {}
    for key, pat in _PTXAS.items():
        m = pat.search(log)
        out[key] = int(m.group(1)) if m else -1
    return out


def _config_name(cfg) -> str:
    kw = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw},warps={cfg.num_warps}"


def _check_grid(launch: Launch, meta: dict) -> None:
    grid = launch.grid(meta) if callable(launch.grid) else launch.grid
    for axis, (n, limit) in enumerate(zip(grid, GRID_LIMITS, strict=False)):
        if not 1 <= n <= limit:
            raise ValueError(f"grid {tuple(grid)}: axis {axis} is {n}, CUDA allows 1..{limit}")


def compile_launch(case: Case, launch: Launch, arch: int, first_only: bool = False,
                   keep_ptx: bool = False) -> list[Result]:
    """Compile every autotune config of one recorded launch (as the autotuner's warmup would)."""
    tuner = launch.kernel
    named = dict(zip(tuner.arg_names, launch.args, strict=False))
    tuner.nargs = named
    try:
        cfgs = tuner.prune_configs(launch.kwargs)
    finally:
        tuner.nargs = None
    if first_only:
        cfgs = cfgs[:1]
    results = []
    for cfg in cfgs:
        res = Result(case.name, arch, _config_name(cfg), ok=False)
        t0 = time.perf_counter()
        log = io.StringIO()
        try:
            _check_grid(launch, {**named, **launch.kwargs, **cfg.kwargs})
            with contextlib.redirect_stdout(log):
                compiled = tuner.fn.warmup(*launch.args, grid=launch.grid, **launch.kwargs, **cfg.all_kwargs())
            stats = _ptxas_stats(log.getvalue())
            res.regs, res.spill_stores, res.spill_loads = stats["regs"], stats["spill_stores"], stats["spill_loads"]
            res.shared = int(compiled.metadata.shared)
            res.ptx = compiled.asm["ptx"] if keep_ptx else ""
            res.ok = True
        except Exception as exc:  # a failed compile is a result to report, not a crash
            msg = f"{type(exc).__name__}: {exc}"
            res.error = msg if len(msg) < 2000 else msg[:1000] + " ... " + msg[-900:]
            if os.environ.get("RELAY_AOT_TRACEBACK"):
                traceback.print_exc()
        res.seconds = time.perf_counter() - t0
        results.append(res)
    return results


def run_case(case: Case, arch: int, first_only: bool = False, keep_ptx: bool = False) -> list[Result]:
    with recording() as rec:
        try:
            case.call()
        except Exception as exc:
            return [Result(case.name, arch, "-", ok=False, error=f"launcher: {type(exc).__name__}: {exc}")]
    if not rec.launches:
        return [Result(case.name, arch, "-", ok=False, error="the launcher launched nothing")]
    results = []
    with stand_in_driver(arch):
        for launch in rec.launches:
            results += compile_launch(case, launch, arch, first_only, keep_ptx)
    return results


def summarize(results: list[Result]) -> dict:
    by_arch = {}
    for r in results:
        s = by_arch.setdefault(r.arch, {"configs": 0, "compiled": 0, "failed": 0, "spilled": 0,
                                        "max_spill_stores": 0, "seconds": 0.0})
        s["configs"] += 1
        s["compiled"] += r.ok
        s["failed"] += not r.ok
        s["spilled"] += r.spill_stores > 0
        s["max_spill_stores"] = max(s["max_spill_stores"], r.spill_stores)
        s["seconds"] += r.seconds
    return by_arch


def markdown(results: list[Result]) -> str:
    """The docs/TRITON_AOT.md table: one row per arch, then every config that spills."""
    lines = [f"Triton {triton.__version__}, torch {torch.__version__}", "",
             "| arch | configs | compiled | failed | spilled | max spill stores (B) | max regs | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, s in summarize(results).items():
        regs = max((r.regs for r in results if r.arch == arch), default=-1)
        lines.append(f"| sm_{arch} | {s['configs']} | {s['compiled']} | {s['failed']} | {s['spilled']} | "
                     f"{s['max_spill_stores']} | {regs} | {s['seconds']:.0f} |")
    spills = sorted((r for r in results if r.spill_stores > 0), key=lambda r: -r.spill_stores)
    if spills:
        lines += ["", "| arch | spill stores / loads (B) | regs | case | config |", "|---|---|---|---|---|"]
        lines += [f"| sm_{r.arch} | {r.spill_stores} / {r.spill_loads} | {r.regs} | {r.case} | {r.config} |"
                  for r in spills]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="80,90", help="comma-separated compute capabilities")
    p.add_argument("--subset", action="store_true", help="the CI subset instead of the full sweep")
    p.add_argument("--filter", default="", help="only cases whose name contains this")
    p.add_argument("--json", default="", help="write every result to this file")
    p.add_argument("--markdown", action="store_true", help="end with the table for docs/TRITON_AOT.md")
    p.add_argument("--spill-limit", type=int, default=SPILL_LIMIT,
                   help="fail when a config spills more bytes than this (-1: never)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        # Under the interpreter the autotuners keep only their first config (common.configs).
        p.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    archs = [int(a) for a in args.arch.split(",")]
    # A fresh cache, so every config really goes through ptxas (and its -v log is captured).
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="relay_aot_"))
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    cases = [c for c in (subset_cases() if args.subset else full_cases()) if args.filter in c.name]
    print(f"triton {triton.__version__}, torch {torch.__version__}, {len(cases)} cases, sm_{archs}", flush=True)
    print(f"{'arch':>4} {'ok':>4} {'regs':>4} {'spill':>6} {'smem':>6} {'sec':>5}  case | config", flush=True)
    results = []
    t0 = time.perf_counter()
    for arch in archs:
        for case in cases:
            for r in run_case(case, arch, first_only=args.subset):
                results.append(r)
                print(f"{r.arch:>4} {'ok' if r.ok else 'FAIL':>4} {r.regs:>4} {r.spill_stores:>6} {r.shared:>6} "
                      f"{r.seconds:>5.1f}  {r.case} | {r.config}", flush=True)
                if not r.ok:
                    print(f"     error: {r.error}", flush=True)
    summary = summarize(results)
    print(f"\nsummary (triton {triton.__version__}, {time.perf_counter() - t0:.0f} s):")
    for arch, s in summary.items():
        print(f"  sm_{arch}: {s['compiled']}/{s['configs']} compiled, {s['failed']} failed, {s['spilled']} spilled "
              f"(max {s['max_spill_stores']} B spill stores), {s['seconds']:.0f} s")
    if args.markdown:
        print("\n" + markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            rows = [{k: v for k, v in asdict(r).items() if k != "ptx"} for r in results]
            json.dump({"triton": triton.__version__, "torch": torch.__version__, "summary": summary,
                       "results": rows}, f, indent=1)
    bad_spill = [r for r in results if args.spill_limit >= 0 and r.spill_stores > args.spill_limit]
    for r in bad_spill:
        print(f"SPILLS {r.spill_stores} B > {args.spill_limit}: sm_{r.arch} {r.case} | {r.config}")
    failed = [r for r in results if not r.ok]
    return 1 if failed or bad_spill else 0


if __name__ == "__main__":
    sys.exit(main())
