"""Generic folders: image/label pairs found by glob patterns, or an nnU-Net/MSD raw folder.

Case ids from glob patterns (``--images``, ``--labels``, ``--unlabeled``): take the first
path component of the pattern that holds a wildcard (``*``, ``?``, ``[...]``, ``**``); the
case id is the text of the matched path from the start of that component's first wildcard
match to the end of its last one (literal text in between included), with a trailing volume
extension (``.nii.gz``, ``.nrrd``, ...) removed. So ``dir/*/srr.nii.gz`` names a case by its
folder, ``imagesTr/*_0000.nii.gz`` and ``labelsTr/*.nii.gz`` both give ``case_001``, and
``img_*.nii.gz`` pairs with ``seg_*.nii.gz``. Images and labels pair by case id.

nnU-Net v2 folders (``dataset.json`` with ``channel_names``) name channel files
``<case>_<XXXX><ext>``; MSD folders (``modality``) use ``<case><ext>``, one channel.
``imagesTs`` cases form the test split, with labels from ``labelsTs`` when it exists.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

from hco_cli.data.io import volume_suffix
from hco_cli.data.sources import SourceCase, SourceListing, check_case_id, check_unique
from hco_cli.errors import ConfigError, DataError

_WILDCARD = re.compile(r"\*\*|\*|\?|\[[^\]]+\]")
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching the paths of ``pattern``; group ``id`` spans the case id (see above)."""
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), None)
    if first is None:
        raise ConfigError(f"pattern {pattern!r} has no wildcard (*, ?, [...]) to take ids from")
    pieces = []
    for i, part in enumerate(parts):
        body = _translate(part)
        if i == first:
            tokens = list(_WILDCARD.finditer(part))
            head, tail = part[: tokens[0].start()], part[tokens[-1].end():]
            body = f"{_translate(head)}(?P<id>{_translate(part[len(head):len(part) - len(tail)])})"
            body += _translate(tail)
        pieces.append(body)
    return re.compile("/".join(pieces) + r"/?\Z")


def _translate(text: str) -> str:
    out, pos = [], 0
    for token in _WILDCARD.finditer(text):
        out.append(re.escape(text[pos:token.start()]))
        value = token.group()
        if value == "**":
            out.append(".*")
        elif value == "*":
            out.append("[^/]*")
        elif value == "?":
            out.append("[^/]")
        else:
            inner = value[1:-1]
            out.append("[^" + inner[1:] + "]" if inner.startswith("!") else "[" + inner + "]")
        pos = token.end()
    out.append(re.escape(text[pos:]))
    return "".join(out)


def match_cases(pattern: str, *, base: Path | None, option: str) -> dict[str, Path]:
    """Case id -> path for every file (or DICOM folder) that ``pattern`` matches."""
    root = None if base is None or Path(pattern).is_absolute() else Path(base)
    regex = pattern_regex(pattern)
    found: dict[str, Path] = {}
    for rel in sorted(glob.glob(pattern, root_dir=root, recursive=True)):
        path = root / rel if root is not None else Path(rel)
        match = regex.match(rel)
        if match is None:  # glob and the regex disagree only on exotic patterns
            raise ConfigError(f"{option} {pattern!r}: cannot take a case id from {path}")
        case = match.group("id")
        suffix = volume_suffix(Path(case))
        case = case[: -len(suffix)] if suffix and case != suffix else case
        check_case_id(case.replace("/", "_"), str(path))
        case = case.replace("/", "_")
        if case in found:
            raise DataError(
                f"case {case}: duplicate case id: {option} {pattern!r} matches both "
                f"{found[case]} and {path}"
            )
        found[case] = path
    if not found:
        raise DataError(f"{option} {pattern!r} matches no file")
    return found


