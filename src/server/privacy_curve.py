"""The privacy–utility curve: pooled ROC-AUC of the final global model against the ε spent.

    python run_simulation.py -m privacy.target_epsilon=1,2,4,8 baselines=true hydra.sweep.dir=outputs/curve/dp
    python run_simulation.py privacy=none baselines=true hydra.run.dir=outputs/curve/none
    python -m src.server.privacy_curve outputs/curve --out docs/privacy_utility.png

Every `results.json` under the given folders is one point: x is the largest final
cumulative ε over the hospitals (what the consortium can promise every patient), y
the global model's pooled AUC; non-private runs are drawn as a horizontal line. Where
a run also trained its baselines (`baselines.json`), the centralized model and the
mean local-only model (same budget, same ε) are drawn beside it. The numbers are
written beside the plot as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve_points(folders: list[Path]) -> list[dict]:
    points = []
    for path in sorted(p for folder in folders for p in Path(folder).rglob("results.json")):
        record = json.loads(path.read_text())
        if not record["rounds"]:
            continue
        spent = {}
        for entry in record["rounds"]:  # a hospital's ε as of the last round it reported
            spent.update({h: m["privacy"]["epsilon"] for h, m in entry["hospitals"].items() if "privacy" in m})
        privacy = record["config"]["privacy"]
        point = {"run": str(path.parent), "private": privacy["name"] == "dp",
                 "target_epsilon": privacy.get("target_epsilon"),
                 "epsilon": max(spent.values()) if spent else None,
                 "auc": record["final"]["global"]["auc"], "accuracy": record["final"]["global"]["accuracy"],
                 "rounds": len(record["rounds"])}
        baselines = path.with_name("baselines.json")
        if baselines.exists():
            b = json.loads(baselines.read_text())
            local = [h["pooled"]["auc"] for h in b["local"].values() if h["pooled"]["auc"] is not None]
            point |= {"centralized_auc": b["centralized"]["pooled"]["auc"],
                      "local_only_auc": sum(local) / len(local) if local else None}
        points.append(point)
    return points


def plot(points: list[dict], out: Path) -> None:
    private = sorted((p for p in points if p["private"] and p["auc"] is not None), key=lambda p: p["epsilon"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["epsilon"] for p in private], [p["auc"] for p in private], marker="o", label="federated (DP-SGD at every hospital)")
    for p in private:
        ax.annotate(f"target {p['target_epsilon']:g}" if p["target_epsilon"] is not None else "fixed σ",
                    (p["epsilon"], p["auc"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    for key, style, label in (("centralized_auc", dict(marker="s", ls=":"), "centralized, same ε and budget"),
                              ("local_only_auc", dict(marker="^", ls=":"), "local-only (mean), same ε and budget")):
        shown = [p for p in private if p.get(key) is not None]
        if shown:
            ax.plot([p["epsilon"] for p in shown], [p[key] for p in shown], label=label, **style)
    for i, p in enumerate(q for q in points if not q["private"] and q["auc"] is not None):
        ax.axhline(p["auc"], color="k", ls="--", lw=1, label="non-private federated" if i == 0 else None)
    ax.set(xscale="log", xlabel="ε spent (largest over hospitals, δ = 1e-5)", ylabel="pooled ROC-AUC (macro)",
           title="Privacy–utility, global model", ylim=(0.4, 1.0))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--out", type=Path, default=Path("docs/privacy_utility.png"))
    args = parser.parse_args(argv)
    points = curve_points(args.folders)
    if not points:
        raise SystemExit(f"no results.json under {', '.join(map(str, args.folders))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(points, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(points, indent=1))
    for p in points:
        eps = "–" if p["epsilon"] is None else f"{p['epsilon']:.2f}"
        extra = "".join(f"  {k.removesuffix('_auc')} {p[k]:.3f}" for k in ("centralized_auc", "local_only_auc")
                        if p.get(k) is not None)
        print(f"{'dp' if p['private'] else 'none':>4}  ε {eps:>7}  auc {p['auc']:.3f}{extra}  {p['run']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
