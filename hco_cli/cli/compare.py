"""``hco compare``: paired tests between runs, seed groups or folds, their loss dynamics or
their validation curves."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from hco_cli.cli.common import UNBOUNDED_WIDTH, console, handle_errors
from hco_cli.errors import ConfigError, HcoError
from hco_cli.outputs import check_distinct_outputs, check_output_file

if TYPE_CHECKING:
    from hco_cli.evaluation import compare_tables


class CheckpointChoice(str, Enum):
    best = "best"
    last = "last"
    best_val = "best-val"  # validation.also_select_on: [val]
    best_test = "best-test"  # validation.also_select_on: [test] (test-selected)


class TestChoice(str, Enum):
    wilcoxon = "wilcoxon"
    ttest = "ttest"
    both = "both"


class ZeroMethodChoice(str, Enum):
    wilcox = "wilcox"
    pratt = "pratt"
    zsplit = "zsplit"


class HolmChoice(str, Enum):
    metrics = "metrics"
    all = "all"


class AlternativeChoice(str, Enum):
    better = "better"
    worse = "worse"
    two_sided = "two-sided"


def _opt(*names: str, default: str | bool = False, **kwargs: Any) -> Any:
    return typer.Option(*names, show_default=default, **kwargs)


Arms = Annotated[list[str], typer.Argument(help="Arms, the first being the reference: run "
                 "folders, summary.json files, or run groups as GLOB or NAME=GLOB (a "
                 "component may list alternatives: 'sgd=out/round{1,9,10}/sgd/*').")]  # fmt: skip
Checkpoint = Annotated[list[CheckpointChoice] | None, _opt(default="best", help="Evaluation "
                       "read from a run folder: RUN/eval/<checkpoint>/summary.json. Repeat "
                       "(best, last, best-test) for a table of the checkpoints side by side "
                       "before each one's tables.")]  # fmt: skip
Test = Annotated[TestChoice | None, _opt(default="both", help="Paired test(s).")]
Alternative = Annotated[AlternativeChoice | None, _opt(default="better", help="H1 of every "
                        "test: arm better than the reference, worse, or different "
                        "(two-sided).")]  # fmt: skip
Margin = Annotated[list[str] | None, _opt("--margin", metavar="METRIC=VALUE", help="Test "
                   "against the reference shifted by a margin: with --alternative better, "
                   "non-inferiority (arm not worse by VALUE or more), with worse, worse by "
                   "more than VALUE; Dice/Jaccard in % points, HD95/ASD in the distance unit. "
                   "Repeat per metric (dice, jaccard, hd95, asd); 0 for the others.")]  # fmt: skip
Claim = Annotated[list[str] | None, _opt("--claim", metavar="METRIC=VALUE", help="A claimed "
                  "gain of every arm over the reference (e.g. a paper's: dice=1.11), held "
                  "against the per-seed differences: a gain where the one-sided t-test over "
                  "the seeds gives p < 0.05, the claim excluded where the one-sided 95 % upper "
                  "bound of the mean improvement lies below it, both, or undecided. Dice/"
                  "Jaccard in % points, HD95/ASD as the reduction in the distance unit; "
                  "positive. Repeat per metric.")]  # fmt: skip
ZeroMethod = Annotated[ZeroMethodChoice | None, _opt(default="wilcox", help="Wilcoxon "
                       "treatment of zero differences (scipy's zero_method).")]  # fmt: skip
Holm = Annotated[bool, _opt("--holm", help="Holm-adjust p-values across the 4 metrics of each "
                 "arm and class (--holm-over all: across every test of the comparison).")]
HolmOver = Annotated[HolmChoice | None, _opt(help="The family --holm adjusts over: the 4 "
                     "metrics of each arm and class, or all the comparison's tests (every "
                     "arm, class and metric); implies --holm.")]  # fmt: skip
Intersect = Annotated[bool, _opt("--intersect", help="Pair only the cases common to all arms.")]
CommonSeeds = Annotated[bool, _opt(
    "--common-seeds",
    help="Keep only the runs whose run.json seed every arm has (one run per seed), so that the "
         "per-case tests, which average each arm's runs per case (or --dynamics, which pools "
         "them), compare like with like; the runs left out are named under the tables. The "
         "per-case tests and --dynamics do this by default where the arms pair by seed on two "
         "or more seeds; this makes it required (e.g. for an arm of one seed so far).")]
AllRuns = Annotated[bool, _opt(
    "--all-runs",
    help="Per-case tests (--dynamics: its pooling): take every run of an arm, those of seeds "
         "another arm lacks too (by default they are left out where the arms pair by seed).")]
DynamicsFlag = Annotated[bool, _opt("--dynamics", help="Compare the L_U/L_L loss ratio per epoch "
                         "(RUN/metrics.jsonl, .xz or .gz) instead of test metrics.")]  # fmt: skip
CurvesFlag = Annotated[bool, _opt("--curves", help="Compare the validation Dice logged over "
                       "training (RUN/metrics.jsonl, .xz or .gz), runs paired by seed, instead of "
                       "test metrics.")]  # fmt: skip
Split = Annotated[str | None, _opt("--split", help="--curves: the split whose Dice to compare "
                  "(default: the one each run selected on; another logged by "
                  "validation.also_select_on, e.g. test).")]  # fmt: skip
Bin = Annotated[int | None, _opt("--bin", min=1, default="1", help="--dynamics: epochs per row; "
                "--curves: validations per row.")]  # fmt: skip
Frac = Annotated[float | None, _opt(default="0.3", help="--dynamics --plot: LOWESS span.")]
Json = Annotated[Path | None, _opt("--json", dir_okay=False, help="Write the records as JSON.")]
Csv = Annotated[Path | None, _opt("--csv", dir_okay=False, help="Write the records as CSV.")]
Markdown = Annotated[Path | None, _opt("--markdown", dir_okay=False, help="Write Markdown tables.")]
Plot = Annotated[Path | None, _opt("--plot", dir_okay=False, help="Box plots of per-case "
                 "metrics (--dynamics: ratio trends; --curves: the curves); .png/.pdf/.svg; plot "
                 "extra.")]  # fmt: skip


def _rich(table: compare_tables.ReportTable, *, lines: box.Box = box.HEAVY_HEAD,
          width: int | None = None) -> Table:
    """A rich table whose cells wrap but are never cut short with an ellipsis; with ``width``
    (the narrow layout), its columns sized by :func:`_column_widths` so that none is narrower
    than its longest word and a number is never folded across lines."""
    out = Table(title=table.title, caption=table.caption, caption_justify="left", box=lines,
                pad_edge=lines is not box.SIMPLE_HEAD)
    widths = _column_widths(table, width) if width else [None] * len(table.columns)
    for column, size in zip(table.columns, widths, strict=True):
        out.add_column(column, overflow="fold", width=size)
    for row in table.rows:
        out.add_row(*(Text(c.text, style="bold" if c.bold else "") for c in row))
    return out


# What a column of the narrow layout (box.SIMPLE_HEAD, no edge padding) adds to its text: a
# space either side and the rule between columns.
COLUMN_EXTRA = 3


def _text_widths(table: compare_tables.ReportTable) -> tuple[list[int], list[int]]:
    """Per column, its longest word and its longest cell on one line (header included)."""
    texts = [[name, *(row[i].text for row in table.rows)] for i, name in enumerate(table.columns)]
    words = [max(cell_len(w) for t in column for w in [*t.split(), "-"]) for column in texts]
    return words, [max(cell_len(t) for t in column) for column in texts]


def _column_widths(table: compare_tables.ReportTable, width: int) -> list[int | None]:
    """Text widths of the columns within ``width``: natural where the table fits, else each
    column's longest word plus a share of the room left, by how much more its text wants."""
    low, high = _text_widths(table)
    room = width - COLUMN_EXTRA * len(low)
    if sum(high) <= room:
        return [None] * len(low)
    spare, wants = max(room - sum(low), 0), [h - lo for lo, h in zip(low, high, strict=True)]
    total = sum(wants) or 1
    return [lo + spare * want // total for lo, want in zip(low, wants, strict=True)]


def render(full: list[compare_tables.ReportTable], compact: list[compare_tables.ReportTable],
           console: Console) -> list[Table]:
    """The paper-layout tables where each fits the console on one line per row; otherwise the
    narrow layout (short arm labels, legend, split tables)."""
    tables = [_rich(t) for t in full]
    unbounded = console.options.update_width(UNBOUNDED_WIDTH)  # the natural width of a table
    if all(Measurement.get(console, unbounded, t).maximum <= console.width for t in tables):
        return tables
    return [_rich(part, lines=box.SIMPLE_HEAD, width=console.width)  # no vertical rules
            for t in compact for part in _split_to_fit(t, console.width)]


def _split_to_fit(table: compare_tables.ReportTable, width: int
                  ) -> list[compare_tables.ReportTable]:
    """``table`` as it is where its columns' longest words fit ``width`` side by side;
    otherwise its columns in groups that do, each beside the first column (the arm); the
    caption goes under the last group."""
    need = [w + COLUMN_EXTRA for w in _text_widths(table)[0]]
    rest = list(range(1, len(table.columns)))
    if sum(need) <= width or len(rest) < 2:
        return [table]

    def pack(cap: int) -> list[list[int]]:
        groups: list[list[int]] = [[]]
        for i in rest:
            if groups[-1] and sum(need[j] for j in groups[-1]) + need[i] > cap:
                groups.append([])
            groups[-1].append(i)
        return groups

    room = width - need[0]
    groups = pack(room)
    # as many groups, of about the same width (the last one not a sliver under its caption)
    even = -(-sum(need[1:]) // len(groups))
    while even < room and len(pack(even)) > len(groups):
        even += 1
    groups = pack(min(even, room))
    return [replace(table, title=f"{table.title} ({k}/{len(groups)})",
                    columns=[table.columns[i] for i in (0, *group)],
                    rows=[[row[i] for i in (0, *group)] for row in table.rows],
                    caption=table.caption if k == len(groups) else "")
            for k, group in enumerate(groups, start=1)]


def parse_metric_values(items: list[str] | None, percent: frozenset[str],
                        option: str = "--margin") -> dict[str, float]:
    """``--margin`` (or ``--claim``) ``METRIC=VALUE`` items in compare_runs' units: the
    ``percent`` metrics (the tables' Dice and Jaccard) from % points to fractions, the
    distances as given; a metric given twice is an error."""
    out: dict[str, float] = {}
    for item in items or []:
        metric, sep, value = item.partition("=")
        metric = metric.strip().lower()
        if not sep or not metric:
            raise ConfigError(f"{option} {item!r}: expected METRIC=VALUE, e.g. dice=0.5")
        if metric in out:
            raise ConfigError(f"{option}: {metric} given twice")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{option} {item!r}: {value!r} is not a number") from None
        out[metric] = number / 100.0 if metric in percent else number
    return out


def _read_paths(arms: list[str]) -> list[Path]:
    """The files ``hco compare`` reads for its arms, which no output may name: each summary
    file given, and each run folder's summaries, run.json and metrics log. An arm that does
    not resolve adds nothing: the comparison says why, as before."""
    from hco_cli.evaluation.compare import resolve_arm
    from hco_cli.runs.layout import SUMMARY_FILE, RunFolder

    paths: list[Path] = []
    for spec in arms:
        try:
            members = resolve_arm(spec).members
        except HcoError:
            continue
        for member in members:
            paths.append(member)
            if member.is_dir():
                run = RunFolder(member)
                paths += [member / SUMMARY_FILE, run.run_json, *run.metrics_logs,
                          *run.summaries().values()]
    return paths


def _reject(mode: str, **given: object) -> None:
    """Options that do not apply to the chosen mode are errors, never silently ignored."""
    for name, value in given.items():
        if value not in (None, False):
            raise ConfigError(f"--{name.replace('_', '-')} does not apply {mode}")


def _seed_choice(common_seeds: bool, all_runs: bool) -> bool | None:
    """compare_sources' and compare_dynamics' ``common_seeds``: True (--common-seeds), False
    (--all-runs) or None, the default's cut where seeds pair the arms."""
    if common_seeds and all_runs:
        raise ConfigError("--common-seeds keeps the seeds every arm has, --all-runs every run; "
                          "give one")
    return True if common_seeds else (False if all_runs else None)


@handle_errors
def compare(
    arms: Arms, checkpoint: Checkpoint = None, test: Test = None, zero_method: ZeroMethod = None,
    alternative: Alternative = None, margin: Margin = None, claim: Claim = None,
    holm: Holm = False,
    holm_over: HolmOver = None,
    intersect: Intersect = False, common_seeds: CommonSeeds = False, all_runs: AllRuns = False,
    dynamics_mode: DynamicsFlag = False, curves_mode: CurvesFlag = False, split: Split = None,
    bin_width: Bin = None, lowess_frac: Frac = None,
    json_path: Json = None, csv_path: Csv = None, markdown_path: Markdown = None,
    plot_path: Plot = None,
) -> None:  # fmt: skip
    """Compare arms: paired Wilcoxon / t-tests per case, loss dynamics or validation curves."""
    # Deferred: SciPy's statistics load only when a command compares, never for --help.
    from hco_cli.evaluation import compare_tables, curves, dynamics, plots
    from hco_cli.evaluation.compare import compare_checkpoints

    if plot_path is not None:
        plots.check_plot_target(plot_path)
    for option, target in (("--json", json_path), ("--csv", csv_path),
                           ("--markdown", markdown_path), ("--plot", plot_path)):
        if target is not None:
            check_output_file(target, option=option)  # before the work, not after it
    check_distinct_outputs({"--json": json_path, "--csv": csv_path, "--markdown": markdown_path,
                            "--plot": plot_path}, _read_paths(arms))
    outputs = {"json_path": json_path, "csv_path": csv_path, "markdown_path": markdown_path}
    notes: list[str] = []
    if dynamics_mode and curves_mode:
        raise ConfigError("--dynamics and --curves are two modes; give one")
    if not curves_mode:
        _reject("without --curves", split=split)
    if curves_mode:
        _reject("with --curves", checkpoint=checkpoint or None, test=test,
                zero_method=zero_method, alternative=alternative, margin=margin or None,
                claim=claim or None, holm=holm,
                holm_over=holm_over, common_seeds=common_seeds, all_runs=all_runs,
                intersect=intersect, lowess_frac=lowess_frac)  # fmt: skip
        found = curves.compare_curves(arms, split=split, bin_width=bin_width or 1)
        tables = render(curves.curves_tables(found), curves.curves_tables(found, compact=True),
                        console)
        curves.write_curves(found, **outputs)
        if plot_path is not None:
            plots.plot_curves(found, plot_path)
    elif dynamics_mode:
        _reject("with --dynamics", checkpoint=checkpoint or None, test=test,
                zero_method=zero_method, alternative=alternative, margin=margin or None,
                claim=claim or None, holm=holm,
                holm_over=holm_over,
                intersect=intersect)  # fmt: skip
        if lowess_frac is not None and plot_path is None:
            raise ConfigError("--lowess-frac needs --plot")
        dyn = dynamics.compare_dynamics(arms, bin_width=bin_width or 1,
                                        common_seeds=_seed_choice(common_seeds, all_runs))
        tables = render(dynamics.dynamics_tables(dyn),
                        dynamics.dynamics_tables(dyn, compact=True), console)
        dynamics.write_dynamics(dyn, **outputs)
        if plot_path is not None:
            plots.plot_dynamics(dyn, plot_path, frac=0.3 if lowess_frac is None else lowess_frac)
    else:
        _reject("without --dynamics or --curves", bin=bin_width, lowess_frac=lowess_frac)
        chosen = (test or TestChoice.both).value
        checkpoints = [c.value for c in checkpoint or [CheckpointChoice.best]]
        if plot_path is not None and len(checkpoints) > 1:
            raise ConfigError("--plot draws one checkpoint's cases; give one --checkpoint")
        results = compare_checkpoints(
            arms,
            cast(Any, checkpoints),
            tests=cast(Any, ("wilcoxon", "ttest") if chosen == "both" else (chosen,)),
            zero_method=cast(Any, (zero_method or ZeroMethodChoice.wilcox).value),
            holm=holm or holm_over is not None,
            holm_family=cast(Any, (holm_over or HolmChoice.metrics).value),
            intersect=intersect,
            common_seeds=_seed_choice(common_seeds, all_runs),
            hypothesis=cast(Any, (alternative or AlternativeChoice.better).value),
            margins=parse_metric_values(margin, compare_tables.PERCENT),
            claims=parse_metric_values(claim, compare_tables.PERCENT, option="--claim"),
        )
        # Several checkpoints: the overview, then each comparison's tables, all in one layout
        # (the narrow one with a single legend) so that the arms' labels mean one thing.
        overview = len(results) > 1
        full = compare_tables.checkpoint_overview(results) if overview else []
        compact = [compare_tables.arm_legend(results[0])]
        compact += (compare_tables.checkpoint_overview(results, compact=True, legend=False)
                    if overview else [])
        for result in results:
            full += compare_tables.comparison_tables(result)
            compact += compare_tables.comparison_tables(result, compact=True, legend=False)
            notes += [n for n in compare_tables.comparison_notes(result) if n not in notes]
        tables = render(full, compact, console)
        compare_tables.write_comparison(results, **outputs)
        if plot_path is not None:
            plots.plot_boxplots(results[0], plot_path)
    for table in tables:
        console.print(table)
    written = [p for p in (json_path, csv_path, markdown_path, plot_path) if p is not None]
    for line in [*notes, *(f"wrote {p}" for p in written)]:
        console.print(Text(line))
