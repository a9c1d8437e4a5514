"""Local training and prediction on one hospital's images (plain PyTorch loops on MONAI data).

MONAI is imported only where images are read (`make_loader`): a model whose fixed
front end's features are cached (src/models/features.py) trains and evaluates without it.
Opacus only where DP trains: the ServerApp, which predicts, never pays its ~2 s import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from src.data.augmentation import BatchAugmentation
from src.data.layouts import Sample
from src.models.features import raw_features
from src.models.grouped_conv import register_opacus_sampler
from src.training.grad_sample import choose, linear_cross_entropy, zero_non_finite
from src.training.poisson import expected_batch, poisson_loader
from src.training.precision import autocast, grad_samples_to_float32

if TYPE_CHECKING:
    from src.training.privacy import Plan


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_loader(samples: list[Sample], data_cfg, train: bool, batch_size: int, seed: int, device="cpu",
                num_workers: int = 0):
    """A MONAI DataLoader of cached, un-augmented images (training augments whole batches on the device:
    `BatchAugmentation`), for training held in memory as far as `data.memory_cache_mb` allows; pinned
    memory for a CUDA device. `num_workers` loader processes: 0 inside Flower's simulation (Ray
    actors) and the hospital's worker, where forked processes are fragile."""
    from monai.data import DataLoader

    from src.data.dataset import in_memory, make_dataset

    dataset = make_dataset(samples, data_cfg)
    if train:  # read every epoch; an evaluation reads each image once
        dataset = in_memory(dataset, data_cfg)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed),
                      pin_memory=torch.device(device).type == "cuda")


class _Features(torch.utils.data.Dataset):
    """Precomputed features, served as the image loaders serve images (`{"image", "label"}`)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.features[i], "label": self.labels[i]}


class TrainingView(NamedTuple):
    """What a hospital trains (`module`), on what (`loader`), and the augmentation `train_epochs` applies
    to each batch on the device (None: features are not augmented)."""

    module: torch.nn.Module
    loader: torch.utils.data.DataLoader
    augment: BatchAugmentation | None


def local_training_view(model, samples: list[Sample], data_cfg, batch_size: int, seed: int, device,
                        cache_dir: Path | None = None, num_workers: int = 0) -> TrainingView:
    """What to train, and on what.

    A model with a fixed front end (`front_end`, no trainable parameters) trains only
    its `head`, on the front end's features of the un-augmented images (cached in
    `cache_dir`): recomputing a fixed transform every step would only cost time, and
    under DP the head's gradients are all that is clipped and noised. Any other model
    trains whole, on images augmented batch by batch on the device.
    """
    front_end = getattr(model, "front_end", None)
    if front_end is None:
        return TrainingView(model, make_loader(samples, data_cfg, True, batch_size, seed, device, num_workers),
                            BatchAugmentation(seed))
    raw, labels = raw_features(front_end, samples, data_cfg, cache_dir, device)
    with torch.no_grad():
        features = front_end.project(raw.to(device)).cpu()
    loader = torch.utils.data.DataLoader(_Features(features, labels), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    return TrainingView(model.head, loader, None)


@torch.no_grad()
def predict_samples(model, samples: list[Sample], data_cfg, batch_size: int, device,
                    cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of `samples` (through cached features for a fixed front end)."""
    front_end = getattr(model, "front_end", None)
    if front_end is None:
        return predict(model, make_loader(samples, data_cfg, False, batch_size, 0, device), device)
    raw, labels = raw_features(front_end, samples, data_cfg, cache_dir, device)
    model.to(device).eval()
    logits = model.head(front_end.project(raw.to(device)))
    return labels.numpy(), torch.softmax(logits, dim=1).cpu().numpy()


def secret_generator(device) -> torch.Generator:
    """A generator seeded from the operating system's CSPRNG, fresh on every call.

    DP noise and Poisson sampling must be secret to the hospital and fresh on every
    attempt: seeded from the run config, the server could regenerate and subtract the
    noise, and two hospitals would draw the same. Opacus' `secure_mode` would draw from
    torchcsprng, which is archived and has no wheels for current torch; a 64-bit seed
    from os.urandom per training call, kept in the hospital's process, is the fallback
    Opacus' docs name.
    """
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return generator


