"""The human-readable end of a run: PNG plots and `report.md`, from results.json's content.

Written by the ServerApp after every round (cheap), so an interrupted run still has them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

HEADLINE = ("auc", "accuracy", "balanced_accuracy", "mcc")
# Margins that fit the curves' and the ROC's fixed labels (their legends sit inside the axes). tight_layout
# measures every label's extent to compute them, which made these two plots 1.4-1.7x slower to draw; the
# confusion matrix keeps it, since its tick labels are the classes' names, of any length.
FIXED_MARGINS = {"left": 0.12, "right": 0.97, "bottom": 0.12, "top": 0.92, "wspace": 0.22}


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def plot_curves(record: dict, path: Path) -> None:
    rounds = [r["round"] for r in record["rounds"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in HEADLINE:
        axes[0].plot(rounds, [r["global"].get(key) or np.nan for r in record["rounds"]], marker="o", label=key)
    axes[0].set(title="Global model, pooled test set", xlabel="round", ylim=(-0.05, 1.05))
    axes[0].legend()
    names = sorted({h for r in record["rounds"] for h in r["hospitals"]})
    for name in names:
        values = [r["hospitals"].get(name, {}).get("auc") or np.nan for r in record["rounds"]]
        axes[1].plot(rounds, values, marker="o", label=name)
    axes[1].set(title="ROC-AUC per hospital (own test set)", xlabel="round", ylim=(-0.05, 1.05))
    axes[1].legend()
    fig.subplots_adjust(**FIXED_MARGINS)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(labels: np.ndarray, probs: np.ndarray, classes: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, name in enumerate(classes):
        if 0 < (labels == i).sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels == i, probs[:, i])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(title="ROC, global model, pooled test set", xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend()
    fig.subplots_adjust(**FIXED_MARGINS)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="Confusion matrix, pooled test set")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def privacy_table(hospitals: dict, cfg: dict) -> list[str]:
    """Each hospital's cumulative (ε, δ) and what produced it, or a line saying there was no DP."""
    if cfg["privacy"]["name"] != "dp":
        return ["", "## Privacy", "", "No differential privacy (`privacy=none`): the updates carry no formal guarantee."]
    target = cfg["privacy"].get("target_epsilon")
    lines = ["", "## Privacy (DP-SGD, cumulative over every round each hospital trained in)", "",
             f"Target ε {target if target is not None else '– (fixed σ)'}, clipping norm "
             f"{cfg['privacy']['max_grad_norm']}, per-sample gradients `{cfg['privacy']['grad_sample_mode']}`.", "",
             "| hospital | ε | δ | σ | sample rate | steps | accountant | note |", "|---" * 8 + "|"]
    for name, h in hospitals.items():
        p = h.get("privacy")
        if p is not None:  # under secure aggregation hospitals release only (ε, δ)
            sigma, rate, steps = (("–" if p.get(k) is None else fmt.format(p[k])) for k, fmt in
                                  (("noise_multiplier", "{:.3f}"), ("sample_rate", "{:.4f}"), ("steps", "{}")))
            lines.append(f"| {name} | {p['epsilon']:.3f} | {p['delta']:g} | {sigma} | {rate} | {steps} | "
                         f"{p['accountant']} | {h.get('declined', '')} |")
    return lines


def markdown(record: dict) -> str:
    cfg, final = record["config"], record["final"]
    lines = [
        "# fedcxr run report", "",
        f"{cfg['federation']['mode']} federation of {len(final['hospitals'])} hospitals, "
        f"{len(record['rounds'])}/{cfg['federation']['rounds']} rounds, model `{cfg['model']['name']}`, "
        f"strategy `{cfg['strategy']['name']}`, data `{cfg['data']['layout']}`, seed {cfg['seed']}.", "",
        "## Final model", "",
        "| | test images | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 2) + "|",
        f"| global (pooled) | {final['global']['num_examples']} | "
        + " | ".join(_fmt(final["global"].get(k)) for k in HEADLINE) + " |",
    ]
    for name, m in final["hospitals"].items():
        lines.append(f"| {name} | {m.get('num_test_examples', '–')} | "
                     + " | ".join(_fmt(m.get(k)) for k in HEADLINE) + " |")
    lines += privacy_table(final["hospitals"], cfg)
    if "reader" in final:
        r = final["reader"]
        lines += ["", f"## Expert reads ({r['images']} test images read, {r['skipped']} reads of other images skipped)",
                  "", "| | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
        lines += [f"| {who} | " + " | ".join(_fmt(r[who].get(k)) for k in HEADLINE) + " |" for who in ("reader", "model")]
        lines.append("")
        lines.append("The reader's calls are hard labels: their AUC is that of a single ROC point.")
    hospitals = sorted({h for r in record["rounds"] for h in r["hospitals"]})
    lines += ["", "## Rounds", "", "Global model on the pooled test set; each hospital's AUC of the same model on its "
              "own test split; the largest cumulative ε of the hospitals.", "",
              "| round | " + " | ".join(HEADLINE) + " | " + "".join(f"{h} auc | " for h in hospitals) + "ε ≤ | total s |",
              "|---" * (len(HEADLINE) + len(hospitals) + 3) + "|"]
    for r in record["rounds"]:
        spent = [h["privacy"]["epsilon"] for h in r["hospitals"].values() if "privacy" in h]
        lines.append(f"| {r['round']} | " + " | ".join(_fmt(r["global"].get(k)) for k in HEADLINE) + " | "
                     + "".join(f"{_fmt(r['hospitals'].get(h, {}).get('auc'))} | " for h in hospitals)
                     + f"{_fmt(max(spent)) if spent else '–'} | {r['time'].get('total', 0):.1f} |")
    lines += ["", "![metrics](metrics.png) ![roc](roc.png) ![confusion](confusion.png)", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, record: dict, labels: np.ndarray, probs: np.ndarray) -> None:
    run_dir = Path(run_dir)
    plot_curves(record, run_dir / "metrics.png")
    plot_roc(labels, probs, record["classes"], run_dir / "roc.png")
    plot_confusion(record["final"]["global"]["confusion_matrix"], record["classes"], run_dir / "confusion.png")
    (run_dir / "report.md").write_text(markdown(record))
