"""`import relay_kernels` is lean: no Triton import, no CUDA initialisation, no compiled module needed."""

import subprocess
import sys
import textwrap


def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)


def test_import_is_lean():
    out = _run("""
        import sys, torch
        import relay_kernels as rk
        assert 'triton' not in sys.modules, 'triton imported'
        assert not torch.cuda.is_initialized(), 'CUDA initialised'
        assert 'relay_kernels._C' not in sys.modules, 'compiled module loaded eagerly'
        print('ok')
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_reference_works_without_compiled_module():
    """With _C hidden, reference still runs and asking for cpu says why not."""
    out = _run("""
        import sys
        sys.modules['relay_kernels._C'] = None  # makes `from . import _C` raise ImportError
        import torch, relay_kernels as rk
        x = torch.randn(1, 1, 8, 8)
        rk.patch_blur(x, 1.0, backend='reference')
        try:
            rk.patch_blur(x, 1.0, backend='cpu')
        except rk.BackendUnavailableError as e:
            print('unavailable:', e)
    """)
    assert out.returncode == 0, out.stderr
    assert "relay_kernels._C is not built" in out.stdout
