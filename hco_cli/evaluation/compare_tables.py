"""Tables and files for ``hco compare``: one neutral table model, rendered by the CLI with
rich and written here as Markdown, JSON records and CSV rows (all atomic writes)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hco_cli.evaluation import stats
from hco_cli.evaluation.compare import Arm, Comparison, SeedDifference
from hco_cli.io_utils import write_json, write_text

LABELS = {"dice": "Dice", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}
TABLE_METRICS = ("dice", "jaccard", "asd", "hd95")  # the paper's column order
PERCENT = frozenset({"dice", "jaccard"})
TEST_LABELS = {"wilcoxon": "Wilcoxon", "ttest": "t-test"}


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False


@dataclass
class ReportTable:
    """A titled table of text cells; ``bold`` marks the best value of a column."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""


def fmt(value: float, *, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if not math.isfinite(value) else f"{value * scale:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy with NaN and infinities as None: strict JSON has no NaN."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def write_records(
    records: Sequence[dict[str, Any]],
    *,
    json_path: Path | None = None,
    csv_path: Path | None = None,
    json_payload: Any = None,
) -> None:
    """Write records as a JSON list (or ``json_payload``, already clean) and/or CSV rows."""
    clean = [clean_record(r) for r in records]
    if json_path is not None:
        write_json(json_path, clean if json_payload is None else json_payload)
    if csv_path is not None:
        buffer = io.StringIO()
        columns = list(dict.fromkeys(k for r in clean for k in r))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else json.dumps(v) if isinstance(v, list) else v
                          for k, v in r.items()} for r in clean)
        write_text(csv_path, buffer.getvalue())


def to_markdown(tables: Sequence[ReportTable]) -> str:
    """GitHub-flavoured Markdown: a heading, a pipe table and the caption per table."""
    parts: list[str] = []
    for table in tables:
        lines = [f"### {table.title}", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in table.columns) + "|")
        for row in table.rows:
            cells = [f"**{c.text}**" if c.bold else c.text for c in row]
            lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
        if table.caption:
            lines += ["", table.caption]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_markdown(path: Path, tables: Sequence[ReportTable], *, notes: Sequence[str] = ()) -> None:
    """Write the tables (and any notes as a final paragraph) as one Markdown file."""
    text = to_markdown(tables)
    write_text(path, text + ("\n" + "\n".join(notes) + "\n" if notes else ""))


def _sided(result: Comparison) -> str:
    return "two-sided" if result.hypothesis == "two-sided" else "one-sided"


def margins_text(result: Comparison) -> str:
    """The margins as the tables show their metrics ("Dice 0.50 % points, HD95 1.00 voxels")."""
    parts = []
    for metric, margin in result.margins.items():
        unit = "% points" if metric in PERCENT else f"{result.spacing_unit}s"
        parts.append(f"{LABELS[metric]} {margin * (100.0 if metric in PERCENT else 1.0):.2f} "
                     f"{unit}")
    return ", ".join(parts)


def _h1(result: Comparison, reference: str) -> str:
    """The alternative hypothesis against ``reference``, as the captions state it."""
    if result.hypothesis == "two-sided":
        return f"two-sided: arm differs from {reference}"
    if not result.margins:
        return f"H1: arm {result.hypothesis} than {reference}"
    if result.hypothesis == "better":
        h1 = f"H1: arm better than {reference} minus the margin (non-inferiority"
    else:
        h1 = f"H1: arm worse than {reference} by more than the margin (inferiority"
    return f"{h1}; margins {margins_text(result)}, 0 for the other metrics)"


def _p_caption(result: Comparison) -> str:
    """What the p-values are: the tests, their options and the alternative."""
    names = " / ".join(TEST_LABELS[t] for t in result.tests)
    holm = ("" if not result.holm else ", Holm-adjusted across the 4 metrics"
            if result.holm_family == "metrics" else
            f", Holm-adjusted across all {len(result.records)} tests (arms, classes, metrics)")
    wilcox = f" (Wilcoxon zero_method={result.zero_method})" if "wilcoxon" in result.tests else ""
    sided = "" if result.hypothesis == "two-sided" else "one-sided "
    return f"p: {sided}paired {names}{wilcox}{holm}; {_h1(result, result.arms[0].name)}"


