"""What a prepared dataset is, as four short digests: a run records them and checks them again.

A run trained on ``data/la`` and resumed after ``data/la`` was prepared again (other splits,
another normalisation, other scans under the same case ids) would mix two datasets in one
result without a word. So ``hco train`` writes the dataset's identity into ``last.pt`` and
``run.json``, a resume refuses a dataset whose identity changed, and ``hco sweep`` refuses to
reuse a finished run trained on another preparation of its dataset.

The identity has four parts, each a 16-hex-digit BLAKE2b digest, so that a refusal can say
what changed:

``labels``
    ``dataset.json`` (classes, label values, ignore label, modality, normalisation), without
    the folder's name, the hco version and the raw data's path, which change nothing the
    network sees.
``splits``
    ``splits.json``: the case ids of every split, the fold grids and the groups.
``preprocessing``
    ``plans.json``'s preprocessing plan, channel count and upstream note (not the network plan
    that ``hco plan`` adds later, nor the patch size a run copies in).
``cases``
    every case's geometry file, its label array whole, and its image array's size and 16
    evenly spaced 4 KiB blocks. Labels are small (one byte a voxel) and define both the
    training targets and the scores, so they are read whole, and a corrected label of a few
    voxels counts; images are sampled, which any change of scan or intensity mapping (every
    voxel moves) cannot slip through, and which keeps the cost to milliseconds per case
    whatever the scans' size. Where the labels add up to more than
    :data:`LABEL_BYTES_WHOLE` (2 GiB: the Left Atrium's 100 take 0.28 GB, about 0.6 s), they
    are sampled too, in :data:`LABEL_BLOCKS` blocks each, so that a large dataset does not
    make every ``hco train`` start minutes later; a small correction of one label can then go
    unseen.

Preparing the same raw data again with the same settings gives the same identity: nothing in
it depends on when, where, into which folder or by which hco version a dataset was prepared.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hco_cli.data.dataset import PreparedDataset

PARTS = ("labels", "splits", "preprocessing", "cases")
IMAGE_BLOCKS = 16
LABEL_BLOCKS = 64
LABEL_BYTES_WHOLE = 2 * 1024**3
BLOCK_BYTES = 4096
_CHUNK = 1 << 20
# dataset.json keys that record how and where it was prepared, not what it holds.
_CIRCUMSTANTIAL = {"name", "hco_version", "source"}

DatasetIdentity = dict[str, str]


def dataset_identity(dataset: PreparedDataset | Path) -> DatasetIdentity:
    """The four digests of a prepared dataset (see the module docstring)."""
    data = dataset if isinstance(dataset, PreparedDataset) else PreparedDataset(Path(dataset))
    info = data.info.model_dump(mode="json", exclude=_CIRCUMSTANTIAL)
    plan = data.plan()
    preprocessing = {"preprocess": plan.preprocess.model_dump(mode="json"),
                     "channels": plan.channels, "upstream": plan.upstream}
    return {"labels": _digest_json(info),
            "splits": _digest_json(data.splits.model_dump(mode="json")),
            "preprocessing": _digest_json(preprocessing),
            "cases": _cases_digest(data)}


def changed_parts(before: DatasetIdentity, after: DatasetIdentity) -> list[str]:
    """The parts (in :data:`PARTS` order) whose digests differ or that one side lacks."""
    return [p for p in PARTS if before.get(p) != after.get(p)]


def _digest_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _cases_digest(data: PreparedDataset) -> str:
    h = hashlib.blake2b(digest_size=8)
    cases = data.case_ids()
    labels = {c: data.cases_dir / f"{c}_label.npy" for c in cases}
    labels = {c: p for c, p in labels.items() if p.is_file()}
    whole = sum(os.path.getsize(p) for p in labels.values()) <= LABEL_BYTES_WHOLE
    for case in cases:
        h.update(case.encode() + b"\0")
        h.update((data.cases_dir / f"{case}.json").read_bytes())
        if case in labels:
            h.update(b"label\0")
            if whole:
                _whole(h, labels[case])
            else:
                _sampled(h, labels[case], LABEL_BLOCKS)
        h.update(b"image\0")
        _sampled(h, data.cases_dir / f"{case}_image.npy", IMAGE_BLOCKS)
    return h.hexdigest()


def _whole(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def _sampled(h: Any, path: Path, blocks: int) -> None:
    """The file's size and ``blocks`` blocks spread from its start to its end."""
    size = os.path.getsize(path)
    h.update(size.to_bytes(8, "little"))
    last = max(size - BLOCK_BYTES, 0)
    offsets = sorted({last * i // (blocks - 1) for i in range(blocks)})
    with path.open("rb") as f:
        for offset in offsets:
            f.seek(offset)
            h.update(f.read(BLOCK_BYTES))


__all__ = ["LABEL_BYTES_WHOLE", "PARTS", "DatasetIdentity", "changed_parts", "dataset_identity"]
