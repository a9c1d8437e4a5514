"""How a DP-SGD step gets its per-sample gradients (`privacy.grad_sample_mode`).

Opacus offers `hooks` (per-layer formulas run from module hooks) and `functorch` (vmap
over the model). Its third, `ghost` (per-sample norms without per-sample gradients, then a
second backward pass), is not offered: a crafted global model can make one record's
gradient NaN (a logit that overflows only for that record), and ghost clipping has no
per-sample gradient to zero, so the NaN would reach the update, a membership test no noise
hides. With per-sample gradients, their entries that are not finite are set to 0 before
clipping (`zero_non_finite`). `linear` is fedcxr's own, for the one
module Opacus is slowest on relative to its plain step: a lone linear layer under
cross-entropy, which is what a hospital trains on a fixed front end's features. Its
per-sample gradients have a closed form (∂ℓ_i/∂logits = softmax_i − onehot_i, times the
input), so the step needs neither autograd nor hooks; the loss and that gradient share one
log-softmax. On the CPU, for the default head on 195 images through a hospital's loader, a
DP step is 1.57× a plain one with Opacus' hooks and 1.21–1.25× with the closed form
(bench/dp_overhead.py; clipping and noise stay Opacus' `DPOptimizer`'s).

`auto` picks from bench/dp_overhead.py: `linear` for a linear head, else `hooks` (the
fastest for every CNN on the CPU; on an H200 at 224 px, batch 32, level with ghost clipping
for ResNet-18 and DenseNet-121 at 4.4× and 6.2× a plain step, 5.9× against ghost's 5.5×
for MobileNetV2; functorch slowest).
"""

from __future__ import annotations

import torch

MODES = ("auto", "hooks", "functorch", "linear")


def choose(mode: str, module: torch.nn.Module) -> str:
    """The concrete mode for training `module`; `linear` only for a lone `nn.Linear`."""
    if mode not in MODES:
        raise ValueError(f"privacy.grad_sample_mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "linear" if isinstance(module, torch.nn.Linear) else "hooks"
    if mode == "linear" and not isinstance(module, torch.nn.Linear):
        raise ValueError(f"privacy.grad_sample_mode: 'linear' trains a lone linear layer (a head on features), "
                         f"not a {type(module).__name__}")
    return mode


@torch.no_grad()
def linear_cross_entropy(head: torch.nn.Linear, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Set `grad_sample` (each sample's gradient of its own loss, as Opacus' hooks would) on
    `head`'s parameters for the mean cross-entropy of `head(inputs)`; return that loss."""
    logits = head(inputs)
    log_probs = torch.log_softmax(logits, dim=1)  # once, for the loss and its gradient
    residual = log_probs.exp()
    residual.scatter_add_(1, labels[:, None], residual.new_full((len(labels), 1), -1.0))  # ∂ℓ_i/∂logits_i
    head.weight.grad_sample = residual.unsqueeze(2) * inputs.unsqueeze(1)
    if head.bias is not None:
        head.bias.grad_sample = residual
    return -log_probs.gather(1, labels[:, None]).mean() if len(labels) else logits.sum()


@torch.no_grad()
def zero_non_finite(module: torch.nn.Module) -> None:
    """Set every entry of the per-sample gradients (Opacus' `grad_sample`, on `module`'s parameters)
    that is not finite to 0, in place. Opacus would clip a NaN norm into a NaN step, which noise cannot
    hide; a crafted model can make that happen for one chosen record. What remains of a sample's
    gradient depends on that sample alone and is clipped like any other, so it still moves the sum by
    at most the clipping norm. (Zeroing a whole sample would do as well, but needs a reduction over
    every parameter and a device sync per step; this is one in-place pass per parameter.)"""
    for p in module.parameters():
        sample = getattr(p, "grad_sample", None)
        if isinstance(sample, torch.Tensor):
            torch.nan_to_num_(sample, nan=0.0, posinf=0.0, neginf=0.0)
