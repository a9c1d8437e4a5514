"""Update inversion against a linear head on a public fixed front end, in two stages.

1. **Update -> features.** What the server sees is the head's update (ΔW, Δb) after the
   hospital's local training. Labels first: for one image the true class is the one whose
   bias moved up (iDLG: its gradient p_c − 1 is the only negative one); for n images the
   class counts follow from Δb and the mean prediction p̄ of the global model (estimated on
   the public reference set): Δb ≈ −η_eff·(p̄ − counts/n). Then features: for one image
   every row of ΔW is a multiple of its features x, with the same multiple as that class's
   Δb — x = ΔW_c / Δb_c exactly, whatever the steps, momentum and learning rate. For n
   images, Geiping et al. 2020: dummy features are optimised (Adam) so that a differentiable
   replay of the hospital's own local training (its optimiser, momentum, learning rate,
   steps, full batch, per-sample clipping under DP) gives an update of maximal cosine
   similarity with the observed one; a Gaussian prior keeps them where whitened features
   live (the front end whitens on the public reference set).
   An attacker that holds a gallery of candidate records (any images of the patients, the
   front end being public, and their labels) can skip the features and name members
   directly: by each record's likelihood ratio of being in the update (`rank_gallery`),
   or by the records whose gradients best add up to it (`match_gallery`).
2. **Features -> pixels.** A learnt prior from public data, as attackers with public images
   use: kernel ridge regression from front-end features to pixels, fitted on the public
   reference set (64 whitened scattering components hold much of an aligned radiograph's
   coarse anatomy). Optionally (`--refine N`) Geiping et al.'s pixel optimisation follows
   from that start: images in [0, 1] optimised with Adam (kymatio's scattering is
   differentiable) to reproduce the recovered features under a total-variation prior. On
   the default run it lowered PSNR by 0.2 dB (the features do not pin down fine detail,
   which the optimisation then invents), so it is off by default.

Both stages are the attacker's best use of what it sees under `strategy=fedavg`; the
two-stage split is exact here because nothing trained sits before the head, and it keeps
the costly scattering out of the update-matching loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LocalTraining:
    """How a hospital trains the head in a round (the attacker knows it: it is the run's config)."""

    lr: float
    momentum: float
    steps: int
    max_grad_norm: float | None = None  # DP-SGD's clipping (its noise the attacker cannot replay)

    @property
    def effective_lr(self) -> float:
        """η_eff: the update's multiple of a gradient that stayed constant over the steps."""
        velocity, total = 0.0, 0.0
        for _ in range(self.steps):
            velocity = self.momentum * velocity + 1.0
            total += velocity
        return self.lr * total


def recover_labels(delta_bias: np.ndarray, n: int, mean_prediction: np.ndarray, training: LocalTraining) -> list[int]:
    """Labels of the update's n images: iDLG for one, a count estimate (largest remainders) for more."""
    if n == 1:
        return [int(np.argmax(delta_bias))]
    share = np.clip(mean_prediction + delta_bias / training.effective_lr, 0, None)
    share = share / share.sum() if share.sum() > 0 else np.full(len(share), 1 / len(share))
    counts = np.floor(share * n).astype(int)
    for c in np.argsort(-(share * n - counts))[: n - counts.sum()]:
        counts[c] += 1
    return [c for c in range(len(counts)) for _ in range(counts[c])]


def features_of_one(delta_weight: np.ndarray, delta_bias: np.ndarray) -> np.ndarray:
    """x = ΔW_c / Δb_c for the class whose bias moved most (exact for one image, no noise)."""
    c = int(np.argmax(np.abs(delta_bias)))
    return delta_weight[c] / delta_bias[c]


def replay(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
           training: LocalTraining) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's update after the hospital's local training on `features`, differentiably:
    full-batch SGD with momentum, per-sample clipping when the hospital clips."""
    w, b = weight.clone(), bias.clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    onehot = F.one_hot(labels, w.shape[0]).to(features.dtype)
    for _ in range(training.steps):
        residual = torch.softmax(features @ w.T + b, dim=1) - onehot  # per-sample dL/dlogits
        if training.max_grad_norm is not None:  # per-sample gradient norm of (r xᵀ, r)
            norms = residual.norm(dim=1) * (features.pow(2).sum(1) + 1).sqrt()
            residual = residual * (training.max_grad_norm / (norms + 1e-12)).clamp(max=1.0)[:, None]
        gw, gb = residual.T @ features / len(features), residual.mean(0)
        vw, vb = training.momentum * vw + gw, training.momentum * vb + gb
        w, b = w - training.lr * vw, b - training.lr * vb
    return w - weight, b - bias


def match_features(delta_weight: np.ndarray, delta_bias: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                   labels: list[int], training: LocalTraining, iterations: int = 1000, prior: float = 1e-3,
                   seed: int = 0) -> tuple[np.ndarray, int]:
    """Dummy features whose replayed update best matches the observed one (cosine), Gaussian prior.
    Returns them and the iterations run (it stops early once the matching loss stops improving)."""
    generator = torch.Generator().manual_seed(seed)
    observed = torch.cat([torch.as_tensor(delta_weight).flatten(), torch.as_tensor(delta_bias)]).double()
    w, b = torch.as_tensor(weight).double(), torch.as_tensor(bias).double()
    y = torch.as_tensor(labels)
    dummy = torch.randn(len(labels), w.shape[1], generator=generator, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([dummy], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [iterations // 2, 3 * iterations // 4], 0.1)
    best, stale, done = float("inf"), 0, 0
    for done in range(1, iterations + 1):
        optimizer.zero_grad()
        dw, db = replay(w, b, dummy, y, training)
        loss = 1 - F.cosine_similarity(torch.cat([dw.flatten(), db]), observed, dim=0)
        (loss + prior * dummy.pow(2).mean()).backward()
        optimizer.step()
        scheduler.step()
        if loss.item() < best - 1e-7:
            best, stale = loss.item(), 0
        else:
            stale += 1
            if stale >= 100:
                break
    return dummy.detach().numpy(), done


def gallery_gradients(delta_weight: np.ndarray, delta_bias: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                      gallery: np.ndarray, labels: np.ndarray,
                      training: LocalTraining) -> tuple[np.ndarray, np.ndarray]:
    """What an attacker holding a gallery of candidate records (features: the front end is public; labels: a
    membership attacker knows the record) compares with an update: each record's gradient, taken where the head
    was at each local step, read off the update itself (the head moved along it: after step t by the share of the
    update that steps 1..t make under a constant gradient), weighted as momentum carries each step into the
    update and clipped per sample as the hospital clips; and the update as a descent direction, in the same
    layout (class, input + 1). Returns (gradients (records, classes × (inputs + 1)), target)."""
    classes = weight.shape[0]
    inputs = np.hstack([gallery, np.ones((len(gallery), 1))])
    onehot = np.eye(classes)[np.asarray(labels)]
    share, carried = _path(training)
    gradients = np.zeros((len(gallery), classes * inputs.shape[1]))
    for moved, weight_of_step in zip(share, carried):
        logits = gallery @ (weight + moved * delta_weight).T + (bias + moved * delta_bias)
        prediction = np.exp(logits - logits.max(1, keepdims=True))
        prediction /= prediction.sum(1, keepdims=True)
        step = ((prediction - onehot)[:, :, None] * inputs[:, None, :]).reshape(len(gallery), -1)
        if training.max_grad_norm is not None:
            step *= np.minimum(1.0, training.max_grad_norm / (np.linalg.norm(step, axis=1, keepdims=True) + 1e-12))
        gradients += weight_of_step * step
    return gradients, -np.hstack([delta_weight, delta_bias[:, None]]).reshape(-1)


def rank_gallery(gradients: np.ndarray, target: np.ndarray, n: int, lr: float) -> list[int]:
    """The n records each most likely to be in the update on its own: the likelihood ratio of "the update is
    lr/n times this record's gradient plus Gaussian rest" against "the rest alone",
    ⟨g, update⟩ − lr/(2n)·‖g‖². Returns their positions."""
    score = gradients @ target - lr / (2 * n) * (gradients ** 2).sum(1)
    return np.argsort(-score, kind="stable")[:n].tolist()


def match_gallery(gradients: np.ndarray, target: np.ndarray, n: int) -> list[int]:
    """The n distinct records whose gradients, summed, best match the update (cosine): greedily, then swaps while
    one improves the match. Returns their positions, in order."""
    along, squares, scale = gradients @ target, (gradients ** 2).sum(1), np.linalg.norm(target) + 1e-300
    free = np.ones(len(gradients), dtype=bool)

    def best_with(total: np.ndarray) -> tuple[int, float]:
        """The free record whose gradient added to `total` matches the update best, and that cosine."""
        norm = np.sqrt(np.maximum(total @ total + 2 * gradients @ total + squares, 1e-300))
        score = np.where(free, (total @ target + along) / (norm * scale), -np.inf)
        best = int(np.argmax(score))
        return best, float(score[best])

    total, picked = np.zeros(gradients.shape[1]), []
    for _ in range(min(n, len(gradients))):
        best, _ = best_with(total)
        total += gradients[best]
        free[best] = False
        picked.append(best)
    for _ in range(10):
        improved = False
        for i, current in enumerate(picked):
            rest = total - gradients[current]
            free[current] = True
            best, score = best_with(rest)
            if best != current and score > _cosine(total, target) + 1e-12:
                picked[i], total, improved = best, rest + gradients[best], True
            free[picked[i]] = False
        if not improved:
            break
    return picked


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def _path(training: LocalTraining) -> tuple[list[float], list[float]]:
    """For each local step under a constant gradient: the share of the whole update made before it, and the
    weight momentum gives that step's gradient in the update."""
    velocity, moved, before = 0.0, 0.0, []
    for _ in range(training.steps):
        before.append(moved)
        velocity = training.momentum * velocity + 1.0
        moved += velocity
    carried = [sum(training.momentum ** i for i in range(training.steps - t)) for t in range(training.steps)]
    return [b / moved for b in before], carried


class Decoder:
    """Features -> pixels: kernel ridge regression (RBF) on public (features, image) pairs, its two
    hyper-parameters chosen by 3-fold cross-validation on those public pairs alone."""

    def __init__(self, features: torch.Tensor, images: torch.Tensor):
        from sklearn.kernel_ridge import KernelRidge
        from sklearn.model_selection import GridSearchCV

        self.shape, pixels = images.shape[1:], images.flatten(1).double().numpy()
        self.mean = pixels.mean(0)
        search = GridSearchCV(KernelRidge(kernel="rbf"), {"gamma": [0.002, 0.005, 0.01, 0.02], "alpha": [0.01, 0.1]},
                              cv=3, scoring="neg_mean_squared_error")
        self.model = search.fit(features.double().numpy(), pixels - self.mean).best_estimator_

    def __call__(self, features: np.ndarray) -> torch.Tensor:
        pixels = np.clip(self.model.predict(np.asarray(features, dtype=np.float64)) + self.mean, 0, 1)
        return torch.as_tensor(pixels, dtype=torch.float32).reshape(len(features), *self.shape)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., 1:] - images[..., :-1]).abs().mean()


def invert_front_end(front_end, features: np.ndarray, start: torch.Tensor, iterations: int = 150,
                     tv: float = 0.05, device="cpu") -> torch.Tensor:
    """Images in [0, 1] (n, 1, S, S) whose front-end features approach `features`, from `start` (n, 1, S, S)."""
    front_end = front_end.to(device)
    target = torch.as_tensor(features, dtype=torch.float32, device=device)
    logit = torch.logit(start.clamp(0.02, 0.98)).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([logit], lr=0.02)
    for _ in range(iterations):
        optimizer.zero_grad()
        images = torch.sigmoid(logit)  # pixels kept in range
        loss = (front_end(images) - target).pow(2).mean() + tv * total_variation(images)
        loss.backward()
        optimizer.step()
    front_end.cpu()
    return torch.sigmoid(logit).detach().cpu()