def list_globs(
    *, images: str, labels: str, unlabeled: str | None = None, base: Path | None = None
) -> SourceListing:
    """Labeled pairs from ``images``/``labels`` plus label-less cases from ``unlabeled``."""
    image_paths = match_cases(images, base=base, option="--images")
    label_paths = match_cases(labels, base=base, option="--labels")
    for case, path in image_paths.items():
        if case not in label_paths:
            raise DataError(f"case {case}: no label for image {path} (--labels {labels!r})")
    for case, path in label_paths.items():
        if case not in image_paths:
            raise DataError(f"case {case}: no image for label {path} (--images {images!r})")
    cases = [SourceCase(case=c, reader="volume", images=(p,), label=label_paths[c])
             for c, p in image_paths.items()]
    if unlabeled is not None:
        for case, path in match_cases(unlabeled, base=base, option="--unlabeled").items():
            if case in image_paths:
                raise DataError(
                    f"case {case}: duplicate case id: {path} (--unlabeled) and "
                    f"{image_paths[case]} (--images)"
                )
            cases.append(SourceCase(case=case, reader="volume", images=(path,), has_label=False))
    where = base.resolve() if base is not None else Path.cwd()
    return SourceListing(cases=cases, source=f"generic:{where}", classes={},
                         train_order=[c.case for c in cases])


def list_nnunet(root: Path) -> SourceListing:
    """Cases of an nnU-Net v2 or MSD raw folder (``dataset.json``, ``imagesTr``, ...)."""
    root = Path(root)
    meta = read_dataset_json(root / "dataset.json")
    v2 = "channel_names" in meta
    channel_names = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    n_channels = len(channel_names)
    train = _folder_cases(root, "imagesTr", "labelsTr", v2=v2, channels=n_channels,
                          labels_required=True)
    test: list[SourceCase] = []
    if (root / "imagesTs").is_dir():
        test = _folder_cases(root, "imagesTs", "labelsTs", v2=v2, channels=n_channels,
                             labels_required=(root / "labelsTs").is_dir())
    check_unique([c.case for c in train + test], f"{root} (imagesTr and imagesTs)")
    ct = any(str(name).upper() == "CT" for name in channel_names.values())
    return SourceListing(
        cases=train + test, source=f"nnunet:{root.resolve()}",
        classes=classes_from_json(meta, root / "dataset.json"), modality="CT" if ct else "MR",
        train_order=[c.case for c in train], test=[c.case for c in test],
    )


def read_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"not an nnU-Net/MSD folder: {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def classes_from_json(meta: dict[str, Any], path: Path) -> dict[int, str]:
    """Label value -> name from ``labels``: nnU-Net v2 (name: value) or MSD (value: name)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: no 'labels' mapping")
    out: dict[int, str] = {}
    for key, value in labels.items():
        value_is_int = isinstance(value, int) and not isinstance(value, bool)
        number, name = (value, key) if value_is_int else (key, value)
        try:
            out[int(number)] = str(name)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{path}: label entry {key!r}: {value!r} is not a value/name pair "
                "(region-based labels are not supported)"
            ) from exc
    return out


def parse_classes(text: str) -> dict[int, str]:
    """``"1=white matter,2=ventricles"`` -> {0: background, 1: ..., 2: ...}."""
    out = {0: "background"}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise ConfigError(f"--classes: {item!r} is not of the form VALUE=NAME, e.g. 1=liver")
        out[int(value)] = name.strip()
    return out


def _folder_cases(root: Path, images: str, labels: str, *, v2: bool, channels: int,
                  labels_required: bool) -> list[SourceCase]:
    folder = root / images
    if not folder.is_dir():
        raise DataError(f"not an nnU-Net/MSD folder: {folder} not found")
    grouped: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = volume_suffix(path)
        if not suffix or path.name.startswith("."):
            continue
        stem = path.name[: -len(suffix)]
        match = _CHANNEL.match(stem) if v2 else None
        if v2 and match is None:
            raise DataError(f"{path}: expected <case>_<XXXX>{suffix} (nnU-Net channel suffix)")
        case, channel = (match.group(1), int(match.group(2))) if match else (stem, 0)
        grouped.setdefault(check_case_id(case, str(path)), {})[channel] = path
    out = []
    for case, files in grouped.items():
        if sorted(files) != list(range(channels)):
            raise DataError(
                f"case {case}: {folder} has channels {sorted(files)}, expected 0..{channels - 1}"
            )
        first = files[0]
        label = root / labels / (case + volume_suffix(first))
        if not label.exists() and labels_required:
            raise DataError(f"case {case}: label file not found: {label}")
        out.append(SourceCase(case=case, reader="volume",
                              images=tuple(files[c] for c in range(channels)),
                              label=label if label.exists() else None,
                              has_label=label.exists()))
    if not out:
        raise DataError(f"{folder}: no volume files")
    return out