def train_epochs(model, loader, epochs: int, lr: float, device, proximal_mu: float = 0.0,
                 dp: Plan | None = None, grad_sample_mode: str = "auto", optimizer: str = "adam",
                 momentum: float = 0.0, augment: BatchAugmentation | None = None,
                 precision: str = "float32") -> tuple[float, int]:
    """`epochs` epochs of Adam or SGD (with `momentum`), fresh each call; returns the last epoch's mean
    loss and the optimizer steps taken.

    With `dp`, Opacus DP-SGD: Poisson sampling (expected batch = the loader's), each
    sample's gradient clipped to `dp.max_grad_norm`, Gaussian noise of σ·C; sampling
    and noise come from `secret_generator`, so no seed reproduces them. The per-sample
    gradients come from `grad_sample_mode` (src/training/grad_sample.py). With
    `proximal_mu` > 0, FedProx's pull towards the global weights w_g, applied as a
    decoupled step w -= lr·mu·(w - w_g) after each optimizer step: a function of the
    weights alone, so under DP it is post-processing and costs no privacy (as a loss
    term its gradient would be dropped by Opacus' per-sample clipping). `augment` jitters
    each batch on the device, each image by its own draw.
    `precision` "bfloat16" runs forward and backward under autocast, each sample's gradient cast
    to float32 before it is clipped (src/training/precision.py); the closed form stays float32.
    Under DP the entries of a per-sample gradient that are not finite are set to 0 before
    clipping (a crafted model could otherwise make one record's NaN reach the update), and
    augmentation and dropout draw secretly.
    """
    model.to(device).train()
    if optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        raise ValueError(f"federation.optimizer: expected adam or sgd, got {optimizer!r}")
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    criterion = torch.nn.CrossEntropyLoss()
    net, mode = model, None
    if dp is not None:
        from opacus import PrivacyEngine
        from opacus.optimizers import DPOptimizer

        register_opacus_sampler()
        mode = choose(grad_sample_mode, model)
        # seeded, augmentation and dropout (torch's global generator) draw by batch position, which would tie
        # other records' draws to this one's presence: under DP both are secret
        if augment is not None:
            augment = BatchAugmentation(None)
        torch.manual_seed(int.from_bytes(os.urandom(8), "little"))
        # Poisson sampling draws from a secret generator, not from the (seeded) loader's
        poisson = poisson_loader(loader, secret_generator("cpu"))
        if mode == "linear":  # per-sample gradients in closed form; clipping and noise by Opacus' optimizer
            optimizer = DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                                    expected_batch_size=expected_batch(poisson), generator=secret_generator(device))
            loader = poisson
        else:
            made = PrivacyEngine(accountant="rdp").make_private(
                module=model, optimizer=optimizer, criterion=criterion, data_loader=poisson,
                noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm, poisson_sampling=False,
                noise_generator=secret_generator(device), grad_sample_mode=mode)
            net, optimizer, loader = made
            optimizer.expected_batch_size = expected_batch(poisson)
    last, steps = float("nan"), 0
    for _ in range(epochs):
        total, n = 0.0, 0
        for batch in loader:
            images, labels = batch["image"], torch.as_tensor(batch["label"])
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if augment is not None and len(labels):
                images = augment(images)
            optimizer.zero_grad()
            if mode is not None and not len(labels):  # an empty Poisson draw: no forward (functorch's
                for p in optimizer.params:            # convolutions refuse a batch of 0), a noise-only step
                    p.grad_sample = p.new_zeros((0, *p.shape))
                loss = None
            elif mode == "linear":
                loss = linear_cross_entropy(net, images, labels)
            else:
                with autocast(precision, device):
                    loss = criterion(net(images), labels)
                loss.backward()
                if precision != "float32" and mode is not None:
                    grad_samples_to_float32(model)
            if mode is not None and loss is not None:
                zero_non_finite(net)
            optimizer.step()  # an empty Poisson batch still takes a (noise-only) step under DP
            steps += 1
            if global_params is not None:
                with torch.no_grad():
                    for p, g in zip(model.parameters(), global_params):
                        p.sub_(lr * proximal_mu * (p - g))
            if loss is not None:
                total += float(loss.item()) * len(labels)
                n += len(labels)
        last = total / n if n else float("nan")
    if dp is not None:  # the caller gets its plain model back: no per-sample gradients, no hooks
        optimizer.zero_grad()
        if mode != "linear":
            net.remove_hooks()
    return last, steps


@torch.no_grad()
def predict(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities over a loader."""
    model.to(device).eval()
    labels, probs = [], []
    for batch in loader:
        probs.append(torch.softmax(model(batch["image"].to(device)), dim=1).cpu().numpy())
        labels.append(np.asarray(batch["label"]))
    if not labels:
        return np.zeros(0, int), np.zeros((0, model_outputs(model)))
    return np.concatenate(labels), np.concatenate(probs)


def model_outputs(model) -> int:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
