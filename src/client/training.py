"""Local training and prediction on one hospital's images (plain PyTorch loops on MONAI data)."""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.data import DataLoader
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader

from src.client.privacy import Plan
from src.data.dataset import make_dataset
from src.data.layouts import Sample


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_loader(samples: list[Sample], data_cfg, train: bool, batch_size: int, seed: int) -> DataLoader:
    """num_workers=0: worker processes inside Flower's ClientApp and Ray actors are fragile."""
    generator = torch.Generator().manual_seed(seed)
    dataset = make_dataset(samples, data_cfg, train=train)
    if train:
        dataset.transform.set_random_state(seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=0, generator=generator)


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
                 dp: Plan | None = None, grad_sample_mode: str = "hooks") -> tuple[float, int]:
    """Adam for `epochs` epochs; returns the last epoch's mean loss and the optimizer steps taken.

    With `dp`, Opacus DP-SGD: Poisson sampling (expected batch = the loader's), each
    sample's gradient clipped to `dp.max_grad_norm`, Gaussian noise of σ·C; sampling
    and noise come from `secret_generator`, so no seed reproduces them. With
    `proximal_mu` > 0, FedProx's pull towards the global weights w_g, applied as a
    decoupled step w -= lr·mu·(w - w_g) after each optimizer step: a function of the
    weights alone, so under DP it is post-processing and costs no privacy (as a loss
    term its gradient would be dropped by Opacus' per-sample clipping).
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    criterion = torch.nn.CrossEntropyLoss()
    net = model
    if dp is not None:
        engine = PrivacyEngine(accountant="rdp")
        # Opacus would take the Poisson sampler's generator from the (seeded) loader: give it a secret one
        poisson = DPDataLoader.from_data_loader(loader, generator=secret_generator("cpu"))
        made = engine.make_private(module=model, optimizer=optimizer, criterion=criterion, data_loader=poisson,
                                   noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                                   poisson_sampling=False, noise_generator=secret_generator(device),
                                   grad_sample_mode=grad_sample_mode)
        net, optimizer, criterion, loader = made if grad_sample_mode == "ghost" else (*made[:2], criterion, made[2])
    last, steps = float("nan"), 0
    for _ in range(epochs):
        total, n = 0.0, 0
        for batch in loader:
            images, labels = batch["image"].to(device), torch.as_tensor(batch["label"]).to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()  # an empty Poisson batch still takes a (noise-only) step under DP
            steps += 1
            if global_params is not None:
                with torch.no_grad():
                    for p, g in zip(model.parameters(), global_params):
                        p.sub_(lr * proximal_mu * (p - g))
            total += float(loss.item()) * len(labels)
            n += len(labels)
        last = total / max(n, 1)
    if dp is not None:
        net.remove_hooks()  # the caller gets its plain model back
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
