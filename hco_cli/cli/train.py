"""``hco train``: resolve a config (file or preset + overrides), train, print a summary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from hco_cli.cli.common import console, err_console, handle_errors
from hco_cli.cli.progress import Display, training_progress
from hco_cli.errors import ConfigError, exit_code
from hco_cli.training.events import RunResult

# The names of training.presets.PRESETS, written out so that `hco --help` loads no torch
# (tests/cli/test_app.py checks that the two agree).
PRESET_NAMES = ("la", "pancreas", "fetal", "synthetic")


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


def _sinks(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for text in values for v in text.split(",") if v.strip())


@contextlib.contextmanager
def _quiet_stop(is_main: bool) -> Iterator[None]:
    """Under torchrun, a rank other than 0 that stopped on a signal exits with its code and
    says nothing: rank 0 says what was kept (a failure still gets every rank's line)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if is_main:
            raise
        raise typer.Exit(exit_code(exc)) from None


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
    config: Annotated[Path | None, _opt(
        "YAML config (see sample_configs/), or 'auto' with --data: sizes from the dataset's "
        "plan.")] = None,
    dataset: Annotated[str | None, _opt(f"Study preset: {', '.join(PRESET_NAMES)}.")] = None,
    optimizer: Annotated[str | None, _opt("Optimizer name, e.g. sgd-hco.")] = None,
    labeled: Annotated[int | None, _opt(
        "Use the first N labeled cases; the rest join the unlabeled pool (data.labeled_rest).",
        min=1)] = None,
    seed: Annotated[int | None, _opt("Random seed.")] = None,
    iterations: Annotated[int | None, _opt(
        "Total iterations: bcp splits them pre:self in the configured ratio; cmt sets "
        "epochs = round(N / iterations_per_epoch); others set iterations = N.", min=1)] = None,
    fold: Annotated[str | None, _opt("Fold of the dataset grid, e.g. L0U1; none: the "
                                     "dataset's own labeled/unlabeled split, whatever fold the "
                                     "preset or config names.")] = None,
    run_dir: Annotated[Path | None, _opt("Run folder (default runs/<name>).")] = None,
    data: Annotated[Path | None, _opt("Prepared dataset folder (overrides the preset).")] = None,
    device: Annotated[Literal["auto", "cpu", "cuda"] | None, _opt("Training device.")] = None,
    init_from: Annotated[Path | None, _opt("Reuse this run's pretrain.pt; skip pre-training.")
                         ] = None,
    resume_dir: Annotated[Path | None, _opt("Continue this interrupted run exactly.",
                                            "--resume")] = None,
    select_on: Annotated[Literal["val", "test"] | None, _opt(
        "Split that chooses best.pt (test inflates results).")] = None,
    deterministic: Annotated[bool | None, _opt(
        "Deterministic cuDNN and torch algorithms (slower); --no-deterministic turns off a "
        "config's.")] = None,
    gpus: Annotated[int | None, _opt(
        "Data-parallel processes, one per GPU (CPU processes with --device cpu). Each draws "
        "its own batch of the configured size: the global batch is N times larger and the "
        "learning rate is unchanged; --iterations still counts steps (divide it by N to see "
        "the same number of samples). With --resume: must match the saved run.", min=1)] = None,
    sync_batchnorm: Annotated[bool | None, _opt(
        "BatchNorm statistics over all GPUs (SyncBatchNorm); --no-sync-batchnorm turns off a "
        "config's.")] = None,
    plan: Annotated[str | None, _opt(
        "auto: patch size, batch sizes and network layout from the dataset's plan (hco plan; "
        "planned now for the config's framework if the dataset has none).")] = None,
    log: Annotated[list[str] | None, _opt(
        "Also log to tensorboard (RUN/tensorboard) or mlflow ($MLFLOW_TRACKING_URI, else "
        "./mlruns); repeat or comma-separate. Needs the extra: pip install 'hco-cli[NAME]'.",
        metavar="SINK")
    ] = None,
    force: Annotated[bool, _opt("Replace an existing run folder that hco wrote (a run; "
                                "nothing else). The old run is kept in PARENT/.NAME.replaced "
                                "until the new one writes its first checkpoint, then deleted "
                                "(not when the new one finishes).")] = False,
    accept_config_changes: Annotated[bool, _opt(
        "With --resume: continue with the values edited into RUN/config.yaml since the last "
        "checkpoint (e.g. a longer schedule), recorded in run.json; without it an edited "
        "config.yaml is refused.")] = False,
) -> None:
    """Train a segmentation network with an SSL framework and an (H)CO optimizer."""
    # Deferred: torch loads only when a command trains, never for --help.
    from hco_cli.training.distributed import environment_rank
    from hco_cli.training.entry import resume, train
    from hco_cli.training.presets import (
        Overrides,
        build_config,
        check_prepared,
        iterations_note,
    )

    is_main = environment_rank() == 0  # under torchrun, rank 0 alone renders
    if resume_dir is not None:
        given = [config, dataset, optimizer, labeled, seed, iterations, fold, run_dir, data,
                 device, init_from, select_on, plan, log, deterministic, sync_batchnorm]
        if any(v is not None for v in given) or force:
            raise ConfigError("--resume continues a run with its saved configuration; "
                              "give no other options (but --gpus, --accept-config-changes)")
        with _quiet_stop(is_main), training_progress(console, disable=not is_main) as bar:
            display = Display(bar, console=console, err_console=err_console)
            result = resume(resume_dir, progress=display if is_main else None,
                            processes=gpus, accept_config_changes=accept_config_changes)
    else:
        if accept_config_changes:
            raise ConfigError("--accept-config-changes applies to --resume")
        overrides = Overrides(optimizer=optimizer, labeled=labeled, seed=seed,
                              iterations=iterations, fold=fold, run_dir=run_dir, data=data,
                              device=device, init_from=init_from, select_on=select_on,
                              deterministic=deterministic, processes=gpus,
                              sync_batchnorm=sync_batchnorm, plan=plan,
                              sinks=_sinks(log) if log is not None else None)
        cfg = build_config(config_file=config, dataset=dataset, overrides=overrides)
        note = iterations_note(cfg, iterations) if iterations is not None else None
        if note and is_main:
            err_console.print(f"[bold yellow]note:[/] {escape(note)}", soft_wrap=True)
        if data is None:  # the dataset the preset or config names: say how to make it
            check_prepared(cfg, preset=dataset, config_file=config)
        with _quiet_stop(is_main), training_progress(console, disable=not is_main) as bar:
            display = Display(bar, console=console, err_console=err_console)
            result = train(cfg, progress=display if is_main else None, force=force)
    if is_main:
        _render(result)
