"""The one training loop every SSL framework shares.

Per phase of the framework it builds one optimizer per trainable module, sets the learning rate
before each step, calls ``framework.train_step``, buffers the losses as device tensors and
writes them to ``metrics.jsonl`` every ``log_every`` iterations (the only regular host
synchronisation, where NaN/Inf is also checked), validates, keeps best/last/pretrain
checkpoints and resumes exactly from ``last.pt``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hco_cli import __version__
from hco_cli.config import TrainConfig, validate_config, with_absolute_paths
from hco_cli.data.batch import Batch
from hco_cli.data.identity import DatasetIdentity
from hco_cli.errors import CheckpointError, TrainingDivergedError
from hco_cli.optim import (
    DIAGNOSTIC_KEYS,
    TwoSourceOptimizer,
    build_optimizer,
    optimizer_info,
    plain_variant,
)
from hco_cli.optim.sync import GradientSync
from hco_cli.runs import checkpoint as ckpt
from hco_cli.runs.files import BestScore, ResumeMeta, RunInfo
from hco_cli.runs.folder import (
    copy_plan,
    discard_replaced,
    prepare_run_dir,
    recorded_finished,
    write_config,
    write_run_info,
)
from hco_cli.runs.layout import RunFolder
from hco_cli.ssl.base import Phase, StepResult
from hco_cli.training import distributed
from hco_cli.training.events import ProgressCallback, ProgressEvent, RunResult
from hco_cli.training.interrupt import StopRequest, agreement_notice
from hco_cli.training.logging import MetricsWriter
from hco_cli.training.run_guard import (
    change_history,
    check_resumable,
    check_same_dataset,
    resume_config,
    run_session,
)
from hco_cli.training.setup import (
    RunSetup,
    build_setup,
    resolve_device,
    resolve_run_dir,
    seed_everything,
)
from hco_cli.training.tracking import Sink, Status, Tracker, TrackingStart, build_sinks
from hco_cli.training.tracking import check_available as check_sinks
from hco_cli.training.trees import all_finite, cpu_tree


def run_local(config: TrainConfig, *, progress: ProgressCallback | None = None,
              force: bool = False, sinks: Sequence[Sink] = (),
              stop: StopRequest | None = None) -> RunResult:
    """Train ``config`` from scratch in this process: the only one, or one rank of a group.

    :func:`hco_cli.training.entry.train` calls it when no workers need launching; each launched
    worker (:mod:`hco_cli.training.launch`) and each torchrun process calls it directly. A
    launched worker passes ``stop``, its launcher's Ctrl-C (:mod:`~.interrupt`).
    """
    config = checked_config(config)
    assert config.run_dir is not None  # checked_config fills it in
    with run_session(config.run_dir, main=distributed.environment_rank() == 0):
        ctx = distributed.join(resolve_device(config.device))
        setup = build_setup(distributed.with_processes(config, ctx), ctx=ctx)
        if ctx.is_main:
            note = prepare_run_dir(setup.run_dir, force=force)
            setup.warnings += [note] if note else []
            write_config(setup.run_dir, setup.config.model_dump(mode="json"))
            copy_plan(setup.run_dir, setup.config.data.path, setup.config.data.patch_size)
        return _run(setup, progress=progress, state=None, sinks=sinks, stop=stop)


def checked_config(config: TrainConfig) -> TrainConfig:
    """``config`` with its run folder filled in and its dataset's path (and ``init_from``)
    made absolute, once its sinks and devices are checked.

    The run keeps the absolute paths (``config.yaml``, checkpoints), so that ``--resume`` and
    ``hco predict RUN`` find the dataset from any folder, not only from the one the run was
    started in, and the record names the run it started from wherever it is read (runs from
    before keep the relative paths they were given)."""
    check_sinks(config.tracking.sinks)
    d = config.distributed
    distributed.check_devices(d.processes, device=config.device, sync_batchnorm=d.sync_batchnorm)
    config = resolve_run_dir(config)
    absolute = with_absolute_paths(config)
    return config if absolute == config.model_dump(mode="json") else validate_config(absolute)


def _run(setup: RunSetup, *, progress: ProgressCallback | None,
         state: dict[str, Any] | None, sinks: Sequence[Sink],
         stop: StopRequest | None = None) -> RunResult:
    result = _Trainer(setup, progress=progress, state=state, sinks=sinks, stop=stop).run()
    distributed.leave(setup.ctx)
    return result


@dataclass(frozen=True)
class ResumePoint:
    """A run's ``last.pt`` read back, with the configuration it continues under."""

    state: dict[str, Any]  # the tensors (weights, optimizer and RNG states) and the config
    meta: ResumeMeta  # where it stopped, validated
    config: TrainConfig
    changes: dict[str, list[Any]]
    dataset_identity: DatasetIdentity  # of the dataset now, checked against the run's

    @property
    def processes(self) -> int:
        return self.meta.processes


