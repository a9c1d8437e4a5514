"""How much a reconstruction tells about the patients behind an update, against baselines without it.

Chest radiographs are aligned: the mean of other patients' images already scores a
respectable PSNR against anyone's. A leak is therefore measured as a gain over two
baselines that carry no information about the attacked patients — the mean image of
other patients of the same site, and the best single other patient — and as re-identification. PSNR and
SSIM pair each reconstruction one-to-one with a true image (Hungarian assignment on
SSIM); "best" is each reconstruction's most similar true image. That pairing looks at the
truth, so it flatters any reconstruction (the audit scores its controls the same way:
src/attacks/invert.py). Re-identification does not use it: the attacker names, for each
reconstruction, the most similar patient of a gallery (the patients of the hospital that
sent the update, every split; everyone's for an aggregate), and it counts only whether
the named patient's image was in the update, each patient once; the audit names patients
by the recovered features too. PSNR and SSIM are MONAI's, data range 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.functional import conv2d
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import _gaussian_kernel  # the window SSIMMetric uses
from scipy.optimize import linear_sum_assignment

_PSNR = PSNRMetric(max_val=1.0, reduction="none")
_SSIM = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")


def _pairwise(metric, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """metric(a_i, b_j) for every pair: (len(a), len(b))."""
    rows = []
    for image in a:
        rows.append(metric(image.expand_as(b), b).flatten().numpy())
    return np.stack(rows)


@torch.no_grad()
def ssim_matrix(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """MONAI's SSIM (`_SSIM`: its Gaussian window, constants and mean over the valid region) of every pair,
    (len(a), len(b)).

    Written out rather than `_pairwise(_SSIM, ...)`: MONAI filters both images of a pair every time (five
    convolutions a pair), and the audit's scoring was 97% SSIM matrices. Here each image's local mean
    and variance are filtered once and only the cross term per pair; tested equal to MONAI's."""
    kernel = _gaussian_kernel(2, 1, _SSIM.kernel_size, _SSIM.kernel_sigma)
    c1, c2 = (_SSIM.k1 * _SSIM.data_range) ** 2, (_SSIM.k2 * _SSIM.data_range) ** 2
    a, b = a.float(), b.float()
    mu_a, mu_b = conv2d(a, kernel), conv2d(b, kernel)
    var_a, var_b = conv2d(a * a, kernel) - mu_a**2, conv2d(b * b, kernel) - mu_b**2
    rows = []
    for i in range(len(a)):
        mu, var = mu_a[i:i + 1], var_a[i:i + 1]
        covariance = conv2d(a[i:i + 1] * b, kernel) - mu * mu_b
        ssim = (2 * mu * mu_b + c1) / (mu**2 + mu_b**2 + c1) * (2 * covariance + c2) / (var + var_b + c2)
        rows.append(ssim.flatten(1).mean(1).numpy())
    return np.stack(rows) if rows else np.zeros((0, len(b)))


def psnr_matrix(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return _pairwise(_PSNR, a, b)


def chance_of_naming(members: int, gallery: int, named: int) -> float:
    """Re-identification of `named` guesses drawn uniformly from the gallery: distinct members hit per guess."""
    return members * (1 - (1 - 1 / gallery) ** named) / named


def reidentify(similarity: np.ndarray, members: list[int]) -> tuple[float, np.ndarray]:
    """Each row names its most similar gallery patient: the share of rows naming a distinct patient of the
    update (`members`), and whether each row's named patient was in it."""
    named = similarity.argmax(1)
    in_update = np.isin(named, members)
    return len(set(named[in_update].tolist())) / len(similarity), in_update


def leakage(reconstructions: torch.Tensor, truth: torch.Tensor, gallery: torch.Tensor | None, members: list[int],
            others: torch.Tensor, best_other: bool = True, mean_of: torch.Tensor | None = None) -> dict:
    """Measures of n reconstructions against the n true images (n, 1, S, S), all in [0, 1].

    gallery: the patients a re-identification names among, the update's at positions `members`
    (None: no re-identification); others: images of other patients (`best_other` compares every
    true image with each of them, the costliest measure with re-identification); mean_of: the
    images whose mean is the baseline image (default: `others`). The audit takes the same
    site's patients who were not in the update: a mean of another population scores lower
    against these patients and would flatter every gain."""
    n = len(truth)
    ssim = ssim_matrix(reconstructions, truth)
    rows, cols = linear_sum_assignment(-ssim)
    paired = truth[cols[np.argsort(rows)]]
    psnr = _PSNR(reconstructions, paired).flatten().numpy()
    pssim = _SSIM(reconstructions, paired).flatten().numpy()
    mse = (reconstructions - paired).pow(2).mean(dim=(1, 2, 3)).numpy()
    mean_image = (others if mean_of is None else mean_of).mean(0, keepdim=True).expand_as(truth)
    base_psnr = _PSNR(mean_image, truth).flatten().numpy()
    base_ssim = _SSIM(mean_image, truth).flatten().numpy()
    result = {
        "images": n, "psnr": float(psnr.mean()), "ssim": float(pssim.mean()), "mse": float(mse.mean()),
        "best_match_ssim": float(ssim.max(1).mean()),
        "baseline_psnr": float(base_psnr.mean()), "baseline_ssim": float(base_ssim.mean()),
        "psnr_gain": float(psnr.mean() - base_psnr.mean()), "ssim_gain": float(pssim.mean() - base_ssim.mean()),
        "per_image": {"psnr": psnr.tolist(), "ssim": pssim.tolist(), "mse": mse.tolist(),
                      "baseline_psnr": base_psnr.tolist(), "baseline_ssim": base_ssim.tolist()},
    }
    if best_other:
        best_other_psnr = psnr_matrix(truth, others).max(1)
        result.update({"best_other_psnr": float(best_other_psnr.mean()),
                       "best_other_ssim": float(ssim_matrix(truth, others).max(1).mean())})
        result["per_image"]["best_other_psnr"] = best_other_psnr.tolist()
    if gallery is not None:
        reidentification, in_update = reidentify(ssim_matrix(reconstructions, gallery), members)
        result.update({"reidentification": reidentification, "gallery": len(gallery),
                       "chance": chance_of_naming(len(set(members)), len(gallery), n)})
        result["per_image"]["names_a_member"] = in_update.tolist()
    return result


def label_accuracy(recovered: list[int], true: list[int]) -> float:
    """Share of the update's labels recovered, as multisets (the order of a batch is not observable)."""
    r, t = np.bincount(recovered, minlength=max(true + recovered) + 1), np.bincount(true, minlength=max(true + recovered) + 1)
    return float(np.minimum(r, t).sum() / len(true))
