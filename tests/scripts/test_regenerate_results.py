"""scripts/regenerate_results.py and its manifest: every committed ``hco compare`` table is
listed in results/tables.json, and each entry writes again what is committed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.file_modules import ROOT, load_file

rr = load_file("scripts/regenerate_results.py", "regenerate_results")

# Trees whose tables other scripts write and test (collect_round / la_full_table,
# ablation_standing), and benchmark outputs, which are not comparisons.
OTHER_TREES = ("results/la-full/", "results/speed/", "results/planning/",
               "results/ablation/standing.")
# Files outside the run folders that are no hco compare output: the manifest, a folder's notes,
# and la_full_table's table of the dropped-cases batch (checked below).
NOT_COMPARISONS = {"results/tables.json", "results/la-full-drop/README.md",
                   "results/la-full-drop/table.md", "results/la-full-drop/table.json"}


def _committed_tables() -> set[str]:
    """The .md, .json and .png files under results/ outside run folders (a folder with a
    run.json, and what is in it), the sweeps' own folders (``_configs``, ``_jobs``, ...) and
    the trees other scripts own."""
    results = ROOT / "results"
    runs = {p.parent for p in results.rglob("run.json")}
    found = set()
    for path in results.rglob("*"):
        relative = path.relative_to(ROOT).as_posix()
        if (path.suffix not in (".md", ".json", ".png") or not path.is_file()
                or relative.startswith(OTHER_TREES) or relative in NOT_COMPARISONS
                or any(part.startswith("_") for part in path.relative_to(results).parts)
                or runs.intersection(path.parents)):
            continue
        found.add(relative)
    return found


def _entry(name: str) -> Any:  # an rr.Entry
    return next(e for e in rr.load_manifest() if e.name == name)


def test_the_manifest_names_every_committed_table_and_nothing_else() -> None:
    named = {p for e in rr.load_manifest() for p in e.outputs.values()}
    committed = _committed_tables()
    assert committed - named == set(), "not in results/tables.json"
    assert named - committed == set(), "named in results/tables.json but not committed"
    assert len(named) > 100  # the scan found the tables at all


@pytest.mark.parametrize("name", ["round1910-best", "round7-dynamics"])
def test_an_entry_regenerates_to_what_is_committed(name: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the committed files name the runs relative to the repository
    entry = _entry(name)
    written = rr.regenerate(entry, tmp_path, plots=False)
    assert set(written) == set(entry.tables)
    assert rr.stale_files(entry, written) == {}


# 45-53 s on 2 cores with the plot extra installed (30 s without it): all 67 entries.
@pytest.mark.slow
def test_every_entry_regenerates_to_what_is_committed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    plots = rr.plots_available()
    for entry in rr.load_manifest():
        out = tmp_path / entry.name
        out.mkdir()
        written = rr.regenerate(entry, out, plots=plots)
        assert rr.stale_files(entry, written) == {}, entry.name
        assert plots or "plot" not in written


def test_check_names_each_stale_table_and_a_rewrite_makes_it_current(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = _entry("round10-best")
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    manifest = tmp_path / "tables.json"
    manifest.write_text(json.dumps({"entries": [
        {"name": "t", "description": "", "argv": list(entry.argv), "markdown": str(md),
         "json": str(js)}]}), encoding="utf-8")
    shutil.copyfile(ROOT / entry.outputs["markdown"], md)
    md.write_text(md.read_text(encoding="utf-8") + "edited\n", encoding="utf-8")
    assert rr.main(["--check", "--manifest", str(manifest)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"stale: {md} (text differs; entry t)", f"stale: {js} (missing; entry t)"]
    assert not js.exists()  # --check writes nothing

    assert rr.main(["--manifest", str(manifest)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {md}", f"wrote {js}"]
    assert md.read_text(encoding="utf-8") == (ROOT / entry.outputs["markdown"]).read_text(
        encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert rr.main(["--check", "--manifest", str(manifest)]) == 0
    assert "every committed table is what the runs give" in capsys.readouterr().out


def test_an_entry_that_fails_is_one_line_and_the_others_still_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _entry("round10-best")
    manifest = tmp_path / "tables.json"
    manifest.write_text(json.dumps({"entries": [
        {"name": "gone", "argv": ["a=results/no-such/*", "b=results/none/*"],
         "markdown": str(tmp_path / "gone.md")},
        {"name": "good", "argv": list(good.argv), "json": good.outputs["json"]}]}),
        encoding="utf-8")
    assert rr.main(["--check", "--manifest", str(manifest)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "error: gone: hco compare failed: glob 'results/no-such/*' matched nothing"]
    assert captured.out == ""  # the good entry ran and is current
    assert rr.main(["--check", "--manifest", str(manifest), "--only", "nope"]) == 1
    assert capsys.readouterr().err.strip() == "error: --only: no entries named nope"


@pytest.mark.parametrize(("item", "message"), [
    ({"name": "a", "argv": []}, "names no output"),
    ({"name": "a", "argv": [], "markdown": "x.md", "csv": "x.csv"}, "unknown keys ['csv']"),
    ({"argv": [], "markdown": "x.md"}, "needs a name and an argv list"),
])
def test_a_malformed_entry_is_refused(item: dict[str, object], message: str,
                                      tmp_path: Path) -> None:
    manifest = tmp_path / "tables.json"
    manifest.write_text(json.dumps({"entries": [item]}), encoding="utf-8")
    with pytest.raises(rr.RegenerateError, match=re.escape(message)):
        rr.load_manifest(manifest)


def test_a_file_named_twice_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "tables.json"
    manifest.write_text(json.dumps({"entries": [
        {"name": "a", "argv": [], "markdown": "x.md"},
        {"name": "b", "argv": [], "json": "x.json", "markdown": "x.md"}]}), encoding="utf-8")
    with pytest.raises(rr.RegenerateError, match=r"file x\.md is named twice"):
        rr.load_manifest(manifest)


def test_json_tables_compare_by_value() -> None:
    assert rr.same_value({"a": 0.1 + 0.2, "b": [1, None]}, {"b": [1.0, None], "a": 0.3})
    assert not rr.same_value({"p": 0.05}, {"p": 0.0500001})
    assert not rr.same_value({"a": 1}, {"a": 1, "b": 2})
    assert not rr.same_value([True], [1])
    assert not rr.same_value(["1"], [1])


def test_the_dropped_cases_table_is_what_its_runs_give(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """results/la-full-drop/table.{md,json}: la_full_table's output, with the command its
    README gives (the one table outside the manifest that no other test regenerates)."""
    monkeypatch.chdir(ROOT)
    lf = load_file("scripts/la_full_table.py", "la_full_table")
    md, js = tmp_path / "table.md", tmp_path / "table.json"
    assert lf.main(["results/la-full-drop", "--markdown", str(md), "--json", str(js)]) == 0
    committed = ROOT / "results" / "la-full-drop"
    assert md.read_text(encoding="utf-8") == (committed / "table.md").read_text(encoding="utf-8")
    assert rr.same_value(json.loads(js.read_text(encoding="utf-8")),
                         json.loads((committed / "table.json").read_text(encoding="utf-8")))