def _test_caption(result: Comparison) -> str:
    return (
        f"{_p_caption(result)}. Dice/Jaccard in %, distances in {result.spacing_unit}s; "
        f"mean (sample std, ddof=1) across {result.n_cases} cases, runs of a group averaged "
        "per case first."
    )


def arm_labels(names: Sequence[str], *, short: int = 10) -> dict[str, str]:
    """Table labels of arms: the names where all are short, else A, B, C, ... (a legend then
    maps each letter to its arm)."""
    if all(len(n) <= short for n in names):
        return {n: n for n in names}
    return {n: _letter(i) for i, n in enumerate(names)}


def labelled_tables(names: Sequence[str], build: Callable[[dict[str, str]], list[ReportTable]],
                    *, compact: bool = False) -> list[ReportTable]:
    """The tables ``build`` makes from the arms' table labels: their names, or with ``compact``
    the short labels of :func:`arm_labels`, preceded by a legend where those are not the names."""
    labels = arm_labels(names) if compact else {n: n for n in names}
    tables = build(labels)
    if all(labels[n] == n for n in names):
        return tables
    legend = ReportTable(title="Arms", columns=["Arm", "Runs of"],
                         rows=[[Cell(labels[n]), Cell(n)] for n in names])
    return [legend, *tables]


def _letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _legend(result: Comparison, labels: dict[str, str]) -> ReportTable:
    table = ReportTable(title="Arms", columns=["Arm", "Runs of"],
                        caption="Optimizer; labeled/unlabeled cases; runs averaged per case.")
    for arm in result.arms:
        named = "" if labels[arm.name] == arm.name else f"{arm.name}: "
        text = (f"{named}{arm.source or arm.name}; {arm.optimizer}; {arm.labeled_unlabeled}; "
                f"{arm.n_runs} run{'s' if arm.n_runs != 1 else ''}")
        table.rows.append([Cell(labels[arm.name]), Cell(text)])
    return table


def _finite_cases(arm: Arm, cls: str, metric: str) -> frozenset[str]:
    """The cases whose value of ``metric`` is finite: those its mean covers."""
    values = arm.values[(cls, metric)]
    return frozenset(c for c, v in zip(arm.cases, values, strict=True) if math.isfinite(v))


def _mean_cells(result: Comparison, cls: str) -> dict[str, list[Cell]]:
    """Per arm, the ``mean (std)`` cell of each metric; the best mean of a column in bold.

    A mean over fewer cases than the comparison's (NaN values left out: a distance of a class
    a prediction misses) says over how many, ``(n=K)``; a column whose arms' means cover
    different cases marks no best, since their means are not of the same cases."""
    best = {}
    for m in TABLE_METRICS:
        covered = {_finite_cases(a, cls, m) for a in result.arms}
        values = [result.summary(a, cls, m)[0] for a in result.arms]
        finite = [v for v in values if math.isfinite(v)]
        pick = max if stats.HIGHER_IS_BETTER[m] else min
        best[m] = pick(finite) if finite and len(covered) == 1 else math.nan
    cells: dict[str, list[Cell]] = {}
    for arm in result.arms:
        row = []
        for m in TABLE_METRICS:
            mean, std, n = result.summary(arm, cls, m)
            scale = 100.0 if m in PERCENT else 1.0
            text = f"{fmt(mean, scale=scale)} ({fmt(std, scale=scale)})"
            text += f" (n={n})" if 0 < n < result.n_cases else ""
            row.append(Cell(text, bold=math.isfinite(mean) and mean == best[m]))
        cells[arm.name] = row
    return cells


