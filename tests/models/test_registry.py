"""Every registered model: grayscale in, logits out, no BatchNorm, and one real DP-SGD step under Opacus."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.config import compose_config
from src.models import MODELS, build_model
from src.models.grouped_conv import GroupedConv2d, register_opacus_sampler, use_grouped_conv

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
SIZE = 64


def model_cfg(name: str):
    """conf/model/<name>.yaml's `model` block, as Hydra composes it at 64 px."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml").model
    return OmegaConf.merge(cfg, {"image_size": SIZE}) if "image_size" in cfg else cfg


def test_every_model_has_a_config_and_every_config_a_model():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(MODELS)
    for name in MODELS:
        assert model_cfg(name).name == name


@pytest.mark.parametrize("name", MODELS)
def test_grayscale_in_logits_out_and_opacus_valid(name):
    torch.manual_seed(0)
    model = build_model(model_cfg(name), num_classes=3)
    out = model(torch.rand(4, 1, SIZE, SIZE))
    assert out.shape == (4, 3) and out.dtype == torch.float32
    assert model(torch.rand(0, 1, SIZE, SIZE)).shape == (0, 3)  # DP's Poisson sampling can draw an empty batch
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if hasattr(model, "front_end"):  # fixed features: nothing of it is trained
        assert not any(p.requires_grad for p in model.front_end.parameters())
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    else:
        assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1
        assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
    ModuleValidator.validate(model, strict=True)  # raises on anything Opacus refuses


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the input needs no grad: expected
def test_one_dp_sgd_step_under_opacus_hooks(name):
    register_opacus_sampler()  # as DP training does
    torch.manual_seed(0)
    model = build_model(model_cfg(name), num_classes=3)
    data = TensorDataset(torch.rand(8, 1, SIZE, SIZE), torch.randint(0, 3, (8,)))
    loader = DataLoader(data, batch_size=4, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and accountant notices
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode="hooks",
            poisson_sampling=True,
        )
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    before = [p.detach().clone() for _, p in trained]
    x, y = next(x_y for x_y in loader if len(x_y[1]) > 0)  # Poisson sampling may draw an empty batch
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # in-place ops on hooked outputs would fail here
    for n, p in trained:
        assert p.grad_sample is not None and p.grad_sample.shape == (len(y), *p.shape), n
    optimizer.step()
    changed = [not torch.equal(b, p) for b, (_, p) in zip(before, trained)]
    assert all(changed), "every trained parameter gets clipped gradient + noise"


@pytest.mark.parametrize(
    ("out_channels", "groups", "stride", "dilation", "bias"),
    [(8, 8, 1, 1, False), (8, 8, 2, 1, True), (16, 2, 2, 2, True), (16, 8, 1, 1, False)],
)
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_grouped_conv_per_sample_gradients_equal_opacus_default(out_channels, groups, stride, dilation, bias):
    """DP's guarantee rests on the per-sample gradients: the fast path must give Opacus' own."""
    register_opacus_sampler()  # as DP training does
    assert GradSampleModule.GRAD_SAMPLERS[GroupedConv2d].__name__ == "_grouped_conv_grad_sample"
    torch.manual_seed(0)
    conv = nn.Conv2d(8, out_channels, 3, stride=stride, padding=1, dilation=dilation, groups=groups, bias=bias)
    fast = use_grouped_conv(copy.deepcopy(conv))
    assert type(fast) is GroupedConv2d
    x = torch.randn(5, 8, 13, 13)

    def grad_samples(module):
        gsm = GradSampleModule(module)
        gsm(x).square().sum().backward()
        return {n: p.grad_sample for n, p in gsm.named_parameters()}

    expected, got = grad_samples(conv), grad_samples(fast)
    assert expected.keys() == got.keys()
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-5)


