"""Per-sample gradients under DP: the closed form for a linear head is Opacus' DP-SGD, and `auto` picks a mode."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers import DPOptimizer

from src.config import compose_config, validate
from src.models.registry import build_model
from src.training.grad_sample import choose, linear_cross_entropy
from src.training.loops import train_epochs
from src.training.privacy import Plan


class Features(torch.utils.data.Dataset):
    def __init__(self, n: int, dim: int):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, dim, generator=g) * 3, torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i]}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_closed_form_trains_a_linear_head_as_opacus_hooks_do(optimizer):
    """Full batch (sample rate 1: Poisson sampling takes every image) and σ = 0, so the only
    randomness is gone: the closed form's clipped steps must match Opacus' hooks', and the
    clipping (C = 0.05, far below these gradients' norms) must make both differ from plain training."""
    data = Features(24, 8)
    dp = Plan(noise_multiplier=0.0, sample_rate=1.0, steps_per_round=3, planned_steps=3, delta=1e-5,
              max_grad_norm=0.05, target_epsilon=None)
    trained = {}
    for mode in ("hooks", "linear", None):
        torch.manual_seed(0)
        head = torch.nn.Linear(8, 3)
        loader = torch.utils.data.DataLoader(data, batch_size=len(data), shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        loss, steps = train_epochs(head, loader, 3, 0.5, "cpu", dp=None if mode is None else dp,
                                   grad_sample_mode=mode or "auto", optimizer=optimizer, momentum=0.9)
        assert steps == 3 and loss == loss
        assert all(getattr(p, "grad_sample", None) is None for p in head.parameters())  # a plain model back
        trained[mode] = torch.cat([p.detach().flatten() for p in head.parameters()])
    torch.testing.assert_close(trained["linear"], trained["hooks"], atol=1e-5, rtol=1e-4)
    assert (trained["linear"] - trained[None]).abs().max() > 1e-2


def test_the_closed_form_takes_a_noise_only_step_on_an_empty_batch():
    head = torch.nn.Linear(4, 3)
    before = head.weight.detach().clone()
    optimizer = DPOptimizer(torch.optim.SGD(head.parameters(), lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=8)
    loss = linear_cross_entropy(head, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert float(loss) == 0.0 and head.weight.grad_sample.shape == (0, 3, 4)
    optimizer.step()
    assert not torch.equal(head.weight, before)


@pytest.mark.parametrize("mode", ["linear", "hooks", "functorch"])
def test_a_crafted_model_cannot_make_one_record_turn_the_update_nan(mode):
    """A weight of 1e38 on a feature only the target record has overflows that record's logit: its
    gradient is NaN, which Opacus would clip into a NaN step that no noise hides (a membership test).
    The target's gradient is zeroed instead, so the step stays finite with it as without it."""
    data = Features(16, 8)
    data.x[:, 5] = 0.0
    dp = Plan(noise_multiplier=1.0, sample_rate=1.0, steps_per_round=1, planned_steps=1, delta=1e-5,
              max_grad_norm=1.0, target_epsilon=None)
    for target in (False, True):
        data.x[3, 5] = 10.0 if target else 0.0
        head = torch.nn.Linear(8, 3)
        with torch.no_grad():
            head.weight[0, 5] = 1e38
        model = head if mode == "linear" else torch.nn.Sequential(head)
        loader = torch.utils.data.DataLoader(data, batch_size=len(data))
        train_epochs(model, loader, 1, 0.1, "cpu", dp=dp, grad_sample_mode=mode, optimizer="sgd")
        assert torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()


def test_auto_picks_the_closed_form_for_a_linear_head_and_opacus_for_a_cnn():
    cnn = build_model(compose_config(["model=small_cnn"]).model, 3)
    assert choose("auto", torch.nn.Linear(64, 3)) == "linear"
    assert choose("auto", cnn) == "hooks"
    assert choose("functorch", cnn) == "functorch"
    with pytest.raises(ValueError, match="lone linear layer"):
        choose("linear", cnn)
    with pytest.raises(ValueError, match="privacy.grad_sample_mode"):
        choose("vmap", cnn)
    with pytest.raises(ValueError, match="expected one of auto, hooks, functorch, linear, got 'ghost'"):
        choose("ghost", cnn)


def test_a_mode_that_cannot_train_the_model_is_refused_before_the_run():
    with pytest.raises(ValueError, match="privacy.grad_sample_mode: 'linear' trains a lone linear layer"):
        validate(compose_config(["model=small_cnn", "privacy.grad_sample_mode=linear"]))
    with pytest.raises(ValueError, match="privacy.grad_sample_mode: expected"):
        validate(compose_config(["privacy.grad_sample_mode=vmap"]))
    validate(compose_config(["privacy.grad_sample_mode=linear"]))  # the default scatter_linear's head
