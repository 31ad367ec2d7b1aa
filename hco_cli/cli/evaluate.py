"""``hco evaluate``: Dice, Jaccard, HD95 and ASD of a prediction folder against its labels."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Annotated, Literal

import typer

from hco_cli.cli.common import console, err_console, handle_errors
from hco_cli.io_utils import is_glob, write_json, write_text
from hco_cli.outputs import check_distinct_outputs, check_output_file

# evaluation.metrics.EmptyPolicy, written out so that `hco --help` loads no NumPy or SciPy
# (tests/cli/test_app.py checks that the two agree).
EmptyPolicy = Literal["nan", "bcp"]


@handle_errors
def evaluate(
    pred_dir: Annotated[
        Path, typer.Argument(help="Folder of predicted label maps (.nii.gz, .nrrd, .mha).")
    ],
    label_dir: Annotated[
        Path,
        typer.Argument(
            help="Reference labels: a folder of label volumes with the same case ids; a "
            "quoted pattern of label volumes ('atlas/*/parcellation.nii.gz'; case ids as hco "
            "prepare generic --labels gives them); the LA layout (<CASE>/mri_norm2.h5, key "
            "'label': the '2018LA_Seg_Training Set' folder or its parent); or a prepared "
            "dataset (has dataset.json: its labels and prepared spacing). With the last three, "
            "labels without a prediction are skipped."
        ),
    ],
    mm: Annotated[
        bool,
        typer.Option(
            "--mm",
            help="Distances in millimetres using the label spacing (default: voxels, as the "
            "papers report). Not possible with h5 labels, which store no spacing.",
        ),
    ] = False,
    empty: Annotated[
        EmptyPolicy,
        typer.Option(
            help="Empty masks. nan: both empty gives NaN everywhere, one empty gives Dice = "
            "Jaccard = 0 and NaN distances; NaN values are left out of the means and counted "
            "as excluded. bcp: an empty prediction scores 0 for all four metrics, as the "
            "UA-MT/BCP test code does (flattering HD95/ASD)."
        ),
    ] = "nan",
    classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated label values to evaluate, e.g. 1,2 (default: every non-zero "
            "value in the labels, plus the dataset.json classes)."
        ),
    ] = None,
    ignore_label: Annotated[
        int | None,
        typer.Option(
            help="Reference value of unannotated voxels: they count as background in both maps "
            "(default: a prepared dataset's ignore label).", min=1,
        ),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Evaluate the cases that have both a prediction and a label instead of "
            "failing on unpaired files; the number dropped is reported.",
        ),
    ] = False,
    csv: Annotated[
        Path | None, typer.Option(help="Write per-case metrics (one row per case and class).")
    ] = None,
    json: Annotated[
        Path | None,
        typer.Option(help="Write summary.json: metric_per_case, mean, std, spacing_unit."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(help="Cases evaluated in parallel (default: number of CPU cores)."),
    ] = None,
) -> None:
    """Evaluate predicted segmentations: Dice, Jaccard, HD95 and ASD per case and class.

    Values equal medpy 0.5.2's dc, jc, hd95 and asd, as in UA-MT, BCP and the HCO paper.
    """
    # Deferred: NumPy and SciPy load when a command evaluates, not for --help.
    from hco_cli.evaluation.evaluate import evaluate_folders, parse_classes
    from hco_cli.evaluation.report import summary_table

    for option, target in (("--csv", csv), ("--json", json)):
        if target is not None:
            check_output_file(target, option=option)  # before the work, not after it
    check_distinct_outputs({"--csv": csv, "--json": json}, _read_paths(pred_dir, label_dir))
    summary = evaluate_folders(
        pred_dir,
        label_dir,
        classes=parse_classes(classes) if classes is not None else None,
        ignore=ignore_label,
        mm=mm,
        empty=empty,
        allow_missing=allow_missing,
        jobs=jobs,
    )
    if csv is not None:  # files first: a failed write leaves no half-reported result
        write_text(csv, summary.to_csv_text())
    if json is not None:
        write_json(json, summary.to_json_dict())
    console.print(summary_table(summary, title=f"{len(summary.cases)} cases: {pred_dir}"))
    if summary.dropped:
        console.print(f"dropped {len(summary.dropped)} unpaired case(s): {summary.dropped}")
    if summary.absent:
        err_console.print(f"[bold yellow]warning:[/] class(es) {summary.absent} appear in no "
                          "reference and no prediction: their values are NaN", soft_wrap=True)
    if csv is not None:
        console.print(f"per-case metrics: {csv}")
    if json is not None:
        console.print(f"summary: {json}")


def _read_paths(pred_dir: Path, label_dir: Path) -> list[Path]:
    """The folders and files that ``hco evaluate`` reads, which no output may name: the
    prediction volumes, and the label volumes, LA h5 files or prepared dataset's files."""
    from hco_cli.data.io import volume_suffix
    from hco_cli.evaluation.references import LA_FILE, LA_FOLDER

    paths = [pred_dir, label_dir]
    if pred_dir.is_dir():
        paths += [p for p in pred_dir.iterdir() if p.is_file() and volume_suffix(p)]
    if not label_dir.exists() and is_glob(label_dir):  # a pattern's files
        return paths + [Path(p) for p in glob.glob(str(label_dir), recursive=True)]
    if (label_dir / "dataset.json").is_file():  # a prepared dataset: its files, all of them
        paths += [label_dir / name for name in ("dataset.json", "splits.json", "plans.json")]
        cases = label_dir / "cases"
        return paths + (list(cases.iterdir()) if cases.is_dir() else [])
    folder = label_dir / LA_FOLDER if (label_dir / LA_FOLDER).is_dir() else label_dir
    if folder.is_dir():
        paths += [p / LA_FILE if p.is_dir() else p for p in folder.iterdir()
                  if p.is_dir() or volume_suffix(p)]
    return paths