def test_mobilenet_depthwise_convs_take_the_fast_path():
    model = build_model({"name": "mobilenet_v2"}, num_classes=2)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 17 and all(type(m) is GroupedConv2d for m in grouped)
    from torchvision.models import MobileNetV2

    torchvision_keys = MobileNetV2(num_classes=2, norm_layer=lambda c: nn.GroupNorm(1, c)).state_dict().keys()
    assert model.state_dict().keys() == torchvision_keys  # checkpoints interchange with torchvision's


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        build_model({"name": "vgg16"}, num_classes=2)
    assert str(err.value) == f"model.name: unknown model 'vgg16'; expected one of {list(MODELS)}"
    with pytest.raises(ValueError, match="model.name: unknown model None"):
        build_model({}, num_classes=2)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"name": "resnet18", "width": 8}, "model.width: not a hyperparameter of resnet18"),
        ({"name": "small_cnn", "width": 0}, "model.width: expected a positive integer"),
        ({"name": "small_cnn", "dropout": 1.5}, "model.dropout: expected a probability"),
        ({"name": "mobilenet_v2", "width_mult": -1}, "model.width_mult: expected a positive number"),
    ],
)
def test_bad_hyperparameters_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        build_model(cfg, num_classes=2)


def test_hyperparameters_take_effect():
    def params(cfg):
        return sum(p.numel() for p in build_model(cfg, num_classes=2).parameters())

    assert params({"name": "small_cnn", "width": 8}) < params({"name": "small_cnn", "width": 16})
    model = build_model({"name": "small_cnn", "norm_groups": 4}, num_classes=2)
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {4}
    assert build_model({"name": "resnet18"}, num_classes=7).fc.out_features == 7


def test_mobilenet_residual_blocks_start_as_the_identity():
    model = build_model({"name": "mobilenet_v2"}, num_classes=2).eval()
    residual = [block for block in model.features if getattr(block, "use_res_connect", False)]
    assert len(residual) == 10
    x = torch.randn(2, residual[0].conv[-1].num_channels, 8, 8)
    torch.testing.assert_close(residual[0](x), x)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with one bright Gaussian blob, in the left half (class 0) or the right half (class 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    cx = (torch.rand(n, generator=g) * 0.3 + 0.1 + 0.5 * labels) * SIZE
    cy = (torch.rand(n, generator=g) * 0.8 + 0.1) * SIZE
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    d2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2
    images = 0.3 + 0.5 * torch.exp(-d2 / (2 * 5.0**2)) + 0.1 * torch.randn(n, SIZE, SIZE, generator=g)
    return images[:, None].float(), labels


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v2", "densenet121"])
def test_each_cnn_learns_where_the_blob_is_with_its_own_defaults(name):
    torch.manual_seed(0)
    x, y = blobs(128, seed=0)
    model = build_model(model_cfg(name), num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(compose_config([f"model={name}"]).federation.lr))
    for _ in range(5):  # one or two epochs are enough; stop as soon as it has learnt
        model.train()
        for idx in torch.randperm(len(y)).split(16):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        if accuracy > 0.9:
            break
    assert accuracy > 0.9


def test_kymatio_imports_and_the_scipy_shim_is_scipys_own_spherical_harmonic():
    """kymatio imports scipy.special.sph_harm (removed in SciPy 1.15); the shim must be the same function:
    Y_1^1(azimuth, polar) = -1/2 sqrt(3 / 2π) sin(polar) e^{i azimuth}."""
    import math

    import scipy.special

    from src.models.scattering import _scattering2d

    _scattering2d()
    azimuth, polar = 0.7, 1.1
    expected = -0.5 * math.sqrt(3 / (2 * math.pi)) * math.sin(polar) * complex(math.cos(azimuth), math.sin(azimuth))
    assert abs(complex(scipy.special.sph_harm(1, 1, azimuth, polar)) - expected) < 1e-12


def test_a_rounds_arrays_are_the_trained_entries():
    """Messages carry the trained entries only (the default head's 195 values, not its 0.9 MB front
    end; src/models/wire.py refuses anything else)."""
    from src.models.registry import trained_keys, trained_state

    sent = build_model(model_cfg("scatter_linear"), 3)
    assert set(trained_state(sent)) == {"head.weight", "head.bias"}
    assert sum(v.numel() for v in trained_state(sent).values()) == 195
    cnn = build_model(model_cfg("small_cnn"), 3)
    assert list(trained_state(cnn)) == trained_keys(cnn)  # a CNN without a fixed part sends all it has
