"""Builds relay_kernels._C: the CPU kernels always, the CUDA kernels when this torch is a CUDA
build and the CUDA toolkit is found. No GPU is needed to build; a skipped backend says why.

Install with `pip install --no-build-isolation .` (`-e .` for development) in an environment that
already has torch, so the extension is compiled against that torch. torch is not a build requirement
(pyproject.toml says why), so a plain `pip install .` stops here at once saying what to type.
RELAY_KERNELS_NO_EXTENSIONS=1 builds no C++ at all (no torch needed to build): the reference and
Triton backends then serve, as `import relay_kernels` allows without the compiled module.
An sdist (`python -m build --sdist`) needs no torch either: MANIFEST.in lists every source.
"""

import glob
import os
import sys

import setuptools
from setuptools import setup

# pyproject.toml's SPDX `license = "MIT"` needs setuptools 77; older ones fail with a page of schema
# errors. (Under --no-build-isolation pip does not install build-system.requires for you.)
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(f"relay_kernels: setuptools {setuptools.__version__} is too old to build this package: "
             "pip install -U 'setuptools>=77' wheel ninja, then run the install again")

ROOT = os.path.dirname(os.path.abspath(__file__))
# The setup.py commands that compile (pip runs bdist_wheel / editable_wheel; the rest are direct uses).
# Metadata and sdist commands (egg_info, dist_info, sdist) need no compiler and no torch.
COMPILING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "bdist_egg"}
NO_EXTENSIONS = os.environ.get("RELAY_KERNELS_NO_EXTENSIONS") == "1"
WANTS_EXTENSIONS = not NO_EXTENSIONS and bool(COMPILING.intersection(sys.argv[1:]))

torch = None
if WANTS_EXTENSIONS:
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        sys.exit(
            "relay_kernels: torch is not installed in this build environment. The C++ extension is built "
            "against your torch: install torch first (e.g. `pip install torch`), then "
            "`pip install --no-build-isolation .`; or set RELAY_KERNELS_NO_EXTENSIONS=1 to install without "
            "the C++ kernels (reference and Triton backends only)."
        )


def rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_skip_reason():
    if os.environ.get("RELAY_KERNELS_NO_CUDA") == "1":
        return "RELAY_KERNELS_NO_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    if CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME)"
    return None


def extensions():
    include = [os.path.join(ROOT, "csrc", "include")]
    # No -std here: BuildExtension appends the standard this torch's headers need (C++17 up to
    # torch 2.x, C++20 for newer ones) to both the host compiler and nvcc when none is given.
    cxx = ["-O3", "-fno-math-errno"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP in ATen's headers: without -fopenmp it runs serially.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    sources = rel("csrc/cpu/*.cpp")
    reason = cuda_skip_reason()
    if reason is None:
        # Ampere and Hopper SASS unless the user asks otherwise, plus sm_90 PTX that the driver
        # JIT-compiles for newer GPUs; no GPU is probed.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        print(f"relay_kernels: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        nvcc = ["-O3", "--use_fast_math", "-lineinfo"]
        return [
            CUDAExtension(
                "relay_kernels._C",
                sources + rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp"),
                include_dirs=include,
                define_macros=[("RK_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=link,
            )
        ]
    print(f"relay_kernels: skipping the CUDA backend: {reason}; building CPU kernels only")
    return [CppExtension("relay_kernels._C", sources, include_dirs=include, extra_compile_args={"cxx": cxx},
                         extra_link_args=link)]


def cuda_emu_extensions():
    """relay_kernels._cuda_emu when RELAY_KERNELS_CUDA_EMU=1: the unchanged CUDA kernels compiled as
    host C++ and run by the block emulator on CPU tensors (csrc/include/cuda_emu.h). A module of
    its own, so its symbols never meet the real CUDA build in _C. No -std here: torch's default."""
    if os.environ.get("RELAY_KERNELS_CUDA_EMU") != "1":
        return []
    print("relay_kernels: building the CUDA emulator relay_kernels._cuda_emu (RELAY_KERNELS_CUDA_EMU=1)")
    # IEEE results as the kernels' _rn intrinsics promise (no contraction into FMAs), and the
    # kernels' vector loads reinterpret memory as a GPU does (no strict-aliasing assumptions).
    cxx = ["-O2", "-fno-strict-aliasing", "-ffp-contract=off", "-Wno-unknown-pragmas"]  # nvcc's #pragma unroll
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")  # blocks run in parallel on at::parallel_for
        link.append("-fopenmp")
    return [CppExtension(
        "relay_kernels._cuda_emu",
        rel("csrc/cuda_emu/*.cpp"),
        include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cuda")],
        define_macros=[("RK_CUDA_EMU", "1"), ("RK_CUDA_EMU_WITH_TORCH", "1")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )]


if WANTS_EXTENSIONS:
    setup(
        ext_modules=extensions() + cuda_emu_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
else:
    if NO_EXTENSIONS:
        print("relay_kernels: RELAY_KERNELS_NO_EXTENSIONS=1, no C++ extension: reference and Triton backends only")
    setup()
