"""DP-SGD at a hospital: cumulative ε, the target never exceeded, an independent cross-check, bad settings."""

from __future__ import annotations

import dp_accounting
import pytest
import torch
from opacus.accountants import RDPAccountant

from src.config import compose_config, validate
from src.training.privacy import Ledger, epsilon, plan


def settings(**privacy):
    cfg = compose_config(["federation.rounds=3", "federation.local_epochs=2", "federation.batch_size=16"])
    for key, value in privacy.items():
        cfg.privacy[key] = value
    return cfg


def test_epsilon_is_cumulative_over_three_rounds(tmp_path):
    cfg = settings(target_epsilon=None, noise_multiplier=1.1)
    p = plan(cfg.privacy, cfg.federation, num_train=200)
    assert p.sample_rate == 1 / 13 and p.steps_per_round == 2 * 13 and p.planned_steps == 3 * 26
    ledger = Ledger.open(tmp_path / "h.privacy.json")
    reported = []
    for server_round in (1, 2, 3):
        ledger = Ledger.open(tmp_path / "h.privacy.json")  # a fresh ClientApp process every round
        ledger.spend(p, server_round, p.steps_per_round)
        reported.append(ledger.report(p))
    accountant = RDPAccountant()
    accountant.history = [(1.1, 1 / 13, 3 * 26)]
    assert reported[-1]["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert reported[-1]["steps"] == 78
    assert reported[0]["epsilon"] < reported[1]["epsilon"] < reported[2]["epsilon"]
    single = RDPAccountant()
    single.history = [(1.1, 1 / 13, 26)]
    assert reported[0]["epsilon"] == pytest.approx(single.get_epsilon(delta=1e-5))


@pytest.mark.parametrize("n, target", [(40, 1.0), (200, 3.0), (1000, 8.0), (195, 100.0)])
def test_the_target_is_never_exceeded_and_a_spent_budget_declines(tmp_path, n, target):
    cfg = settings(target_epsilon=target)
    p = plan(cfg.privacy, cfg.federation, num_train=n)
    ledger = Ledger.open(tmp_path / "h.privacy.json")
    for server_round in range(1, 4):
        assert ledger.refusal(p, server_round) is None
        ledger.spend(p, server_round, p.steps_per_round)
        assert ledger.report(p)["epsilon"] <= target
    assert ledger.report(p)["epsilon"] > 0.9 * target  # σ is not needlessly large either
    reason = ledger.refusal(p, 4)  # the run goes on longer than planned
    assert reason is not None and "privacy budget spent" in reason
    # a resumed run with more rounds keeps the σ it has spent under
    longer = settings(target_epsilon=target)
    longer.federation.rounds = 6
    spent = Ledger.open(tmp_path / "h.privacy.json").noise_multiplier
    assert spent == p.noise_multiplier != plan(longer.privacy, longer.federation, n).noise_multiplier
    assert plan(longer.privacy, longer.federation, n, sigma=spent).noise_multiplier == p.noise_multiplier


@pytest.mark.parametrize("q, sigma, steps, delta", [
    (1 / 13, 1.02, 195, 1e-5), (0.01, 0.8, 3000, 1e-6), (0.1, 2.0, 50, 1e-5), (0.5, 5.0, 10, 1e-3),
])
def test_epsilon_agrees_with_dp_accounting_within_one_percent(q, sigma, steps, delta):
    """Google's dp-accounting, RDP with Opacus' orders, PoissonSampled(Gaussian) self-composed."""
    ours = epsilon([{"noise_multiplier": sigma, "sample_rate": q, "steps": steps}], delta)
    accountant = dp_accounting.rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    assert ours == pytest.approx(accountant.get_epsilon(delta), rel=0.01)


@pytest.mark.parametrize("privacy, n, key", [
    ({"target_epsilon": None, "noise_multiplier": 0.0}, 200, "privacy.noise_multiplier"),
    ({"target_epsilon": None, "noise_multiplier": -1.0}, 200, "privacy.noise_multiplier"),
    ({"target_epsilon": None, "noise_multiplier": None}, 200, "privacy.noise_multiplier"),
    ({"delta": 1.0}, 200, "privacy.delta"),
    ({"delta": 0.01}, 200, "privacy.delta: 0.01 is not below 1/n"),
    ({"target_epsilon": 1e-9}, 200, "privacy.target_epsilon: .*cannot be met"),
    ({"target_epsilon": -1.0}, 200, "privacy.target_epsilon"),
    ({"max_grad_norm": 0.0}, 200, "privacy.max_grad_norm"),
    ({"target_epsilon": float("nan")}, 200, "privacy.target_epsilon: expected a positive finite number"),
    ({"target_epsilon": None, "noise_multiplier": float("nan")}, 200, "privacy.noise_multiplier"),
    ({"delta": float("nan")}, 200, "privacy.delta"),
    ({"max_grad_norm": float("inf")}, 200, "privacy.max_grad_norm"),
])
def test_bad_settings_name_the_key(privacy, n, key):
    cfg = settings(**privacy)
    with pytest.raises(ValueError, match=key):
        plan(cfg.privacy, cfg.federation, num_train=n)


def test_a_layer_opacus_cannot_train_is_refused(monkeypatch):
    import src.models.registry as registry

    monkeypatch.setattr(registry, "build_model", lambda cfg, n: torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(n)))
    with pytest.raises(ValueError, match="model.name: Opacus cannot train .*BatchNorm"):
        validate(compose_config([]))
    validate(compose_config(["privacy=none"]))