def read_resume_point(run_dir: Path, *, processes: int | None = None,
                      accept_config_changes: bool = False) -> ResumePoint:
    """Check that ``run_dir`` can continue and read where it stopped.

    It resumes with as many processes as it was saved with (``processes``, if given, must
    match). An edited ``config.yaml`` is refused unless ``accept_config_changes``
    (:func:`~hco_cli.training.run_guard.resume_config`).
    """
    check_resumable(run_dir)
    last = RunFolder(run_dir).checkpoint("last")
    state = ckpt.load_checkpoint(last)
    meta = ResumeMeta.of(state, source=str(last))
    if meta.finished and recorded_finished(run_dir):
        raise CheckpointError(f"run {run_dir} already finished; nothing to resume")
    # A final last.pt whose run.json still says unfinished (stopped between the two writes):
    # the resume runs no iteration and writes the run's record.
    config, changes = resume_config(run_dir, state["config"], accept=accept_config_changes,
                                    iteration=meta.global_iter)
    data = config.data.path
    if not data.is_absolute() and not (data / "dataset.json").is_file():
        raise CheckpointError(
            f"run {run_dir} trained on {data}, a path relative to the folder it was started "
            f"from, and there is no prepared dataset at {data} from here ({Path.cwd()}); "
            "resume it from the folder it was started in")
    identity = check_same_dataset(run_dir, data, meta.dataset_identity)
    check_sinks(config.tracking.sinks)
    count = meta.processes
    distributed.check_resume_processes(count, requested=processes)
    distributed.check_devices(count, device=config.device,
                              sync_batchnorm=config.distributed.sync_batchnorm)
    return ResumePoint(state=state, meta=meta, config=config, changes=changes,
                       dataset_identity=identity)


def continue_local(run_dir: Path, point: ResumePoint, *, progress: ProgressCallback | None = None,
                   sinks: Sequence[Sink] = (), stop: StopRequest | None = None) -> RunResult:
    """Continue ``point`` in this process (the caller holds the run session)."""
    ctx = distributed.join(resolve_device(point.config.device))
    setup = build_setup(point.config, resuming=True, ctx=ctx, identity=point.dataset_identity)
    setup.config_changes = change_history(run_dir, point.changes, point.meta.global_iter)
    return _run(setup, progress=progress, state=point.state, sinks=sinks, stop=stop)


def resume_local(run_dir: Path, *, progress: ProgressCallback | None = None,
                 accept_config_changes: bool = False, sinks: Sequence[Sink] = (),
                 stop: StopRequest | None = None) -> RunResult:
    """Continue the run in ``run_dir`` in this process: a launched or torchrun worker."""
    run_dir = Path(run_dir)
    with run_session(run_dir, main=distributed.environment_rank() == 0):
        point = read_resume_point(run_dir, accept_config_changes=accept_config_changes)
        return continue_local(run_dir, point, progress=progress, sinks=sinks, stop=stop)


def _mean_diagnostics(optimizers: dict[str, TwoSourceOptimizer]) -> dict[str, Tensor] | None:
    """The diagnosed step's values, averaged over the optimizers that report them."""
    taken = [d for d in (o.take_diagnostics() for o in optimizers.values()) if d]
    if not taken:
        return None
    return {k: torch.stack([d[k] for d in taken]).mean() for k in DIAGNOSTIC_KEYS}


def _set_lr(optimizers: dict[str, TwoSourceOptimizer], lr: float) -> None:
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = lr


