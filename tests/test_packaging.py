"""What a user installing the package meets (issue 20): setup.py without torch, the dependencies the
modules import, the one-line errors for missing extras, the command lines' device default.
The sdist and wheel themselves are built and installed by CI (.ci/package.sh), too slow for here."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from relaydiff import compare, dataset, metrics, sample
from relaydiff.extras import MissingExtraError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_setup_without_torch(*args, env=None):
    """setup.py in a fresh interpreter in which `import torch` fails, as in pip's isolated build."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', *sys.argv[1:]]; "
            "runpy.run_path('setup.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_setup_without_torch_stops_at_once_saying_what_to_type():
    res = run_setup_without_torch("bdist_wheel")
    assert res.returncode != 0
    assert "torch is not installed" in res.stderr and "pip install --no-build-isolation ." in res.stderr
    assert "RELAY_KERNELS_NO_EXTENSIONS=1" in res.stderr


def test_setup_metadata_needs_no_torch():
    """The sdist and pip's metadata step run setup.py without torch: they must not need it."""
    res = run_setup_without_torch("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "0.1.0"


def pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_torch_is_not_a_build_requirement():
    """An isolated build would fetch another torch (GBs of CUDA wheels) and build for it."""
    requires = pyproject()["build-system"]["requires"]
    assert not [r for r in requires if re.match(r"torch\b", r)], requires


def _module_level_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in tree.body:  # module level only: imports inside functions are the lazy ones
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_the_base_install_imports_every_public_module():
    """Module-level imports of relay_kernels and relaydiff are the stdlib, the package itself or a base
    dependency (relaydiff.diffusers excepted: it is the `diffusers` extra's module)."""
    base = {re.match(r"[A-Za-z0-9_-]+", d).group(0).lower() for d in pyproject()["project"]["dependencies"]}
    import_names = {"pillow": "PIL"}
    allowed = set(sys.stdlib_module_names) | {"relay_kernels", "relaydiff", "triton"} | {
        import_names.get(d, d) for d in base}
    bad = []
    for pkg in ("relay_kernels", "relaydiff"):
        for name in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if not name.endswith(".py") or (pkg, name) == ("relaydiff", "diffusers.py"):
                continue
            path = os.path.join(ROOT, pkg, name)
            bad += [f"{pkg}/{name}: {m}" for m in _module_level_imports(path) if m not in allowed]
    # triton is imported at module level only by relay_kernels.triton, which `import relay_kernels` never imports.
    assert not bad, bad


def test_every_required_extra_is_declared():
    """Each require(module, extra, ...) names an extra of pyproject.toml that installs the module."""
    extras = pyproject()["project"]["optional-dependencies"]
    calls = []
    for name in os.listdir(os.path.join(ROOT, "relaydiff")):
        if name.endswith(".py"):
            text = open(os.path.join(ROOT, "relaydiff", name), encoding="utf-8").read()
            calls += re.findall(r'require\(\s*"([\w.]+)",\s*"(\w+)",\s*"[^"]*"(?:,\s*"([\w-]+)")?\)', text)
    assert len(calls) >= 2  # skimage for --data builtin, diffusers for the scheduler
    for module, extra, package in calls:
        pip_name = package or module.split(".")[0]
        assert extra in extras, f"require({module!r}): no extra [{extra}]"
        assert any(re.match(re.escape(pip_name) + r"\b", d) for d in extras[extra]), (module, extra, extras[extra])


@pytest.mark.parametrize("missing,call,extra,package", [
    ("skimage", lambda: dataset.open_dataset("builtin", 8), "train", "scikit-image"),
])
def test_a_missing_extra_is_one_line_naming_it(monkeypatch, missing, call, extra, package):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    with pytest.raises(MissingExtraError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and f"[{extra}]" in msg and f"pip install {package}" in msg
    assert isinstance(info.value, ValueError)  # the CLIs print ValueErrors as one-line usage errors


def test_relaydiff_diffusers_without_diffusers_names_the_extra(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "diffusers", None)
    for name in [m for m in sys.modules if m.startswith("diffusers.")]:  # submodules other tests imported
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "relaydiff.diffusers", raising=False)  # restored afterwards
    with pytest.raises(MissingExtraError, match=r"\[diffusers\].*pip install --no-build-isolation '\.\[diffusers\]'"):
        importlib.import_module("relaydiff.diffusers")


def test_the_command_lines_default_to_device_auto():
    assert sample.parse_args(["--run", "r", "--outdir", "o"]).device == "auto"
    assert compare.parse_args(["--outdir", "o"]).device == "auto"


def test_the_fallback_plot_keeps_the_spaces_of_its_title(tmp_path, monkeypatch):
    """Without matplotlib the PIL chart's title reads as words: a space is as wide as a letter."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from PIL import Image

    curves = {"a": (np.arange(1.0, 5.0), np.arange(4.0))}

    def title_width(title):
        path = metrics.plot_curves(curves, str(tmp_path / "p.png"), title, "y")
        band = np.asarray(Image.open(path).convert("L"))[4:24, 250:]  # the title's row, right of the y label
        cols = np.nonzero((band < 128).any(0))[0]
        return cols.max() - cols.min()

    letter = title_width("xx") - title_width("x")
    assert letter > 2
    assert title_width("x x") - title_width("xx") >= letter - 1
