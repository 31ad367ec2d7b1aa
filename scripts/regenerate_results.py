"""The committed ``hco compare`` tables under results/, written again from the committed runs.

    python scripts/regenerate_results.py [--check] [--only NAME ...] [--manifest FILE]

``results/tables.json`` (JSON: the project runs on Python 3.10, which has no TOML reader)
lists every comparison committed outside the run folders, the Markdown, JSON and plots of
``hco compare``; not ``results/la-full/``, whose tables ``scripts/collect_round.py`` and
``scripts/la_full_table.py`` write, nor the ablation's standing table
(``scripts/ablation_standing.py``). Per entry: its name, the README section that uses it, the
``hco compare`` arguments without the output options, run from the repository root (the arms'
globs name the runs relative to it), and the files it writes (``markdown``, ``json``,
``plot``; a plot alone where no table was committed beside it).

Every entry is regenerated into a temporary folder by ``hco compare`` in this process (the
command's own argument parsing, so an entry is exactly the command line it records). A
committed table is stale where the regenerated one differs: JSON by its parsed value (floats
equal to 1e-9 relative, so that another CPU's last bits do not count), Markdown by its text.
Plots are never compared (their bytes change with the matplotlib version); they are drawn,
so that a plot that no longer works shows, where the ``plot`` extra (matplotlib, statsmodels)
is installed, and left out otherwise.

``--check`` writes nothing: one line per stale or missing committed table, exit status 1 if
there is any. Without it, each entry with a stale table is rewritten in place, its plot with it
where the extra is installed (every file written under a temporary name beside it, then
renamed); an entry whose tables are current is left alone, its plot included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hco_cli.cli.app import app
from hco_cli.io_utils import atomic_path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "results" / "tables.json"
# An entry's outputs: the manifest's key for each, and the hco compare option that writes it.
OUTPUTS = {"markdown": "--markdown", "json": "--json", "plot": "--plot"}
TABLES = ("markdown", "json")
ENTRY_KEYS = frozenset({"name", "description", "argv", *OUTPUTS})
REL_TOL = 1e-9


class RegenerateError(Exception):
    """A one-line refusal."""


@dataclass(frozen=True)
class Entry:
    """One ``hco compare`` command and the committed files it writes (paths relative to ROOT,
    or absolute)."""

    name: str
    description: str
    argv: tuple[str, ...]
    outputs: dict[str, str]

    @property
    def tables(self) -> dict[str, str]:
        """The outputs compared with the committed files: Markdown and JSON."""
        return {k: v for k, v in self.outputs.items() if k in TABLES}


def load_manifest(path: Path = MANIFEST) -> list[Entry]:
    """The manifest's entries; refused where an entry lacks a field, has an unknown one, or
    names a file or an entry another one names too."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RegenerateError(f"{path}: {err}") from None
    entries: list[Entry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw.get("entries", [])):
        where = f"{path.name}: entry {i + 1}"
        unknown = set(item) - ENTRY_KEYS
        if unknown:
            raise RegenerateError(f"{where}: unknown keys {sorted(unknown)}")
        if not isinstance(item.get("name"), str) or not isinstance(item.get("argv"), list):
            raise RegenerateError(f"{where}: needs a name and an argv list")
        outputs = {k: item[k] for k in OUTPUTS if k in item}
        if not outputs:
            raise RegenerateError(f"{where} ({item['name']}): names no output")
        for key in [item["name"], *(f"file {p}" for p in outputs.values())]:
            if key in seen:
                raise RegenerateError(f"{where}: {key} is named twice")
            seen.add(key)
        entries.append(Entry(item["name"], item.get("description", ""),
                             tuple(map(str, item["argv"])), outputs))
    if not entries:
        raise RegenerateError(f"{path}: no entries")
    return entries


def plots_available() -> bool:
    """Whether the ``plot`` extra that ``hco compare --plot`` needs is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("matplotlib", "statsmodels"))


@contextlib.contextmanager
def in_root() -> Iterator[None]:
    """The working directory at ROOT, where the manifest's globs resolve, then back."""
    before = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(before)


