"""The parts of a training step that relaydiff.train and relaydiff.compare share: seeds, one optimizer
step (with loss scaling), one EMA update. One copy of each, so both train with the same math."""

from __future__ import annotations

import torch


def mix_seed(*values: int) -> int:
    """splitmix64 over a tuple of ints -> a non-negative int63 (an image or step seed)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h >> 1


def parse_numbers(text) -> list:
    """'1,2,3' or '0.5,1' (or a list) -> [1, 2, 3] / [0.5, 1]: whole numbers as ints, so a config
    written with '2' and one written with '2.0' are the same config."""
    values = list(text) if isinstance(text, (list, tuple)) else [float(v) for v in str(text).split(",") if v.strip()]
    return [int(v) if float(v).is_integer() else float(v) for v in values]


class LossScale:
    """fp16 loss scaling: 'dynamic' (torch.amp.GradScaler: steps with inf/nan gradients are skipped
    and the scale adapts) or a static factor (EDM's --ls: the loss is multiplied by it and the
    gradients divided by it again, so the update does not depend on it). Off (1.0) without fp16."""

    def __init__(self, ls, device_type: str, enabled: bool):
        self.dynamic = enabled and str(ls) == "dynamic"
        self.factor = 1.0 if not enabled or self.dynamic else float(ls)
        self.scaler = torch.amp.GradScaler(device_type) if self.dynamic else None

    def backward(self, loss):
        (self.scaler.scale(loss) if self.dynamic else loss * self.factor).backward()

    def unscale(self, optimizer):
        if self.dynamic:
            self.scaler.unscale_(optimizer)
        elif self.factor != 1.0:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(self.factor)

    def step(self, optimizer):
        if self.dynamic:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.dynamic else {}

    def load_state_dict(self, state: dict):
        if self.dynamic and state:
            self.scaler.load_state_dict(state)


def optimizer_step(net, optimizer, lr: float, grad_clip: float, scale: LossScale | None = None):
    """After the backward pass(es): unscale, replace non-finite gradients (as EDM), clip the gradient
    norm (0: off), set the learning rate and step."""
    if scale is not None:
        scale.unscale(optimizer)
    for p in net.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scale is not None:
        scale.step(optimizer)
    else:
        optimizer.step()


@torch.no_grad()
def ema_update(ema, net, cur_nimg: int, batch: int, halflife_kimg: float, rampup: float | None):
    """EDM's EMA: half-life halflife_kimg thousand images, ramped up to rampup * images seen (None: off)."""
    ema_nimg = halflife_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
    for p_ema, p_net in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b_net.detach())
