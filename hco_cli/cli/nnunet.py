"""``hco prepare export-nnunet DATA --out DIR`` (and ``hco prepare KIND ... --export-nnunet
DIR``): a prepared dataset's labeled cases as an nnU-Net v2 raw dataset with hco's split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hco_cli.cli.common import console, handle_errors


@handle_errors
def export_nnunet(
    dataset: Annotated[Path, typer.Argument(help="Prepared dataset folder (hco prepare --out).")],
    out: Annotated[Path, typer.Option(help="Folder to write, e.g. "
                                      "$nnUNet_raw/Dataset501_LA.")],
    fold: Annotated[str | None, typer.Option(help="Fold L<i>U<j>: its labeled cases train "
                                             "(default: the labeled split).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing folder.")] = False,
) -> None:
    """Write imagesTr/labelsTr, dataset.json and splits_final.json (train = labeled split,
    val = val split, else test) for the supervised nnU-Net baseline."""
    write(dataset, out, fold=fold, force=force)


def write(dataset: Path, out: Path, *, fold: str | None = None, force: bool = False) -> None:
    """Export with a progress bar and print where the parts went."""
    from hco_cli.data import nnunet as lib  # deferred: numpy and pydantic load only to export

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("nnU-Net export", total=None)
        result = lib.export_nnunet(dataset, out, fold=fold, force=force, progress=lambda d, t, c:
                                   bar.update(task, completed=d, total=t,
                                              description=f"nnU-Net case {c}"))
    val = "test split (no val split)" if result.val_is_test else "val split"
    console.print(f"nnU-Net raw dataset {result.out}: {len(result.train)} training + "
                  f"{len(result.val)} validation cases ({val}) in imagesTr, "
                  f"{len(result.test)} in imagesTs; splits_final.json has one fold")