def _p_cells(result: Comparison, cls: str) -> dict[str, list[Cell]]:
    """Per arm, the p-value cell(s) of each metric (``ref`` for the reference)."""
    by_arm = {(r.arm, r.metric): r for r in result.records if r.class_ == cls}
    cells: dict[str, list[Cell]] = {}
    for arm in result.arms:
        row = []
        for m in TABLE_METRICS:
            rec = by_arm.get((arm.name, m))
            if rec is None:
                row.append(Cell("ref"))
                continue
            ps: dict[str, float | None] = (
                {"wilcoxon": rec.p_holm_wilcoxon, "ttest": rec.p_holm_ttest}
                if result.holm
                else {"wilcoxon": rec.result.p_wilcoxon, "ttest": rec.result.p_ttest}
            )
            row.append(Cell(" / ".join(fmt_p(ps[t]) for t in result.tests)))
        cells[arm.name] = row
    return cells


def _heads(result: Comparison) -> list[str]:
    unit = "vox" if result.spacing_unit == "voxel" else "mm"
    return [f"{LABELS[m]} (%)" if m in PERCENT else f"{LABELS[m]} ({unit})"
            for m in TABLE_METRICS]


def _class_table(result: Comparison, cls: str) -> ReportTable:
    p_heads = [f"p {LABELS[m]}" for m in TABLE_METRICS]
    table = ReportTable(
        title=f"Class {cls} (checkpoint {result.checkpoint})",
        columns=["Arm", "Optimizer", "L/U", "Runs", *_heads(result), *p_heads],
        caption=_test_caption(result),
    )
    means, ps = _mean_cells(result, cls), _p_cells(result, cls)
    for arm in result.arms:
        texts = (arm.name, arm.optimizer, arm.labeled_unlabeled, str(arm.n_runs))
        table.rows.append([*(Cell(t) for t in texts), *means[arm.name], *ps[arm.name]])
    return table


def _compact_class_tables(result: Comparison, cls: str,
                          labels: dict[str, str]) -> list[ReportTable]:
    """The class table as two narrow ones: means (std), then p-values."""
    means, ps = _mean_cells(result, cls), _p_cells(result, cls)
    tests = " / ".join(TEST_LABELS[t] for t in result.tests)
    first = ReportTable(title=f"Class {cls} (checkpoint {result.checkpoint}): mean (std)",
                        columns=["Arm", *_heads(result)])
    second = ReportTable(title=f"Class {cls}: {_sided(result)} p ({tests})",
                         columns=["Arm", *(LABELS[m] for m in TABLE_METRICS)],
                         caption=_test_caption(result))
    for arm in result.arms:
        first.rows.append([Cell(labels[arm.name]), *means[arm.name]])
        second.rows.append([Cell(labels[arm.name]), *ps[arm.name]])
    return [first, second]


def _details_table(result: Comparison, labels: dict[str, str] | None = None) -> ReportTable:
    """Every paired test; with ``labels`` (narrow layout) arms by label and p-values of the
    tests in one column."""
    tests = [TEST_LABELS[t] for t in result.tests]
    compact = labels is not None
    if compact:
        p_columns = [f"p {' / '.join(tests)}"] + (["Holm p"] if result.holm else [])
        head = ["Arm", "Class", "Metric", "n", "NaN", "Diff", "Rel."]
    else:
        p_columns = [f"p {t}" for t in tests] + ([f"Holm {t}" for t in tests]
                                                  if result.holm else [])
        head = ["Arm", "vs", "Class", "Metric", "n", "NaN excl.", "Diff (B-A)", "Rel. change"]
    table = ReportTable(
        title=f"Paired tests (each arm vs the reference, checkpoint {result.checkpoint})",
        columns=head + p_columns,
        caption="Diff: mean paired difference over the n cases (Dice/Jaccard in % points); "
        "rel. change = diff / reference mean." + (" NaN: cases excluded." if compact else ""),
    )
    for rec in result.records:
        r = rec.result
        scale = 100.0 if rec.metric in PERCENT else 1.0
        rel = "-" if not math.isfinite(r.rel_change) else f"{r.rel_change * 100:+.1f}%"
        diff = f"{r.mean_diff * scale:+.2f}" if math.isfinite(r.mean_diff) else "-"
        raw = [fmt_p({"wilcoxon": r.p_wilcoxon, "ttest": r.p_ttest}[t]) for t in result.tests]
        adj = [fmt_p({"wilcoxon": rec.p_holm_wilcoxon, "ttest": rec.p_holm_ttest}[t])
               for t in result.tests] if result.holm else []
        if compact:
            assert labels is not None
            texts = [labels[rec.arm], rec.class_, LABELS[rec.metric], str(r.n),
                     str(r.n_excluded), diff, rel, " / ".join(raw)]
            texts += [" / ".join(adj)] if result.holm else []
        else:
            texts = [rec.arm, rec.reference, rec.class_, LABELS[rec.metric], str(r.n),
                     str(r.n_excluded), diff, rel, *raw, *adj]
        table.rows.append([Cell(t) for t in texts])
    return table


