#!/usr/bin/env bash
# The prepared device check (`make gpu-check`): everything only a GPU can show, in one command that
# ends within 8 minutes, for a machine lent for a few minutes with its own torch and no network.
#
#   tools/gpu_check.sh [OUTDIR]     (default: $OUT when set, else ./gpu-check-out)
#
# Steps, each time-boxed, each with its log under OUTDIR; a failing step does not stop the later
# ones, but the exit status is then 1:
#   build      relay_kernels._C in place with its CUDA part (MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0),
#              and beside it the standalone CUDA self-test (csrc/cuda/test/selftest.cu, no torch)
#   test-gpu   pytest tests/test_cuda_build.py tests/test_gpu.py (RELAY_KERNELS_EXPECT_CUDA=1), the
#              cuda backend's tests first, then Triton's
#   memcheck   compute-sanitizer --tool memcheck on the self-test (a small call of every kernel)
#   racecheck  compute-sanitizer --tool racecheck on the self-test (shared-memory hazards)
#   graph      CUDA-graph capture and replay of sample_relay vs eager (tools/gpu_graph_check.py)
#   train      benchmarks/train_step.py: a training step of each paper preset at full size, batch-gpu 16
#              (fused vs the released corruption), images/s and peak memory, in OUTDIR/train-step.md
#   bench      python -m benchmarks.table --device cuda, the table in OUTDIR/benchmark-table.md
# Without a CUDA GPU visible to torch it says so and exits with status 2 at once.
# PYTHON (default: python, else python3), CUDA_HOME (default /usr/local/cuda), MAX_JOBS and
# TORCH_CUDA_ARCH_LIST may be overridden.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${1:-${OUT:-$ROOT/gpu-check-out}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
PYTHON="$(command -v "${PYTHON:-python}" || command -v python3)"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
# The python's own bin first: torch's build looks for the ninja that the ninja wheel puts there.
export PATH="$(dirname "$PYTHON"):$CUDA_HOME/bin:$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
START=$(date +%s)
DEADLINE=$((START + 460))  # 8 minutes less a margin for the summary
SUMMARY="$OUTDIR/summary.txt"
FAILED=0

say() { echo "gpu-check: $*" | tee -a "$SUMMARY"; }
: >"$SUMMARY"

# Is there a GPU? Asked of torch, which is what the kernels will use.
probe="$(timeout 90 "$PYTHON" -c '
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}")
' 2>&1)"
if [[ $? -ne 0 && "${GPU_CHECK_NO_PROBE:-}" != 1 ]]; then  # (=1 only to test this script without a GPU)
  last="${probe##*$'\n'}"  # torch's message, or the last line of a traceback
  say "no CUDA GPU here, nothing run: ${last:-no python with torch found (set PYTHON)}"
  exit 2
fi
say "device: $probe"
say "python $PYTHON; nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"
triton_version="$("$PYTHON" -c 'import triton; print(triton.__version__)' 2>/dev/null || echo 'not installed')"
say "triton: $triton_version; ninja: $(command -v ninja || "$PYTHON" -c 'import ninja; print("python package")' \
  2>/dev/null || echo 'not found (the build then compiles one file at a time)')"
SANITIZER="$(command -v compute-sanitizer || true)"
say "compute-sanitizer: ${SANITIZER:-not found under $CUDA_HOME/bin or on PATH (memcheck and racecheck fail)}"
say "output: $OUTDIR; MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUTDIR/nvidia-smi.txt" 2>&1

# step NAME BOX RESERVE CMD...: runs CMD for at most BOX seconds, or less so that RESERVE seconds
# stay for the steps after it; logs to OUTDIR/NAME.log; prints status and time.
step() {
  local name="$1" box="$2" reserve="$3"
  shift 3
  local left=$((DEADLINE - $(date +%s) - reserve))
  ((left < box)) && box=$left
  if ((box < 5)); then
    say "$(printf '%-10s SKIPPED (no time left in the 8 minutes)' "$name")"
    FAILED=1
    return
  fi
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=5 "$box" "$@" >"$OUTDIR/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMED OUT after ${box} s"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  say "$(printf '%-10s %-28s %4d s   log: %s' "$name" "$status" $(($(date +%s) - t0)) "$name.log")"
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

build() {
  # The self-test (plain nvcc, no torch) compiles beside the extension: 16 cores, few files.
  (
    pids=()
    for src in csrc/cuda/*.cu csrc/cuda/test/selftest.cu; do
      nvcc -O3 -std=c++17 --use_fast_math -lineinfo -arch=sm_90 -Icsrc/include -Icsrc/cuda \
        -c "$src" -o "$WORK/$(basename "$src" .cu).o" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
    nvcc -arch=sm_90 "$WORK"/*.o -o "$WORK/selftest" && echo "self-test built"
  ) >"$OUTDIR/build-selftest.log" 2>&1 &
  local selftest=$!
  "$PYTHON" setup.py build_ext --inplace
  local rc=$?
  wait "$selftest" || { echo "the self-test did not build: see build-selftest.log"; rc=1; }
  "$PYTHON" -c 'from relay_kernels import _backend as b; assert b.has_compiled_kernel("cuda"), b.compiled_error()' \
    || rc=1
  return $rc
}

sanitize() {  # TOOL: the self-test under compute-sanitizer; fails on any reported hazard
  [[ -n "$SANITIZER" ]] || { echo "compute-sanitizer not found"; return 1; }
  [[ -x "$WORK/selftest" ]] || { echo "no self-test binary (the build step failed)"; return 1; }
  "$SANITIZER" --tool "$1" --error-exitcode 3 "$WORK/selftest"
}

gpu_tests() {  # the cuda backend first, then Triton (whose JIT compiles take longest), each test named
  local rc=0
  "$PYTHON" -m pytest tests/test_cuda_build.py tests/test_gpu.py -k "not triton" -v -rs --tb=short \
    -p no:cacheprovider --durations=10 || rc=1
  "$PYTHON" -m pytest tests/test_gpu.py -k triton -v -rs --tb=short -p no:cacheprovider --durations=10 || rc=1
  return $rc
}

export -f build sanitize gpu_tests
export WORK SANITIZER PYTHON OUTDIR
export RELAY_KERNELS_EXPECT_CUDA=1

# Boxes add up to more than the 8 minutes; each step gets at most what the later ones leave it.
step build 240 170 bash -c build
step test-gpu 150 110 bash -c gpu_tests
step memcheck 50 70 bash -c 'sanitize memcheck'
step racecheck 60 50 bash -c 'sanitize racecheck'
step graph 60 40 "$PYTHON" tools/gpu_graph_check.py
step train 120 150 bash -c 'set -o pipefail; "$PYTHON" benchmarks/train_step.py --preset all --full-size \
  --device cuda --batch-gpu 16 --steps 3 | tee "$OUTDIR/train-step.md"'
step bench 300 0 bash -c 'set -o pipefail; "$PYTHON" -m benchmarks.table --device cuda | tee "$OUTDIR/benchmark-table.md"'

say "total $(($(date +%s) - START)) s; $([[ $FAILED == 0 ]] && echo 'every step ok' || echo 'some steps FAILED: see their logs')"
exit $FAILED
