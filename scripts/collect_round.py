"""One GPU round of the ablation made ready to commit: unpack, compress the logs, compare.

    python scripts/collect_round.py TARBALL DEST [--pool N ...] [--standing]
    python scripts/collect_round.py TARBALL results/la-full/<L>l/<session> --full-protocol

TARBALL is what ``scripts/device_ablation.sh collect`` brings back (``ablation.tar.gz``: the
sweep's run folders without weights); DEST the round's folder, e.g. ``results/ablation/round10``
(it must not exist: a round is committed once). In order:

1. the tarball is unpacked into DEST (a temporary folder renamed into place, owner-writable);
2. every ``metrics.jsonl`` becomes ``metrics.jsonl.xz`` (preset 9e, a quarter smaller than
   gzip -9: the tracked files travel with every device call; xz keeps no name or time, so
   recompressing a log does not change the file);
3. ``hco compare`` of the round's arms (the reference first: ``sgd``, else ``sgd-aa``; then the
   others by name), best checkpoint and last iterate, two-sided, Holm: ``DEST/compare-{best,
   last}.{md,json}``; and ``--dynamics --bin 500`` with its plot: ``DEST/dynamics.{md,json,png}``;
4. per run, the seconds per iteration of its training phase (self-training, or pre-training for
   the shared pre-training run; first to last logged iteration, validation included), the
   run's wall minutes, and where its wall time went (``scripts/time_breakdown.py``: start-up,
   steps, validation and its test scoring, pauses, per phase), printed for the README's round
   paragraph;
5. ``--pool N ...``: the round's arms pooled with the same arms of rounds N (runs pair by round
   and seed): ``compare-round<Ns>-{best,last}.{md,json}`` beside DEST, the arms that every one
   of those rounds holds;
6. ``--standing``: ``scripts/ablation_standing.py --readme README.md`` and its markdown and JSON.

``--full-protocol`` is for a batch of issue 15's study (``results/la-full/<L>l/<session>``, any
session name): steps 1, 2 and 4, then ``scripts/la_full_table.py --readme README.md`` over the
study's folder (its comparisons span sessions, so there are none per batch), and the curves
over every session at that number of labeled cases (``results/la-full/curves/``): ``hco compare
--curves`` on test (with its plot) and on validation, and ``--dynamics``, of ``sgd`` and
``sgd-hco`` over all their seeds (``<L>l-*``), once other arms have run, of every arm on
the seeds that all of them have (``<L>l-all-arms-*``, the dynamics with ``--common-seeds``),
and, once two or more have, the curves and dynamics of each beside the pair on the seeds the
three share (``<L>l-<arm>-*``).

The commands it runs are printed, so that the README can list them as the way to reproduce.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from hco_cli.evaluation.saved_results import read_run_records
from hco_cli.runs.layout import RunFolder

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ("sgd", "sgd-aa")
CHECKPOINTS = ("best", "last")
# The full-protocol study's arms: the printed pair, then the others in the order they ran.
STUDY_ARMS = ("sgd", "sgd-hco", "sgd-co", "hco-r1", "hco-r3")
# The study's group whose dynamics pool every run of its arms: the pair runs its seeds
# together; every other group (all arms, an arm beside the pair) needs --common-seeds.
ALL_SEEDS_GROUP = ""


class RoundError(Exception):
    """A one-line refusal."""


def unpack(tarball: Path, dest: Path) -> None:
    if dest.exists():
        raise RoundError(f"{dest} exists: a round is committed once (remove it to redo)")
    if not tarball.is_file():
        raise RoundError(f"{tarball}: no such file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(tarball) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: no path escapes
                archive.extractall(tmp, filter="data")
            else:
                archive.extractall(tmp)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200 | (0o100 if path.is_dir() else 0))
        tmp.chmod(0o755)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compress_logs(dest: Path) -> list[Path]:
    """Each metrics.jsonl as metrics.jsonl.xz (RunFolder.metrics_archive), the plain file
    removed."""
    done = []
    for log in sorted(dest.rglob("metrics.jsonl")):
        target = RunFolder(log.parent).metrics_archive
        target.write_bytes(lzma.compress(log.read_bytes(), preset=9 | lzma.PRESET_EXTREME))
        log.unlink()
        done.append(target)
    return done


def logged_runs(dest: Path) -> list[Path]:
    """The run folders (DEST/ARM/RUN) that hold a compressed log."""
    def archived(folder: RunFolder) -> bool:
        return any(log.is_file() for log in folder.metrics_logs if log != folder.metrics)

    return [run for run in sorted(dest.glob("*/*/")) if run.is_dir() and archived(RunFolder(run))]


def arms_of(round_dir: Path) -> list[str]:
    """The round's arms, its reference first."""
    names = sorted(p.name for p in round_dir.iterdir()
                   if p.is_dir() and not p.name.startswith("_"))
    reference = next((r for r in REFERENCES if r in names), None)
    if reference is None:
        raise RoundError(f"{round_dir}: no sgd or sgd-aa arm to compare against")
    return [reference, *(n for n in names if n != reference)]


