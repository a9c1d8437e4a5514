"""What differential privacy costs a hospital's training step: time per optimizer step
and peak memory of DP-SGD in every `privacy.grad_sample_mode` (Opacus' hooks and functorch;
fedcxr's closed form `linear` for a linear head) beside non-private training, for
every registered model at the default image size, and which mode `auto` picks.

    python bench/dp_overhead.py [--models small_cnn resnet18] [--modes none hooks functorch] [--steps 20]
                                [--repeats 3] [--device cuda] [--image-size 224] [--batch-size 32]
                                [--precision float32 bfloat16] [--profile] [--out FILE]

Each step is the project's own `src.training.loops.train_epochs` (the model's configured
optimizer and learning rate, and under DP Opacus' `make_private` with Poisson sampling,
per-sample clipping and Gaussian noise of the σ that `src.training.privacy.plan` picks for
a default hospital), with each model's configured batch size and 64 px images (or
`--batch-size`, `--image-size`). A model with a fixed front end (`scatter_linear`) is
timed as a hospital trains it: its head alone, on features, at full batch (a default
hospital's training images per step).

Data: a default hospital's training set (images_per_hospital less the validation and test
shares: 195 images) of random 1×64×64 images (or features) and labels, in memory, served as
the {"image", "label"} dicts `train_epochs` expects, through a torch DataLoader
(num_workers=0, as `make_loader`'s), or `--steps` batches of it where that is fewer (the
large CNNs); a timed call runs as many epochs over it as make about `--steps` steps. (A
dataset of steps × batch images, one epoch, would make Poisson sampling draw over all of
them at every step, a cost no hospital pays.) Not the synthetic DICOM hospitals through
`make_loader`: decoding, the MONAI cache and augmentation cost the same with and without
DP, so they would only dilute the ratio and add noise to it. The ratios here are the DP
step's own cost, an upper bound on what a whole round slows down by.

Timing: one thread (`torch.set_num_threads`; a hospital of the default run on a
2-core machine gets cpu_count // 3 hospitals = 1), a one-epoch warm-up call of
`train_epochs`, then `--repeats` timed calls of about `--steps` steps each; the best
repeat's seconds per step is reported (the least disturbed by other work on the
machine), every repeat is in the JSON. With `--precision float32 bfloat16` every (model,
mode) runs in both `federation.precision`s: a DP ratio is to the plain step in its own
precision, and a bfloat16 row also gives its time per image over the float32 row's (`vs_float32`).
Each call includes the DP setup (`make_private`, or `linear`'s `DPOptimizer`: once per round
at a hospital; amortised over the steps). A DP mode's process also times the plain step (a
copy of the model, warmed up too) before each of its repeats, and its ratio is to that plain
step: timed in different processes, a millisecond step varied by ±20% here, more than the
difference being measured. Poisson sampling draws a batch of *expected* size 16 (the whole
training set for `scatter_linear`, at sample rate 1) from `train_epochs`' secret generator, so batches
differ between repeats and modes; the table and JSON give the mean batch actually drawn.

Memory: each (model, mode) runs in a fresh subprocess (the plain copy exists before the
baseline is taken, and its training peaks below DP's, so the peak is the DP step's). On
the CPU, the peak resident set (VmHWM, reset through /proc/self/clear_refs after imports,
model and data are built; else ru_maxrss) minus the resident set at that point:
activations, per-sample gradients, optimizer state and whatever the allocator keeps. On CUDA,
torch.cuda.max_memory_allocated minus the memory allocated once the model is on the GPU.

Profile (`--profile`): one more timed call of each (model, mode) under torch.profiler; the row
keeps the operators with the most self time (on the GPU, device time; `profile_top`) and
how busy the device was over the call (`device_busy`: the sum of kernel times over the
wall time; far below 1, the step waits on Python, not on the GPU).

A mode that fails for a model is recorded with its error, not fatal. Writes
bench/results/dp_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "dp_overhead.json"
MODES = ("none", "hooks", "functorch", "linear")  # none: non-private training; linear: a linear head only
# Steps per timed call, sized so that all four models take ~10 minutes on 2 busy cores.
DEFAULT_STEPS = {"scatter_linear": 1000, "small_cnn": 40, "mobilenet_v2": 10, "resnet18": 5, "densenet121": 5}
AIM = 1.3  # the aim: DP at most 1.3x the time of non-private training for the default model


# --- worker: one (model, mode) in its own process ----------------------------------------


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM, so import-time peaks do not hide training's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def profile(timed, cuda: bool, top: int = 12) -> dict:
    """The operators with the most self time over one `timed()` call, and how busy the device was."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        timed()
    wall = time.perf_counter() - start
    device = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, device), reverse=True)
    out = {"wall_s": wall, "sorted_by": device,
           "profile_top": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                            "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3} for e in ops[:top]]}
    if cuda:
        out["device_busy"] = sum(getattr(e, "self_device_time_total", 0) for e in ops) / 1e6 / wall
    return out


def worker(model_name: str, mode: str, precision: str, steps: int, repeats: int, threads: int, device_name: str,
           overrides: list[str], profiled: bool = False) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from src.training.grad_sample import choose
    from src.training.privacy import plan
    from src.training.loops import resolve_device, train_epochs
    from src.config import compose_config
    from src.models.registry import build_model

    torch.set_num_threads(threads)
    cfg = compose_config([f"model={model_name}", f"device={device_name}", *overrides])
    device = resolve_device(str(cfg.device))
    batch_size, size = int(cfg.federation.batch_size), int(cfg.data.image_size)
    classes = len(cfg.data.classes)

    # σ for a default hospital: images_per_hospital less the validation and test shares
    num_train = round(int(cfg.data.images_per_hospital) * (1 - float(cfg.data.val_fraction)
                                                           - float(cfg.data.test_fraction)))
    torch.manual_seed(0)
    model = build_model(cfg.model, classes).to(device)
    if getattr(model, "front_end", None) is not None:
        # a fixed front end: a hospital trains only the head, on cached features, as local_training_view
        # serves them (at most its training images per batch: full batch for scatter_linear)
        model, shape, batch_size = model.head, (model.head.in_features,), min(batch_size, num_train)
    else:
        shape = (1, size, size)

    class RandomImages(Dataset):
        """steps × batch random images (or features), as {"image", "label"} dicts; counts the images drawn."""

        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.images = torch.rand(n, *shape, generator=g)
            self.labels = torch.randint(0, classes, (n,), generator=g)
            self.drawn = 0

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> dict:
            self.drawn += 1
            return {"image": self.images[i], "label": self.labels[i]}

    data = RandomImages(min(num_train, steps * batch_size))  # an epoch of at most `steps` steps
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    epochs = max(1, round(steps / len(loader)))

    dp = None if mode == "none" else plan(cfg.privacy, cfg.federation, num_train)
    plain = copy.deepcopy(model) if dp is not None else None  # before the memory baseline: not counted as DP's
    lr, optimizer, momentum = float(cfg.federation.lr), str(cfg.federation.optimizer), float(cfg.federation.momentum)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
    base_kb, hwm_reset = _rss_kb("VmRSS"), _reset_peak_rss()
    out = {"model": model_name, "mode": mode, "precision": precision, "steps": steps, "device": str(device),
           "parameters": sum(p.numel() for p in model.parameters()),
           "noise_multiplier": None if dp is None else dp.noise_multiplier, "epochs": epochs,
           "auto_picks": choose("auto", model)}
    seen_warnings: dict[str, int] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            def timed(net, plan_or_none, n_epochs: int) -> tuple[float, float]:
                """Seconds per step and images per step of one `train_epochs` call."""
                torch.manual_seed(1)  # dropout
                loader.generator.manual_seed(1)
                data.drawn = 0
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                _, taken = train_epochs(net, loader, n_epochs, lr, device, dp=plan_or_none, grad_sample_mode=mode,
                                        optimizer=optimizer, momentum=momentum, precision=precision)
                if cuda:
                    torch.cuda.synchronize(device)
                return (time.perf_counter() - start) / taken, data.drawn / taken

            timed(model, dp, 1)
            if plain is not None:
                timed(plain, None, 1)
            seconds, batches, plain_seconds = [], [], []
            for r in range(repeats):
                if plain is not None:  # the plain step, timed between the DP ones in this process
                    plain_seconds.append(timed(plain, None, epochs)[0])
                step, batch = timed(model, dp, epochs)
                seconds.append(step)
                batches.append(batch)
        for w in caught:
            key = f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}"
            seen_warnings[key] = seen_warnings.get(key, 0) + 1
    except Exception as e:  # Opacus cannot do this mode for this model: recorded, not fatal
        return out | {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}"}
    best = min(range(repeats), key=seconds.__getitem__)
    out |= {"s_per_step": seconds[best], "s_per_step_repeats": seconds, "mean_batch": batches[best],
            "s_per_image": seconds[best] / batches[best],
            "warnings": seen_warnings}
    if plain_seconds:
        out |= {"plain_s_per_step_here": min(plain_seconds), "plain_s_per_step_here_repeats": plain_seconds}
    if cuda:
        out |= {"peak_mb": (torch.cuda.max_memory_allocated(device) - base_bytes) / 2**20,
                "memory_method": "torch.cuda.max_memory_allocated - allocated before training"}
    else:
        peak_kb = _rss_kb("VmHWM") if hwm_reset else None
        method = "VmHWM (reset after setup) - VmRSS after setup"
        if peak_kb is None:  # ru_maxrss: KB on Linux, and includes any import-time peak
            peak_kb, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss - VmRSS after setup"
        out |= {"peak_mb": (peak_kb - (base_kb or 0)) / 1024, "rss_after_setup_mb": (base_kb or 0) / 1024,
                "memory_method": method}
    if profiled:  # after the peak memory is read: the profiler's own records are not the step's
        out["profile"] = profile(lambda: timed(model, dp, epochs), cuda)
    return out


