"""``hco sweep``: train a grid of optimizers x seeds x folds, resumably, then compare it."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.markup import escape

from hco_cli.cli import sweep_tables as tables
from hco_cli.cli.common import console, fail, handle_errors
from hco_cli.errors import ConfigError, Interrupted
from hco_cli.locks import hold
from hco_cli.outputs import check_output_folder
from hco_cli.workflows.sweep_status import sweep_status

if TYPE_CHECKING:
    from hco_cli.workflows import sweep as lib


def _opt(text: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, **kwargs)


def _split(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(v) for v in _split(text)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 1,2,3") from None


def _runs_per_gpu(text: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--runs-per-gpu {text!r}: expected a count of at least 1, or auto")
    return int(text)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a job scheduler's stop) and SIGHUP (the terminal closed) handled as
    Ctrl-C inside the block: the sweep stops the runs it started (each in a process group of
    its own, which neither signal reaches) and records them interrupted, instead of dying
    with its children still training and its state saying they run."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@handle_errors
def sweep(
    config: Annotated[Path | None, _opt("YAML config every run starts from (see "
                                        "sample_configs/).")] = None,
    seeds: Annotated[str | None, _opt("Comma-separated seeds, e.g. 1,2.")] = None,
    out: Annotated[Path | None, _opt("Sweep folder; runs go to OUT/<arm>/<fold|all>-s<seed>.")
                   ] = None,
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
    gpus: Annotated[int, _opt("GPUs to spread runs over, as subprocesses (1 with one run "
                              "per GPU: one after another in this process, on the config's "
                              "device).", min=1)] = 1,
    runs_per_gpu: Annotated[str, _opt(
        "Runs sharing each GPU at a time, or auto: 2 where two runs fit each GPU's memory "
        "(1.42x the throughput of one, measured on an H200), else 1; 1 on the CPU.",
        metavar="K|auto")] = "auto",
    executor: Annotated[Literal["local", "slurm", "submitit-local"], _opt(
        "local: here (in this process, or --gpus subprocesses); slurm: one Slurm job per run "
        "through submitit, returning once submitted; submitit-local: the same jobs on this "
        "machine through submitit's local executor, waiting for them.")] = "local",
    partition: Annotated[str | None, _opt("Slurm partition (else the config's slurm "
                                          "section).")] = None,
    gpus_per_run: Annotated[int | None, _opt("GPUs per Slurm job; more than 1 trains the run "
                                             "data-parallel; 0: a CPU job.", min=0)] = None,
    time: Annotated[str | None, _opt("Slurm time limit per job: MINUTES, HH:MM:SS or "
                                     "D-HH:MM:SS.")] = None,
    mem: Annotated[str | None, _opt("Slurm memory per job, e.g. 64G.")] = None,
    log: Annotated[list[str] | None, _opt("Tracking sinks of every run: tensorboard, mlflow "
                                          "(repeat or comma-separate).", metavar="SINK")] = None,
    status: Annotated[Path | None, _opt(
        "Show each run of the sweep folder OUT (pending, running, done, interrupted, failed "
        "with the log's last line) from its files, and exit.", metavar="OUT")] = None,
    dry_run: Annotated[bool, _opt("Print the plan (status done / resume / new) and exit.")
                       ] = False,
) -> None:
    """Train every arm x seed x fold of a config; rerun to resume or skip finished runs.

    Read the result with [bold]hco compare 'sgd=OUT/sgd/*' 'sgd-hco=OUT/sgd-hco/*'[/].
    """
    if status is not None:
        if config is not None or seeds is not None or out is not None:
            raise ConfigError("--status OUT reads a sweep folder; give no --config, --seeds "
                              "or --out with it")
        states = sweep_status(status)
        console.print(tables.status_table(states, title=f"sweep {escape(str(status))}"))
        console.print(tables.status_counts(states))
        return
    if config is None or seeds is None or out is None:
        raise ConfigError("give --config, --seeds and --out (or --status OUT)")
    # Deferred: torch loads only when a sweep plans or runs, never for --help or --status.
    from hco_cli.config import describe_error
    from hco_cli.workflows import sweep as lib

    if lcc and not evaluate:
        raise ConfigError("--lcc applies to --evaluate")
    if (optimizers is None) == (arms is None):
        raise ConfigError("give exactly one of --optimizers or --arms FILE")
    try:
        options = lib.SweepOptions(
            config=config, optimizers=_split(optimizers),
            arms=lib.load_arms(arms) if arms is not None else {}, seeds=_seeds(seeds),
            folds=_split(folds), out=out, share_pretraining=share_pretraining,
            evaluate=evaluate, lcc=lcc, gpus=gpus, runs_per_gpu=_runs_per_gpu(runs_per_gpu),
            executor=executor, log=[v for t in log for v in _split(t)] if log else None,
            slurm={k: v for k, v in {"partition": partition, "gpus_per_run": gpus_per_run,
                                     "time": time, "mem": mem}.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    check_output_folder(out, option="--out")
    if dry_run:
        runs = lib.plan_sweep(options)
        console.print(tables.plan_table(runs))
        per_gpu, why = lib.resolve_runs_per_gpu(options, runs)
        console.print(f"runs per GPU: {per_gpu} ({escape(why)})")
        console.print(f"compare with: {escape(lib.compare_command(runs, out))}")
        return
    if executor != "local":
        _submit(options)
        return

    def show(action: str, run: lib.SweepRun) -> None:
        console.print(f"[bold]{action}[/] {escape(str(run.run_dir))}")

    with hold(out), _terminate_as_interrupt():  # one sweep writes OUT at a time
        try:
            report = lib.run_sweep(options, progress=show)
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted; the same hco sweep command continues: it skips "
                              "finished runs and resumes interrupted ones") from exc
    console.print(tables.summary_table(report))
    console.print(f"compare with: {escape(report.compare_command)}")
    if report.failed:
        raise fail(f"{len(report.failed)} of {len(report.outcomes)} runs failed")


def _submit(options: lib.SweepOptions) -> None:
    # Deferred with the sweep above.
    from hco_cli.workflows import sweep as lib
    from hco_cli.workflows.sweep_submit import submit_sweep

    """Submit the sweep's jobs; with submitit-local they have ended when this returns."""
    submissions = submit_sweep(options)
    console.print(tables.submission_table(submissions))
    out = escape(str(options.out))
    compare = escape(lib.compare_command([s.run for s in submissions], options.out))
    if options.executor == "slurm":
        console.print(f"follow with: hco sweep --status {out}\ncompare with: {compare}")
        return
    states = sweep_status(options.out)
    console.print(tables.status_table(states, title=f"sweep {out}"))
    console.print(f"{tables.status_counts(states)}\ncompare with: {compare}")
    failed = [s for s in states if s.state != "done"]
    if failed:
        raise fail(f"{len(failed)} of {len(states)} runs did not finish")