def pairs_are_seeds(result: Comparison) -> bool:
    """Whether every arm's paired runs differ in their run.json seed, so that the pairs are
    seeds; else (the folds of one seed, or a seed run twice) they are only pairs of runs, and
    the tables say so."""
    seeds = result.arms[0].seeds
    for pairing in result.pairings.values():
        paired = [seeds.get(reference) for _, reference, _ in pairing.pairs]
        if None in paired or len(set(paired)) < len(paired):
            return False
    return True


def _seed_table(result: Comparison, labels: dict[str, str] | None = None) -> ReportTable:
    """Per-seed differences: each paired run's mean over the cases minus its reference run's
    (per-pair where the pairs are not seeds: :func:`pairs_are_seeds`)."""
    keys = list(dict.fromkeys(k for d in result.seed_differences for k in d.keys))
    shown = result.hypothesis == "worse" or result.margins
    h1 = f" ({_h1(result, 'the reference run')})" if shown else ""
    if pairs_are_seeds(result):
        title, units, opening, closing = "Per-seed", "seeds", "Runs paired by seed (", ")"
        moves = "with the training seed"
    else:
        title, units, opening, closing = "Per-pair", "pairs", "Runs paired by ", ""
        moves = ("from one pair of runs to the next (here not seeds: runs of one seed, such as "
                 "the folds of a grid, whose differences share that seed)")
    claimed = (" Verdict on the claim (--claim, the same sign as the differences): a gain "
               f"where the one-sided t-test over the {units} (H1: the arm better) gives p < "
               "0.05, the claim excluded where the one-sided 95 % bound of the mean on the "
               "better side lies short of it, both, or undecided." if result.claims else "")
    table = ReportTable(
        title=f"{title} differences (checkpoint {result.checkpoint}: each run's mean over the "
        "cases minus the reference run's)",
        columns=["Arm", "Class", "Metric", *keys, "Mean (sd)", "Better", f"p t-test ({units})",
                 "Detectable (80%)", "95% bounds", *(["Verdict on the claim"] * bool(claimed))],
        caption=f"{opening}the part of their path the arm's glob matched, then "
        "run.json's seed for the runs left, else, for a seed in several runs, what the "
        f"wildcards matched{closing}; "
        f"Dice/Jaccard in % points. Better: {units} where the arm is better. "
        f"p: {_sided(result)} paired t-test over the {units}{h1}, which, unlike the per-case "
        f"tests, sees how much a result moves {moves}. Detectable (80%): the "
        "true mean difference (arm minus reference; ± for two-sided) at which this test "
        f"rejects with 80 % power at 0.05 given the {units}' sd; a smaller one can hide behind "
        "a p above 0.05. 95% bounds: one-sided 95 % "
        f"confidence bounds of the mean difference over the {units} (t): a true difference "
        f"below the first, or above the second, is excluded at 0.05.{claimed}",
    )
    for d in result.seed_differences:
        scale = 100.0 if d.metric in PERCENT else 1.0
        by_key = dict(zip(d.keys, d.differences, strict=True))
        cells = [f"{by_key[k] * scale:+.2f}" if math.isfinite(by_key.get(k, math.nan)) else "-"
                 for k in keys]
        mean = f"{d.mean * scale:+.2f}" if math.isfinite(d.mean) else "-"
        spread = f" ({d.std * scale:.2f})" if math.isfinite(d.std) else ""
        detectable = ("-" if not math.isfinite(d.detectable) else f"±{d.detectable * scale:.2f}"
                      if d.hypothesis == "two-sided" else f"{d.detectable * scale:+.2f}")
        low, high = d.bounds
        bounds = (f"{low * scale:+.2f}, {high * scale:+.2f}"
                  if math.isfinite(low) and math.isfinite(high) else "-")
        texts = [labels[d.arm] if labels else d.arm, d.class_, LABELS[d.metric], *cells,
                 mean + spread, f"{d.n_better}/{d.n_finite}", fmt_p(d.p_ttest), detectable,
                 bounds]
        if claimed:
            texts.append(_claim_cell(d, scale))
        table.rows.append([Cell(t) for t in texts])
    return table


