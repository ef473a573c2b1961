#!/usr/bin/env bash
# CI: relay_kernels._C builds with its CUDA part against a CUDA build of torch, without a GPU
# (issue 11 item 2), on the 2-core CI machine in about 20 minutes:
#   1. a virtualenv .venv-cu with torch==2.14.1 (the CUDA 13.0 build from the machine's local
#      wheels, about 5.5 GB with its nvidia-* wheels; it brings Triton 3.8). Pinned: any other
#      version would be a multi-GB download;
#   2. the build with the machine's nvcc (CUDA_HOME, default /usr/local/cuda) for the default
#      TORCH_CUDA_ARCH_LIST (sm_80 and sm_90 SASS, sm_90 PTX), checked with cuobjdump;
#   3. import on the CPU, a short CPU test, and backend="cuda" refused with BackendUnavailableError
#      saying why (tests/test_cuda_build.py with RELAY_KERNELS_EXPECT_CUDA=1).
# .venv-cu is left in place on purpose: the Triton ahead-of-time compile checks reuse it (Triton 3.8).
# The build runs in a copy of the working tree, .cu-build/: built in place here it would replace
# the relay_kernels/_C*.so that .venv (torch 2.13, CPU) built and runs, which has the same name.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
T0=$(date +%s)
stamp() { echo "cuda_torch_build: [$(($(date +%s) - T0)) s] $*"; }
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
[[ -x "$CUDA_HOME/bin/nvcc" ]] || { echo "cuda_torch_build: no nvcc under CUDA_HOME=$CUDA_HOME" >&2; exit 1; }

python3 -m venv .venv-cu
PY="$ROOT/.venv-cu/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q torch==2.14.1 setuptools wheel ninja numpy pytest
"$PY" -c 'import torch, triton; assert torch.version.cuda, "not a CUDA build of torch"; print(
    f"cuda_torch_build: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
    f"GPU visible: {torch.cuda.is_available()}")'
stamp "venv ready"

# The tracked and untracked (not ignored) files, as they are in the working tree.
rm -rf .cu-build
mkdir .cu-build
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C .cu-build
cd .cu-build
MAX_JOBS="${MAX_JOBS:-2}" "$PY" setup.py build_ext --inplace >"$ROOT/.ci-cuda-build.log" 2>&1 \
  || { tail -50 "$ROOT/.ci-cuda-build.log"; echo "cuda_torch_build: build FAILED" >&2; exit 1; }
grep -m1 "building CUDA kernels" "$ROOT/.ci-cuda-build.log"
stamp "relay_kernels._C built (log: .ci-cuda-build.log)"

# SASS for sm_80 and sm_90 and PTX for compute_90 (Triton ships a cuobjdump; the toolkit may not).
SO="$(ls relay_kernels/_C*.so)"
CUOBJDUMP="$(command -v cuobjdump || "$PY" -c 'import os, triton; print(os.path.join(
    os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))')"
listing="$("$CUOBJDUMP" --list-elf --list-ptx "$SO")"
for want in "sm_80\.cubin" "sm_90\.cubin" "sm_90\.ptx"; do
  grep -q "$want" <<<"$listing" || { echo "$listing"; echo "cuda_torch_build: no ${want//\\/} in $SO" >&2; exit 1; }
done
stamp "$SO holds sm_80 and sm_90 SASS and sm_90 PTX"

"$PY" - <<'EOF'
import torch
import relay_kernels as rk
from relay_kernels import _backend
assert _backend.has_compiled_kernel("cuda") and _backend.has_compiled_kernel("cpu"), _backend.compiled_error()
try:
    rk.patch_dct(torch.zeros(1, 1, 8, 8), backend="cuda")
    raise SystemExit("backend='cuda' on a machine without a GPU did not raise")
except rk.BackendUnavailableError as exc:
    print(f"cuda_torch_build: imports on the CPU with CUDA and CPU kernels; backend='cuda' says: {exc}")
EOF

# The short CPU test (277 tests, about 1.5 CPU-minutes): the CUDA-side checks, argument validation
# and patch_dct on the compiled cpu backend (Triton's interpreter is covered by the main CI run).
RELAY_KERNELS_EXPECT_CUDA=1 RELAY_KERNELS_TEST_BACKENDS=reference,cpu "$PY" -m pytest -q -p no:cacheprovider -rs \
  tests/test_cuda_build.py tests/test_validation.py tests/test_patch_dct.py -k "not triton and not compile"
stamp "done"
