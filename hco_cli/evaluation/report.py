"""Rich rendering of an evaluation summary, laid out like the paper's tables.

Columns follow the HCO paper (Dice %, Jaccard %, ASD, HD95), each cell ``mean (std)``; ``n`` is
the number of cases and "excl." counts the NaN values left out of the means (overlap metrics /
distance metrics), which the empty-mask policy decides.
"""

from __future__ import annotations

import math

from rich import box
from rich.table import Table

from hco_cli.evaluation.evaluate import EvaluationSummary

# (metric key, header, scale): Dice and Jaccard are shown in percent, as in the paper.
COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("dice", "Dice %", 100.0),
    ("jaccard", "Jaccard %", 100.0),
    ("asd", "ASD", 1.0),
    ("hd95", "HD95", 1.0),
)


def format_mean_std(mean: float, std: float, *, scale: float = 1.0, digits: int = 2) -> str:
    """``"89.64 (3.21)"``; a dash when no finite value was averaged."""
    if math.isnan(mean):
        return "-"
    return f"{mean * scale:.{digits}f} ({std * scale:.{digits}f})"


def summary_table(summary: EvaluationSummary, *, title: str | None = None) -> Table:
    """One row per class: n, mean (std) of each metric, and the excluded counts."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, caption_justify="left")
    # Cells wrap between mean and (std) when the console is narrow; numbers are never cut.
    for header in ("class", "n", *(h for _, h, _ in COLUMNS), "excl."):
        table.add_column(header, justify="right", overflow="fold")
    for c in summary.classes:
        key = str(c)
        cells = [
            format_mean_std(summary.mean[key][m], summary.std[key][m], scale=scale)
            for m, _, scale in COLUMNS
        ]
        excluded = summary.n_excluded[key]
        overlap = max(excluded["dice"], excluded["jaccard"])
        distance = max(excluded["hd95"], excluded["asd"])
        table.add_row(key, str(len(summary.cases)), *cells, f"{overlap}/{distance}")
    table.caption = caption(summary)
    return table


def caption(summary: EvaluationSummary) -> str:
    """Units, statistics and the empty-mask policy in one sentence."""
    unit = "voxels" if summary.spacing_unit == "voxel" else "mm"
    policy = (
        "empty masks give NaN, left out of the means (excl.: overlap/distance values)"
        if summary.empty_policy == "nan"
        else "an empty prediction scores 0 on all four metrics (BCP convention)"
    )
    text = f"mean (std, ddof=0) over cases; ASD and HD95 in {unit}; {policy}"
    if summary.dropped:
        text += f"; {len(summary.dropped)} unpaired case(s) dropped"
    return text
