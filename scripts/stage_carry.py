#!/usr/bin/env python3
"""Stage the GPU machine's inputs in git-ignored carry folders that each fit one device call.

    python3 scripts/stage_carry.py la      # .carry/wheels + .carry/la1 .. la<N>
    python3 scripts/stage_carry.py fetal   # .carry/wheels + .carry/fetal
    python3 scripts/stage_carry.py speed2  # .carry/wheels + .carry/speed2 (device_speed2.sh)
    python3 scripts/stage_carry.py la --dry-run

A device call moves at most 64 MiB: the tracked files of the repository travel every time,
so what a call can carry besides them shrinks as ``results/`` grows. This script measures the
tracked bytes, then packs the Left Atrium parts (first-fit decreasing, the wheels in the
first folder) into as few folders as fit, each with ``unpack``, ``manifest.json``,
``train.list`` and ``test.list``; it prints one device call per folder, to be made back to
back (a machine idle for 30 s is given back). ``HCO_SHARED`` locates ``../shared``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

LIMIT = 64 * 2**20
MARGIN = 3 * 2**20  # git metadata, rounding (512 KiB was refused at 63.4 MiB)
ROOT = Path(__file__).resolve().parent.parent
LA_FILES = ("unpack", "manifest.json", "train.list", "test.list")


def tracked_bytes() -> int:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names
               if n and (ROOT / n.decode()).is_file())


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


def pack(items: list[tuple[str, int]], capacity: int, first_extra: int) -> list[list[str]]:
    """First-fit decreasing; the first bin starts with ``first_extra`` bytes used."""
    bins: list[tuple[int, list[str]]] = [(first_extra, [])]
    for name, n in sorted(items, key=lambda x: -x[1]):
        if n > capacity:
            sys.exit(f"error: {name} ({n / 2**20:.1f} MiB) alone exceeds one call's room "
                     f"({capacity / 2**20:.1f} MiB)")
        for i, (used, names) in enumerate(bins):
            if used + n <= capacity:
                bins[i] = (used + n, [*names, name])
                break
        else:
            bins.append((n, [name]))
    return [names for _, names in bins]


def copy(src: Path, dst: Path, dry: bool) -> None:
    if dry:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("la", "fetal", "speed2"))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    shared = Path(os.environ.get("HCO_SHARED", ROOT.parent / "shared"))
    carry = ROOT / ".carry"
    wheels = sorted((shared / "wheels" / "gpu-py312").glob("*.whl"))
    if not wheels:
        sys.exit(f"error: no wheels in {shared / 'wheels' / 'gpu-py312'}")
    for w in wheels:
        copy(w, carry / "wheels" / w.name, args.dry_run)
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    tracked = tracked_bytes()
    room = LIMIT - tracked - MARGIN
    print(f"tracked files {tracked / 2**20:.1f} MiB; room per call "
          f"{room / 2**20:.1f} MiB; wheels {wheel_bytes / 2**20:.1f} MiB")
    if args.what == "fetal":
        src = shared / "datasets" / "fetal-sb-atlas"
        need = size(src) + wheel_bytes
        if need > room:
            sys.exit(f"error: fetal + wheels {need / 2**20:.1f} MiB exceed the room")
        if not args.dry_run:
            shutil.rmtree(carry / "fetal", ignore_errors=True)
            shutil.copytree(src, carry / "fetal")
        print('call: carry [".carry/wheels", ".carry/fetal"]')
        return
    la = shared / "datasets" / "la"
    meta = sum((la / f).stat().st_size for f in LA_FILES)
    if args.what == "speed2":  # the labeled part and the test set, in one call
        names = ["la-train-00.tar.xz", "la-test-00.tar.xz", "la-test-01.tar.xz"]
        need = meta + sum((la / "parts" / n).stat().st_size for n in names)
        if need > room:
            sys.exit(f"error: speed2 {need / 2**20:.1f} MiB exceeds the room")
        for f in LA_FILES:
            copy(la / f, carry / "speed2" / f, args.dry_run)
        for n in names:
            copy(la / "parts" / n, carry / "speed2" / "parts" / n, args.dry_run)
        if need + wheel_bytes <= room:
            print(f'call: carry [".carry/wheels", ".carry/speed2"] '
                  f"({(need + wheel_bytes) / 2**20:.1f} MiB): bash scripts/device_speed2.sh")
        else:  # the wheels go first, in a call of their own (or of other work) on that machine
            print(f'call 1: carry [".carry/wheels"]: bash scripts/device_speed2.sh install\n'
                  f'call 2: carry [".carry/speed2"] ({need / 2**20:.1f} MiB), back to back: '
                  "bash scripts/device_speed2.sh")
        return
    parts = [(p.name, p.stat().st_size) for p in sorted((la / "parts").glob("*.tar.xz"))]
    bins = pack(parts, room - meta, wheel_bytes)
    for old in carry.glob("la[0-9]*"):
        if not args.dry_run:
            shutil.rmtree(old)
    for i, names in enumerate(bins, 1):
        folder = carry / f"la{i}"
        for f in LA_FILES:
            copy(la / f, folder / f, args.dry_run)
        for n in names:
            copy(la / "parts" / n, folder / "parts" / n, args.dry_run)
        extra = ', ".carry/wheels"' if i == 1 else ""
        total = meta + sum(dict(parts)[n] for n in names) + (wheel_bytes if i == 1 else 0)
        print(f"call {i}: carry [\".carry/la{i}\"{extra}] ({total / 2**20:.1f} MiB): "
              f"bash scripts/device_ablation.sh stage .carry/la{i}   # {', '.join(names)}")


if __name__ == "__main__":
    main()
