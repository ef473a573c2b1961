"""Loading files a user downloaded: parsed before they are trusted.

`load_state_dict(path, what=...)` is the one entry point for a flat {name: tensor} file (a
`torch.save(module.state_dict())` file, such as the evaluation detector's weights). It refuses
anything that is not a regular file and names the file and the reason in a ValueError.
"""

from __future__ import annotations

import os
import pickle
import stat

import torch


def check_regular_file(path: str, what: str) -> None:
    """A ValueError unless path is an existing regular file (not a FIFO, device or folder)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read it ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path}: not a regular file")


def load_state_dict(path: str, *, what: str = "state_dict file") -> dict[str, torch.Tensor]:
    """{name: CPU tensor} from a torch.save'd state_dict; a ValueError naming path otherwise."""
    check_regular_file(path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError) as exc:
        raise ValueError(f"{what} {path}: not a loadable state_dict ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{what} {path}: not a state_dict (a flat dict of names to tensors)")
    return state
