"""Why an input file was not used, and the tally of such files.

A bad file never stops a hospital: it is skipped with one warning line that names
the file and the reason, and counted so that `src.data.check` can report it.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

log = logging.getLogger("fedcxr.data")


class UnusableImage(ValueError):
    """A file that cannot be used as a chest radiograph.

    `reason` is a short, stable category (used to group the check report);
    the message adds the detail.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class SkipLog:
    """Files skipped per hospital and reason; logs one warning line per file."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def skip(self, path, reason: str, detail: str = "", hospital: str = "-", count: int = 1) -> None:
        """Count `count` files under `reason`; `path` names the file (or the folder holding them)."""
        self.counts[hospital][reason] += count
        log.warning("skipped %s: %s%s", path, reason, f" ({detail})" if detail else "")

    def skip_error(self, path: str, error: UnusableImage, hospital: str = "-") -> None:
        self.skip(path, error.reason, error.detail, hospital)

    def merge(self, other: "SkipLog") -> None:
        for hospital, reasons in other.counts.items():
            self.counts[hospital].update(reasons)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def by_reason(self) -> Counter:
        total: Counter = Counter()
        for reasons in self.counts.values():
            total.update(reasons)
        return total
