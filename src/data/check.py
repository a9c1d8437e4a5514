"""`python -m src.data.check data=<layout> data.root=<path> [--json FILE]`: what an archive will contribute.

The classes; per hospital and split, the usable images per class; the skipped files
grouped by reason; totals per hospital and overall. Every image is decoded (which
also fills the cache training will read). `--json FILE` writes the same report for a
hospital's pipeline. Exits 1 when a hospital has no usable image, 2 when the config
or root is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from src.config import compose_config
from src.data.dataset import prepare
from src.data.federation import Federation, build_federation
from src.progress import progress_bar


def decode_all(fed: Federation, data_cfg) -> Federation:
    """The federation with undecodable images skipped and counted."""
    with progress_bar("decoding and caching images", len(fed.samples)) as advance:
        usable = prepare(fed.samples, data_cfg, fed.skips, advance)
    return Federation(fed.classes, fed.hospitals, usable, fed.skips)


def classes_source(data_cfg) -> str:
    """Where the class names came from, for the report."""
    if data_cfg.get("classes"):
        return "data.classes"
    return {"folder": "the class folders", "csv": "the labels in the CSV"}.get(data_cfg.layout, "the layout")


def summary(fed: Federation, classes_from: str) -> dict:
    """The report as data: what `--json` writes and the tables show."""
    counts = fed.counts()
    hospitals = {}
    for hospital in fed.hospitals:
        skipped = dict(sorted(fed.skips.counts.get(hospital, {}).items()))
        usable = {split: dict(zip(fed.classes, per_class)) for split, per_class in counts[hospital].items()}
        hospitals[hospital] = {"usable": usable, "usable_total": sum(map(sum, counts[hospital].values())),
                               "skipped": skipped, "skipped_total": sum(skipped.values())}
    unassigned = dict(sorted(fed.skips.counts.get("-", {}).items()))  # skipped before the images had a hospital
    return {"classes": fed.classes, "classes_from": classes_from, "hospitals": hospitals,
            "skipped_before_partition": unassigned,
            "total": {"usable": sum(h["usable_total"] for h in hospitals.values()), "skipped": fed.skips.total}}


def report(fed: Federation, data_cfg, console: Console) -> dict:
    """Print the classes, usable images, skipped files and totals; returns them as `summary` does."""
    numbers = summary(fed, classes_source(data_cfg))
    console.print(f"classes: {', '.join(fed.classes)} ({numbers['classes_from']})", highlight=False)
    usable = Table(title="Usable images")
    for column in ["hospital", "split", *fed.classes, "total"]:
        usable.add_column(column, justify="left" if column in ("hospital", "split") else "right")
    for hospital, splits in fed.counts().items():
        for split, per_class in splits.items():
            usable.add_row(hospital, split, *map(str, per_class), str(sum(per_class)))
    console.print(usable)
    if not fed.skips.total:
        console.print("Skipped files: none")
    else:
        skipped = Table(title=f"Skipped files: {fed.skips.total}")
        for column in ("hospital", "reason", "files"):
            skipped.add_column(column, justify="right" if column == "files" else "left")
        for hospital, reasons in sorted(fed.skips.counts.items()):
            for reason, n in sorted(reasons.items()):
                skipped.add_row("(before partition)" if hospital == "-" else hospital, reason, str(n))
        console.print(skipped)
    totals = Table(title="Totals")
    for column in ("hospital", "usable", "skipped"):
        totals.add_column(column, justify="left" if column == "hospital" else "right")
    for hospital, h in numbers["hospitals"].items():
        totals.add_row(hospital, str(h["usable_total"]), str(h["skipped_total"]))
    if numbers["skipped_before_partition"]:
        totals.add_row("(before partition)", "", str(sum(numbers["skipped_before_partition"].values())))
    totals.add_row("all", str(numbers["total"]["usable"]), str(numbers["total"]["skipped"]), style="bold")
    console.print(totals)
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What a hospital archive will contribute: reads the images under "
        "data.root (every one is decoded, filling data.cache_dir), prints the classes, usable images per "
        "hospital, split and class, the skipped files by reason and the totals.",
        epilog="overrides: Hydra overrides as for run_simulation.py, e.g. data=folder data.root=/archive/chest")
    parser.add_argument("overrides", nargs="*", help="Hydra config overrides (key=value)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report to FILE as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    console = Console()
    try:
        cfg = compose_config(args.overrides)
        fed = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed), cfg.data)
    except (ValueError, OSError, HydraException, OmegaConfBaseException) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2
    numbers = report(fed, cfg.data, console)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1))
    empty = [h for h, splits in fed.counts().items() if not any(map(sum, splits.values()))]
    if empty:
        console.print(f"[red]no usable image at:[/red] {', '.join(empty)}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
