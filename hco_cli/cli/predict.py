"""``hco predict RUN [RUN ...]``: segment a prepared split or raw scans with one run or an
ensemble, written on the original grid."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from hco_cli.cli.common import console, err_console, handle_errors
from hco_cli.cli.progress import case_progress
from hco_cli.errors import ConfigError

if TYPE_CHECKING:
    from hco_cli.inference.predict import PredictionReport


class Checkpoint(str, Enum):
    best = "best"
    last = "last"
    best_val = "best-val"  # validation.also_select_on: [val]
    best_test = "best-test"  # validation.also_select_on: [test] (test-selected)


class Split(str, Enum):
    test = "test"
    val = "val"
    labeled = "labeled"
    unlabeled = "unlabeled"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Stitch(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


def parse_stride(text: str | None) -> tuple[int, int, int] | None:
    """'18,18,4' -> (18, 18, 4); '18,4' -> (18, 18, 4) (x/y, z); '8' -> (8, 8, 8)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--stride {text!r}: expected integers like 18,18,4") from None
    if len(values) == 1:
        values *= 3
    elif len(values) == 2:
        values = [values[0], values[0], values[1]]
    if len(values) != 3 or min(values) < 1:
        raise ConfigError(f"--stride {text!r}: expected 1, 2 (x/y, z) or 3 positive integers")
    return (values[0], values[1], values[2])


@handle_errors
def predict(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folder or .pt checkpoint; several (or a quoted glob such as "
        "'runs/sgd-hco/*') form an ensemble that averages their probabilities.")],
    data: Annotated[Path | None, _opt("Prepared dataset (default: the run's).")] = None,
    split: Annotated[Split | None, _opt("Split of the dataset to predict (default: test).")]
    = None,
    fold: Annotated[str | None, _opt("Fold L<i>U<j> for labeled/unlabeled splits "
                                     "(default: the run's).")] = None,
    images: Annotated[list[Path] | None, _opt(
        "Raw image file or folder (NIfTI, NRRD, MHA); repeat for several. Preprocessed by the "
        "run's plans.json (as its training cases were; no --data needed), instead of "
        "--data/--split.")] = None,
    out: Annotated[Path | None, _opt("Output folder (default: RUN/eval/<checkpoint>/preds).")]
    = None,
    checkpoint: Annotated[Checkpoint | None, _opt("Checkpoint of a run folder (default: best).")]
    = None,
    stride: Annotated[str | None, _opt("Sliding-window stride x,y,z or xy,z "
                                       "(default: the run's validation stride).")] = None,
    batch_size: Annotated[int | None, _opt("Windows per forward pass (default: the run's).",
                                           min=1)] = None,
    amp: Annotated[bool | None, _opt("bf16 autocast (default: on if the run trained with it and "
                                     "the device is CUDA).",
                                     "--amp/--no-amp")] = None,
    channels_last: Annotated[bool | None, _opt(
        "The network in the 3-D channels-last memory layout (default: on if the run trained "
        "in it and the device is CUDA).", "--channels-last/--no-channels-last")] = None,
    device: Annotated[Device, _opt("auto (CUDA if available), cpu or cuda.")] = Device.auto,
    tta: Annotated[bool, _opt("Test-time mirroring: average each window's probabilities over "
                              "its 8 copies mirrored along x, y, z (8x the forward passes; "
                              "off by default, as in the literature's numbers).")] = False,
    stitch: Annotated[Stitch, _opt("Where the probability map is stitched: auto (the GPU when "
                                   "it fits into half its free memory), cpu (for small GPUs "
                                   "and large scans) or gpu.")] = Stitch.auto,
    save_probabilities: Annotated[bool, _opt(
        "Also write CASE.npz: float32 class probabilities (K, X, Y, Z) on the original grid.")]
    = False,
    uncertainty: Annotated[bool, _opt("Also write uncertainty/CASE.nii.gz: the predictive "
                                      "entropy / log K (0 certain, 1 uniform).")] = False,
    lcc: Annotated[bool, _opt("Keep the largest connected component of each class.")] = False,
    evaluate: Annotated[bool, _opt("Score the predictions against the split's labels and write "
                                   "RUN/eval/<checkpoint>/summary.json (with --out: summary.json "
                                   "beside the --out folder).")] = False,
    force: Annotated[bool, _opt("Replace an existing output folder.")] = False,
    pipeline: Annotated[bool, _opt("Write and score each case in background threads and "
                                   "processes while the next case is predicted (same files "
                                   "and scores); --no-pipeline: one case after another.",
                                   "--pipeline/--no-pipeline")] = True,
) -> None:
    """Predict every case with a sliding window and write CASE.nii.gz in its original geometry."""
    # Deferred: torch loads only when a command predicts, never for --help.
    from hco_cli.config import describe_error
    from hco_cli.inference import predict as lib

    try:
        options = lib.PredictOptions(
            checkpoint=checkpoint.value if checkpoint else None, data=data,
            split=split.value if split else None, fold=fold, images=images or [], out=out,
            stride=parse_stride(stride), batch_size=batch_size, amp=amp,
            channels_last=channels_last, device=device.value,
            tta=tta, stitch=stitch.value, save_probabilities=save_probabilities,
            uncertainty=uncertainty, lcc=lcc, evaluate=evaluate, force=force,
            pipeline=pipeline)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    with case_progress(console) as bar:
        task = bar.add_task("predicting", total=None)
        windows = bar.add_task("windows", total=None)

        def step(done: int, total: int, case: str) -> None:
            bar.update(task, completed=done, total=total, description=f"predicted {case}")

        def window_step(done: int, total: int, case: str) -> None:
            bar.update(windows, completed=done, total=total, description=f"{case}: windows")

        report = lib.predict(runs, options, progress=step, window_progress=window_step)
    _render(report)


