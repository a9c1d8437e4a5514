"""Scale: one round of many hospitals in Flower's simulation engine, its time and memory.

    python bench/scale.py [--hospitals 10 100] [--data-dir DIR] [--timeout S] [--label LABEL] [overrides ...]

Runs `python run_simulation.py` as the README's Scale section does (simulation mode, one
round, 30 images of 32 px per hospital, no baselines, no dashboard), once per number of
hospitals, one after the other, and samples the run's process and all it starts once a
second: the launcher, the SuperLink, Ray's processes and actors. Memory is the total PSS
(proportional set size: a page several processes share, torch's libraries say, is split
among them, so the sum is what the run occupies) and, beside it, the sum of the processes'
RSS, which counts a shared page once for every process that maps it. The round's stages,
the hospitals that answered and the pooled AUC come from the run's results.json.

Each run has its data (hospitals, public reference set, decoded cache) in a folder of its
own. Without `--data-dir` that folder is new and removed afterwards, so every run
generates and decodes its data as a first run would, counted in its wall time; with it,
a run reuses what an earlier one with as many hospitals left there. With several runs,
each one's round time per hospital is divided by that of the fewest hospitals, measured
in the same invocation. Each run is kept in bench/results/scale.json under `--label` as
soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale.json"
README_RUN = ["federation.mode=simulation", "federation.rounds=1", "data.images_per_hospital=30",
              "data.image_size=32", "reference.images=150", "baselines=false", "logger=none"]


class MemorySampler(threading.Thread):
    """Peak total PSS and RSS of a process and all its descendants (Ray's processes and actors are among
    them), sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_pss = self.peak_rss = self.peak_processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            pss = rss = count = 0
            for p in processes:
                try:
                    full = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                pss, rss, count = pss + full.pss, rss + full.rss, count + 1
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, count)


def run(hospitals: int, data_dir: Path, overrides: list[str], timeout: float) -> dict:
    """One `run_simulation.py` of `hospitals` hospitals, timed and sampled; its data (hospitals, public
    reference set, decoded cache) in a folder of its own under `data_dir`."""
    data = data_dir / f"{hospitals}_hospitals"
    with tempfile.TemporaryDirectory(prefix=f"scale_{hospitals}_") as run_dir:
        command = [sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={run_dir}", *README_RUN,
                   f"federation.num_hospitals={hospitals}", f"data.root={data / 'synthetic'}",
                   f"reference.root={data / 'reference'}", f"data.cache_dir={data / 'cache'}", *overrides]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = MemorySampler(process.pid)
        sampler.start()
        try:
            output = process.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # the launcher tears its federation down on Ctrl-C
            output = process.communicate()[0]
            sys.exit(f"{hospitals} hospitals: no end after {timeout:.0f} s; stopped:\n{output[-3000:]}")
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
        if process.returncode != 0:
            sys.exit(f"{hospitals} hospitals: run_simulation.py exited {process.returncode}:\n{output[-3000:]}")
        results = json.loads((Path(run_dir) / "results.json").read_text())
    last = results["rounds"][-1]
    answered = [h for h, entry in last["hospitals"].items() if entry.get("trained")]
    return {"hospitals": hospitals, "command": " ".join(command[1:]), "wall_s": wall,
            "round_s": last["time"]["total"], "round_stages_s": last["time"],
            "hospitals_trained": len(answered), "pooled_auc": last["global"]["auc"],
            "peak_pss_gib": sampler.peak_pss / 2**30, "peak_rss_sum_gib": sampler.peak_rss / 2**30,
            "peak_processes": sampler.peak_processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Any other argument is a Hydra override of every run's config.")
    parser.add_argument("--hospitals", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--data-dir", type=Path, help="where the runs' data are generated and kept, a folder per "
                        "number of hospitals (default: a fresh temporary folder, removed afterwards)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    parser.add_argument("--label", default="default", help="where in the JSON this measurement goes")
    args, overrides = parser.parse_known_args()
    if min(args.hospitals) < 1:
        parser.error("--hospitals: at least 1")
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = saved[args.label] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                             "memory_gib": psutil.virtual_memory().total / 2**30},
                                 "fresh_data": args.data_dir is None, "overrides": overrides, "runs": []}
    with tempfile.TemporaryDirectory(prefix="scale_data_") as tmp:
        data_dir = args.data_dir.resolve() if args.data_dir else Path(tmp)
        for n in sorted(args.hospitals):
            entry["runs"].append(run(n, data_dir, overrides, args.timeout))
            RESULTS.write_text(json.dumps(saved, indent=1))  # each run kept as soon as it is measured
    runs = entry["runs"]
    if len(runs) > 1:  # each run's round time per hospital over the fewest hospitals'
        base = runs[0]["round_s"] / runs[0]["hospitals"]
        for r in runs:
            r["round_per_hospital_ratio"] = r["round_s"] / r["hospitals"] / base
        RESULTS.write_text(json.dumps(saved, indent=1))
    print(f"{'hospitals':>9} {'wall s':>7} {'round s':>7} {'trained':>7} {'AUC':>5} {'PSS GiB':>7} "
          f"{'RSS sum GiB':>11} {'round s per hospital':>20} {'ratio':>6}")
    for r in runs:
        ratio = f"{r['round_per_hospital_ratio']:.2f}" if "round_per_hospital_ratio" in r else "-"
        print(f"{r['hospitals']:>9} {r['wall_s']:>7.1f} {r['round_s']:>7.1f} {r['hospitals_trained']:>7} "
              f"{r['pooled_auc']:>5.2f} {r['peak_pss_gib']:>7.2f} {r['peak_rss_sum_gib']:>11.2f} "
              f"{r['round_s'] / r['hospitals']:>20.2f} {ratio:>6}")


if __name__ == "__main__":
    main()
