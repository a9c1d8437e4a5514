"""Is a hospital's training fed? Images per second of its training step through its real loader
against the same model on tensors already on the device (the model's compute-bound rate), side
by side.

    python bench/loader_throughput.py [--models resnet18 densenet121] [--image-size 224] [--batch-size 32]
                                      [--images 512] [--num-workers 0 4] [--memory-cache-mb 0 2048]
                                      [--device auto] [--precision bfloat16] [--out FILE]

Both paths run the project's own `train_epochs` (non-private: DP's cost is the same for both
paths and is bench/dp_overhead.py's subject), each model's configured optimizer and lr, in
`--precision` (`federation.precision`; float32 unless given):

- model alone: the cached images stacked once on the device, batches sliced there in a
  shuffled order, no augmentation: the most images per second the model can train on;
- training: `local_training_view`, as a hospital trains: a DataLoader (`num_workers`
  processes, pinned memory on CUDA) over the MONAI disk cache, with up to
  `data.memory_cache_mb` of it held in memory (filled once a round: `setup_s`; 0 reads the
  disk cache every epoch), each batch augmented on the device (`BatchAugmentation`);
- feed only: that loader, the copy to the device and the augmentation, without the model;
  loader only: the loader alone. Both measurable on any machine: the most images per
  second training could reach.

Images: a synthetic hospital of `--images` DICOM files (a mix of sites, some JPEG 2000),
decoded into the cache before any timing. Timing: one warm-up epoch, then `--repeats`
epochs; the best epoch's images per second. The ratio (training / model alone) is what the
loader leaves of the model's rate; the aim is at least 0.7 on a GPU. Writes
bench/results/loader_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from src.config import compose_config
from src.data.dataset import make_dataset, prepare
from src.data.layouts import Sample
from src.data.skips import SkipLog
from src.data.synthetic import generate
from src.models.registry import build_model
from src.training.loops import local_training_view, resolve_device, train_epochs

RESULTS = Path(__file__).parent / "results" / "loader_throughput.json"
AIM = 0.7


def best_rate(run_epoch, images: int, repeats: int, device) -> float:
    """Images per second of the best of `repeats` epochs, after one warm-up epoch."""
    run_epoch()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run_epoch()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return images / best


def measure(model_name: str, samples: list[Sample], args, device) -> list[dict]:
    cfg = compose_config([f"model={model_name}", f"data.image_size={args.image_size}",
                          f"data.cache_dir={args.cache}"])
    lr, optimizer = float(cfg.federation.lr), str(cfg.federation.optimizer)
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    if getattr(model, "front_end", None) is not None:
        raise ValueError(f"{model_name} trains a head on cached features: no image loader to measure")

    cached = make_dataset(samples, cfg.data)  # the disk cache `prepare` filled
    images = torch.stack([cached[i]["image"] for i in range(len(samples))]).to(device)
    labels = torch.tensor([s.label for s in samples], device=device)
    order = torch.Generator().manual_seed(0)

    def in_memory_epoch() -> None:
        perm = torch.randperm(len(samples), generator=order).to(device)
        batches = [{"image": images[i], "label": labels[i]} for i in perm.split(args.batch_size)]
        train_epochs(model, batches, 1, lr, device, optimizer=optimizer, precision=args.precision)

    model_rate = best_rate(in_memory_epoch, len(samples), args.repeats, device)
    rows = []
    for memory_mb in args.memory_cache_mb:
        data_cfg = compose_config([f"data.image_size={args.image_size}", f"data.cache_dir={args.cache}",
                                   f"data.memory_cache_mb={memory_mb}"]).data
        for workers in args.num_workers:
            start = time.perf_counter()
            view = local_training_view(model, samples, data_cfg, args.batch_size, 0, device, num_workers=workers)
            row = {"model": model_name, "precision": args.precision, "memory_cache_mb": memory_mb,
                   "num_workers": workers,
                   "setup_s": time.perf_counter() - start,  # once a round: fills the memory cache
                   "in_memory": model_rate}

            def loader_only() -> None:
                for _ in view.loader:
                    pass

            def feed_only() -> None:
                for batch in view.loader:
                    view.augment(batch["image"].to(device, non_blocking=True))

            row["loader_only"] = best_rate(loader_only, len(samples), args.repeats, device)
            row["feed_only"] = best_rate(feed_only, len(samples), args.repeats, device)
            row["training"] = best_rate(lambda: train_epochs(view.module, view.loader, 1, lr, device,
                                                             optimizer=optimizer, augment=view.augment,
                                                             precision=args.precision),
                                        len(samples), args.repeats, device)
            row["ratio"] = row["training"] / model_rate
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0])
    parser.add_argument("--memory-cache-mb", type=float, nargs="+", default=[0, 2048],
                        help="data.memory_cache_mb values (0: every epoch reads the disk cache)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = resolve_device(args.device)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "hospital", hospitals=1, images_per_hospital=args.images, seed=0)
        files = sorted((Path(tmp) / "hospital").rglob("*.dcm"))
        classes = sorted({f.parent.name for f in files})
        samples = [Sample(str(f), classes.index(f.parent.name)) for f in files]
        args.cache = f"{tmp}/cache"
        data_cfg = compose_config([f"data.image_size={args.image_size}", f"data.cache_dir={args.cache}"]).data
        start = time.perf_counter()
        samples = prepare(samples, data_cfg, SkipLog())
        decode_s = time.perf_counter() - start
        for name in args.models:
            rows += measure(name, samples, args, device)

    report = {"settings": {"image_size": args.image_size, "batch_size": args.batch_size, "images": len(samples),
                           "repeats": args.repeats, "decode_into_cache_s": decode_s, "unit": "images per second",
                           "statistic": "best epoch after one warm-up epoch", "aim": f"ratio >= {AIM} on a GPU"},
              "machine": {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                          else None, "torch": torch.__version__, "python": platform.python_version(),
                          "cpu_count": os.cpu_count()},
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'model':13s} {'memory MB':>9s} {'workers':>7s} {'model alone':>11s} {'training':>16s} "
          f"{'feed only':>10s} {'loader only':>11s} {'setup s':>8s}")
    for r in rows:
        print(f"{r['model']:13s} {r['memory_cache_mb']:9.0f} {r['num_workers']:7d} {r['in_memory']:11.1f} "
              f"{r['training']:9.1f} ({r['ratio']:.2f}x) {r['feed_only']:10.1f} {r['loader_only']:11.1f} "
              f"{r['setup_s']:8.2f}")
    print(f"images/s on {device}; the aim on a GPU: the loader at least {AIM}x the in-memory rate; wrote {args.out}")


if __name__ == "__main__":
    main()