class _Trainer:
    """State of one run: phases, optimizers, buffered logs, best weights, checkpoints."""

    def __init__(self, setup: RunSetup, *, progress: ProgressCallback | None,
                 state: dict[str, Any] | None, sinks: Sequence[Sink] = (),
                 stop: StopRequest | None = None) -> None:
        self.s = setup
        self.cfg = setup.config
        self.ctx = setup.ctx
        self.progress = progress or (lambda event: None)
        self.state = state
        # The validated metadata of the resumed last.pt (None for a new run).
        self.meta = ResumeMeta.of(state, source="last.pt") if state is not None else None
        # Rank 0 alone writes, to metrics.jsonl and to every sink through it.
        self.tracker = Tracker([*build_sinks(self.cfg.tracking), *sinks] if self.ctx.is_main
                               else [], warn=self._warn)
        self.folder = RunFolder(setup.run_dir)
        self.metrics = MetricsWriter(self.folder.metrics, fanout=self.tracker.write)
        self.pending: list[tuple[dict[str, Any], StepResult]] = []
        self.optimizers: dict[str, TwoSourceOptimizer] = {}
        # Data parallelism: one gradient synchronisation per optimizer, closed with its phase.
        self.syncs: list[GradientSync] = []
        self.lr = self.cfg.optimizer.base_lr
        self.elapsed = self.meta.elapsed if self.meta else 0.0
        # Optimizer state handed to the next phase (Phase.carry_optimizer): from the previous
        # phase's best (or last) step, from a resumed checkpoint, or from --init-from.
        self.carried: dict[str, Any] | None = (
            state.get("carried") if state else setup.init_optimizers)
        self.keep_best_optimizers = any(p.carry_optimizer for p in setup.phases)
        self.started = time.perf_counter()
        self.phase_best: dict[str, Any] = {"score": -math.inf, "iter": None, "state": None}
        self.run_best: dict[str, Any] = {"score": None, "iter": None}
        # validation.also_select_on: each split's best of the current phase (best-<split>.pt)
        self.also_best: dict[str, BestScore] = {}
        self.finished = False
        # Ctrl-C: stop at the next iteration (data-parallel: where the ranks agree), saved there
        self.stop = stop or StopRequest()

    # ----------------------------------------------------------------------------- driving
    def run(self) -> RunResult:
        """Train every phase; the sinks are told how the run ended, however it ends."""
        self._announce()
        resumed_at = self.meta.global_iter if self.meta is not None else None
        self.tracker.open(TrackingStart(run_dir=self.s.run_dir, resumed_at=resumed_at,
                                        config=self.cfg.model_dump(mode="json"),
                                        info=self.s.summary()))
        status: Status = "failed"
        try:
            with self._signals_caught():
                result = self._run_phases()
            status = "finished"
        except KeyboardInterrupt:
            status = "killed"
            raise
        finally:
            self._close_syncs()
            self.tracker.close(status)
        return result

    def _run_phases(self) -> RunResult:
        if self.meta is not None:
            if self.ctx.is_main:
                self.metrics.truncate_after(self.meta.global_iter)
            self.run_best = self.meta.run_best.model_dump()
            if self.meta.finished:  # last.pt is final; only run.json was not written
                self.finished = True
                self.also_best = dict(self.meta.also_best)
                return self._result()
        else:
            self._write_info()
        phases = self.s.phases
        start = self.meta.phase_index if self.meta else 0
        for index in range(start, len(phases)):
            phase = phases[index]
            offset = sum(p.iterations for p in phases[:index])
            if phase.name in self.s.skipped:
                continue
            first = self._begin_phase(index, phase)
            self.progress(ProgressEvent("phase", phase=phase.name, iteration=first,
                                        total=phase.iterations))
            for i in range(first, phase.iterations):
                if i > 0 and self._stop_now(i):  # a phase's iteration 0 saves no state
                    self._stop_at(index, i, offset + i)
                self._step(phase, i, offset)
                done = i + 1
                if done % self.cfg.validation.every == 0:
                    self._validate(phase, offset + done)
                if (offset + done) % self.cfg.checkpoint_every == 0 and done < phase.iterations:
                    self._checkpoint(index, done, offset + done)
            self._end_phase(index, phase, offset)
        self.finished = True
        total = sum(p.iterations for p in phases)
        self._checkpoint(len(phases), 0, total)
        return self._result()

    def _result(self) -> RunResult:
        """Write the finished run's ``run.json`` and tell the caller how it went."""
        info = self._write_info()
        self.progress(ProgressEvent("end", info=info))
        return RunResult(run_dir=self.s.run_dir, best_dice=self.run_best["score"],
                         best_iteration=self.run_best["iter"], iterations=self.s.plan,
                         wall_seconds=self._wall(), warnings=list(self.s.warnings),
                         select_on=self.cfg.validation.select_on)

    def _signals_caught(self) -> contextlib.AbstractContextManager[None]:
        """Where Ctrl-C and SIGTERM ask this process to stop (:mod:`~hco_cli.training.interrupt`):
        one process, the run's; under hco's launcher, which owns the signals and passes them on
        through ``stop.shared``, none; under torchrun every rank, to the end (its agent passes a
        signal on once and then kills), rank 0 saying so."""
        if not self.ctx.active:
            return self.stop.installed()
        if self.stop.shared is not None:
            return contextlib.nullcontext()
        notice = agreement_notice(self.cfg.log_every) if self.ctx.is_main else None
        return self.stop.installed(notice=notice, keep=True)

    def _stop_now(self, i: int) -> bool:
        """Whether a signal asks the run to stop before the phase's iteration ``i``. One
        process: as soon as it came. Data-parallel (hco's launcher or torchrun): every
        ``log_every`` iterations the ranks agree, so that all of them stop at one iteration
        (each may see the signal at another, or not at all)."""
        if not self.ctx.active:
            return self.stop.requested
        if i % self.cfg.log_every:
            return False
        return any(self.ctx.gather_objects(self.stop.requested))

    def _stop_at(self, index: int, local: int, iteration: int) -> None:
        """End the run as Ctrl-C does, with ``last.pt`` at this iteration boundary (Ctrl-C asked
        for it: :mod:`~hco_cli.training.interrupt`)."""
        if iteration % self.cfg.checkpoint_every:  # else the loop has just saved it
            self._checkpoint(index, local, iteration)
        raise self.stop.stopped()

    def _warn(self, message: str) -> None:
        """A warning at run time (a failed sink): shown, and kept in run.json."""
        self.s.warnings.append(message)
        self.progress(ProgressEvent("warning", message=message))

    def _announce(self) -> None:
        self.progress(ProgressEvent("start", info=self.s.summary()))
        for message in self.s.warnings:
            self.progress(ProgressEvent("warning", message=message))

    def _begin_phase(self, index: int, phase: Phase) -> int:
        """Start ``phase`` (or restore it from the resume state); return the first iteration."""
        fw, state, meta = self.s.framework, self.state, self.meta
        resuming = state is not None and meta is not None and meta.phase_index == index
        local = meta.local_iter if resuming and meta is not None else 0
        if resuming and local == 0 and state is not None:
            self._restore(state, optimizers=False)  # saved before start_phase ran
        # Every rank starts the phase from rank 0's weights (its restored best, say).
        self.ctx.broadcast_modules(self._networks())
        fw.start_phase(phase)
        self.optimizers = self._build_optimizers(phase)
        if phase.carry_optimizer and local == 0 and self.carried is not None:
            for key, opt in self.optimizers.items():
                opt.load_state_dict(self.carried[key])
        self.carried = None
        if resuming and local > 0 and state is not None:
            self._restore(state, optimizers=True)
        if local == 0:  # a new phase starts its own best-so-far
            self.phase_best = {"score": -math.inf, "iter": None, "state": None}
            self.also_best = {}
        self.state = None
        return local

    def _build_optimizers(self, phase: Phase) -> dict[str, TwoSourceOptimizer]:
        name = self.cfg.optimizer.name
        hp = self.cfg.optimizer.hyperparameters()
        if phase.plain_optimizer:
            # The plain member takes the base hyperparameters; the caution options
            # (mask_eps, ...) have nothing to act on without an unlabeled gradient, and the
            # fused Triton kernels exist for the hco step only.
            name = plain_variant(name)
            accepted = set(optimizer_info(name).hyperparameters) - {"fused"}
            hp = {k: v for k, v in hp.items() if k in accepted}
        self._close_syncs()
        optimizers: dict[str, TwoSourceOptimizer] = {}
        for key, module in self.s.framework.trainable().items():
            optimizers[key] = opt = build_optimizer(name, module.parameters(), **hp)
            # Data parallelism: g_L and g_U are averaged over the processes apart.
            reducer = self.ctx.reducer(bucket_mb=self.cfg.distributed.bucket_mb)
            if reducer is not None:
                self.syncs.append(GradientSync(opt, reducer))
        return optimizers

    def _close_syncs(self) -> None:
        """Remove the backward hooks of the phase's gradient synchronisation."""
        for sync in self.syncs:
            sync.close()
        self.syncs = []

    # --------------------------------------------------------------------------- one step
    def _step(self, phase: Phase, i: int, offset: int) -> None:
        self.lr = self.cfg.optimizer.base_lr * phase.lr_factor(i)
        _set_lr(self.optimizers, self.lr)
        batch = self.s.to_device(self.s.sampler.next_batch(with_unlabeled=phase.needs_unlabeled))
        every = self.cfg.diagnostics_every
        diagnose = every > 0 and (offset + i + 1) % every == 0
        if diagnose:
            for opt in self.optimizers.values():
                opt.diagnose = True
        # bf16 needs no gradient scaling; the framework's backward passes run inside autocast
        # and use the dtypes autocast chose for the forward ops.
        with torch.autocast(self.s.device.type, dtype=torch.bfloat16, enabled=self.s.amp):
            result = self.s.framework.train_step(phase, batch, self.optimizers, i)
        # Epochs count within the phase, so runs that skip pre-training (--init-from) line up.
        epoch = 1 + i // max(1, self.s.sampler.batches_per_epoch)
        record = {"phase": phase.name, "iter": offset + i + 1, "epoch": epoch,
                  "lr": self.lr, "time": round(self._wall(), 3),
                  "_unlabeled": phase.needs_unlabeled,
                  "_diag": _mean_diagnostics(self.optimizers) if diagnose else None}
        self.pending.append((record, result))
        self.progress(ProgressEvent("step", phase=phase.name, iteration=i + 1,
                                    total=phase.iterations))
        if len(self.pending) >= self.cfg.log_every:
            self._flush()

    def _flush(self) -> None:
        """Write buffered records (one synchronisation) and stop on a non-finite loss."""
        if not self.pending:
            return
        device_values = []
        diagnosed = []  # the diagnosed records' values, appended after the losses
        for record, r in self.pending:
            admitted = r.admitted if r.admitted is not None else r.loss_l.new_tensor(math.nan)
            device_values.append(torch.stack([r.loss_l.float(), r.loss_u.float(),
                                              admitted.float()]))
            if record["_diag"] is not None:
                diagnosed.append(torch.stack([record["_diag"][k].to(r.loss_l.device).float()
                                              for k in DIAGNOSTIC_KEYS]))
        flat = torch.stack(device_values).flatten()
        if diagnosed:
            flat = torch.cat([flat, torch.stack(diagnosed).flatten()])
        values = flat.cpu().tolist()  # one transfer for losses and diagnostics
        losses, extra = values[:3 * len(self.pending)], values[3 * len(self.pending):]
        width = len(DIAGNOSTIC_KEYS)
        diag_rows = iter([extra[j:j + width] for j in range(0, len(extra), width)])
        records = []
        bad = None
        for i, (record, result) in enumerate(self.pending):
            loss_l, loss_u, admitted = losses[3 * i:3 * i + 3]
            unlabeled = record.pop("_unlabeled")
            was_diagnosed = record.pop("_diag") is not None
            ratio = loss_u / loss_l if unlabeled and loss_l != 0 else None
            records.append({**record, "loss_l": loss_l, "loss_u": loss_u, "ratio": ratio,
                            "admitted": admitted if result.admitted is not None else None})
            if was_diagnosed:
                records[-1].update({k: (v if math.isfinite(v) else None)
                                    for k, v in zip(DIAGNOSTIC_KEYS, next(diag_rows),
                                                    strict=True)})
            if not (math.isfinite(loss_l) and math.isfinite(loss_u)):
                bad = record
                break
        self.pending = []
        if self.ctx.is_main:
            self.metrics.write(records)
        if bad is not None:
            self._diverged(f"loss is {records[-1]['loss_l']}/{records[-1]['loss_u']} (L/U) at "
                           f"iteration {bad['iter']} ({bad['phase']})")
        last = records[-1]
        self.progress(ProgressEvent("log", phase=last["phase"], values={
            "loss_l": last["loss_l"], "loss_u": last["loss_u"], "lr": last["lr"]}))

    def _diverged(self, what: str) -> None:
        last = self.folder.checkpoint("last")
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint yet"
        self._write_info()
        raise TrainingDivergedError(f"training diverged: {what}; {kept}")

    # ------------------------------------------------------------------ validation, best
    def _validate(self, phase: Phase, iteration: int) -> None:
        """Rank 0 scores and logs; its record is broadcast so every rank keeps the same best."""
        self._flush()
        if not self.s.validation.splits:
            return
        record = self.ctx.broadcast_object(self._score(phase, iteration) if self.ctx.is_main
                                           else None)
        score = record["score"]
        if record["best"] and score is not None:
            self._save_best(phase, iteration, score)
        for split, value in record.get("also", {}).items():
            best = self.also_best.get(split)
            if value is not None and math.isfinite(value) and (
                    best is None or best.score is None or value > best.score):
                self._save_also_best(phase, iteration, split, value)
        self.progress(ProgressEvent("val", phase=phase.name, values={
            "dice": record["dice"], "score": score, "best": self.phase_best["score"]}))

    def _score(self, phase: Phase, iteration: int) -> dict[str, Any]:
        model = self.s.framework.eval_model()
        shown_split = self.cfg.validation.split
        slices = self.cfg.tracking.images if self.tracker.wants_images else 0
        # also_select_on keeps the best of the run's final phase (self-training), as the
        # reference selects its reported weights: earlier phases need not score those splits.
        v = self.cfg.validation
        extra = v.also_select_on if phase is self.s.phases[-1] else []
        results, seconds = {}, {}
        for split, validator in self.s.validation.scored.items():
            if split in (v.split, v.select_on) or split in extra:
                started = time.perf_counter()  # evaluate ends on its one host synchronisation
                results[split] = validator.evaluate(
                    model, slices=slices if split == shown_split else 0)
                seconds[split] = round(time.perf_counter() - started, 3)
        shown = results.get(shown_split)
        chosen = results.get(self.cfg.validation.select_on)
        score = chosen.dice if chosen is not None else None
        improved = score is not None and math.isfinite(score) and score > self.phase_best["score"]
        record: dict[str, Any] = {
            "phase": "val", "train_phase": phase.name, "iter": iteration,
            "split": self.cfg.validation.split,
            "dice": shown.dice if shown is not None else None,
            "dice_per_class": shown.per_class if shown is not None else None,
            "select_on": self.cfg.validation.select_on, "score": score, "best": improved,
            "time": round(self._wall(), 3), "seconds": seconds}
        also = {split: results[split].dice for split in v.also_select_on if split in results}
        if also:
            record["also"] = also
        self.metrics.write([record])
        if shown is not None:
            self.tracker.images(iteration, shown.slices)
        return record

    def _save_best(self, phase: Phase, iteration: int, score: float) -> None:
        state = self.s.framework.eval_model().state_dict()
        if not all_finite(state):
            self._diverged(f"non-finite weights at iteration {iteration}")
        self.phase_best = {"score": score, "iter": iteration, "state": cpu_tree(state)}
        if self.keep_best_optimizers:  # a later phase starts from this step's optimizer state
            self.phase_best["optimizers"] = self._optimizer_snapshot()
        self.run_best = {"score": score, "iter": iteration}
        if self.ctx.is_main:
            ckpt.save_checkpoint(self.folder.checkpoint("best"), {
                **self._model_payload(self.phase_best["state"]), "kind": "best",
                "iter": iteration, "phase": phase.name, "score": score,
                "split": self.cfg.validation.select_on})

    def _save_also_best(self, phase: Phase, iteration: int, split: str, score: float) -> None:
        """``best-<split>.pt``: the weights of this phase's best score on ``split``."""
        self.also_best[split] = BestScore(score=score, iter=iteration)
        if self.ctx.is_main:
            state = self.s.framework.eval_model().state_dict()
            ckpt.save_checkpoint(self.folder.checkpoint(f"best-{split}"), {
                **self._model_payload(cpu_tree(state)), "kind": f"best-{split}",
                "iter": iteration, "phase": phase.name, "score": score, "split": split})

    def _end_phase(self, index: int, phase: Phase, offset: int) -> None:
        self._flush()
        end = offset + phase.iterations
        if phase.iterations % self.cfg.validation.every:
            self._validate(phase, end)
        restored = phase.restore_best and self.phase_best["state"] is not None
        if restored:
            self.s.framework.eval_model().load_state_dict(self.phase_best["state"])
        if self.keep_best_optimizers:
            best = self.phase_best.get("optimizers") if restored else None
            self.carried = best if best is not None else self._optimizer_snapshot()
        if phase.produces_shareable_checkpoint and self.ctx.is_main:
            state = cpu_tree(self.s.framework.eval_model().state_dict())
            extra = {"optimizers": self.carried} if self.carried is not None else {}
            ckpt.save_checkpoint(self.folder.checkpoint("pretrain"), {
                **self._model_payload(state), "kind": "pretrain", "iter": end, **extra})
        if index + 1 < len(self.s.phases):
            self._close_syncs()
            self.optimizers = {}  # the next phase builds fresh optimizers
            self._checkpoint(index + 1, 0, end)

    # ------------------------------------------------------------------------ checkpoints
    def _optimizer_snapshot(self) -> dict[str, Any]:
        """CPU copies of every optimizer's state dict, for a later phase to start from."""
        return {k: cpu_tree(o.state_dict()) for k, o in self.optimizers.items()}

    def _model_payload(self, model_state: dict[str, Tensor]) -> dict[str, Any]:
        return {"model": model_state, "config": self.cfg.model_dump(mode="json"),
                "in_channels": self.s.in_channels, "num_classes": self.s.num_classes,
                "dataset_identity": self.s.dataset_identity}

    def _checkpoint(self, phase_index: int, local: int, iteration: int) -> None:
        """Save last.pt (rank 0, with every rank's random streams); refuse NaN/Inf weights."""
        self._flush()
        fw_state = self.s.framework.state_dict()
        if not all_finite(fw_state):
            self._diverged(f"non-finite weights at iteration {iteration}")
        mine = {"sampler": self.s.sampler.state_dict(), "rng": ckpt.rng_state(),
                "framework_rng": fw_state.get("rng")}
        extra: dict[str, Any] = {}
        if self.ctx.active:
            replicas = self.ctx.gather_objects(
                {**mine, "fingerprint": distributed.fingerprint(self._networks())})
            distributed.check_replicas(replicas, iteration=iteration)
            extra["replicas"] = replicas
        if not self.ctx.is_main:
            return
        payload = {
            **self._model_payload(self.s.framework.eval_model().state_dict()),
            **ResumeMeta(phase_index=phase_index, local_iter=local, global_iter=iteration,
                         lr=self.lr, elapsed=self._wall(), finished=self.finished,
                         processes=self.ctx.world_size,
                         run_best=BestScore(**self.run_best),
                         also_best=self.also_best,
                         dataset_identity=self.s.dataset_identity or None).payload(),
            "framework": fw_state,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "carried": self.carried, "rng": mine["rng"], "sampler": mine["sampler"],
            "phase_best": self.phase_best, **extra}
        ckpt.save_checkpoint(self.folder.checkpoint("last"), payload)
        discard_replaced(self.s.run_dir)  # the run --force replaced: this one can resume now
        self._write_info()

    def _networks(self) -> list[torch.nn.Module]:
        fw = self.s.framework
        return [*fw.trainable().values(), fw.eval_model()]

    def _restore(self, state: dict[str, Any], *, optimizers: bool) -> None:
        """Load last.pt: shared weights and optimizers, and this rank's own random streams."""
        mine = state["replicas"][self.ctx.rank] if "replicas" in state else state
        fw_state = state["framework"]
        if mine.get("framework_rng") is not None:
            fw_state = {**fw_state, "rng": mine["framework_rng"]}
        self.s.framework.load_state_dict(fw_state)
        if optimizers:
            for key, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
        self.s.sampler.load_state_dict(mine["sampler"])
        ckpt.set_rng_state(mine["rng"])
        assert self.meta is not None  # only a resumed run restores
        self.lr = self.meta.lr
        self.phase_best = dict(state["phase_best"])
        self.also_best = dict(self.meta.also_best)

    def _wall(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def _write_info(self) -> dict[str, Any]:
        info = RunInfo(**self.s.run_info(), finished=self.finished,
                       wall_seconds=round(self._wall(), 3), hco_version=__version__,
                       best=BestScore(**self.run_best),
                       also_best=dict(self.also_best) or None)
        if self.ctx.is_main:
            write_run_info(self.s.run_dir, info)
        return info.to_json()


__all__ = ["Batch", "ProgressCallback", "ProgressEvent", "ResumePoint", "RunResult",
           "checked_config", "continue_local", "read_resume_point", "resume_local", "run_local",
           "seed_everything"]
