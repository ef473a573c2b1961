"""Optional dependencies: each is one extra of pyproject.toml, and a missing one is a one-line error
naming the extra to install, raised where the module is first needed (never at `import relaydiff`).

    skimage = require("skimage", "train", "--data builtin", "scikit-image")

The base install (torch, numpy, tqdm, pillow) imports every public module; the extras are
train (scikit-image: `--data builtin`), plot (matplotlib), diffusers; eval needs nothing more.
"""

from __future__ import annotations

import importlib


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. Also a ValueError, so the command lines report it
    as the one-line error of a bad option (`--data builtin` without scikit-image), not a traceback."""


def require(module: str, extra: str, purpose: str, package: str | None = None):
    """Import `module` or raise MissingExtraError naming the extra that provides it; `package` is
    its name for pip when that differs from the module's (scikit-image for skimage)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and not module.startswith(exc.name.split(".")[0]):
            raise  # the module is there but one of its own imports failed: that error is the real one
        pip_name = package or module.split(".")[0]
        # From a checkout, since the package is on no registry; --no-build-isolation because the
        # extension is built against the installed torch (README, Install).
        raise MissingExtraError(
            f"{purpose} needs {pip_name}, which is not installed: pip install {pip_name} (the extra [{extra}]; "
            f"from a relay_kernels checkout: pip install --no-build-isolation '.[{extra}]')", name=pip_name) from None
