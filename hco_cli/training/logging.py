"""``metrics.jsonl``: one JSON object per line, per training iteration and per validation.

Training records are buffered by the loop and written in blocks (one host synchronisation per
block); non-finite numbers are written as ``null`` so every line stays valid JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hco_cli.errors import CheckpointError
from hco_cli.io_utils import atomic_path, json_safe


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and flushes them to disk at once, then hands the
    same records to ``fanout`` (the run's tracking sinks), the one path every record takes."""

    def __init__(self, path: Path, *,
                 fanout: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fanout = fanout

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        lines = "".join(json.dumps(json_safe(r)) + "\n" for r in records)
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        if self.fanout is not None:
            self.fanout(records)

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` (written after the checkpoint a resume starts from)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("iter", 0)) <= iteration]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file; a truncated last line (a crash) is skipped."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise CheckpointError(f"{path}: line {number} is not JSON: {exc}") from exc
    return records
