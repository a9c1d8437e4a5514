"""`python -m src.data.check data=<layout> data.root=<path>`: what an archive will contribute.

Per hospital and split, the usable images per class; the skipped files grouped by
reason. Every image is decoded (which also fills the cache training will read).
Exits 1 when a hospital has no usable image, 2 when the config or root is wrong.
"""

from __future__ import annotations

import logging
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from src.config import compose_config
from src.data.dataset import prepare
from src.data.federation import Federation, build_federation


def decode_all(fed: Federation, data_cfg) -> Federation:
    """The federation with undecodable images skipped and counted."""
    usable = prepare(fed.samples, data_cfg, fed.skips)
    return Federation(fed.classes, fed.hospitals, usable, fed.skips)


def report(fed: Federation, console: Console) -> None:
    usable = Table(title="Usable images")
    for column in ["hospital", "split", *fed.classes, "total"]:
        usable.add_column(column, justify="left" if column in ("hospital", "split") else "right")
    for hospital, splits in fed.counts().items():
        for split, per_class in splits.items():
            usable.add_row(hospital, split, *map(str, per_class), str(sum(per_class)))
    console.print(usable)
    if not fed.skips.total:
        console.print("Skipped files: none")
        return
    skipped = Table(title=f"Skipped files: {fed.skips.total}")
    for column in ("hospital", "reason", "files"):
        skipped.add_column(column, justify="right" if column == "files" else "left")
    for hospital, reasons in sorted(fed.skips.counts.items()):
        for reason, n in sorted(reasons.items()):
            skipped.add_row("(before partition)" if hospital == "-" else hospital, reason, str(n))
    console.print(skipped)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    console = Console()
    try:
        cfg = compose_config(sys.argv[1:] if argv is None else argv)
        fed = decode_all(build_federation(cfg.data, cfg.federation.num_hospitals, cfg.seed), cfg.data)
    except (ValueError, OSError, HydraException, OmegaConfBaseException) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 2
    report(fed, console)
    empty = [h for h, splits in fed.counts().items() if not any(map(sum, splits.values()))]
    if empty:
        console.print(f"[red]no usable image at:[/red] {', '.join(empty)}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
