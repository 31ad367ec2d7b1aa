"""``hco prepare KIND ...``: turn a source into a prepared dataset folder.

Four thin subcommands (one per kind of source), each calling one function of
:mod:`hco_cli.data.prepare`, with a rich progress bar per case and a summary table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from hco_cli.cli import nnunet
from hco_cli.cli.common import OneLineErrors, console, handle_errors
from hco_cli.cli.progress import case_progress

if TYPE_CHECKING:
    from hco_cli.data.prepare import PrepareSummary
from hco_cli.errors import ConfigError, OutputError
from hco_cli.outputs import check_distinct_outputs, check_output_folder

app = typer.Typer(
    help="Prepare a dataset from a source: [bold]la[/], [bold]pancreas[/], [bold]generic[/] "
    "(globs or an nnU-Net/MSD folder) or [bold]synthetic[/] phantoms. Writes --out "
    "atomically (dataset.json, splits.json, cases/); run `hco prepare KIND --help`.",
    no_args_is_help=True, rich_markup_mode="rich", cls=OneLineErrors,
)


class Norm(str, Enum):
    zscore = "zscore"
    ct = "ct"
    none = "none"


class Crop(str, Enum):
    none = "none"
    nonzero = "nonzero"
    otsu = "otsu"


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


ID_RULE = ("case ids are the file names without extension, the suffix all of them share and "
           "_0000 (folder names in front where names repeat)")
Out = Annotated[Path, _opt("Dataset folder to create, e.g. data/la.")]
Force = Annotated[bool, _opt("Replace an existing dataset.", "--force")]
Nnunet = Annotated[Path | None, _opt("Also write the labeled cases as an nnU-Net v2 raw dataset "
                                     "with this split (see hco prepare export-nnunet).")]
Labeled = Annotated[int | None, _opt("Labeled cases N (default: the source's protocol).",
                                     min=1)]
Val = Annotated[int, _opt("Hold K seeded cases with labels out of the unlabeled pool.", min=0)]
Seed = Annotated[int, _opt("Seed of every random choice.")]
FoldsL = Annotated[int, _opt("K disjoint labeled folds (L0, L1, ...) of --fold-size.", min=0)]
FoldsU = Annotated[int, _opt("J disjoint unlabeled folds of the rest (U0, U1, ...).", min=0)]
FoldSize = Annotated[int | None, _opt("Cases per labeled fold (default: N labeled).", min=1)]
Missing = Annotated[bool, _opt("Skip cases named in the lists but absent.", "--allow-missing")]
Workers = Annotated[int, _opt("Worker processes.", min=1)]
Test = Annotated[int | None, _opt("N seeded labeled cases as test (no test lists).", min=1)]
Images = Annotated[str | None, _opt(f"Image glob; {ID_RULE}.")]
CtImages = Annotated[str | None, _opt("Raw CT glob; the case id is the text matched by its first "
                                      "path component holding a wildcard (PANCREAS_0001 -> "
                                      "0001), as the split lists name cases.")]
Labels = Annotated[str | None, _opt("Label glob, paired with images by case id.")]
Root = Annotated[Path | None, typer.Argument(help="nnU-Net/MSD folder or base of the globs.")]
Lists = Annotated[Path | None, _opt("Folder of train_lab.txt, train_unlab.txt, test.txt.")]


@app.command("la")
@handle_errors
def la(root: Annotated[Path, typer.Argument(help="Folder with train.list, test.list and "
                                              "'2018LA_Seg_Training Set/'.")],
       out: Out, labeled: Labeled = None, val: Val = 0, seed: Seed = 0,
       allow_missing: Missing = False, folds_labeled: FoldsL = 0, folds_unlabeled: FoldsU = 0,
       fold_size: FoldSize = None, workers: Workers = 1, force: Force = False,
       export_nnunet: Nnunet = None) -> None:
    """Left Atrium h5 (UA-MT/BCP layout): labeled = first N of train.list (default 8)."""
    _check_nnunet_target(out, export_nnunet, force=force)
    from hco_cli.data import prepare as lib  # deferred: SciPy loads only when preparing

    split = lib.SplitOptions(labeled=labeled, val=val, seed=seed, folds_labeled=folds_labeled,
                             folds_unlabeled=folds_unlabeled, fold_size=fold_size)
    with _progress() as step:
        summary = lib.prepare_la(root, out, split=split, allow_missing=allow_missing,
                                 force=force, workers=workers, progress=step)
    _render(summary, nnunet_out=export_nnunet, force=force)


@app.command("pancreas")
@handle_errors
def pancreas(root: Annotated[Path, typer.Argument(help="Folder of NNNN.h5 files, or the base "
                                                  "of the raw --images/--labels globs.")],
             out: Out, images: CtImages = None, labels: Labels = None, lists: Lists = None,
             labeled: Labeled = None, val: Val = 0, test: Test = None, seed: Seed = 0,
             allow_missing: Missing = False, folds_labeled: FoldsL = 0,
             folds_unlabeled: FoldsU = 0, fold_size: FoldSize = None, workers: Workers = 1,
             force: Force = False, export_nnunet: Nnunet = None) -> None:
    """NIH Pancreas-CT: BCP h5 + 12/50/18 lists, or raw CT with CoraNet's preprocessing."""
    _check_nnunet_target(out, export_nnunet, force=force)
    from hco_cli.data import prepare as lib  # deferred: SciPy loads only when preparing

    split = lib.SplitOptions(labeled=labeled, val=val, test=test, seed=seed, fold_size=fold_size,
                             folds_labeled=folds_labeled, folds_unlabeled=folds_unlabeled)
    with _progress() as step:
        summary = lib.prepare_pancreas(root, out, split=split, lists=lists, images=images,
                                       labels=labels, allow_missing=allow_missing, force=force,
                                       workers=workers, progress=step)
    _render(summary, nnunet_out=export_nnunet, force=force)