def _claim_cell(d: SeedDifference, scale: float) -> str:
    """The verdict on the metric's claim, the claim signed as the differences are (HD95/ASD:
    a claimed reduction is negative)."""
    if d.claim is None or d.verdict is None:
        return "-"
    signed = d.claim * scale * (1.0 if stats.HIGHER_IS_BETTER[d.metric] else -1.0)
    return d.verdict.outcome(f"the claimed {signed:+.2f}")


def arm_legend(result: Comparison) -> ReportTable:
    """The legend of the narrow layout's short arm labels."""
    return _legend(result, arm_labels([a.name for a in result.arms]))


def comparison_tables(result: Comparison, *, compact: bool = False,
                      legend: bool = True) -> list[ReportTable]:
    """One paper-layout table per class, then the table of paired tests; ``compact``: for
    narrow consoles, a legend of short arm labels (unless ``legend`` is false: the caller
    shows it once for several comparisons), then per class a table of means and one of
    p-values, then the paired tests in fewer columns."""
    if not compact:
        seeds = [_seed_table(result)] if result.seed_differences else []
        return [*(_class_table(result, c) for c in result.classes), _details_table(result),
                *seeds]
    labels = arm_labels([a.name for a in result.arms])
    tables = [_legend(result, labels)] if legend else []
    for cls in result.classes:
        tables += _compact_class_tables(result, cls, labels)
    seeds = [_seed_table(result, labels)] if result.seed_differences else []
    return [*tables, _details_table(result, labels), *seeds]


def left_out_note(arm: str, keys: Sequence[str], *, default: str | None = None) -> str:
    """What ``--common-seeds`` left out of an arm (here and under ``--dynamics``), or with
    ``default`` (what the cut means there, and how to undo it) what the default cut did."""
    if default is None:
        return f"--common-seeds: {arm}: left out {', '.join(keys)} (a seed not in every arm)"
    return f"{arm}: left out {', '.join(keys)}, a seed not in every arm{default}"