def hco(args: list[str]) -> None:
    command = [sys.executable, "-m", "hco_cli", *args]
    print("$ hco " + " ".join(f"'{a}'" if any(c in a for c in "*{[ ") else a for a in args),
          flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, encoding="utf-8",
                          errors="replace")
    if done.returncode:
        raise RoundError(f"hco {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")


def _tables(specs: list[str], prefix: Path) -> None:
    """The two-sided, Holm-corrected comparison at each checkpoint: ``<prefix><checkpoint>.md``
    and ``.json``."""
    for checkpoint in CHECKPOINTS:
        out = f"{prefix}{checkpoint}"
        hco(["compare", *specs, "--checkpoint", checkpoint, "--holm", "--alternative",
             "two-sided", "--markdown", f"{out}.md", "--json", f"{out}.json"])


def compare(dest: Path, arms: list[str]) -> None:
    specs = [f"{a}={dest}/{a}/*" for a in arms]
    _tables(specs, dest / "compare-")
    hco(["compare", "--dynamics", *specs, "--bin", "500", "--plot", str(dest / "dynamics.png"),
         "--markdown", str(dest / "dynamics.md"), "--json", str(dest / "dynamics.json")])


def study_groups(labeled: Path) -> list[tuple[str, list[str]]]:
    """The study's curve files at one number of labeled cases, as (name suffix, arm specs):
    the printed pair, every arm once more than the pair has run (none before the pair), and,
    once two or more arms beside the pair have run, each of them with the pair
    (``-<arm>``), so that an arm's curves use all the seeds it shares with the pair rather than
    only those every arm has."""
    present = [a for a in STUDY_ARMS if any(labeled.glob(f"*/{a}/*/run.json"))]
    pair = list(STUDY_ARMS[:2])
    if not set(pair) <= set(present):
        return []
    others = [a for a in present if a not in pair]
    groups = [("", pair)] + ([("-all-arms", present)] if others else [])
    if len(others) > 1:
        groups += [(f"-{arm}", [*pair, arm]) for arm in others]
    return [(suffix, [f"{a}={labeled}/*/{a}/*" for a in arms]) for suffix, arms in groups]


def study_curves(labeled: Path, out: Path) -> None:
    """The full-protocol study's curves at one number of labeled cases (``labeled``:
    ``results/la-full/<L>l``), written to ``out`` (see the module's docstring), each group with
    its step and loss dynamics, which pool the runs of an arm: the pair's all of them, the other
    groups' those of the seeds every arm of the group has, as their curves pair."""
    for suffix, specs in study_groups(labeled):
        stem = f"{out / labeled.name}{suffix}"
        for split in ("test", "val"):
            plot = ["--plot", f"{stem}-test.png"] if split == "test" and not suffix else []
            hco(["compare", "--curves", *specs, "--split", split, "--bin", "10",
                 "--markdown", f"{stem}-{split}.md", "--json", f"{stem}-{split}.json", *plot])
        seeds = [] if suffix == ALL_SEEDS_GROUP else ["--common-seeds"]
        hco(["compare", "--dynamics", *specs, "--bin", "500", *seeds, "--markdown",
             f"{stem}-dynamics.md", "--json", f"{stem}-dynamics.json"])


