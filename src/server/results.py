"""The run's record: `results.json`, the global model `model.pt`, a progress line per round.

Both files are rewritten after every round, so an interrupted run leaves its last
completed round behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.server.report import HEADLINE


def unflatten(flat: dict, classes: list[str]) -> dict:
    """A hospital's MetricRecord back into classification_metrics' shape."""
    out: dict = {}
    for key, value in flat.items():
        if isinstance(value, float) and math.isnan(value):
            value = None
        if "." in key:
            group, name = key.split(".", 1)
            out.setdefault(group, {})[name] = value
        elif key == "confusion_matrix":
            k = len(classes)
            out[key] = [list(map(int, value[i * k:(i + 1) * k])) for i in range(k)]
        else:
            out[key] = value
    return out


class RunRecord:
    """Accumulates rounds and writes `results.json` and `model.pt` into the run directory."""

    def __init__(self, run_dir: Path, cfg, classes: list[str]):
        self.run_dir, self.cfg, self.classes = Path(run_dir), cfg, classes
        self.rounds: list[dict] = []
        self.stopped: str | None = None
        self.stopped_before: str | None = None  # a resumed run's reason for stopping

    def resume(self) -> dict | None:
        """The last checkpoint (`model.pt`), its round's entries taken back into the record.

        `save` writes results.json before model.pt, so a run stopped between the two has
        results one round ahead of its model; that round is dropped here and trained again.
        """
        results, model = self.run_dir / "results.json", self.run_dir / "model.pt"
        if not (results.exists() and model.exists()):
            return None
        checkpoint = torch.load(model, weights_only=False)
        saved = json.loads(results.read_text())
        self.rounds = [r for r in saved["rounds"] if r["round"] <= checkpoint["round"]]
        self.stopped_before = saved.get("stopped")
        return checkpoint

    def add_round(self, server_round: int, global_metrics: dict, observed: dict) -> dict:
        hospitals = {name: unflatten(m, self.classes) for name, m in sorted(observed["hospitals"].items())}
        entry = {"round": server_round, "global": global_metrics, "hospitals": hospitals,
                 "failed_hospitals": observed.get("failed", []), "time": observed["time"]}
        if "secure_aggregation" in observed:
            entry["secure_aggregation"] = observed["secure_aggregation"]
        self.rounds.append(entry)
        return entry

    def add_evaluation(self, server_round: int, observed: dict) -> dict:
        """The hospitals' test metrics of round `server_round`'s model join its entry."""
        entry = next(r for r in self.rounds if r["round"] == server_round)
        for name, metrics in sorted(observed["hospitals"].items()):
            entry["hospitals"].setdefault(name, {}).update(unflatten(metrics, self.classes))
        return entry

    def evaluated(self, server_round: int) -> bool:
        """Whether every hospital of round `server_round` has its evaluation of that round's model in the
        record (an interruption while the answers came in leaves some without: a resumed run asks again)."""
        hospitals = [h for r in self.rounds if r["round"] == server_round for h in r["hospitals"].values()]
        return bool(hospitals) and all("num_test_examples" in h for h in hospitals)

    def stop(self, reason: str) -> None:
        """A failed round or report: its reason joins results.json; the model and the rounds saved stay as they are."""
        self.stopped = reason
        self._write_results()

    def _write_results(self) -> dict:
        final = {k: v for k, v in self.rounds[-1].items() if k in ("global", "hospitals", "reader")} if self.rounds else {}
        record = {"config": OmegaConf.to_container(self.cfg, resolve=True), "classes": self.classes,
                  "rounds": self.rounds, "final": final} | ({"stopped": self.stopped} if self.stopped else {})
        _replace(self.run_dir / "results.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
        return record

    def save(self, state_dict: dict) -> dict:
        """results.json, then the checkpoint `model.pt`, each replaced atomically."""
        record = self._write_results()
        checkpoint = {"state_dict": state_dict, "model": OmegaConf.to_container(self.cfg.model, resolve=True),
                      "classes": self.classes, "image_size": int(self.cfg.data.image_size),
                      "round": self.rounds[-1]["round"] if self.rounds else 0}
        _replace(self.run_dir / "model.pt", lambda f: torch.save(checkpoint, f))
        return record


def _replace(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    tmp.replace(path)


def progress_line(entry: dict, rounds: int, elapsed: float, rounds_done: int) -> str:
    """One grep-able line per round; `elapsed` seconds since this run's first round began, over
    `rounds_done` rounds, give the time left at the same pace."""
    g = entry["global"]
    shown = "  ".join(f"{k} {g[k]:.3f}" for k in HEADLINE if g.get(k) is not None)
    t = entry["time"]
    spent = [h["privacy"]["epsilon"] for h in entry["hospitals"].values() if "privacy" in h]
    trained = sum(bool(h.get("trained")) for h in entry["hospitals"].values())
    return (f"round {entry['round']}/{rounds}  {shown}  hospitals {trained}/{len(entry['hospitals'])}"
            + (f"  ε ≤ {max(spent):.2f}" if spent else "")
            + f"  time {t.get('total', 0):.1f}s (train {t.get('train', 0):.1f}s)"
            + f"  elapsed {elapsed:.0f}s, ~{elapsed / rounds_done * (rounds - entry['round']):.0f}s left")