@app.command("generic")
@handle_errors
def generic(
    root: Root = None, *, out: Out, images: Images = None, labels: Labels = None,
    unlabeled: Annotated[str | None, _opt("Glob of label-less images.")] = None,
    classes: Annotated[str | None, _opt("'1=white matter,2=ventricles' or '200=myo,500=lv' "
                                        "(any values; trained as 0..K, predicted back as the "
                                        "values). Default: dataset.json, else the values "
                                        "found.")] = None,
    ignore_label: Annotated[int | None, _opt("Label value of unannotated voxels (scribbles): "
                                             "no class, left out of every loss and metric.",
                                             min=1)] = None,
    spacing: Annotated[str | None, _opt("Resample to X,Y,Z mm (or one number).")] = None,
    norm: Annotated[Norm | None, _opt("zscore (MR default) | ct (CT default) | none.")] = None,
    ct_window: Annotated[str | None, _opt("HU window LOW,HIGH mapped onto [0, 1] by --norm ct "
                                          "(default -125,275).")] = None,
    crop: Annotated[Crop, _opt("Crop every case to a box from its image alone: nonzero "
                               "voxels, or the Otsu foreground (the body).")] = Crop.none,
    crop_foreground: Annotated[bool, _opt("Same as --crop otsu.", "--crop-foreground")] = False,
    crop_train_by_label: Annotated[bool, _opt(
        "Crop training cases that have labels around their label instead (val, test and "
        "label-less cases keep --crop).", "--crop-train-by-label")] = False,
    crop_margin: Annotated[int, _opt("Crop margin in voxels (with --crop or "
                                     "--crop-train-by-label).", min=0)] = 0,
    group: Annotated[str | None, _opt(
        "Regex whose first group (or match) names a case's patient: a patient's cases share "
        "one split. Default: ids ending in _frame<digits> or _t<digits> group by the text before "
        "it (patient001_frame01 -> patient001); '.+' groups nothing.")]
    = None,
    labeled: Labeled = None, val: Val = 0, test: Test = None,
    test_list: Annotated[Path | None, _opt("File of test case ids, one a line.")] = None,
    seed: Seed = 0, folds_labeled: FoldsL = 0, folds_unlabeled: FoldsU = 0,
    fold_size: FoldSize = None, workers: Workers = 1, force: Force = False,
    export_nnunet: Nnunet = None,
) -> None:
    """Image/label globs or an nnU-Net/MSD folder (NIfTI, NRRD, MHA/MHD, DICOM series)."""
    _check_nnunet_target(out, export_nnunet, force=force)
    from hco_cli.data import prepare as lib  # deferred: SciPy loads only when preparing
    from hco_cli.data.sources.generic import parse_classes

    split = lib.SplitOptions(labeled=labeled, val=val, test=test, test_list=test_list,
                             seed=seed, folds_labeled=folds_labeled, group=group,
                             folds_unlabeled=folds_unlabeled, fold_size=fold_size)
    grid = _numbers(spacing, "--spacing", 3) if spacing else None
    window = _numbers(ct_window, "--ct-window", 2) if ct_window is not None else None
    if crop_foreground and crop not in (Crop.none, Crop.otsu):
        raise ConfigError(f"--crop-foreground is --crop otsu; it contradicts --crop {crop.value}")
    with _progress() as step:
        summary = lib.prepare_generic(
            out, root=root, images=images, labels=labels, unlabeled=unlabeled,
            classes=parse_classes(classes) if classes else None, ignore_label=ignore_label,
            spacing=(grid[0], grid[1], grid[2]) if grid else None,
            norm=norm.value if norm else None,
            ct_window=(window[0], window[1]) if window else None,
            crop="otsu" if crop_foreground else crop.value,
            crop_train_by_label=crop_train_by_label, crop_margin=crop_margin, split=split,
            force=force, workers=workers, progress=step)
    _render(summary, nnunet_out=export_nnunet, force=force)


