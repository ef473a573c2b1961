#!/usr/bin/env bash
# CI: every Triton kernel compiles ahead of time for sm_80 and sm_90 on each Triton a user will
# have: the newest (the test venv's), the one torch 2.14.1 brings (3.8) and the lent H200's (3.6).
# Runs the representative subset of relay_kernels.triton.aot (every kernel, every noise mode,
# C = 1, block size 4, each dtype once); a configuration that fails to compile fails the run.
# No GPU needed: Triton ships ptxas. The full sweep is `make triton-aot`.
#
#   .ci/triton_aot.sh            (from the clone root, after .ci/run made .venv)
#
# Pythons, each with torch and relay_kernels importable from the clone root:
#   PY_NEWEST  default .venv/bin/python (the test venv: torch 2.13, newest triton)
#   PY_CU      default .venv-cu/bin/python (torch 2.14.1 with its triton 3.8); where it does not
#              exist, triton==3.8.0 is installed with pip --target into $AOT_WORK/triton38 for
#              PY_NEWEST's torch
#   triton 3.6.0 is installed with pip --target into $AOT_WORK/triton36 and used with PY_NEWEST's torch.
# AOT_WORK (default .venv/triton_aot, git-ignored) holds those and the logs; AOT_ARCH (default 80,90)
# and AOT_ARGS (default --subset) pass through to the tool.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_NEWEST=${PY_NEWEST:-.venv/bin/python}
PY_CU=${PY_CU:-.venv-cu/bin/python}
AOT_ARCH=${AOT_ARCH:-80,90}
AOT_WORK=$(mkdir -p "${AOT_WORK:-.venv/triton_aot}" && cd "${AOT_WORK:-.venv/triton_aot}" && pwd)
read -r -a AOT_ARGS <<< "${AOT_ARGS:---subset}"

target_install() {  # dir version: triton==version into dir, without dependencies (torch stays the venv's)
  if [ ! -f "$1/triton/__init__.py" ]; then
    "$PY_NEWEST" -m pip install -q --no-deps --target "$1" "triton==$2"
  fi
}

target_install "$AOT_WORK/triton36" 3.6.0
declare -A RUN
RUN[newest]="$PY_NEWEST"
RUN[3.6]="env PYTHONPATH=$AOT_WORK/triton36 $PY_NEWEST"
if [ -x "$PY_CU" ]; then
  RUN[3.8]="$PY_CU"
else
  echo "triton_aot: $PY_CU not found, using triton 3.8.0 from $AOT_WORK/triton38 with $PY_NEWEST's torch"
  target_install "$AOT_WORK/triton38" 3.8.0
  RUN[3.8]="env PYTHONPATH=$AOT_WORK/triton38 $PY_NEWEST"
fi

# The three versions in parallel (2 cores: compiles are mostly single-threaded ptxas and LLVM).
start=$(date +%s)
declare -A PID
for v in newest 3.8 3.6; do
  # shellcheck disable=SC2086
  env -u TRITON_INTERPRET ${RUN[$v]} -m relay_kernels.triton.aot --arch "$AOT_ARCH" "${AOT_ARGS[@]}" \
    > "$AOT_WORK/$v.log" 2>&1 &
  PID[$v]=$!
done
status=0
for v in newest 3.8 3.6; do
  if wait "${PID[$v]}"; then res=ok; else res=FAILED; status=1; fi
  echo "== triton $v: $res ($AOT_WORK/$v.log)"
  sed -n '/^summary/,$p' "$AOT_WORK/$v.log"
  if [ "$res" = FAILED ]; then grep -E "FAIL|error:|SPILLS|Error" "$AOT_WORK/$v.log" | head -40; fi
done
echo "triton_aot: $(( $(date +%s) - start )) s"
exit $status