def _render(report: PredictionReport) -> None:
    gpu = any(c.peak_gpu_mib is not None for c in report.cases)
    table = Table(title=f"{len(report.cases)} cases -> {report.out}")
    names = ["case", "prepared shape", "original shape", "seconds"]
    for name in names + (["stitched on", "peak GPU MiB"] if gpu else []):
        table.add_column(name, justify="left" if name == "case" else "right")
    for c in report.cases:
        row = [escape(c.case), "x".join(map(str, c.prepared_shape)),
               "x".join(map(str, c.original_shape)),
               f"{c.seconds:.2f}"]
        table.add_row(*row, *([c.stitched_on, f"{c.peak_gpu_mib or 0:.0f}"] if gpu else []))
    console.print(table)
    for message in report.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True)
    for c in report.cases:
        if c.note:
            err_console.print(f"[bold yellow]warning:[/] case {escape(c.case)}: {escape(c.note)}",
                              soft_wrap=True)
    w = report.window
    mean = sum(c.seconds for c in report.cases) / max(1, len(report.cases))
    patch = "x".join(map(str, w.patch_size))
    console.print(
        f"checkpoint {report.checkpoint} on {report.device}: patch {patch}, "
        f"stride {'/'.join(map(str, w.stride))}, batch {w.batch_size}, amp {w.amp}, "
        f"channels-last {report.channels_last}, lcc {w.lcc}; {mean:.2f} s per case"
    )
    if len(report.runs) > 1 or w.mirror_axes:
        mirrors = 2 ** len(w.mirror_axes)
        console.print(
            f"ensemble of {len(report.runs)} run(s) x {mirrors} mirrored cop"
            f"{'ies' if mirrors > 1 else 'y'}: {report.passes_per_window} forward passes per "
            f"window ({report.passes_per_window}x a single run without --tta)")
    if report.outputs.probabilities or report.outputs.uncertainty:
        extra = [name for name, on in (("CASE.npz probabilities", report.outputs.probabilities),
                                       ("uncertainty/CASE.nii.gz entropy",
                                        report.outputs.uncertainty)) if on]
        console.print(f"also written: {', '.join(extra)}")
    if report.summary is not None:
        if report.mean_dice:
            dice = ", ".join(f"{k} {v:.4f}" for k, v in report.mean_dice.items())
            console.print(f"mean Dice: {dice}")
        console.print(f"summary: {report.summary}")
