"""`federation.precision`: the arithmetic a hospital's forward and backward passes run in.

`bfloat16` runs them under PyTorch's autocast (weights, optimizer state and updates stay
float32). On this project's CPU (avx512_bf16, one thread, 64 px, batch 16) a plain step
of SmallCNN, ResNet-18 and DenseNet-121 took 0.67–0.78× its float32 time per image, a DP
step with Opacus' hooks 0.72–0.97×; MobileNetV2's depthwise convolutions were slower
(1.24×, 1.35×). bench/dp_overhead.py and bench/loader_throughput.py take `--precision`.

Under DP the clipping bound must hold for the numbers that are summed: each sample's
gradient, however it was computed, is cast to float32 before Opacus measures its norm and
clips it (`grad_samples_to_float32`); a norm rounded to bfloat16's 8 bits could let a
clipped gradient exceed `max_grad_norm` by ~0.8%.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("float32", "bfloat16")


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"federation.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The context a forward pass (and its loss) runs in."""
    if check(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def grad_samples_to_float32(module: torch.nn.Module) -> None:
    """Cast the per-sample gradients Opacus' hooks (or functorch) left on `module`'s parameters to float32."""
    for p in module.parameters():
        sample = getattr(p, "grad_sample", None)
        if isinstance(sample, torch.Tensor) and sample.dtype != torch.float32:
            p.grad_sample = sample.float()
