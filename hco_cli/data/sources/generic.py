"""Generic folders: image/label pairs found by glob patterns, or an nnU-Net/MSD raw folder.

Case ids from glob patterns (``--images``, ``--labels``, ``--unlabeled``) come from file names:
the whole stem (the name without its volume extension, ``.nii.gz``, ``.nrrd``, ...) minus the
suffix that every matched stem shares (the pattern's literal text after its last wildcard, or
a longer shared suffix that starts at ``_``, ``-`` or ``.``) and minus nnU-Net's ``_0000``
channel tag. So ``images/subject*_DE.nii.gz`` gives ``subject1``, ``subject10``, ...,
``labels/subject1*_DE_manual.nii.gz`` the same ids, ``imagesTr/*_0000.nii.gz`` and
``labelsTr/*.nii.gz`` both ``case_001``, and ``patient*/patient*_frame??.nii.gz`` (ACDC: two
frames a folder) ``patient001_frame01`` and ``patient001_frame12``. Where the file name holds
no wildcard (``*/srr.nii.gz``), the nearest folder's name is the id; while ids repeat across
folders, every id gets the name of its next folder up in front (up to the pattern's literal
leading folders). Images and labels pair by case id; when the two sides differ only by a
shared leading text (``img_*`` and ``seg_*``), they pair by the rest and take the image's id.

nnU-Net v2 folders (``dataset.json`` with ``channel_names``) name channel files
``<case>_<XXXX><ext>``; MSD folders (``modality``) use ``<case><ext>``, one channel (MSD's
multi-modality datasets keep their channels in one 4D file, which is refused with a word on
converting it to the v2 layout). A label is ``<case>`` with any volume extension.
``imagesTs`` cases form the test split, with labels from ``labelsTs`` when it exists. A label
named ``ignore`` in ``dataset.json`` (nnU-Net's convention) is the ignore label. No file is
passed over without a word: a label without an image of its case (``labelsTs`` without
``imagesTs`` too), two files of one case and
channel (a stale ``.nii`` beside the ``.nii.gz``) and a ``numTraining`` that differs from the
training cases found are refused.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from hco_cli.data.io import channel_tag, volume_suffix
from hco_cli.data.sources import SourceCase, SourceListing, check_case_id, check_unique
from hco_cli.errors import ConfigError, DataError

_WILDCARD = re.compile(r"\*\*|\*|\?|\[[^\]]+\]")
_SEPARATORS = "_-."
NNUNET_CHANNEL_TAG = "_0000"


def case_ids(pattern: str, paths: list[str]) -> list[str]:
    """Case id of each of ``paths`` (as ``pattern`` matched them), by the rule above."""
    parts = pattern.split("/")
    if not any(_WILDCARD.search(part) for part in parts):
        raise ConfigError(f"pattern {pattern!r} has no wildcard (*, ?, [...]) to take ids from")
    literal_dirs = next(i for i, part in enumerate(parts) if _WILDCARD.search(part))
    pieces = [PurePosixPath(p).parts for p in paths]
    folders = [list(reversed(q[literal_dirs:-1])) for q in pieces]
    if _WILDCARD.search(parts[-1]):
        tail = _literal_tail(parts[-1])
        ids = strip_common_suffix([_stem(q[-1]) for q in pieces], tail)
    else:
        ids = [f.pop(0) if f else _stem(q[-1]) for f, q in zip(folders, pieces, strict=True)]
    return with_folders(ids, folders)


def with_folders(ids: list[str], folders: list[list[str]]) -> list[str]:
    """``ids`` made distinct: while any repeats, every id gets its next folder up in front
    (``folders``: each id's remaining folder names, nearest first; consumed)."""
    while len(set(ids)) < len(ids) and any(folders):
        ids = [f"{f.pop(0)}_{i}" if f else i for f, i in zip(folders, ids, strict=True)]
    return ids


def strip_common_suffix(stems: list[str], tail: str = "") -> list[str]:
    """``stems`` without their longest shared suffix that starts at a separator (or equals the
    pattern's literal ``tail``) and leaves every stem non-empty; then without ``_0000``."""
    common = _common_suffix(stems) if len(stems) > 1 else tail
    cut = 0
    for k in range(len(common), 0, -1):
        suffix = common[-k:]
        if (suffix == tail or suffix[0] in _SEPARATORS) and all(
                len(s) > k and s.endswith(suffix) for s in stems):
            cut = k
            break
    out = [s[: len(s) - cut] for s in stems]
    tag = NNUNET_CHANNEL_TAG
    if all(s.endswith(tag) and len(s) > len(tag) for s in out):
        out = [s[: -len(tag)] for s in out]
    return out


def _common_suffix(texts: list[str]) -> str:
    first = texts[0]
    n = 0
    while n < len(first) and all(len(t) > n and t[-1 - n] == first[-1 - n] for t in texts):
        n += 1
    return first[len(first) - n:]


def _literal_tail(component: str) -> str:
    """The literal text after the last wildcard of a pattern component, extension removed."""
    tail = component[list(_WILDCARD.finditer(component))[-1].end():]
    suffix = volume_suffix(Path(tail)) if tail else ""
    return tail[: len(tail) - len(suffix)] if suffix and tail.lower().endswith(suffix) else tail


def _stem(name: str) -> str:
    suffix = volume_suffix(Path(name))
    return name[: len(name) - len(suffix)] if suffix and name != suffix else name


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


def match_cases(pattern: str, *, base: Path | None, option: str,
                by_wildcard: bool = False) -> dict[str, Path]:
    """Case id -> path for every file (or DICOM folder) that ``pattern`` matches.

    Ids follow the file-name rule above, or with ``by_wildcard`` the text that the first path
    component holding a wildcard matched (:func:`pattern_regex`; the NIH pancreas layout,
    ``PANCREAS_*/*/*`` and ``label*.nii.gz``, is named so).
    """
    root = None if base is None or Path(pattern).is_absolute() else Path(base)
    rels = sorted(glob.glob(pattern, root_dir=root, recursive=True))
    if not rels:
        raise DataError(f"{option} {pattern!r} matches no file")
    ids = [_wildcard_id(pattern, rel, root, option) for rel in rels] if by_wildcard else (
        case_ids(pattern, rels))
    found: dict[str, Path] = {}
    for case, rel in zip(ids, rels, strict=True):
        path = root / rel if root is not None else Path(rel)
        check_case_id(case, str(path))
        if case in found:
            raise DataError(
                f"case {case}: duplicate case id: {option} {pattern!r} matches both "
                f"{found[case]} and {path}"
            )
        found[case] = path
    return found


def _wildcard_id(pattern: str, rel: str, root: Path | None, option: str) -> str:
    match = pattern_regex(pattern).match(rel)
    if match is None:  # glob and the regex disagree only on exotic patterns
        raise ConfigError(f"{option} {pattern!r}: cannot take a case id from {rel} in {root}")
    case = match.group("id")
    suffix = volume_suffix(Path(case))
    case = case[: -len(suffix)] if suffix and case != suffix else case
    return case.replace("/", "_")


def pair_labels(images: dict[str, Path], labels: dict[str, Path], *,
                pattern: str) -> dict[str, Path]:
    """Label path per image case id: by id, or by the ids without each side's shared prefix."""
    if set(labels) != set(images) and len(images) > 1 and len(labels) > 1:
        image_keys = dict(zip(_strip_common_prefix(list(images)), images, strict=True))
        label_keys = dict(zip(_strip_common_prefix(list(labels)), labels, strict=True))
        if set(image_keys) == set(label_keys):
            return {image_keys[k]: labels[label_keys[k]] for k in image_keys}
    for case, path in images.items():
        if case not in labels:
            raise DataError(f"case {case}: no label for image {path} (--labels {pattern!r})")
    for case, path in labels.items():
        if case not in images:
            raise DataError(f"case {case}: no image for label {path} (--images ids such as "
                            f"{next(iter(images))})")
    return labels


def _strip_common_prefix(ids: list[str]) -> list[str]:
    """``ids`` without their longest shared prefix (each keeps at least one character)."""
    shared = 0
    while all(len(i) > shared + 1 and i[shared] == ids[0][shared] for i in ids):
        shared += 1
    return [i[shared:] for i in ids]


def list_globs(
    *, images: str, labels: str, unlabeled: str | None = None, base: Path | None = None,
    by_wildcard: bool = False,
) -> SourceListing:
    """Labeled pairs from ``images``/``labels`` plus label-less cases from ``unlabeled``."""
    image_paths = match_cases(images, base=base, option="--images", by_wildcard=by_wildcard)
    label_paths = pair_labels(image_paths, match_cases(labels, base=base, option="--labels",
                                                       by_wildcard=by_wildcard), pattern=labels)
    cases = [SourceCase(case=c, reader="volume", images=(p,), label=label_paths[c])
             for c, p in image_paths.items()]
    if unlabeled is not None:
        more = match_cases(unlabeled, base=base, option="--unlabeled", by_wildcard=by_wildcard)
        for case, path in more.items():
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
    if not v2 and n_channels > 1:
        raise DataError(
            f"{root / 'dataset.json'}: MSD 'modality' names {n_channels} channels, stored as one "
            "4D image a case, which hco does not read; split each image into 3D files "
            "<case>_0000, <case>_0001, ... and name them in 'channel_names' (the nnU-Net v2 "
            "layout that nnUNetv2_convert_MSD_dataset writes)")
    train = _folder_cases(root, "imagesTr", "labelsTr", v2=v2, channels=n_channels,
                          labels_required=True)
    _check_num_training(meta, len(train), root / "dataset.json")
    test: list[SourceCase] = []
    if (root / "labelsTs").is_dir() and not (root / "imagesTs").is_dir():
        raise DataError(f"{root / 'labelsTs'}: test labels without an imagesTs folder beside "
                        "them (add their images as imagesTs or move labelsTs away)")
    if (root / "imagesTs").is_dir():
        test = _folder_cases(root, "imagesTs", "labelsTs", v2=v2, channels=n_channels,
                             labels_required=(root / "labelsTs").is_dir())
    check_unique([c.case for c in train + test], f"{root} (imagesTr and imagesTs)")
    ct = any(str(name).upper() == "CT" for name in channel_names.values())
    classes = classes_from_json(meta, root / "dataset.json")
    ignore = next((v for v, name in classes.items() if name == "ignore"), None)
    return SourceListing(
        cases=train + test, source=f"nnunet:{root.resolve()}",
        classes={v: n for v, n in classes.items() if v != ignore},
        modality="CT" if ct else "MR", train_order=[c.case for c in train],
        test=[c.case for c in test], ignore_label=ignore,
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


def _check_num_training(meta: dict[str, Any], found: int, path: Path) -> None:
    """Refuse a ``numTraining`` (where given as a number) that differs from the cases found."""
    declared = meta.get("numTraining")
    if isinstance(declared, str) and declared.strip().isdigit():
        declared = int(declared)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared != found:
        raise DataError(f"{path} says numTraining {declared}, imagesTr/labelsTr hold {found} "
                        f"case{'s' * (found != 1)}")


def _volume_files(folder: Path) -> list[tuple[Path, str]]:
    """(path, stem) of the volume files in ``folder``; hidden and other files are passed over."""
    out = []
    for path in sorted(folder.iterdir()):
        suffix = volume_suffix(path)
        if suffix and not path.name.startswith("."):
            out.append((path, path.name[: -len(suffix)]))
    return out


def _folder_cases(root: Path, images: str, labels: str, *, v2: bool, channels: int,
                  labels_required: bool) -> list[SourceCase]:
    folder = root / images
    if not folder.is_dir():
        raise DataError(f"not an nnU-Net/MSD folder: {folder} not found")
    grouped: dict[str, dict[int, Path]] = {}
    for path, stem in _volume_files(folder):
        tag = channel_tag(stem) if v2 else None
        if v2 and tag is None:
            raise DataError(f"{path}: expected <case>_<XXXX>{volume_suffix(path)} "
                            "(nnU-Net channel suffix)")
        case, channel = tag if tag else (stem, 0)
        files = grouped.setdefault(check_case_id(case, str(path)), {})
        if channel in files:
            raise DataError(f"case {case}: two files of channel {channel}: {files[channel]} and "
                            f"{path} (remove the stale one)")
        files[channel] = path
    found = _label_files(root / labels, grouped, folder)
    out = []
    for case, files in grouped.items():
        if sorted(files) != list(range(channels)):
            raise DataError(
                f"case {case}: {folder} has channels {sorted(files)}, expected 0..{channels - 1}"
            )
        label = found.get(case)
        if label is None and labels_required:
            raise DataError(f"case {case}: no label file {case}.<ext> in {root / labels} "
                            f"(.nii.gz, .nii, .nrrd, .mha, ...) for image {files[0]}")
        out.append(SourceCase(case=case, reader="volume",
                              images=tuple(files[c] for c in range(channels)),
                              label=label, has_label=label is not None))
    if not out:
        raise DataError(f"{folder}: no volume files")
    return out


def _label_files(folder: Path, cases: dict[str, dict[int, Path]],
                 images: Path) -> dict[str, Path]:
    """The label file of each case in ``folder``, whatever its volume extension (an image
    ``.nii.gz`` may have a ``.nii`` label); refuses a label without an image of its case and
    two label files of one case."""
    seen: dict[str, Path] = {}
    if not folder.is_dir():
        return seen
    for path, case in _volume_files(folder):
        if case in seen:
            raise DataError(f"case {case}: two label files: {seen[case]} and {path} "
                            "(remove the stale one)")
        seen[case] = path
        if case not in cases:
            raise DataError(f"case {case}: no image for label {path} (no file of case {case} "
                            f"in {images})")
    return seen
