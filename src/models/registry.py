"""The `model=` config group: every model grayscale-in, logits-out, and trainable under Opacus.

    model = build_model(cfg.model, num_classes=len(cfg.data.classes))

Opacus' per-sample gradients (`grad_sample_mode="hooks"`) put two constraints on a
model, and each builder here meets them by construction:

- No BatchNorm: its batch statistics mix samples, so per-sample gradients and DP's
  sensitivity bound no longer hold. Every model is built with GroupNorm of
  gcd(norm_groups, channels) groups, the rule `opacus.validators.ModuleValidator.fix`
  uses (norm_groups = 32 as in Wu & He 2018).
- No in-place operation on a hooked module's output: Opacus' full backward hooks
  wrap each layer's output in a `BackwardHookFunction` view, and modifying that view
  in place fails in backward ("Output 0 of BackwardHookFunction is a view and is being
  modified inplace"). torchvision and MONAI use `ReLU(inplace=True)`/`ReLU6(inplace=True)`
  and ResNet blocks do `out += identity`. Every activation is made out-of-place and
  ResNet's block adds its residual out of place. `ModuleValidator.validate` checks
  neither, so `build_model` does (`_make_out_of_place`) and the tests train every
  model one DP step.

And one for speed: grouped (depthwise) convolutions get Opacus' exact "backward as a
convolution" per-sample gradients instead of its default, which is ~10× slower for
them (src/models/grouped_conv.py).

No pretrained weights: nothing is downloaded, ImageNet weights expect 3-channel
BatchNorm models anyway.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from src.models.grouped_conv import use_grouped_conv
from src.models.scattering import ScatterLinear
from src.models.small_cnn import SmallCNN


def _group_norm(groups: int) -> Callable[[int], nn.GroupNorm]:
    """A `norm_layer(channels)` factory for torchvision: GroupNorm, gcd(groups, channels) groups."""

    def norm_layer(channels: int) -> nn.GroupNorm:
        return nn.GroupNorm(math.gcd(groups, channels), channels)

    return norm_layer


def _grayscale_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """`conv` rebuilt for one input channel, initialised as torchvision initialises its convs."""
    new = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _make_out_of_place(model: nn.Module) -> nn.Module:
    """Every module with an `inplace` flag (ReLU, ReLU6, Dropout, ...) switched to out-of-place."""
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


# --- small_cnn -------------------------------------------------------------------------


def small_cnn(
    num_classes: int, width: int = 16, dropout: float = 0.0, norm_groups: int = 8, pool_grid: int = 2
) -> nn.Module:
    return SmallCNN(
        num_classes, in_channels=1, width=width, dropout=dropout, norm_groups=norm_groups, pool_grid=pool_grid
    )


# --- resnet18 (PriMIA) -----------------------------------------------------------------


def resnet18(num_classes: int, norm_groups: int = 32) -> nn.Module:
    """torchvision's ResNet-18 with GroupNorm, a 1-channel stem and out-of-place residuals.

    MONAI's ResNet (monai.networks.nets.resnet18) would be the field's choice, but its
    blocks hard-code `out += residual` and take no `act` argument (their ReLU is always
    in place), so it fails under Opacus' hooks without patching. torchvision's is the
    canonical architecture PriMIA used; patching its block's forward is one small class.
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    class OutOfPlaceBasicBlock(BasicBlock):
        """torchvision's BasicBlock, residual added out of place (`out + identity`, not `+=`).

        Same parameters and state_dict keys as torchvision's, so checkpoints interchange.
        """

        def forward(self, x: Tensor) -> Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    model = ResNet(OutOfPlaceBasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=_group_norm(norm_groups))
    model.conv1 = _grayscale_conv(model.conv1)
    return model


# --- mobilenet_v2 (Boulila et al. 2022) ------------------------------------------------


def mobilenet_v2(
    num_classes: int, width_mult: float = 1.0, dropout: float = 0.2, norm_groups: int = 32
) -> nn.Module:
    """torchvision's MobileNetV2 with GroupNorm and a 1-channel stem.

    MONAI has no MobileNetV2. torchvision's inverted residual already adds out of place
    (`x + self.conv(x)`); only its ReLU6(inplace=True) needs switching off. Its depthwise
    convolutions get Opacus' exact fast per-sample-gradient path (src/models/grouped_conv.py).
    Each residual block's last norm starts at zero, so every block starts as the identity
    (torchvision's `zero_init_residual` for ResNets, Goyal et al. 2017): with GroupNorm
    from scratch MobileNetV2 otherwise stays near chance on the synthetic hospitals.
    """
    from torchvision.models import MobileNetV2

    model = MobileNetV2(
        num_classes=num_classes, width_mult=width_mult, dropout=dropout, norm_layer=_group_norm(norm_groups)
    )
    model.features[0][0] = _grayscale_conv(model.features[0][0])
    for block in model.features:
        if getattr(block, "use_res_connect", False):
            nn.init.zeros_(block.conv[-1].weight)
    return model


