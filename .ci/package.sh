#!/usr/bin/env bash
# CI: the package as a user gets it (issue 20). From a clean copy of the checkout:
#   1. an sdist, checked to hold every backend's sources and headers and the test helpers, and no
#      compiled files;
#   2. a wheel built from the checkout in virtualenv W (torch + build tools), installed there;
#   3. the sdist installed in a fresh virtualenv S (`pip install --no-build-isolation`, as the README
#      says), so the sdist itself must compile;
#   4. in S, a plain `pip install` (build isolation, no torch in it) must stop at once with setup.py's
#      message, and RELAY_KERNELS_NO_EXTENSIONS=1 must give a working install without C++.
# After each install, from outside the source tree: import relay_kernels and relaydiff (from the
# venv, not the copy), one op on the `cpu` backend against the reference, `python -m relaydiff.train
# --help`. The C++ is compiled twice in all, once per venv (MAX_JOBS=2). torch is the pinned CPU
# wheel (TORCH_SPEC). Usage: .ci/package.sh (PYTHON, TORCH_SPEC, MAX_JOBS); prints each stage's time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
T0=$(date +%s)
stamp() { echo "package: [$(($(date +%s) - T0)) s] $*"; }
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-2}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The tracked and untracked (not ignored) files, as in a fresh clone: no in-place .so, no build/.
mkdir "$TMP/src" "$TMP/dist" "$TMP/outside"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$TMP/src"

new_venv() {  # dir: a virtualenv with the pinned torch and what --no-build-isolation needs
  "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q "$TORCH_SPEC" "setuptools>=77" wheel ninja build
}

smoke() {  # python what: the installed packages work from outside the source tree
  (cd "$TMP/outside" && "$1" - "$TMP/src" <<'EOF'
import os, sys
import torch
import relay_kernels as rk
import relaydiff, relaydiff.sampling  # noqa: F401  (the main Python API: needs only the base install)
src = os.path.realpath(sys.argv[1])
for mod in (rk, relaydiff):
    assert not os.path.realpath(mod.__file__).startswith(src), f"{mod.__name__} imported from the source copy"
x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
got = rk.patch_blur(x, 1.5, k=4, backend="cpu")
torch.testing.assert_close(got, rk.patch_blur(x, 1.5, k=4, backend="reference"), rtol=1e-5, atol=1e-5)
print(f"package: ok, {rk.__file__}: patch_blur on the cpu backend matches the reference")
EOF
  ) && (cd "$TMP/outside" && "$1" -m relaydiff.train --help >/dev/null) && echo "package: ok, $2: relaydiff.train --help"
}

new_venv "$TMP/venv-w"
W="$TMP/venv-w/bin/python"
stamp "venv W ready ($("$W" -c 'import torch; print(torch.__version__)'))"

(cd "$TMP/src" && "$W" -m build --no-isolation --sdist --outdir "$TMP/dist" >"$TMP/sdist.log" 2>&1) \
  || { tail -30 "$TMP/sdist.log"; echo "package: sdist FAILED" >&2; exit 1; }
SDIST="$(ls "$TMP"/dist/*.tar.gz)"
listing="$(tar -tzf "$SDIST")"
for want in csrc/include/cpu_common.h csrc/include/cuda_emu.h csrc/cuda/launchers.h csrc/cuda/block_noise.cu \
    csrc/cuda/patch_dct.cu csrc/cuda/relay_fused.cu csrc/cuda_emu/runtime.cpp csrc/cpu/normals.cpp \
    tests/conftest.py tests/helpers.py MANIFEST.in; do
  grep -q "/$want\$" <<<"$listing" || { echo "package: the sdist lacks $want" >&2; exit 1; }
done
if grep -E '\.(so|o|pyc)$' <<<"$listing"; then echo "package: the sdist holds compiled files" >&2; exit 1; fi
stamp "sdist $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) kB) holds every backend's sources"

(cd "$TMP/src" && "$W" -m pip wheel -q --no-build-isolation --no-deps . -w "$TMP/dist" >"$TMP/wheel.log" 2>&1) \
  || { tail -50 "$TMP/wheel.log"; echo "package: wheel build FAILED" >&2; exit 1; }
WHEEL="$(ls "$TMP"/dist/*.whl)"
unzip -l "$WHEEL" | grep -q "relay_kernels/_C" || { echo "package: the wheel has no relay_kernels._C" >&2; exit 1; }
"$W" -m pip install -q "$WHEEL"
stamp "wheel $(basename "$WHEEL") built from the checkout and installed in W"
smoke "$W" wheel
stamp "wheel checked"

new_venv "$TMP/venv-s"
S="$TMP/venv-s/bin/python"
stamp "venv S ready"
(cd "$TMP/outside" && "$S" -m pip install -q --no-build-isolation "$SDIST" >"$TMP/sdist-install.log" 2>&1) \
  || { tail -50 "$TMP/sdist-install.log"; echo "package: installing the sdist FAILED" >&2; exit 1; }
stamp "sdist built and installed in S"
smoke "$S" sdist
stamp "sdist checked"

# A plain `pip install` builds in isolation, where torch is absent: it must fail with the fix, fast.
t=$(date +%s)
if (cd "$TMP/outside" && "$S" -m pip install --no-deps "$SDIST" >"$TMP/isolated.log" 2>&1); then
  echo "package: a plain pip install (build isolation) succeeded; expected setup.py's torch message" >&2; exit 1
fi
grep -q "pip install --no-build-isolation" "$TMP/isolated.log" \
  || { tail -30 "$TMP/isolated.log"; echo "package: a plain pip install failed without the message" >&2; exit 1; }
stamp "a plain pip install stops in $(($(date +%s) - t)) s with setup.py's message"

# Without C++ (RELAY_KERNELS_NO_EXTENSIONS=1): a pure-Python install, reference backend, cpu refused.
(cd "$TMP/outside" && RELAY_KERNELS_NO_EXTENSIONS=1 "$S" -m pip install -q --no-deps --force-reinstall "$SDIST" \
  >"$TMP/noext.log" 2>&1) || { tail -30 "$TMP/noext.log"; echo "package: RELAY_KERNELS_NO_EXTENSIONS=1 FAILED" >&2; exit 1; }
(cd "$TMP/outside" && "$S" - <<'EOF'
import torch
import relay_kernels as rk
x = torch.randn(1, 1, 8, 8)
rk.patch_blur(x, 1.0, k=4, backend="reference")
try:
    rk.patch_blur(x, 1.0, k=4, backend="cpu")
    raise SystemExit("package: backend='cpu' ran without the C++ extension")
except rk.BackendUnavailableError as exc:
    print(f"package: ok, without C++: reference runs, cpu refused ({str(exc).splitlines()[0][:80]})")
EOF
)
stamp "all package checks passed"
