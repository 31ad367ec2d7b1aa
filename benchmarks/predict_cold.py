"""Where a fresh ``hco predict`` process spends its first seconds (issue 20: <= 8 s cold).

A warm ``hco predict --lcc --evaluate`` of the 20 LA test cases takes 2.4 s on an H200, the
first call in a process 9 s and a fresh process more (imports, CUDA start-up, library loading,
kernel compilation). This benchmark starts one fresh child process that does what
``hco predict`` does, one stage after another, each timed to a device synchronisation:

``import``
    the CLI and the prediction modules (torch included), as ``hco predict`` imports them
``cuda_init``
    the CUDA context (a one-element tensor on the device)
``load``
    the run's checkpoint into a V-Net on the device
``forward_first`` / ``forward_again``
    one batch of windows of the run's patch size, bf16 autocast as predict: the first loads
    cuDNN and picks its kernels, the second is the steady cost of one batch
``lcc_first`` / ``lcc_again``
    the largest-component filter on one case-sized label map on the device (the first call
    loads CuPy and compiles or loads its labelling kernels)
``predict_first`` / ``predict_again``
    the whole ``predict`` call with the CLI's defaults, twice in the process

then, as a separate fresh process, ``hco predict`` itself (``cli``: its wall seconds, when it
wrote its last file and how long it took from there to exit), and once more under
``python -X importtime`` (``cli_importtime``: the seconds of its top-level imports). The
stages before ``predict_first`` are what the first call pays once: what a shorter cold start
has to remove or overlap.

``--bytecode ROUNDS`` adds a ratio measured in the same call: fresh ``hco predict`` processes,
alternating, with and without Python's compiled bytecode for every module they import. Both
arms read bytecode from a private ``PYTHONPYCACHEPREFIX`` (one filled by a first, untimed
process; one left empty, with ``PYTHONDONTWRITEBYTECODE=1`` so it stays empty), so the
environment's own ``__pycache__`` folders take no part. An image that sets
``PYTHONDONTWRITEBYTECODE=1`` and ships no ``.pyc`` files (the GPU image of this project does)
compiles torch's sources in every process; a ``pip install`` writes them once. The result also
says whether this environment writes bytecode and whether torch's is cached.

Run it on the GPU machine after ``hco prepare la`` and a finished run::

    python benchmarks/predict_cold.py --run RUN --data data/la --cases 20 --json cold.json

``--synthetic`` makes a small dataset and a random V-Net (CPU tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STAGES = ("import", "cuda_init", "load", "forward_first", "forward_again", "lcc_first",
          "lcc_again", "predict_first", "predict_again")


def child(run: Path, data: Path, out: Path, device_name: str) -> dict[str, Any]:
    """The stages in this (fresh) process; imports inside, because they are what is timed."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    import torch

    import hco_cli.cli.app  # what `hco predict` imports before it runs
    import hco_cli.cli.predict  # noqa: F401
    from hco_cli.inference.predict import PredictOptions, predict, resolve_device
    from hco_cli.inference.runs import load_run, model_channels
    from hco_cli.ops.components import keep_largest_per_class
    seconds["import"] = time.perf_counter() - start

    device = resolve_device(device_name)  # type: ignore[arg-type]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(stage: str, fn: Any) -> Any:
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        seconds[stage] = time.perf_counter() - t0
        return result

    timed("cuda_init", lambda: torch.zeros(1, device=device))
    loaded = timed("load", lambda: load_run(run, "best", device))
    config = loaded.config
    patch = loaded.patch_size
    channels, num_classes = model_channels(loaded.model) or (1, 2)
    windows = torch.randn(config.validation.batch_size, channels, *patch, device=device)
    amp = config.amp and device.type == "cuda"
    model = loaded.model.eval()

    def forward() -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=amp):
            return model(windows)

    timed("forward_first", forward)
    timed("forward_again", forward)
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand((160, 160, 88), generator=generator) > 0.7).to(torch.int64).to(device)
    timed("lcc_first", lambda: keep_largest_per_class(labels, num_classes))
    timed("lcc_again", lambda: keep_largest_per_class(labels, num_classes))
    for stage in ("predict_first", "predict_again"):
        options = PredictOptions(device=device_name, data=data, out=out / stage,  # type: ignore[arg-type]
                                 split="test", lcc=True, evaluate=True, force=True)
        report = timed(stage, lambda options=options: predict(run, options))
    return {"seconds": seconds, "cases": len(report.cases),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__}


