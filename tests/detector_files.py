"""A random-weight FID Inception-v3 saved as the published file is laid out (a plain state_dict of
torch-fidelity's names, without BatchNorm's num_batches_tracked), so the whole detector path runs in
CI without the real weights."""

from __future__ import annotations

import torch

from relaydiff.inception import InceptionV3


def random_detector_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights whose activations stay O(1): every batch norm's running statistics are those of
    one calibration batch (train mode with a cumulative average), as a trained network's would be."""
    torch.manual_seed(seed)
    net = InceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.train()(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g))
        net.fc.weight.mul_(20)  # logits of a few units, so IS is away from 1
    return {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def write_random_detector(path, seed: int = 0) -> str:
    torch.save(random_detector_state(seed), str(path))
    return str(path)
