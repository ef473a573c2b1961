#!/usr/bin/env bash
# Compiles every CUDA source of the backend with nvcc for sm_80 and sm_90 (setup.py's nvcc flags),
# without torch and without a GPU, and links the standalone self-test (csrc/cuda/test).
# The language standard is C++17 here, the oldest one a supported torch (>= 2.4) builds extensions
# with; setup.py leaves the choice to torch (C++20 for torch 2.14), which .ci/cuda_torch_build.sh
# builds against, so the kernels are compiled as both.
# Fails loudly: any compile error, or any nvcc/ptxas warning, ends the script with a non-zero
# status. Usage: csrc/cuda/check_compile.sh  (NVCC=/path/to/nvcc to override; JOBS=n in parallel)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
JOBS="${JOBS:-4}"
[[ -x "$NVCC" ]] || { echo "check_compile: nvcc not found (set NVCC)" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
FLAGS=(-O3 -std=c++17 --use_fast_math -lineinfo -I"$ROOT/csrc/include" -I"$ROOT/csrc/cuda"
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       -Werror all-warnings)

echo "check_compile: $("$NVCC" --version | tail -1)"
compile() {  # src obj
  local log="$2.log"
  if ! "$NVCC" "${FLAGS[@]}" -c "$1" -o "$2" >"$log" 2>&1; then
    echo "check_compile: FAILED $1" >&2
    cat "$log" >&2
    return 1
  fi
  if grep -qi "warning" "$log"; then
    echo "check_compile: WARNINGS in $1" >&2
    cat "$log" >&2
    return 1
  fi
  echo "check_compile: ok $1"
}
export -f compile
export NVCC TMP
FLAGS_STR="$(printf '%q ' "${FLAGS[@]}")"
export FLAGS_STR

srcs=("$ROOT"/csrc/cuda/*.cu "$ROOT"/csrc/cuda/test/*.cu)
status=0
pids=()
for src in "${srcs[@]}"; do
  [[ -e "$src" ]] || continue
  obj="$TMP/$(basename "$src" .cu).o"
  ( eval "FLAGS=($FLAGS_STR)"; compile "$src" "$obj" ) &
  pids+=($!)
  if (( ${#pids[@]} >= JOBS )); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if (( status != 0 )); then
  echo "check_compile: FAILED" >&2
  exit 1
fi

if compgen -G "$TMP/selftest.o" >/dev/null; then
  "$NVCC" -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 "$TMP"/*.o \
    -o "$TMP/selftest" || { echo "check_compile: FAILED to link the self-test" >&2; exit 1; }
  echo "check_compile: ok link csrc/cuda/test/selftest (run it on a GPU: see the header of csrc/cuda/test/selftest.cu)"
fi
echo "check_compile: all CUDA sources compile for sm_80 and sm_90"
