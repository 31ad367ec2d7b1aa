"""``hco sweep``: train a grid of optimizers x seeds x folds, resumably, then compare it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from hco_cli.cli.common import console, fail, handle_errors
from hco_cli.config import describe_error
from hco_cli.errors import ConfigError, Interrupted
from hco_cli.locks import hold
from hco_cli.outputs import check_output_folder
from hco_cli.training import sweep as lib


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


def _split(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(v) for v in _split(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 1,2,3") from None


def _plan_table(runs: list[lib.SweepRun]) -> Table:
    table = Table(title=f"sweep plan: {len(runs)} runs")
    for name in ("run dir", "arm", "optimizer", "seed", "fold", "status", "init_from"):
        table.add_column(name)
    for r in runs:
        table.add_row(escape(str(r.run_dir)), escape(r.arm), r.optimizer,
                      str(r.config.seed), r.fold or "all", r.status,
                      escape(str(r.init_from or "-")))
    return table


def _summary_table(report: lib.SweepReport) -> Table:
    table = Table(title=f"sweep {report.out}")
    for name in ("run dir", "status", "best val dice", "test dice", "wall time"):
        table.add_column(name)
    for o in report.outcomes:
        status = o.outcome + (f": {o.message}" if o.message else "")
        table.add_row(escape(str(o.run.run_dir)), escape(status),
                      "-" if o.best_dice is None else f"{o.best_dice:.4f}",
                      "-" if o.test_dice is None else f"{o.test_dice:.4f}",
                      "-" if o.wall_seconds is None else f"{o.wall_seconds / 60:.1f} min")
    return table


@handle_errors
def sweep(
    config: Annotated[Path, _opt("YAML config every run starts from (see sample_configs/).")],
    seeds: Annotated[str, _opt("Comma-separated seeds, e.g. 1,2.")],
    out: Annotated[Path, _opt("Sweep folder; runs go to OUT/<arm>/<fold|all>-s<seed>.")],
    optimizers: Annotated[str | None, _opt("Comma-separated optimizer names, one arm each "
                                           "(e.g. sgd,sgd-hco).")] = None,
    arms: Annotated[Path | None, _opt(
        "YAML file of named arms: 'arms: {NAME: {optimizer, lr, options, framework, "
        "seed_offset}}' (see sample_configs/arms/la_ablation.yaml).")] = None,
    folds: Annotated[str | None, _opt("Comma-separated folds of the dataset grid, e.g. "
                                      "L0U0,L1U1 (default: the config's data).")] = None,
    share_pretraining: Annotated[bool, _opt(
        "BCP: each seed/fold pre-trains once (OUT/_pretrain) with the config's plain "
        "optimizer, and every arm, the baseline included, starts from that pretrain.pt.")
    ] = False,
    evaluate: Annotated[bool, _opt("Predict the test split with each finished run's best.pt "
                                   "and write RUN/eval/best/summary.json (skipped if present).")
                        ] = False,
    lcc: Annotated[bool, _opt("With --evaluate: keep the largest connected component.")] = False,
    gpus: Annotated[int, _opt("GPUs to spread runs over, as subprocesses (1 with "
                              "--runs-per-gpu 1: one after another in this process, on the "
                              "config's device).", min=1)] = 1,
    runs_per_gpu: Annotated[int, _opt("Runs sharing each GPU at a time.", min=1)] = 1,
    dry_run: Annotated[bool, _opt("Print the plan (status done / resume / new) and exit.")
                       ] = False,
) -> None:
    """Train every arm x seed x fold of a config; rerun to resume or skip finished runs.

    Read the result with [bold]hco compare 'sgd=OUT/sgd/*' 'sgd-hco=OUT/sgd-hco/*'[/].
    """
    if lcc and not evaluate:
        raise ConfigError("--lcc applies to --evaluate")
    if (optimizers is None) == (arms is None):
        raise ConfigError("give exactly one of --optimizers or --arms FILE")
    try:
        options = lib.SweepOptions(
            config=config, optimizers=_split(optimizers),
            arms=lib.load_arms(arms) if arms is not None else {}, seeds=_seeds(seeds),
            folds=_split(folds), out=out, share_pretraining=share_pretraining,
            evaluate=evaluate, lcc=lcc, gpus=gpus, runs_per_gpu=runs_per_gpu)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    check_output_folder(out, option="--out")
    if dry_run:
        runs = lib.plan_sweep(options)
        console.print(_plan_table(runs))
        console.print(f"compare with: {escape(lib.compare_command(runs, out))}")
        return

    def show(action: str, run: lib.SweepRun) -> None:
        console.print(f"[bold]{action}[/] {escape(str(run.run_dir))}")

    with hold(out):  # one sweep writes OUT at a time (each run also locks its own folder)
        try:
            report = lib.run_sweep(options, progress=show)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted; the same hco sweep command continues: it skips "
                              "finished runs and resumes interrupted ones") from exc
    console.print(_summary_table(report))
    console.print(f"compare with: {escape(report.compare_command)}")
    if report.failed:
        raise fail(f"{len(report.failed)} of {len(report.outcomes)} runs failed")