def pooled(dest: Path, arms: list[str], rounds: list[int]) -> None:
    parent, number = dest.parent, int(dest.name.removeprefix("round"))
    numbers = sorted({*rounds, number})
    shared = [a for a in arms if all((parent / f"round{n}" / a).is_dir() for n in numbers)]
    if len(shared) < 2:
        raise RoundError(f"rounds {numbers} share fewer than two arms: {shared}")
    pattern = "{" + ",".join(map(str, numbers)) + "}"
    specs = [f"{a}={parent}/round{pattern}/{a}/*" for a in shared]
    _tables(specs, parent / f"compare-round{''.join(map(str, numbers))}-")


def rates(dest: Path) -> list[str]:
    """Per run: seconds per iteration of its last training phase, and wall minutes."""
    lines = []
    for run in logged_runs(dest):
        records = [r for _, r in read_run_records(run)[1] if "time" in r and "iter" in r]
        phase = "selftrain" if any(r.get("phase") == "selftrain" for r in records) \
            else "pretrain"
        steps = [r for r in records if r.get("phase") == phase]
        info = json.loads((run / "run.json").read_text(encoding="utf-8"))
        wall = info.get("wall_seconds")
        per = ((steps[-1]["time"] - steps[0]["time"]) / (steps[-1]["iter"] - steps[0]["iter"])
               if len(steps) > 1 else float("nan"))
        name = "self-training" if phase == "selftrain" else "pre-training"
        lines.append(f"{run.relative_to(dest)}: {name} {per:.4f} s/iteration, wall "
                     + (f"{wall / 60:.1f} min" if wall else "-"))
    return lines


def time_breakdown(dest: Path) -> str:
    """``scripts/time_breakdown.py`` over the round's runs: where each one's wall time went."""
    runs = logged_runs(dest)
    if not runs:
        return ""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "time_breakdown.py"),
                           *map(str, runs)], cwd=ROOT, capture_output=True, encoding="utf-8",
                          errors="replace")
    if done.returncode:
        raise RoundError(f"time_breakdown failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--pool", type=int, nargs="+", default=[], metavar="N",
                        help="rounds to pool this round's arms with")
    parser.add_argument("--standing", action="store_true",
                        help="rewrite the README's standing table and results/ablation/standing.*")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="the README whose tables --standing and --full-protocol rewrite")
    parser.add_argument("--full-protocol", action="store_true",
                        help="a batch of the full-protocol study: unpack, compress, rates, "
                             "and the README's Study 1 table")
    args = parser.parse_args(argv)
    try:
        if args.full_protocol:
            if args.pool or args.standing:
                raise RoundError("--full-protocol takes neither --pool nor --standing")
            if not (args.dest.parent.name.endswith("l")
                    and args.dest.parent.name[:-1].isdigit()):
                raise RoundError(f"{args.dest}: a full-protocol batch goes to "
                                 "results/la-full/<L>l/<session>")
            unpack(args.tarball, args.dest)
            compress_logs(args.dest)
            print("\n".join(rates(args.dest)))
            print(time_breakdown(args.dest))
            root = args.dest.parent.parent
            subprocess.run([sys.executable, str(ROOT / "scripts" / "la_full_table.py"),
                            str(root), "--readme", str(args.readme)],
                           cwd=ROOT, check=True, capture_output=True)
            print(f"Study 1 table: {args.readme}, from {root}")
            curves = root / "curves"
            curves.mkdir(exist_ok=True)
            study_curves(args.dest.parent, curves)
            return 0
        if not args.dest.name.startswith("round") or \
                not args.dest.name.removeprefix("round").isdigit():
            raise RoundError(f"{args.dest}: a round's folder is named round<N>")
        unpack(args.tarball, args.dest)
        compress_logs(args.dest)
        arms = arms_of(args.dest)
        compare(args.dest, arms)
        if args.pool:
            pooled(args.dest, arms, args.pool)
        print("\n".join(rates(args.dest)))
        print(time_breakdown(args.dest))
        if args.standing:
            root = args.dest.parent
            subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation_standing.py"),
                            str(root), "--readme", str(args.readme), "--markdown",
                            str(root / "standing.md"), "--json", str(root / "standing.json")],
                           cwd=ROOT, check=True, capture_output=True)
            print(f"standing: {args.readme}, {root / 'standing.md'}")
    except (RoundError, tarfile.TarError, OSError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