def comparison_notes(result: Comparison) -> list[str]:
    """Short remarks to print under the tables (test-set selection, --intersect drops)."""
    notes = []
    if result.checkpoint == "best-test":
        notes.append("best-test: each run's weights chosen on these test cases (the reference "
                     "code's selection), an optimistic figure, not a held-out result")
    default = (": the per-case tests compare the seeds all arms have, as the per-seed test "
               "pairs them (--all-runs averages every run in)") if result.left_out_auto else None
    notes += [left_out_note(name, keys, default=default)
              for name, keys in result.left_out.items()]
    dropped = {k: v for k, v in result.dropped_cases.items() if v}
    if dropped:
        detail = ", ".join(f"{k}: {v}" for k, v in dropped.items())
        notes.append(f"--intersect: paired {result.n_cases} common cases; dropped {detail}")
    ref, seen = result.arms[0], set()
    # the per-pair test's name, as the tables give it (pairs_are_seeds)
    test, pair = (("per-seed test", "that seed's pair") if pairs_are_seeds(result)
                  else ("per-pair test", "that pair"))
    for paired in result.pairings.values():
        for name, repeated in paired.repeated.items():
            if name in seen:
                continue
            seen.add(name)
            runs = "; ".join(f"{seed}: {', '.join(keys)}" for seed, keys in repeated.items())
            notes.append(f"{name}: a seed in more than one run ({runs}); such runs are averaged "
                         "per case with the others, and the arms are not paired by seed")
    for arm in result.arms[1:]:
        if reseeded := result.pairings[arm.name].reseeded:
            which = ", ".join(f"{k}: {a} / {b}" for k, a, b in reseeded)
            notes.append(f"{arm.name}: paired with {ref.name} by the runs' folder names although "
                         f"their run.json seeds differ ({which}); right for an A/A control's "
                         "offset seeds, otherwise name the folders by seed")
        for name, keys in result.pairings[arm.name].unpaired.items():
            other = arm.name if name == ref.name else ref.name
            notes.append(f"{name}: {', '.join(keys)} without a partner in {other}; the per-case "
                         f"tests average such runs in with the paired ones, the {test} "
                         "leaves them out (--common-seeds, or a narrower glob, compares like "
                         "with like)")
    for arm in result.arms:
        if arm.partial_nan:
            counts = ", ".join(f"{LABELS[m]} {n}" if len(arm.classes) == 1 else
                               f"{c} {LABELS[m]} {n}" for (c, m), n in arm.partial_nan.items())
            notes.append(f"{arm.name}: run values NaN (an empty mask) in cases that other runs "
                         f"of the arm score ({counts}); the per-case tests average each such "
                         f"case over the runs that score it, the {test} leaves the case "
                         f"out of {pair} only")
    notes += scoring_notes(result) + preparation_notes(result)
    single = [a.name for a in result.arms if a.n_runs == 1]
    if single and not result.seed_differences and not seen:
        notes.append(f"one run in {', '.join(single)}: the per-case tests take the cases as "
                     "replicates and cannot see how much a result moves with the training seed, "
                     "which can exceed the differences they call significant; give every arm "
                     "several seeds (NAME=GLOB) for the per-seed test")
    return notes


def preparation_notes(result: Comparison) -> list[str]:
    """A note where the runs trained on more than one preparation of their dataset (the
    digests in their run.json differ): numbered in order of appearance, per arm and run, with
    the parts that differ. Runs that record no preparation are left out."""
    seen: list[dict[str, str]] = []
    per_arm: dict[str, list[str]] = {}
    for arm in result.arms:
        for key, digests in arm.preparations.items():
            prepared = dict(digests)
            if prepared not in seen:
                seen.append(prepared)
            per_arm.setdefault(arm.name, []).append(f"{key} #{seen.index(prepared) + 1}")
    if len(seen) < 2:
        return []
    parts = [p for p in dict.fromkeys(k for s in seen for k in s)
             if len({s.get(p) for s in seen}) > 1]
    runs = "; ".join(f"{arm}: {', '.join(keys)}" for arm, keys in per_arm.items())
    return [f"the runs trained on {len(seen)} preparations of their dataset (their "
            f"{' and '.join(parts)} differ): {runs}; the arms then differ in their data as "
            "well as in what the comparison names"]


def scoring_notes(result: Comparison) -> list[str]:
    """A note per prediction setting (largest component, mirroring, stride) in which the
    arms' summaries differ, or an arm's own summaries do: the tables then compare the
    settings as well as the arms. Arms whose summaries record no setting are left out."""
    notes = []
    for key in sorted({k for arm in result.arms for k in arm.scoring}):
        values = {arm.name: arm.scoring[key] for arm in result.arms if key in arm.scoring}
        if len({v for vs in values.values() for v in vs}) > 1:
            detail = ", ".join(f"{name} {' and '.join(vs)}" for name, vs in values.items())
            notes.append(f"the predictions were not made alike, {key}: {detail} (as each "
                         "summary.json records it); the differences include that setting's "
                         "effect")
    return notes


def _signed(value: float, scale: float) -> str:
    return f"{value * scale:+.2f}" if math.isfinite(value) else "-"


