"""``hco train``: resolve a config (file or preset + overrides), train, print a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from hco_cli.cli.common import console, err_console, handle_errors
from hco_cli.errors import ConfigError
from hco_cli.training.distributed import environment_rank
from hco_cli.training.loop import ProgressEvent, RunResult, resume, train
from hco_cli.training.presets import PRESETS, Overrides, build_config


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


class _Display:
    """Renders the loop's progress events: summary, warnings, one bar per phase with losses."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.losses = bar, ""
        self.task: TaskID | None = None

    def __call__(self, e: ProgressEvent) -> None:
        if e.kind == "start":
            table = Table.grid(padding=(0, 2))
            for key in ("run_dir", "dataset", "framework", "optimizer", "optimizer_hyperparameters",
                        "labeled", "unlabeled", "iterations", "validation_cases", "device",
                        "processes", "seed"):
                table.add_row(f"[bold]{key}[/]", str(e.info.get(key)))
            console.print(table)
        elif e.kind == "warning":
            err_console.print(f"[bold yellow]warning:[/] {e.message}", soft_wrap=True)
        elif e.kind == "phase":
            self.task = self.bar.add_task(e.phase, total=e.total, completed=e.iteration, info="")
        elif e.kind == "step" and self.task is not None:
            self.bar.update(self.task, completed=e.iteration)
        elif e.kind == "log" and self.task is not None:
            v = e.values
            self.losses = f"L {v['loss_l']:.4f}  U {v['loss_u']:.4f}  lr {v['lr']:.2g}"
            self.bar.update(self.task, info=self.losses)
        elif e.kind == "val" and self.task is not None and e.values.get("score") is not None:
            self.bar.update(self.task, info=f"{self.losses}  val {e.values['score']:.4f} "
                                            f"(best {e.values['best']:.4f})")


def _sinks(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for text in values for v in text.split(",") if v.strip())


def _render(result: RunResult) -> None:
    table = Table(title="training finished")
    table.add_column("run dir")
    table.add_column(f"best {result.select_on} dice")
    table.add_column("iterations")
    table.add_column("wall time")
    best = ("none (nothing validated)" if result.best_dice is None
            else f"{result.best_dice:.4f} @ {result.best_iteration}")
    iters = ", ".join(f"{k} {v}" for k, v in result.iterations.items())
    table.add_row(str(result.run_dir), best, iters, f"{result.wall_seconds / 60:.1f} min")
    console.print(table)


@handle_errors
def train_command(
    config: Annotated[Path | None, _opt("YAML config (see sample_configs/).")] = None,
    dataset: Annotated[str | None, _opt(f"Study preset: {', '.join(PRESETS)}.")] = None,
    optimizer: Annotated[str | None, _opt("Optimizer name, e.g. sgd-hco.")] = None,
    labeled: Annotated[int | None, _opt("Use the first N labeled cases.", min=1)] = None,
    seed: Annotated[int | None, _opt("Random seed.")] = None,
    iterations: Annotated[int | None, _opt(
        "Total iterations: bcp splits them pre:self in the configured ratio; cmt sets "
        "epochs = round(N / iterations_per_epoch); others set iterations = N.", min=1)] = None,
    fold: Annotated[str | None, _opt("Fold of the dataset grid, e.g. L0U1.")] = None,
    run_dir: Annotated[Path | None, _opt("Run folder (default runs/<name>).")] = None,
    data: Annotated[Path | None, _opt("Prepared dataset folder (overrides the preset).")] = None,
    device: Annotated[Literal["auto", "cpu", "cuda"] | None, _opt("Training device.")] = None,
    init_from: Annotated[Path | None, _opt("Reuse this run's pretrain.pt; skip pre-training.")
                         ] = None,
    resume_dir: Annotated[Path | None, _opt("Continue this interrupted run exactly.",
                                            "--resume")] = None,
    select_on: Annotated[Literal["val", "test"] | None, _opt(
        "Split that chooses best.pt (test inflates results).")] = None,
    deterministic: Annotated[bool, _opt("Deterministic cuDNN (slower).")] = False,
    gpus: Annotated[int | None, _opt(
        "Data-parallel processes, one per GPU (CPU processes with --device cpu). Each draws "
        "its own batch of the configured size: the global batch is N times larger and the "
        "learning rate is unchanged; --iterations still counts steps (divide it by N to see "
        "the same number of samples). With --resume: must match the saved run.", min=1)] = None,
    sync_batchnorm: Annotated[bool, _opt("BatchNorm statistics over all GPUs (SyncBatchNorm).")
                              ] = False,
    log: Annotated[list[str] | None, _opt(
        "Also log to tensorboard (RUN/tensorboard) or mlflow ($MLFLOW_TRACKING_URI, else "
        "./mlruns); repeat or comma-separate. Needs the extra: pip install 'hco-cli[NAME]'.",
        metavar="SINK")
    ] = None,
    force: Annotated[bool, _opt("Replace an existing run folder.")] = False,
) -> None:
    """Train a segmentation network with an SSL framework and an (H)CO optimizer."""
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    is_main = environment_rank() == 0  # under torchrun, rank 0 alone renders
    if resume_dir is not None:
        given = [config, dataset, optimizer, labeled, seed, iterations, fold, run_dir, data,
                 device, init_from, select_on, log]
        if any(v is not None for v in given) or deterministic or force or sync_batchnorm:
            raise ConfigError("--resume continues a run with its saved configuration; "
                              "give no other options (but --gpus)")
        with Progress(*columns, console=console, disable=not is_main) as bar:
            result = resume(resume_dir, progress=_Display(bar) if is_main else None, processes=gpus)
    else:
        overrides = Overrides(optimizer=optimizer, labeled=labeled, seed=seed,
                              iterations=iterations, fold=fold, run_dir=run_dir, data=data,
                              device=device, init_from=init_from, select_on=select_on,
                              deterministic=deterministic, processes=gpus,
                              sync_batchnorm=sync_batchnorm,
                              sinks=_sinks(log) if log is not None else None)
        cfg = build_config(config_file=config, dataset=dataset, overrides=overrides)
        with Progress(*columns, console=console, disable=not is_main) as bar:
            result = train(cfg, progress=_Display(bar) if is_main else None, force=force)
    if is_main:
        _render(result)
