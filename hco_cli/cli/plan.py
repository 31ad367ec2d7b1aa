"""``hco plan``: target spacing, patch, per-stage pooling and batch sizes for a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from hco_cli.cli.common import console, err_console, handle_errors
from hco_cli.errors import ConfigError

if TYPE_CHECKING:
    from hco_cli.planning.planner import PlanResult

# The names of planning.planner.PRESETS, written out so that `hco --help` loads no NumPy
# (tests/cli/test_app.py checks that the two agree).
PRESETS = ("la", "pancreas", "fetal")


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


def _mm(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.4g}" for v in values) + " mm"


def _xyz(values: tuple[int, ...] | list[int]) -> str:
    return " x ".join(str(v) for v in values)


def render(result: PlanResult, where: str) -> None:
    """The plan as two rich tables (summary, per-stage layout) plus its notes."""
    from hco_cli.planning.memory import GIB

    n, e = result.network, result.estimate
    table = Table(title=f"plan for {where}", show_header=False)
    rows = [("framework", n.framework + (f" (preset {n.preset})" if n.preset else "")),
            ("target spacing", _mm(n.target_spacing)), ("stored spacing", _mm(n.spacing)),
            ("median case", _xyz(n.median_shape)), ("patch size", _xyz(n.patch_size)),
            ("batch (labeled + unlabeled)", f"{n.labeled_batch_size} + "
                                            f"{n.unlabeled_batch_size}"),
            ("UMIX blocks (cmt)", _xyz(n.umix_blocks)),
            ("memory estimate", f"{n.memory_estimate_bytes / GIB:.2f} GiB of "
                                f"{n.memory_target_bytes / GIB:.2f} GiB target "
                                f"({'bf16' if n.amp else 'fp32'})"),
            ("  activations", f"{e.activations / GIB:.2f} GiB"),
            ("  parameters, gradients, state",
             f"{(e.weights + e.gradients + e.optimizer) / GIB:.2f} GiB"),
            ("dataset on the GPU", f"{n.dataset_bytes / GIB:.2f} GiB (not in the target)")]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table)
    stages = Table(title="network layout per scale")
    for column in ("scale", "feature map", "kernel", "stride to next"):
        stages.add_column(column)
    size = list(n.patch_size)
    for i, kernel in enumerate(n.kernels):
        stride = n.strides[i] if i < len(n.strides) else None
        stages.add_row(str(i), _xyz(size), _xyz(kernel), _xyz(stride) if stride else "-")
        if stride:
            size = [s // t for s, t in zip(size, stride, strict=True)]
    console.print(stages)
    for note in result.notes:
        err_console.print(f"[bold yellow]note:[/] {escape(note)}", soft_wrap=True)


@handle_errors
def plan(
    data: Annotated[Path, typer.Argument(help="Prepared dataset folder (hco prepare).")],
    framework: Annotated[Literal["supervised", "mean-teacher", "bcp", "cmt"] | None, _opt(
        "SSL framework the memory model counts (default: the preset's, else bcp).")] = None,
    gpu_memory: Annotated[float | None, _opt(
        "GiB one training iteration may use (default: what BCP's LA setting needs, about "
        "2.8 GiB in bf16).", "--gpu-memory", min=0.01)] = None,
    labeled_batch: Annotated[int | None, _opt("Labeled batch size (default: planned).",
                                              "--labeled-batch", min=1)] = None,
    unlabeled_batch: Annotated[int | None, _opt("Unlabeled batch size (default: planned).",
                                                "--unlabeled-batch", min=0)] = None,
    preset: Annotated[str, _opt(
        f"Paper preset: auto (by source: la, pancreas), none, or {', '.join(PRESETS)}.")
                      ] = "auto",
    filters: Annotated[int, _opt("V-Net base filters.", min=1)] = 16,
    fp32: Annotated[bool, _opt("Estimate without bf16 autocast.")] = False,
    dry_run: Annotated[bool, _opt("Print the plan; do not write plans.json.")] = False,
) -> None:
    """Plan a dataset for training; write it into its plans.json (hco train --plan auto)."""
    # Deferred: NumPy and the planner load when a command plans, not for --help.
    from hco_cli.planning.planner import PlanOptions, plan_dataset, save_network_plan

    if preset not in ("auto", "none", *PRESETS):
        raise ConfigError(f"--preset {preset!r}: choose auto, none or one of: "
                          f"{', '.join(PRESETS)}")
    options = PlanOptions(framework=framework, gpu_memory_gb=gpu_memory,
                          labeled_batch_size=labeled_batch,
                          unlabeled_batch_size=unlabeled_batch, n_filters=filters,
                          amp=not fp32, preset=preset)
    result = plan_dataset(data, options)
    render(result, str(data))
    if not dry_run:
        path = save_network_plan(data, result.network)
        console.print(f"wrote {path}")