@app.command("synthetic")
@handle_errors
def synthetic(out: Out, labeled: Annotated[int, _opt("Labeled cases.", min=1)] = 4,
              unlabeled: Annotated[int, _opt("Unlabeled cases (no label file).", min=0)] = 8,
              val: Annotated[int, _opt("Validation cases (labeled).", min=0)] = 0,
              test: Annotated[int, _opt("Test cases.", min=0)] = 4,
              classes: Annotated[int, _opt("Foreground classes.", min=1)] = 2,
              shape: Annotated[str, _opt("Volume size X,Y,Z in 1 mm voxels.")] = "64,64,48",
              seed: Seed = 0, folds_labeled: FoldsL = 0, folds_unlabeled: FoldsU = 0,
              fold_size: FoldSize = None, workers: Workers = 1, force: Force = False,
              export_nnunet: Nnunet = None) -> None:
    """Seeded 3D phantoms (organ-like blobs, texture, bias field, noise): the quick demo."""
    _check_nnunet_target(out, export_nnunet, force=force)
    from hco_cli.data import prepare as lib  # deferred: SciPy loads only when preparing

    numbers = _numbers(shape, "--shape", 3)
    if any(v != int(v) for v in numbers):
        raise ConfigError(f"--shape: expected whole numbers of voxels, got {shape!r}")
    size = [int(v) for v in numbers]
    with _progress() as step:
        summary = lib.prepare_synthetic(
            out, labeled=labeled, unlabeled=unlabeled, val=val, test=test, classes=classes,
            shape=(size[0], size[1], size[2]), seed=seed, folds_labeled=folds_labeled,
            folds_unlabeled=folds_unlabeled, fold_size=fold_size, force=force,
            workers=workers, progress=step)
    _render(summary, nnunet_out=export_nnunet, force=force)


def _numbers(text: str, option: str, count: int) -> tuple[float, ...]:
    """Comma-separated finite numbers; one number stands for all three with --spacing."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option}: {text!r} holds a value that is not a finite number")
    values = values * 3 if len(values) == 1 and option == "--spacing" else values
    if len(values) != count or (option == "--spacing" and min(values) <= 0):
        raise ConfigError(f"{option}: expected {count} numbers (spacings > 0), got {text!r}")
    return values


@contextmanager
def _progress() -> Iterator[Callable[[int, int, str], None]]:
    with case_progress(console) as bar:
        task = bar.add_task("preparing", total=None)
        yield lambda done, total, case: bar.update(task, completed=done, total=total,
                                                   description=f"case {case}")


def _check_nnunet_target(out: Path, target: Path | None, *, force: bool) -> None:
    """Before any preparing: an --export-nnunet folder that cannot be written fails now, so
    that a bad target leaves no prepared dataset behind."""
    if target is None:
        return
    check_output_folder(target, option="--export-nnunet")
    check_distinct_outputs({"--out": out, "--export-nnunet": target})
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputError(f"--export-nnunet {target} already exists and is not empty; use "
                          "--force to replace it")


def _mm(value: float) -> str:
    """A spacing to 4 significant digits, without trailing zeros (0.999999 -> 1)."""
    return f"{float(f'{value:.4g}'):g}"


def _counted_ids(cases: list[str], shown: int = 6) -> str:
    """``"N: id, id, ..."`` with at most ``shown`` ids, sorted, and how many more."""
    ids = sorted(cases)
    more = f", ... ({len(ids) - shown} more)" if len(ids) > shown else ""
    return f"{len(ids)}: {', '.join(ids[:shown])}{more}"


def _render(summary: PrepareSummary, *, nnunet_out: Path | None = None,
            force: bool = False) -> None:
    low, high = summary.shape_range()
    table = Table(title=f"{summary.out} ({summary.seconds:.1f} s)", show_header=False)
    labeled = {c.case for c in summary.cases if c.has_label}
    for name in ("labeled", "unlabeled", "val", "test"):
        ids = getattr(summary.splits, name)
        # val and test cases without a label (an imagesTs without labelsTs) are predicted,
        # never scored: say so where it happens
        bare = sum(c not in labeled for c in ids) if name in ("val", "test") else 0
        table.add_row(f"{name} cases", f"{len(ids)}" + (f" ({bare} without a label: predicted, "
                                                       "not scored)" if bare else ""))
    table.add_row("shape min / max", f"{low} / {high}")
    median = ", median" if summary.spacings_differ() else ""
    table.add_row(f"spacing (mm{median})", ", ".join(_mm(v) for v in summary.info.spacing))
    for name, share in summary.class_fractions().items():
        table.add_row(f"voxels: {name}", f"{100 * share:.2f} %")
    if summary.info.ignore_label is not None:
        table.add_row("ignore label", str(summary.info.ignore_label))
    folds = summary.splits.folds
    if folds.labeled:
        table.add_row("fold grid", f"{len(folds.labeled)} labeled x {len(folds.unlabeled)} "
                      "unlabeled (L{i}U{j})")
    if summary.skipped:
        table.add_row("skipped (absent or unlisted)", _counted_ids(summary.skipped))
    if summary.dropped_empty_labels:
        table.add_row("empty labels dropped (unlabeled)",
                      _counted_ids(summary.dropped_empty_labels))
    console.print(table)
    if nnunet_out is not None:
        nnunet.write(summary.out, nnunet_out, force=force)