# --- driver -----------------------------------------------------------------------------


def measure(model: str, mode: str, precision: str, steps: int, args) -> dict:
    """One (model, mode, precision) in a fresh interpreter, so that its peak memory is its own."""
    spec = json.dumps({"model_name": model, "mode": mode, "precision": precision, "steps": steps,
                       "repeats": args.repeats, "profiled": args.profile,
                       "threads": args.threads, "device_name": args.device, "overrides": args.overrides})
    env = os.environ | {k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]) | {"process_wall_s": wall}
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"model": model, "mode": mode, "precision": precision, "steps": steps,
            "error": f"worker died ({proc.returncode}): {tail[:500]}"}


def machine() -> dict:
    import opacus
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "opacus": opacus.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def add_ratios(rows: list[dict]) -> None:
    plain = {(r["model"], r["precision"]): r for r in rows if r["mode"] == "none" and "error" not in r}
    float32 = {(r["model"], r["mode"]): r for r in rows if r["precision"] == "float32" and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        if r["precision"] != "float32" and (r["model"], r["mode"]) in float32:
            r["vs_float32"] = r["s_per_image"] / float32[r["model"], r["mode"]]["s_per_image"]
        base = plain.get((r["model"], r["precision"]))
        if base is None:
            continue
        r["time_ratio"] = r["s_per_step"] / r.get("plain_s_per_step_here", base["s_per_step"])
        r["memory_ratio"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None


def verdict(rows: list[dict], default_model: str, default_mode: str, default_precision: str) -> dict:
    """The default model's ratios in the default precision; `default_mode` `auto` is the mode it picks for it."""
    rows = [r for r in rows if r["precision"] == default_precision]
    dp = {r["mode"]: r.get("time_ratio") for r in rows if r["model"] == default_model and r["mode"] != "none"}
    if default_mode == "auto":
        default_mode = next((r["auto_picks"] for r in rows if r["model"] == default_model and "auto_picks" in r),
                            default_mode)
    ok = {m: (x is not None and x <= AIM) for m, x in dp.items()}
    fastest = min((m for m in dp if dp[m] is not None), key=dp.__getitem__, default=None)
    return {"aim": f"DP step time <= {AIM}x non-private for the default model", "default_model": default_model,
            "default_mode": default_mode, "time_ratios": dp, "meets_aim": ok,
            "default_mode_meets_aim": ok.get(default_mode, False), "fastest_mode": fastest}


def main() -> None:
    from src.config import compose_config
    from src.models.registry import MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per timed call for every model (default per model: {DEFAULT_STEPS})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda[:N] (default: the config's, auto)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the config's data.image_size")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="expected batch of the CNNs (default: the config's federation.batch_size)")
    parser.add_argument("--precision", nargs="+", default=None, choices=["float32", "bfloat16"],
                        help="federation.precision, each in turn (default: the config's)")
    parser.add_argument("--profile", action="store_true", help="one more call under torch.profiler per row")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.overrides = ([f"data.image_size={args.image_size}"] if args.image_size else []) + (
        [f"federation.batch_size={args.batch_size}"] if args.batch_size else [])
    cfg = compose_config(args.overrides)
    args.device = args.device or str(cfg.device)
    default_model, default_mode = str(cfg.model.name), str(cfg.privacy.grad_sample_mode)
    default_precision = str(cfg.federation.precision)
    precisions = args.precision or [default_precision]

    load_before, start = os.getloadavg(), time.perf_counter()
    rows = []
    for model in args.models:
        steps = args.steps or DEFAULT_STEPS.get(model, 10)
        for mode in args.modes:
            for precision in precisions:
                rows.append(measure(model, mode, precision, steps, args))
                r = rows[-1]
                print(f"  {model} {mode} {precision}: "
                      + (r["error"] if "error" in r else f"{r['s_per_step']:.3f} s/step"), file=sys.stderr, flush=True)
    add_ratios(rows)
    report = {
        "settings": {"image_size": int(cfg.data.image_size), "batch_size": int(cfg.federation.batch_size),
                     "threads": args.threads, "device": args.device, "repeats": args.repeats,
                     "precisions": precisions, "warmup": "one epoch",
                     "statistic": "best repeat's seconds per optimizer step",
                     "data": "a default hospital's training set, in memory: random 1x64x64 images or features "
                             "(no decoding or augmentation)",
                     "privacy": {k: cfg.privacy[k] for k in ("target_epsilon", "delta", "max_grad_norm")},
                     "optimizer": "each model's configured optimizer and lr (train_epochs)"},
        "machine": machine() | {"load_average_before": load_before, "load_average_after": os.getloadavg()},
        "wall_s": time.perf_counter() - start,
        "verdict": verdict(rows, default_model, default_mode, default_precision)
        if default_model in args.models and default_precision in precisions else None,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'model':13s} {'mode':10s} {'precision':9s} {'s/step':>8s} {'x time':>7s} {'batch':>6s} {'peak MB':>8s} "
          f"{'x mem':>6s} {'x fp32':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:13s} {r['mode']:10s} {r['precision']:9s} error: {r['error']}")
            continue
        ratio, mem, fp32 = r.get("time_ratio"), r.get("memory_ratio"), r.get("vs_float32")
        print(f"{r['model']:13s} {r['mode']:10s} {r['precision']:9s} {r['s_per_step']:8.3f} "
              f"{'' if ratio is None else f'{ratio:6.2f}x':>7s} {r['mean_batch']:6.1f} {r['peak_mb']:8.1f} "
              f"{'' if mem is None else f'{mem:5.2f}x':>6s} {'' if fp32 is None else f'{fp32:6.2f}x':>7s}")
    for r in rows:
        if "profile" in r:
            p = r["profile"]
            busy = f", device busy {p['device_busy']:.0%}" if "device_busy" in p else ""
            ops = "; ".join(f"{o['op']} {o['self_device_ms' if 'device_busy' in p else 'self_cpu_ms']:.0f} ms"
                            for o in p["profile_top"][:4])
            print(f"profile {r['model']} {r['mode']} {r['precision']} ({p['wall_s']:.2f} s{busy}): {ops}")
    v = report["verdict"]
    if v is not None:
        ratios = ", ".join(f"{m} {x:.2f}x" if x is not None else f"{m} error" for m, x in v["time_ratios"].items())
        print(f"default model {v['default_model']} (aim <= {AIM}x non-private): {ratios}; "
              f"the default mode {v['default_mode']} {'meets' if v['default_mode_meets_aim'] else 'MISSES'} the aim"
              + (f"; fastest: {v['fastest_mode']}" if v["fastest_mode"] else ""))
    print(f"load average {load_before[0]:.2f} before, {report['machine']['load_average_after'][0]:.2f} after; "
          f"wrote {args.out}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print("RESULT " + json.dumps(worker(**json.loads(sys.argv[2]))), flush=True)
    else:
        main()