def checkpoint_overview(results: Sequence[Comparison], *, compact: bool = False,
                        legend: bool = True, metric: str = "dice") -> list[ReportTable]:
    """One table per class with ``metric`` at every checkpoint side by side (the layout of a
    paper's table that reports the validation-selected, last and test-selected results): per
    checkpoint the arm's mean (std), its mean paired difference to the reference with the
    per-case p (the comparisons' tests, Holm-adjusted where asked), and, where runs pair by
    seed, the mean per-seed difference, the seeds where the arm is better and the t-test over
    the seeds. ``compact``: short arm labels (a legend first, unless ``legend`` is false), each
    p beside its difference."""
    first, col = results[0], TABLE_METRICS.index(metric)
    scale = 100.0 if metric in PERCENT else 1.0
    unit = "%" if metric in PERCENT else ("vox" if first.spacing_unit == "voxel" else "mm")
    diff_unit = "% points" if metric in PERCENT else unit
    seeds = any(r.seed_differences for r in results)
    pair, pairs = (("seed", "seeds") if all(pairs_are_seeds(r) for r in results)
                   else ("pair", "pairs"))
    labels = arm_labels([a.name for a in first.arms]) if compact else None
    tables = [_legend(first, labels)] if labels is not None and legend else []
    seed_caption = (f". Δ per {pair}: the mean of the per-{pair} differences ({pairs} where the "
                    f"arm is better), p: t-test over the {pairs}") if seeds else ""
    for cls in first.classes:
        columns = ["Arm"] if compact else ["Arm", "Runs"]
        for r in results:
            c = r.checkpoint
            columns += [f"{LABELS[metric]} {c} ({unit})", f"Δ {c}"]
            columns += [] if compact else [f"p {c}"]
            columns += [f"Δ per {pair} {c}"] if seeds else []
        table = ReportTable(
            title=f"Class {cls}: {LABELS[metric]} by checkpoint", columns=columns,
            caption=f"mean (std, ddof=1) over {first.n_cases} cases; Δ: mean paired difference to "
            f"{first.arms[0].name} ({diff_unit}); {_p_caption(first)}{seed_caption}.",
        )
        cells = [(r, _mean_cells(r, cls), _p_cells(r, cls)) for r in results]
        for arm in first.arms:
            row = [Cell(labels[arm.name] if labels else arm.name)]
            row += [] if compact else [Cell(str(arm.n_runs))]
            for r, means, ps in cells:
                row.append(means[arm.name][col])
                rec = next((x for x in r.records
                            if (x.arm, x.class_, x.metric) == (arm.name, cls, metric)), None)
                if rec is None:
                    row += [Cell("ref")] * ((1 if compact else 2) + (1 if seeds else 0))
                    continue
                diff, p = _signed(rec.result.mean_diff, scale), ps[arm.name][col].text
                row += [Cell(f"{diff} (p {p})")] if compact else [Cell(diff), Cell(p)]
                if seeds:
                    seed = next((d for d in r.seed_differences
                                 if (d.arm, d.class_, d.metric) == (arm.name, cls, metric)), None)
                    row.append(Cell("-" if seed is None else
                                    f"{_signed(seed.mean, scale)} ({seed.n_better}/"
                                    f"{seed.n_finite}), p {fmt_p(seed.p_ttest)}"))
            table.rows.append(row)
        tables.append(table)
    return tables


def write_comparison(
    result: Comparison | Sequence[Comparison],
    *,
    json_path: Path | None = None,
    csv_path: Path | None = None,
    markdown_path: Path | None = None,
) -> None:
    """Write the records (JSON list / CSV rows, each naming its checkpoint) and the Markdown
    tables that were asked for; for several comparisons (one per checkpoint), the overview by
    checkpoint first, then each comparison's tables."""
    results = [result] if isinstance(result, Comparison) else list(result)
    records = []
    for r in results:
        records += [{**x.as_dict(), "checkpoint": r.checkpoint} for x in r.records]
        records += [{**d.as_dict(), "checkpoint": r.checkpoint} for d in r.seed_differences]
    write_records(records, json_path=json_path, csv_path=csv_path)
    if markdown_path is not None:
        tables = checkpoint_overview(results) if len(results) > 1 else []
        notes: list[str] = []
        for r in results:
            tables += comparison_tables(r)
            notes += [n for n in comparison_notes(r) if n not in notes]
        write_markdown(markdown_path, tables, notes=notes)
