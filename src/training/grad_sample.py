"""How a DP-SGD step gets its per-sample gradients (`privacy.grad_sample_mode`).

Opacus offers three ways, each fastest somewhere: `hooks` (per-layer formulas run from
module hooks), `functorch` (vmap over the model) and `ghost` (per-sample norms without
per-sample gradients, a second backward pass). `linear` is fedcxr's own, for the one
module Opacus is slowest on relative to its plain step: a lone linear layer under
cross-entropy, which is what a hospital trains on a fixed front end's features. Its
per-sample gradients have a closed form (∂ℓ_i/∂logits = softmax_i − onehot_i, times the
input), so the step needs neither autograd nor hooks. On the CPU, for the default head on
195 images, Opacus' hooks make the bare step (no data loading) 4.4× a plain one and the
closed form 2.0× (the rest is the clipping and noise of Opacus' `DPOptimizer`, which it
keeps); through a hospital's loader, 1.5–1.8× and 1.1–1.5× (bench/dp_overhead.py).

`auto` picks per module, device and precision, from bench/dp_overhead.py: `linear` for a
linear head; `ghost` on CUDA in float32 (on an H200 at 224 px, batch 32: 5.5× a plain step for MobileNetV2
against hooks' 5.9×, level with hooks for ResNet-18 and DenseNet-121 at 4.4× and 6.2×,
and with less memory for ResNet-18; functorch slowest); `hooks` on the CPU (the fastest
for every CNN here) and in bfloat16, where ghost clipping is refused.
"""

from __future__ import annotations

import torch

MODES = ("auto", "hooks", "functorch", "ghost", "linear")


def choose(mode: str, module: torch.nn.Module, device, precision: str = "float32") -> str:
    """The concrete mode for training `module` on `device` in `precision`; `linear` only for a lone
    `nn.Linear`; never `ghost` in bfloat16 (src/training/precision.py)."""
    if mode not in MODES:
        raise ValueError(f"privacy.grad_sample_mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        if isinstance(module, torch.nn.Linear):
            return "linear"
        return "ghost" if torch.device(device).type == "cuda" and precision == "float32" else "hooks"
    if mode == "ghost" and precision != "float32":
        raise ValueError("privacy.grad_sample_mode: 'ghost' clips by norms from one backward pass and sums "
                         "gradients from a second; in bfloat16 these round differently and the clipping bound "
                         "no longer holds: use hooks or functorch, or federation.precision=float32")
    if mode == "linear" and not isinstance(module, torch.nn.Linear):
        raise ValueError(f"privacy.grad_sample_mode: 'linear' trains a lone linear layer (a head on features), "
                         f"not a {type(module).__name__}")
    return mode


@torch.no_grad()
def linear_cross_entropy(head: torch.nn.Linear, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Set `grad_sample` (each sample's gradient of its own loss, as Opacus' hooks would) on
    `head`'s parameters for the mean cross-entropy of `head(inputs)`; return that loss."""
    logits = head(inputs)
    residual = torch.softmax(logits, dim=1)
    residual[torch.arange(len(labels)), labels] -= 1  # ∂ℓ_i/∂logits_i
    head.weight.grad_sample = residual.unsqueeze(2) * inputs.unsqueeze(1)
    if head.bias is not None:
        head.bias.grad_sample = residual
    return torch.nn.functional.cross_entropy(logits, labels) if len(labels) else logits.sum()