# --- densenet121 (CheXNet) -------------------------------------------------------------


def densenet121(num_classes: int, dropout: float = 0.0, norm_groups: int = 32) -> nn.Module:
    """MONAI's DenseNet121 (2-D, 1 channel) with GroupNorm and out-of-place ReLU.

    The field's library works here as configured: MONAI's DenseNet takes `act` and
    `norm`, so no patching, and it is torchvision's DenseNet-121 layer for layer
    (growth 32, blocks 6-12-24-16, bn_size 4, 7.0M parameters at 1000 classes), the
    CheXNet backbone. torchvision's own would need its forward patched: it applies
    `F.relu(features, inplace=True)` to the last norm's output, which Opacus' hooks
    reject. MONAI's dense layers concatenate with `torch.cat` (fine under hooks) and
    have no memory-efficient checkpointing to switch off. `dropout` is the dense
    layers' dropout (torchvision's `drop_rate`).
    """
    from monai.networks.nets import DenseNet121

    return DenseNet121(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        act=("relu", {"inplace": False}),
        norm=("group", {"num_groups": norm_groups}),
        dropout_prob=dropout,
        pretrained=False,
    )


# --- scatter_linear (Tramèr & Boneh 2021) ----------------------------------------------


def scatter_linear(num_classes: int, image_size: int = 64, J: int = 3, L: int = 8, pool: int = 4,
                   components: int | None = 64) -> nn.Module:
    """Fixed wavelet-scattering features and a linear head: the model that learns under DP on a few
    hundred images per hospital (src/models/scattering.py)."""
    return ScatterLinear(num_classes, image_size, J=J, L=L, pool=pool, components=components)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "scatter_linear": scatter_linear,
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "densenet121": densenet121,
}
MODELS: tuple[str, ...] = tuple(_BUILDERS)
SHARED_KEYS = ("init_weights",)  # model.* keys every model takes, not handed to a builder


def trained_keys(model: nn.Module) -> list[str]:
    """The state_dict entries local training changes: the trainable parameters (no model here has a
    float buffer that training updates; a fixed front end's buffers never change)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def trained_state(model: nn.Module) -> dict[str, Tensor]:
    """What a round's messages carry, both ways (as one flat array: src/models/wire.py): the trained
    entries. The rest (a fixed front end: 0.9 MB beside the default head's 195 values) is the run's
    initial model's, at every party."""
    keys = set(trained_keys(model))
    return {k: v for k, v in model.state_dict().items() if k in keys}


def _hyperparameters(name: str) -> list[str]:
    return [p for p in inspect.signature(_BUILDERS[name]).parameters if p != "num_classes"]


def build_model(model_cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The model `model_cfg` names (`name` + its hyperparameters), on the CPU, in train mode.

    Raises ValueError with a one-line message naming the key for an unknown model or
    hyperparameter, and if the built model still holds a layer Opacus refuses.
    """
    cfg = {k: v for k, v in model_cfg.items() if k not in SHARED_KEYS}
    name = cfg.pop("name", None)
    if name not in _BUILDERS:
        raise ValueError(f"model.name: unknown model {name!r}; expected one of {list(MODELS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    known = _hyperparameters(name)
    for key in cfg:
        if key not in known:
            raise ValueError(f"model.{key}: not a hyperparameter of {name}; expected some of {known}")
    for key in ("width", "norm_groups", "pool_grid", "image_size", "J", "L", "pool", "components"):
        if key == "components" and cfg.get(key, 0) is None:
            continue  # scatter_linear: no projection
        if key in cfg and (not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1):
            raise ValueError(f"model.{key}: expected a positive integer, got {cfg[key]!r}")
    if "dropout" in cfg and not (isinstance(cfg["dropout"], (int, float)) and 0 <= cfg["dropout"] < 1):
        raise ValueError(f"model.dropout: expected a probability in [0, 1), got {cfg['dropout']!r}")
    if "width_mult" in cfg and not (isinstance(cfg["width_mult"], (int, float)) and cfg["width_mult"] > 0):
        raise ValueError(f"model.width_mult: expected a positive number, got {cfg['width_mult']!r}")

    # Opacus-valid by construction; `validate` checks it (ModuleValidator) for a run under DP
    return use_grouped_conv(_make_out_of_place(_BUILDERS[name](num_classes, **cfg)))
