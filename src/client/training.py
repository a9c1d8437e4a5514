"""Local training and prediction on one hospital's images (plain PyTorch loops on MONAI data)."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import DataLoader

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


def train_epochs(model, loader, epochs: int, lr: float, device, proximal_mu: float = 0.0) -> float:
    """Adam for `epochs` epochs; with `proximal_mu` > 0 the FedProx term (mu/2)·||w - w_global||².

    Returns the mean training loss of the last epoch.
    """
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    loss_fn = torch.nn.CrossEntropyLoss()
    last = float("nan")
    for _ in range(epochs):
        total, n = 0.0, 0
        for batch in loader:
            images, labels = batch["image"].to(device), torch.as_tensor(batch["label"]).to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            if global_params is not None:
                loss = loss + proximal_mu / 2 * sum(
                    (p - g).pow(2).sum() for p, g in zip(model.parameters(), global_params))
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            n += len(labels)
        last = total / max(n, 1)
    return last


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
