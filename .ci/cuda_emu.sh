#!/usr/bin/env bash
# The CUDA kernels under AddressSanitizer and UBSan, in the CPU emulator (csrc/include/cuda_emu.h):
# builds the launchers and the standalone self-test csrc/cuda/test/selftest.cu (no torch) with
# -fsanitize=address,undefined and runs it (every kernel, awkward shapes, float32 and float64).
# ASan sees out-of-bounds global and shared memory accesses (each block's dynamic shared memory is
# an exactly sized heap allocation), UBSan misaligned vector loads. A canary kernel that writes
# past its shared memory must be caught, or the run fails. Usage: .ci/cuda_emu.sh (CXX, JOBS).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CXX="${CXX:-g++}"
JOBS="${JOBS:-2}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
FLAGS=(-O1 -g -std=c++17 -DRK_CUDA_EMU -fno-strict-aliasing -ffp-contract=off -Wno-unknown-pragmas -fno-omit-frame-pointer
       -fsanitize=address,undefined -fno-sanitize-recover=all
       -I"$ROOT/csrc/include" -I"$ROOT/csrc/cuda")
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1"

start=$(date +%s)
srcs=("$ROOT"/csrc/cuda_emu/{block_noise,patch_dct,relay_fused,runtime}.cpp "$ROOT/csrc/cuda/test/selftest.cu"
      "$ROOT/csrc/cuda_emu/test/smem_overflow.cpp")
pids=()
for src in "${srcs[@]}"; do
  obj="$TMP/$(basename "${src%.*}").o"
  "$CXX" "${FLAGS[@]}" -x c++ -c "$src" -o "$obj" &
  pids+=($!)
  if (( ${#pids[@]} >= JOBS )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$CXX" -fsanitize=address,undefined "$TMP"/{block_noise,patch_dct,relay_fused,runtime,selftest}.o -o "$TMP/selftest"
"$CXX" -fsanitize=address,undefined "$TMP"/{runtime,smem_overflow}.o -o "$TMP/smem_overflow"
echo "cuda_emu: built with ASan + UBSan in $(( $(date +%s) - start )) s"

if "$TMP/smem_overflow" >"$TMP/canary.log" 2>&1 || ! grep -q "heap-buffer-overflow" "$TMP/canary.log"; then
  cat "$TMP/canary.log" >&2
  echo "cuda_emu: FAILED: the sanitizer did not catch the canary's shared-memory overflow" >&2
  exit 1
fi
echo "cuda_emu: ok, the canary's shared-memory overflow is caught"

start=$(date +%s)
if ! "$TMP/selftest" >"$TMP/selftest.log" 2>&1; then
  cat "$TMP/selftest.log" >&2
  echo "cuda_emu: FAILED: the self-test under ASan + UBSan" >&2
  exit 1
fi
echo "cuda_emu: ok, $(grep -c '^ok' "$TMP/selftest.log") self-test cases clean under ASan + UBSan in $(( $(date +%s) - start )) s"
