"""Every path inside a run folder, built in one place.

    RUN/.hco.json                marks the folder as an hco run (what --force may replace)
    RUN/config.yaml              the resolved TrainConfig
    RUN/plans.json               the dataset's preprocessing plan, with the run's patch size
    RUN/run.json                 summary read by ``hco compare`` and ``hco sweep --status``
    RUN/metrics.jsonl            per-iteration and validation records
    RUN/metrics.jsonl.xz         the same, compressed (an archived run; read-only;
                                 RUN/metrics.jsonl.gz in runs archived before 2026-12-03)
    RUN/checkpoints/last.pt      everything needed to resume exactly
    RUN/checkpoints/best.pt      eval-model weights chosen on validation
    RUN/checkpoints/pretrain.pt  eval-model weights at the end of a shareable phase
    RUN/eval/<ckpt>/summary.json ``hco predict --evaluate`` of checkpoint <ckpt>
    RUN/eval/<ckpt>/preds/       its predictions

Plain paths only (no I/O, no third-party imports), so that ``hco sweep --status`` and
``hco compare`` use it without loading anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EVAL_DIR = "eval"
SUMMARY_FILE = "summary.json"
# The checkpoints a run's network is predicted, evaluated and exported from: best.pt (chosen on
# validation.select_on), last.pt, and best-<split>.pt of validation.also_select_on.
EvalCheckpoint = Literal["best", "last", "best-val", "best-test"]


@dataclass(frozen=True)
class RunFolder:
    """The paths of the run folder at ``path``."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_archive(self) -> Path:
        """``metrics.jsonl.xz``: a finished run's log compressed for keeping (about 6x
        smaller); read by ``hco compare --dynamics`` where ``metrics.jsonl`` is absent."""
        return self.path / "metrics.jsonl.xz"

    @property
    def metrics_logs(self) -> tuple[Path, Path, Path]:
        """The log's possible files, in the order a reader takes the first present: the plain
        log of a run (being) trained, the archive, and ``metrics.jsonl.gz``, the archive of runs
        archived before 2026-12-03 (gzip, a quarter larger than xz)."""
        return self.metrics, self.metrics_archive, self.path / "metrics.jsonl.gz"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.pt`` (``last``, ``best`` or ``pretrain``)."""
        return self.checkpoints / f"{which}.pt"

    def eval_dir(self, checkpoint: str) -> Path:
        return self.path / EVAL_DIR / checkpoint

    def summary(self, checkpoint: str) -> Path:
        """``eval/<checkpoint>/summary.json``, written by ``hco predict --evaluate``."""
        return self.eval_dir(checkpoint) / SUMMARY_FILE

    def predictions(self, checkpoint: str) -> Path:
        return self.eval_dir(checkpoint) / "preds"

    def summaries(self) -> dict[str, Path]:
        """The evaluated checkpoints and their summary.json, by checkpoint name."""
        return {p.parent.name: p for p in sorted((self.path / EVAL_DIR).glob(f"*/{SUMMARY_FILE}"))}

    @staticmethod
    def of_summary(path: Path) -> RunFolder | None:
        """The run whose ``eval/<ckpt>/summary.json`` ``path`` is, or None for another file."""
        path = Path(path)
        if path.name != SUMMARY_FILE or path.parent.parent.name != EVAL_DIR:
            return None
        return RunFolder(path.parent.parent.parent)


__all__ = ["EVAL_DIR", "SUMMARY_FILE", "EvalCheckpoint", "RunFolder"]