def hco_compare(args: list[str]) -> None:
    """``hco compare ARGS`` in this process: its tables printed to nothing, its error (one
    line) raised."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = app(["compare", *args], prog_name="hco", standalone_mode=False)
        except SystemExit as exc:  # click's own exits (none expected with standalone off)
            code = exc.code
    if code not in (None, 0):
        last = err.getvalue().strip().splitlines()[-1:] or [f"exit status {code}"]
        raise RegenerateError(f"hco compare failed: {last[0].removeprefix('error: ')}")


def regenerate(entry: Entry, out_dir: Path, *, plots: bool) -> dict[str, Path]:
    """Run ``entry`` with its outputs in ``out_dir`` (the working directory must be ROOT):
    kind -> the file written; the plot only where ``plots``."""
    written = {kind: out_dir / Path(path).name for kind, path in entry.outputs.items()
               if plots or kind != "plot"}
    if not written:  # a plot alone, and no plot extra to draw it
        return {}
    options = [a for kind, target in written.items() for a in (OUTPUTS[kind], str(target))]
    try:
        hco_compare([*entry.argv, *options])
    except RegenerateError as err:
        raise RegenerateError(f"{entry.name}: {err}") from None
    for kind, target in written.items():
        if not target.is_file():
            raise RegenerateError(f"{entry.name}: hco compare wrote no {kind} ({target.name})")
    return written


def same_value(a: Any, b: Any) -> bool:
    """Parsed JSON equal, floats to :data:`REL_TOL` (an int and a float of one value equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers)
            and not isinstance(a, bool) and not isinstance(b, bool)):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0)
    return type(a) is type(b) and a == b


def difference(kind: str, generated: Path, committed: Path) -> str | None:
    """Why the committed table is stale (None where it is current)."""
    if not committed.is_file():
        return "missing"
    new, old = (p.read_text(encoding="utf-8") for p in (generated, committed))
    if kind == "json":
        try:
            return None if same_value(json.loads(new), json.loads(old)) else "values differ"
        except json.JSONDecodeError:
            return "not JSON"
    return None if new == old else "text differs"


def stale_files(entry: Entry, written: dict[str, Path]) -> dict[str, str]:
    """The entry's committed tables that differ from ``written``: path -> why."""
    out = {}
    for kind, path in entry.tables.items():
        why = difference(kind, written[kind], ROOT / path)
        if why is not None:
            out[path] = why
    return out


def install(generated: Path, target: Path) -> None:
    """``generated`` copied onto ``target`` whole: a temporary name beside it, then renamed."""
    with atomic_path(target, suffix=target.suffix) as tmp:
        shutil.copyfile(generated, tmp)


def refresh(entry: Entry, *, check: bool, plots: bool) -> list[str]:
    """Regenerate ``entry`` (the working directory must be ROOT) and, unless ``check``,
    rewrite its files if a table is stale. Its lines to print: one per stale table under
    ``check``, else one per file rewritten."""
    with tempfile.TemporaryDirectory(prefix="regenerate-") as tmp:
        written = regenerate(entry, Path(tmp), plots=plots)
        stale = stale_files(entry, written)
        if check:
            return [f"stale: {path} ({why}; entry {entry.name})" for path, why in stale.items()]
        lines = []
        for kind, path in entry.outputs.items() if stale else ():
            if kind in written:
                install(written[kind], ROOT / path)
                lines.append(f"wrote {path}")
            else:
                lines.append(f"kept {path} (no plot extra to draw it again)")
        return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files, write nothing; exit 1 if stale")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="these entries of the manifest (default: all)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    args = parser.parse_args(argv)
    try:
        entries = load_manifest(args.manifest)
    except RegenerateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    unknown = sorted(set(args.only) - {e.name for e in entries})
    if unknown:
        print(f"error: --only: no entries named {', '.join(unknown)}", file=sys.stderr)
        return 1
    chosen = [e for e in entries if not args.only or e.name in args.only]
    plots, failed, stale = plots_available(), 0, 0
    with in_root():
        for entry in chosen:  # an entry that fails stops neither the others nor the check
            try:
                lines = refresh(entry, check=args.check, plots=plots)
            except (RegenerateError, OSError) as err:
                print(f"error: {err}", file=sys.stderr)
                failed += 1
                continue
            for line in lines:
                print(line, flush=True)
            stale += bool(args.check and lines)
    if failed or stale:
        return 1
    if args.check:
        print(f"{len(chosen)} entries: every committed table is what the runs give")
    return 0


if __name__ == "__main__":
    sys.exit(main())
