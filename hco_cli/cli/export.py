"""``hco export RUN --format onnx|torchscript --out model.onnx``: the network and its input
contract, checked against PyTorch in the same command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from hco_cli.cli.common import console, handle_errors
from hco_cli.errors import ConfigError


class Format(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"
    best_val = "best-val"  # validation.also_select_on: [val]
    best_test = "best-test"  # validation.also_select_on: [test] (test-selected)


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


@handle_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run folder, or a .pt checkpoint file.")],
    out: Annotated[Path, _opt("Model file to write, e.g. model.onnx or model.pt; the input "
                              "contract goes beside it as model.json.")],
    format: Annotated[Format, _opt("onnx (checked with ONNX Runtime; pip install "
                                   "'hco-cli\\[onnx]') or torchscript (checked with "
                                   "torch.jit).")] = Format.onnx,
    checkpoint: Annotated[Checkpoint | None, _opt("Checkpoint of a run folder (default: "
                                                  "best).")] = None,
    tolerance: Annotated[float, _opt("Refuse the export when its logits differ from "
                                     "PyTorch's by more than this.")] = 1e-4,
    opset: Annotated[int | None, _opt("ONNX opset (default: PyTorch's exporter's).")] = None,
    force: Annotated[bool, _opt("Replace an existing model file and contract.",
                                "--force")] = False,
) -> None:
    """Export a run's network (logits of one patch batch) with its plan as a JSON contract."""
    # Deferred: torch loads only when a command exports, never for --help.
    from hco_cli.config import describe_error
    from hco_cli.inference import export as lib

    try:
        options = lib.ExportOptions(format=format.value, out=out, tolerance=tolerance,
                                    checkpoint=checkpoint.value if checkpoint else None,
                                    opset=opset, force=force)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    with console.status("loading the run") as status:
        report = lib.export_run(run, options, step=lambda text: status.update(text))
    shape = "x".join(map(str, report.input_shape))
    console.print(f"wrote {report.out} ({report.format}) and {report.contract}")
    console.print(f"checked on a random {shape} batch: max abs diff {report.max_abs_diff:.3g} "
                  f"(tolerance {report.tolerance:g}); {report.seconds:.1f} s")