def fresh_cli(run: Path, data: Path, out: Path, device: str, importtime: bool = False,
              env: dict[str, str] | None = None) -> dict[str, float]:
    """One fresh ``hco predict --lcc --evaluate`` process: its wall seconds (``wall``), when
    it wrote its last file (``last_write``: every file under ``out``'s folder, by modification
    time) and what came after that (``after_last_write``: summaries printed, threads and pools
    joined, the interpreter and the CUDA context torn down). ``importtime`` runs it under
    ``python -X importtime`` and adds ``imports``: the cumulative seconds of its top-level
    imports (the flag's own cost included, so that process's wall is not comparable). ``env``
    sets environment variables for it ("" removes one)."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "hco_cli",
               "predict", str(run), "--data", str(data), "--split", "test", "--out", str(out),
               "--force", "--device", device, "--lcc", "--evaluate"]
    wall_start, start = time.time(), time.perf_counter()
    environ = dict(os.environ)
    for name, value in (env or {}).items():  # "" removes a variable
        if value:
            environ[name] = value
        else:
            environ.pop(name, None)
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=environ)
    wall = time.perf_counter() - start
    written = [p.stat().st_mtime for p in out.parent.rglob("*")
               if p.is_file() and p.stat().st_mtime >= wall_start]
    last = max(written) - wall_start if written else float("nan")
    result = {"wall": wall, "last_write": last, "after_last_write": wall - last}
    if importtime:
        result["imports"] = top_level_imports(done.stderr)
    return result


def bytecode(run: Path, data: Path, root: Path, device: str, rounds: int) -> dict[str, Any]:
    """Fresh ``hco predict`` processes with (``with``) and without (``without``) compiled
    bytecode, alternating, ``rounds`` of each; ``ratio``: the median without over the median
    with. ``environment``: whether this interpreter writes bytecode and whether torch's
    ``__init__`` has a cached ``.pyc`` where imports look for it (no prefix)."""
    filled, empty = root / "pyc-with", root / "pyc-without"
    filled.mkdir()
    empty.mkdir()
    # The untimed first process compiles and writes what it imports into the filled prefix.
    fresh_cli(run, data, root / "bytecode-fill" / "out", device,
              env={"PYTHONPYCACHEPREFIX": str(filled), "PYTHONDONTWRITEBYTECODE": ""})
    arms: dict[str, dict[str, str]] = {
        "with": {"PYTHONPYCACHEPREFIX": str(filled), "PYTHONDONTWRITEBYTECODE": "1"},
        "without": {"PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"},
    }
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    for i in range(rounds):
        for arm, env in arms.items():
            result = fresh_cli(run, data, root / f"bytecode-{arm}-{i}" / "out", device, env=env)
            walls[arm].append(result["wall"])
    if any(empty.iterdir()):
        raise RuntimeError(f"bytecode was written into {empty}: the 'without' arm is not clean")
    torch_spec = importlib.util.find_spec("torch")
    origin = torch_spec.origin if torch_spec is not None else None
    cached = (origin is not None and sys.pycache_prefix is None
              and Path(importlib.util.cache_from_source(origin)).exists())
    medians = {arm: statistics.median(values) for arm, values in walls.items()}
    return {"with": walls["with"], "without": walls["without"],
            "median_with": medians["with"], "median_without": medians["without"],
            "ratio": medians["without"] / medians["with"],
            "environment": {"writes_bytecode": not sys.dont_write_bytecode,
                            "torch_bytecode_cached": cached}}


def top_level_imports(stderr: str) -> float:
    """Seconds of ``-X importtime``'s top-level imports (cumulative column, names not
    indented), summed."""
    total = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if cumulative.strip().isdigit() and name.startswith(" ") and not name[1:2].isspace():
            total += int(cumulative)
    return total / 1e6


def fixture(root: Path, cases: int) -> tuple[Path, Path]:
    """A small synthetic dataset and a random run for it (the CPU test's inputs)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from predict import random_run  # the predict benchmark's random run, one definition

    from hco_cli.data.prepare import prepare_synthetic
    prepare_synthetic(root / "syn", labeled=1, unlabeled=0, test=cases, classes=1,
                      shape=(48, 48, 32))
    torch.manual_seed(0)
    run = random_run(root / "run", root / "syn", patch=[32, 32, 16], stride=[16, 16, 8],
                     filters=4, amp=False)
    return run, root / "syn"


def table(result: dict[str, Any]) -> str:
    seconds = result["seconds"]
    before = sum(seconds[s] for s in STAGES[:STAGES.index("predict_first")])
    lines = [f"{result['device']}, torch {result['torch']}, {result['cases']} cases"]
    lines += [f"  {stage:<14} {seconds[stage]:7.3f} s" for stage in STAGES]
    lines.append(f"  {'before predict':<14} {before:7.3f} s (imports, start-up, first calls)")
    first_extra = seconds["predict_first"] - seconds["predict_again"]
    lines.append(f"  first predict call over the second: {first_extra:+.3f} s")
    if result.get("cli_s") is not None:
        lines.append(f"  fresh hco predict process: {result['cli_s']:.3f} s")
    if cli := result.get("cli"):
        lines.append(f"    last file written at {cli['last_write']:.3f} s, then "
                     f"{cli['after_last_write']:.3f} s to the exit")
    if traced := result.get("cli_importtime"):
        lines.append(f"  under -X importtime: top-level imports {traced['imports']:.3f} s of "
                     f"{traced['wall']:.3f} s")
    if code := result.get("bytecode"):
        environment = code["environment"]
        lines.append(f"  fresh hco predict, {len(code['with'])} each, alternating: with compiled "
                     f"bytecode {code['median_with']:.3f} s, without "
                     f"{code['median_without']:.3f} s (median; {code['ratio']:.2f}x)")
        lines.append(f"    this environment writes bytecode: "
                     f"{'yes' if environment['writes_bytecode'] else 'no'}; torch's is cached: "
                     f"{'yes' if environment['torch_bytecode_cached'] else 'no'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--run", type=Path, help="a finished run folder (best.pt)")
    parser.add_argument("--data", type=Path, help="the prepared dataset (test split)")
    parser.add_argument("--synthetic", action="store_true",
                        help="a small synthetic dataset and a random V-Net")
    parser.add_argument("--cases", type=int, default=20, help="test cases (--synthetic)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh hco predict")
    parser.add_argument("--bytecode", type=int, default=0, metavar="ROUNDS",
                        help="also time ROUNDS fresh hco predict processes with and without "
                             "compiled bytecode, alternating")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # the fresh process: stages to the given JSON file
        result = child(args.run, args.data, args.child.parent / "out", args.device)
        args.child.write_text(json.dumps(result), encoding="utf-8")
        return
    if args.synthetic == (args.run is not None):
        parser.error("give --run and --data, or --synthetic")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run, data = fixture(root, args.cases) if args.synthetic else (args.run, args.data)
        if data is None:
            parser.error("--run needs --data")
        stages = root / "stages.json"
        subprocess.run([sys.executable, __file__, "--child", str(stages), "--run", str(run),
                        "--data", str(data), "--device", args.device], check=True)
        result = json.loads(stages.read_text(encoding="utf-8"))
        result["cli_s"] = None
        if not args.no_cli:
            result["cli"] = fresh_cli(run, data, root / "cli" / "out", args.device)
            result["cli_s"] = result["cli"]["wall"]
            result["cli_importtime"] = fresh_cli(run, data, root / "cli-importtime" / "out",
                                                 args.device, importtime=True)
        if args.bytecode > 0:
            result["bytecode"] = bytecode(run, data, root, args.device, args.bytecode)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp_json.write_text(json.dumps(result, indent=2), encoding="utf-8")
        tmp_json.replace(args.json)


if __name__ == "__main__":
    main()
