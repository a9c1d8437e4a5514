"""Scale: one round of many hospitals in Flower's simulation engine, its time and memory.

    python bench/scale.py [--hospitals 10 100] [--data-dir DIR] [--label LABEL] [overrides ...]

Runs `python run_simulation.py` as the README's Scale section does (simulation mode, one
round, 30 images of 32 px per hospital, no baselines, no dashboard), once per number of
hospitals, one after the other, and samples every process of the run once a second: the
launcher, the SuperLink, Ray's processes and actors. Memory is the total PSS (proportional
set size: a page shared by several processes, torch's libraries say, is split among them,
so the sum is what the run occupies) and, beside it, the total RSS, which counts shared
pages once per process. The round's stages, the hospitals that answered and the pooled
AUC come from the run's results.json.

Without `--data-dir` every run generates its hospitals afresh in a temporary folder, removed
afterwards, as a first run would (generation and decoding counted in the wall time); with
it, a run reuses what an earlier run with the same number of hospitals generated there. The ratio printed
is each run's round time per hospital over that of the fewest hospitals, measured in the
same invocation. Each measurement is kept in bench/results/scale.json under `--label`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    """Peak total PSS and RSS of a process and all it starts (Ray may re-parent some: any Ray process,
    a worker `ray::...` or a program of Ray's package, started after it counts too), sampled every
    `interval` s."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.started = psutil.Process(pid), interval, time.time()
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self.done = threading.Event()

    def processes(self) -> list[psutil.Process]:
        found = {self.root.pid: self.root}
        try:
            found |= {p.pid: p for p in self.root.children(recursive=True)}
        except psutil.NoSuchProcess:
            return []
        for p in psutil.process_iter(["create_time", "cmdline"]):
            command = " ".join(p.info["cmdline"] or [])
            if (p.info["create_time"] or 0) >= self.started and (command.startswith("ray::") or "/ray/" in command):
                found.setdefault(p.pid, p)
        return list(found.values())

    def run(self) -> None:
        while not self.done.wait(self.interval):
            pss = rss = count = 0
            for p in self.processes():
                try:
                    full = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                pss, rss, count = pss + full.pss, rss + full.rss, count + 1
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, count)


def run(hospitals: int, data_dir: Path, overrides: list[str]) -> dict:
    """One `run_simulation.py` of `hospitals` hospitals, timed and sampled."""
    with tempfile.TemporaryDirectory(prefix=f"scale_{hospitals}_") as tmp:
        return _timed_run(hospitals, data_dir, Path(tmp), overrides)


def _timed_run(hospitals: int, data_dir: Path, run_dir: Path, overrides: list[str]) -> dict:
    command = [sys.executable, str(ROOT / "run_simulation.py"), f"hydra.run.dir={run_dir}", *README_RUN,
               f"federation.num_hospitals={hospitals}", f"data.root={data_dir / f'synthetic_{hospitals}'}",
               f"reference.root={data_dir / 'reference'}", f"data.cache_dir={data_dir / 'cache'}", *overrides]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(process.pid)
    sampler.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{hospitals} hospitals: run_simulation.py exited {process.returncode}:\n{output[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
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
    parser.add_argument("--data-dir", type=Path, help="where the runs' hospitals are generated and kept "
                        "(default: a fresh temporary folder per invocation)")
    parser.add_argument("--label", default="default", help="where in the JSON this measurement goes")
    args, overrides = parser.parse_known_args()
    if args.data_dir is None:
        with tempfile.TemporaryDirectory(prefix="scale_data_") as tmp:
            runs = [run(n, Path(tmp), overrides) for n in sorted(args.hospitals)]
    else:
        runs = [run(n, args.data_dir.resolve(), overrides) for n in sorted(args.hospitals)]
    base = runs[0]["round_s"] / runs[0]["hospitals"]
    print(f"{'hospitals':>9} {'wall s':>7} {'round s':>7} {'trained':>7} {'AUC':>5} {'PSS GiB':>7} {'RSS sum GiB':>11} "
          f"{'round s per hospital vs ' + str(runs[0]['hospitals']):>26}")
    for r in runs:
        r["round_per_hospital_ratio"] = r["round_s"] / r["hospitals"] / base
        print(f"{r['hospitals']:>9} {r['wall_s']:>7.1f} {r['round_s']:>7.1f} {r['hospitals_trained']:>7} "
              f"{r['pooled_auc']:>5.2f} {r['peak_pss_gib']:>7.2f} {r['peak_rss_sum_gib']:>11.2f} "
              f"{r['round_per_hospital_ratio']:>26.2f}")
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved[args.label] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                     "memory_gib": psutil.virtual_memory().total / 2**30},
                         "fresh_data": args.data_dir is None, "overrides": overrides, "runs": runs}
    RESULTS.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