def test_every_registered_model_passes_the_opacus_check():
    from src.models.registry import MODELS

    for name in MODELS:
        validate(compose_config([f"model={name}"]))


def test_a_dp_round_takes_the_planned_steps_and_changes_the_model(tmp_path):
    """Opacus DP-SGD on real images: Poisson sampling takes exactly 1/q steps per epoch."""
    from src.training.loops import make_loader, train_epochs
    from src.data.layouts import Sample
    from src.data.synthetic import generate
    from src.models.registry import build_model

    generate(tmp_path / "img", hospitals=1, images_per_hospital=30, seed=0)
    files = sorted((tmp_path / "img").rglob("*.dcm"))
    classes = ["normal", "bacterial", "viral"]
    samples = [Sample(str(f), classes.index(f.parent.name)) for f in files]
    cfg = compose_config([f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=32", "federation.batch_size=8",
                          "federation.local_epochs=2", "federation.rounds=1"])
    p = plan(cfg.privacy, cfg.federation, len(samples))
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, steps = train_epochs(model, make_loader(samples, cfg.data, True, 8, 0), 2, 1e-3, "cpu", dp=p)
    assert steps == p.steps_per_round == 2 * 4
    assert loss == loss and any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(model.state_dict()) == set(before)  # the plain model's keys, not Opacus' wrapper's


def test_a_hospitals_own_max_epsilon_caps_whatever_the_server_asks(tmp_path):
    """The server's run config asks for ε = 100; the hospital's policy says 2: σ is planned for 2,
    and no round takes the ledger past it. With a fixed σ from the server, the cap declines."""
    cfg = settings(target_epsilon=100.0)
    p = plan(cfg.privacy, cfg.federation, num_train=200, max_epsilon=2.0)
    assert p.target_epsilon == 2.0
    assert p.noise_multiplier > plan(cfg.privacy, cfg.federation, num_train=200).noise_multiplier
    ledger = Ledger.open(tmp_path / "h.privacy.json")
    for server_round in range(1, 4):
        assert ledger.refusal(p, server_round) is None
        ledger.spend(p, server_round, p.steps_per_round)
    assert ledger.report(p)["epsilon"] <= 2.0
    weak = plan(settings(target_epsilon=None, noise_multiplier=0.3).privacy, cfg.federation, 200, max_epsilon=2.0)
    assert "privacy budget spent" in Ledger.open(tmp_path / "other.json").refusal(weak, 1)


def test_a_hospitals_own_max_delta_is_the_delta_its_epsilon_is_counted_and_capped_at():
    """A server that raises δ (just below 1/n) would make the same spending read as a smaller ε."""
    cfg = settings(target_epsilon=2.0, delta=4e-3)
    p = plan(cfg.privacy, cfg.federation, num_train=200, max_epsilon=2.0, max_delta=1e-5)
    assert p.delta == 1e-5
    assert p.noise_multiplier > plan(cfg.privacy, cfg.federation, num_train=200, max_epsilon=2.0).noise_multiplier
    assert plan(settings(delta=1e-6).privacy, cfg.federation, 200, max_delta=1e-5).delta == 1e-6


def test_rounds_of_one_sigma_and_rate_are_accounted_as_one_entry_with_the_same_epsilon():
    """`epsilon` hands the accountant one entry per (σ, q), its steps summed; the ε is Opacus' over the
    rounds one by one (a σ or rate that changes keeps its own entry)."""
    history = [{"noise_multiplier": 1.02, "sample_rate": 1 / 13, "steps": 26}] * 4 + [
        {"noise_multiplier": 1.5, "sample_rate": 1 / 13, "steps": 26},
        {"noise_multiplier": 1.02, "sample_rate": 1 / 7, "steps": 14}]
    accountant = RDPAccountant()
    accountant.history = [(h["noise_multiplier"], h["sample_rate"], h["steps"]) for h in history]
    assert epsilon(history, 1e-5) == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
