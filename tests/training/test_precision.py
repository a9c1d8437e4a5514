"""`federation.precision=bfloat16`: training runs in bfloat16, DP still clips in float32."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers import DPOptimizer

from src.config import compose_config, validate
from src.models.registry import build_model
from src.training.loops import train_epochs
from src.training.privacy import Plan


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 24, size: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 1, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


def _train(precision: str, dp: Plan, mode: str):
    torch.manual_seed(0)
    model = build_model(compose_config(["model=small_cnn"]).model, 3)
    before = [p.detach().clone() for p in model.parameters()]
    loader = torch.utils.data.DataLoader(Images(), batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    loss, steps = train_epochs(model, loader, 2, 1e-3, "cpu", dp=dp, grad_sample_mode=mode, precision=precision)
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    return model, loss, steps, moved


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_bfloat16_dp_computes_in_bfloat16_and_clips_float32_gradients(monkeypatch, mode):
    """The layers run in bfloat16 (autocast), yet every per-sample gradient Opacus measures and clips is
    float32 (a norm rounded to bfloat16 could let a clipped gradient exceed max_grad_norm); the model
    trains and stays float32."""
    outputs, clipped = set(), []
    conv_forward = torch.nn.Conv2d.forward

    def watch_conv(self, x):
        y = conv_forward(self, x)
        outputs.add(y.dtype)
        return y

    clip = DPOptimizer.clip_and_accumulate

    def watch_clip(self):
        clipped.append({p.grad_sample.dtype for p in self.params})
        clip(self)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", watch_conv)
    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", watch_clip)
    dp = Plan(noise_multiplier=0.5, sample_rate=1 / 3, steps_per_round=6, planned_steps=6, delta=1e-5,
              max_grad_norm=0.1, target_epsilon=None)
    model, loss, steps, moved = _train("bfloat16", dp, mode)
    assert outputs == {torch.bfloat16}
    assert clipped and all(dtypes == {torch.float32} for dtypes in clipped)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert steps == 6 and loss == loss and moved > 1e-5


def test_a_bfloat16_step_follows_the_float32_gradient():
    """One plain SGD step over the whole batch (lr 1: the step is the gradient) from the same weights:
    bfloat16's step points where float32's does, and differs from it (autocast is in effect)."""
    steps = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = build_model(compose_config(["model=small_cnn"]).model, 3)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        loader = torch.utils.data.DataLoader(Images(), batch_size=24)
        train_epochs(model, loader, 1, 1.0, "cpu", optimizer="sgd", precision=precision)
        steps[precision] = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    cosine = torch.nn.functional.cosine_similarity(steps["float32"], steps["bfloat16"], dim=0)
    assert cosine > 0.99 and not torch.equal(steps["float32"], steps["bfloat16"])


def test_precision_is_validated_by_name():
    with pytest.raises(ValueError, match="federation.precision: expected float32 or bfloat16, got 'float16'"):
        validate(compose_config(["federation.precision=float16"]))
    validate(compose_config(["model=small_cnn", "federation.precision=bfloat16"]))
